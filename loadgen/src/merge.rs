//! `loadgen merge`: one result from the interval logs (`.hlog`) of several load-generator
//! processes that drove one server at the same time (on one machine or many).
//!
//! Percentiles cannot be averaged, so the merged latency is the sum of the processes'
//! histograms; and the processes did not start and stop at exactly the same instant, so only
//! the time every one of them was measuring counts: the window from the latest first interval
//! start to the earliest last interval end. Each process contributes the intervals lying
//! inside that window; its rate is its requests there over the length of those intervals, and
//! the merged rate is the sum of the processes' rates.
//!
//! An interval's time is its log's `StartTime` (or `BaseTime`) plus the interval's offset, as
//! HdrHistogram's Java `HistogramLogReader` reads it; so logs from different machines line up
//! as well as the machines' clocks do (run them with NTP, and start them together with
//! `loadgen run --start-at`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use serde::Serialize;

use crate::hgrm;
use crate::plot::{self, Curve};
use crate::report::{Percentiles, with_extension, write_file, write_json};
use crate::worker::new_histogram;

/// Interval offsets below this many seconds are relative to the log's start time (the Java
/// reader's rule: an absolute Unix time is never this small).
const RELATIVE_BELOW_S: f64 = 365.0 * 24.0 * 3600.0;
/// Slack when deciding whether an interval lies inside the window (timestamps are printed to
/// the millisecond).
const SLACK_S: f64 = 0.002;

/// One interval of one log: absolute start and end (Unix seconds) and its latency histogram.
#[derive(Debug, Clone)]
pub struct Interval {
    pub start_s: f64,
    pub end_s: f64,
    pub latency: Histogram<u64>,
}

/// The untagged (latency) intervals of one `.hlog` file, in order.
#[derive(Debug, Clone)]
pub struct Log {
    pub path: PathBuf,
    pub intervals: Vec<Interval>,
}

impl Log {
    pub fn read(path: &Path) -> Result<Log> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Log::parse(path, &bytes)
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Log> {
        let mut start: Option<f64> = None;
        let mut base: Option<f64> = None;
        let mut intervals = Vec::new();
        let mut deserializer = Deserializer::new();
        for entry in IntervalLogIterator::new(bytes) {
            let entry = entry.map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an HdrHistogram interval log ({e:?}); give the .hlog files \
                     `loadgen run -o PREFIX` writes",
                    path.display()
                )
            })?;
            match entry {
                LogEntry::StartTime(t) => start = Some(t.as_secs_f64()),
                LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
                LogEntry::Interval(h) => {
                    // Tagged histograms (loadgen's `service` time) are not the latency.
                    if h.tag().is_some() {
                        continue;
                    }
                    let offset = h.start_timestamp().as_secs_f64();
                    let start_s = match (base, start) {
                        (Some(b), _) => b + offset,
                        (None, Some(s)) if offset < RELATIVE_BELOW_S => s + offset,
                        _ => offset,
                    };
                    let encoded = BASE64_STANDARD
                        .decode(h.encoded_histogram().trim())
                        .with_context(|| {
                            format!("{}: an interval's histogram is not base64", path.display())
                        })?;
                    let latency: Histogram<u64> = deserializer
                        .deserialize(&mut encoded.as_slice())
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "{}: an interval's histogram cannot be decoded: {e:?}",
                                path.display()
                            )
                        })?;
                    intervals.push(Interval {
                        start_s,
                        end_s: start_s + h.duration().as_secs_f64(),
                        latency,
                    });
                }
            }
        }
        if intervals.is_empty() {
            bail!(
                "{} holds no latency intervals (was the run shorter than its warm-up?)",
                path.display()
            );
        }
        intervals.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        Ok(Log {
            path: path.to_path_buf(),
            intervals,
        })
    }

    fn first_s(&self) -> f64 {
        self.intervals.first().map_or(0.0, |i| i.start_s)
    }

    fn last_s(&self) -> f64 {
        self.intervals.iter().map(|i| i.end_s).fold(0.0, f64::max)
    }
}

/// What one input contributed.
#[derive(Debug, Clone, Serialize)]
pub struct InputReport {
    pub file: String,
    /// Unix seconds its intervals cover.
    pub covers_from_s: f64,
    pub covers_to_s: f64,
    pub intervals: usize,
    /// Intervals inside the common window: the ones merged.
    pub intervals_used: usize,
    pub requests: u64,
    pub seconds: f64,
    pub throughput_rps: f64,
}

/// The merged result (`PREFIX.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    pub kind: &'static str,
    /// The window every input was measuring: Unix seconds, and its length.
    pub window_from_s: f64,
    pub window_to_s: f64,
    pub window_s: f64,
    /// Requests answered in the window, over all inputs.
    pub requests: u64,
    /// The sum of the inputs' rates in the window.
    pub throughput_rps: f64,
    /// Of the summed histograms (microseconds), never an average of percentiles.
    pub latency_us: Percentiles,
    pub inputs: Vec<InputReport>,
    #[serde(skip)]
    pub latency: Histogram<u64>,
}

/// Merges `logs` over the window they all cover.
pub fn merge(logs: &[Log]) -> Result<Merged> {
    if logs.is_empty() {
        bail!("give at least one .hlog file");
    }
    let from = logs.iter().map(Log::first_s).fold(f64::MIN, f64::max);
    let to = logs.iter().map(Log::last_s).fold(f64::MAX, f64::min);
    if to <= from {
        let spans: Vec<String> = logs
            .iter()
            .map(|l| {
                format!(
                    "{} covers {:.3}..{:.3}",
                    l.path.display(),
                    l.first_s(),
                    l.last_s()
                )
            })
            .collect();
        bail!(
            "the logs do not overlap in time ({}); start the runs together with \
             `loadgen run --start-at` and the same --warmup and --duration",
            spans.join("; ")
        );
    }
    let mut latency = new_histogram();
    let mut inputs = Vec::new();
    let mut requests = 0;
    let mut throughput = 0.0;
    for log in logs {
        let inside: Vec<&Interval> = log
            .intervals
            .iter()
            .filter(|i| i.start_s >= from - SLACK_S && i.end_s <= to + SLACK_S)
            .collect();
        let mut count = 0;
        let mut seconds = 0.0;
        for interval in &inside {
            latency
                .add(&interval.latency)
                .with_context(|| format!("{}: a histogram out of range", log.path.display()))?;
            count += interval.latency.len();
            seconds += interval.end_s - interval.start_s;
        }
        let rate = if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        };
        requests += count;
        throughput += rate;
        inputs.push(InputReport {
            file: log.path.display().to_string(),
            covers_from_s: log.first_s(),
            covers_to_s: log.last_s(),
            intervals: log.intervals.len(),
            intervals_used: inside.len(),
            requests: count,
            seconds,
            throughput_rps: rate,
        });
    }
    if let Some(empty) = inputs.iter().find(|i| i.intervals_used == 0) {
        bail!(
            "{} has no whole interval inside the common window {from:.3}..{to:.3} ({:.3} s): \
             the runs overlapped too little; start them together with `loadgen run --start-at`",
            empty.file,
            to - from
        );
    }
    Ok(Merged {
        kind: "merge",
        window_from_s: from,
        window_to_s: to,
        window_s: to - from,
        requests,
        throughput_rps: throughput,
        latency_us: Percentiles::of(&latency),
        inputs,
        latency,
    })
}

/// Writes `PREFIX.json`, `PREFIX.hgrm` (milliseconds, as `loadgen run` writes it) and
/// `PREFIX.svg` (the merged curve over each input's); returns their paths.
pub fn write(prefix: &Path, merged: &Merged, logs: &[Log]) -> Result<Vec<PathBuf>> {
    let json = write_json(prefix, merged)?;
    let hgrm_path = with_extension(prefix, ".hgrm");
    write_file(
        &hgrm_path,
        hgrm::distribution_text(&merged.latency, 1e6).as_bytes(),
    )?;
    let mut curves = vec![curve(
        &format!("merged ({} processes)", logs.len()),
        &merged.latency,
    )];
    for log in logs {
        let mut h = new_histogram();
        for i in log
            .intervals
            .iter()
            .filter(|i| i.start_s >= merged.window_from_s - SLACK_S)
            .filter(|i| i.end_s <= merged.window_to_s + SLACK_S)
        {
            h.add(&i.latency)
                .with_context(|| format!("{}: a histogram out of range", log.path.display()))?;
        }
        let name = log
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        curves.push(curve(&name, &h));
    }
    let svg = with_extension(prefix, ".svg");
    plot::draw(
        &curves,
        "Latency by percentile, merged over the common window",
        &svg,
        true,
    )?;
    Ok(vec![json, hgrm_path, svg])
}

fn curve(label: &str, h: &Histogram<u64>) -> Curve {
    Curve {
        label: label.to_string(),
        points: hgrm::distribution(h, hgrm::TICKS_PER_HALF_DISTANCE)
            .iter()
            .map(|p| (p.quantile, p.value as f64 / 1e3))
            .collect(),
    }
}

/// The one-line summary `loadgen merge` prints.
pub fn summary(m: &Merged) -> String {
    format!(
        "merged {} logs over {:.3} s (the window all of them measured): {} req/s, {} requests; \
         latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us\n",
        m.inputs.len(),
        m.window_s,
        crate::report::group(m.throughput_rps),
        m.requests,
        m.latency_us.p50,
        m.latency_us.p99,
        m.latency_us.p99_9,
        m.latency_us.max
    )
}
