//! The result of a run as JSON (schema `seqd-loadgen/1`, documented in loadgen/SCHEMA.md), as
//! a human summary, and as files (`.json`, `.hgrm`, `.hlog`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::hgrm;
use crate::run::{IntervalPoint, Measured, RunSpec, ThreadUsage};
use crate::slo::format_ns;
use crate::verify;
use crate::worker::Errors;

/// Identifies the JSON layout; bumped only when a field changes meaning or disappears.
pub const SCHEMA: &str = "seqd-loadgen/1";

/// Where and when a result was measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub hostname: String,
    /// CPUs online.
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// RFC 3339, UTC, when the measured part began.
    pub date: String,
}

impl Machine {
    pub fn probe(at: std::time::SystemTime) -> Machine {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            hostname: read("/proc/sys/kernel/hostname"),
            // SAFETY: sysconf has no preconditions.
            nproc: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
                .unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu_model,
            date: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

/// How a run was configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// binary, resp, inline or redis.
    pub target: String,
    pub address: String,
    /// Sequence name (or Redis key); null: the default sequence.
    pub sequence: Option<String>,
    /// Numbers per request (GETSEQ_BATCH / INCRBY when > 1).
    pub batch: u64,
    /// "closed" or "open".
    pub mode: String,
    pub connections: usize,
    /// Closed loop: requests kept in flight per connection. Open loop: the most in flight.
    pub pipeline: usize,
    pub threads: usize,
    /// CPUs the threads were pinned to (empty: not pinned).
    pub cpus: Vec<usize>,
    /// Open loop: planned requests per second, over all connections.
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub verify: bool,
    /// Open loop: `--send-granularity` in microseconds (null in a closed loop).
    pub send_granularity_us: Option<f64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
            };
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            count: h.len(),
            min: h.min() as f64 / 1e3,
            mean: h.mean() / 1e3,
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p99_9: us(0.999),
            p99_99: us(0.9999),
            max: h.max() as f64 / 1e3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Measured wall time: end of warm-up to the last reply.
    pub duration_s: f64,
    /// Requests answered with numbers after the warm-up.
    pub requests: u64,
    pub numbers: u64,
    pub throughput_rps: f64,
    pub numbers_per_s: f64,
    /// Requests sent after the warm-up.
    pub sent: u64,
    /// Open loop: requests planned after the warm-up, and the share of them answered.
    pub planned: Option<u64>,
    pub achieved_ratio: Option<f64>,
    /// Open loop: planned before the end but never sent.
    pub unsent: u64,
    /// Open loop: times a due request waited because --pipeline requests were in flight.
    pub held_by_pipeline: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReport {
    /// The counters (see `worker::Errors`), flattened into this object.
    #[serde(flatten)]
    pub counts: Errors,
    pub total: u64,
    /// The first distinct error messages.
    pub first: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientCpu {
    /// CPU used by the whole load-generator process, in percent of one core.
    pub process_percent: f64,
    pub threads: Vec<ThreadCpu>,
    /// Some thread was busy >= 90% of the time: the tool may have been the bottleneck.
    pub cpu_bound: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadCpu {
    pub thread: usize,
    pub cpu: Option<usize>,
    pub busy_percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistributionLine {
    pub value_us: f64,
    pub percentile: f64,
    pub count: u64,
}

/// The complete result of one run: what `--output PREFIX` writes to `PREFIX.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub schema: String,
    /// Always "run" (capacity searches, ramps and in-process runs have their own kinds).
    pub kind: String,
    pub tool: String,
    pub label: String,
    /// The command line, for reproducing the run.
    pub command: Vec<String>,
    pub machine: Machine,
    pub config: Config,
    pub totals: Totals,
    /// Open loop: from each request's planned send time (coordinated-omission corrected).
    /// Closed loop: from its actual send (same as service_time_us).
    pub latency_us: Percentiles,
    /// From each request's actual send to its reply.
    pub service_time_us: Percentiles,
    /// Open loop: actual send minus planned send.
    pub send_lag_us: Option<Percentiles>,
    pub errors: ErrorReport,
    pub client_cpu: ClientCpu,
    pub verify: Option<verify::Report>,
    /// False when errors or a verification failure make the figures untrustworthy.
    pub trustworthy: bool,
    pub warnings: Vec<String>,
    pub time_series: Vec<IntervalPoint>,
    /// The latency percentile distribution (the lines of the .hgrm file), for plotting.
    pub distribution: Vec<DistributionLine>,
}

/// Busy share above which a load-generator thread counts as CPU-bound.
pub const CPU_BOUND_PERCENT: f64 = 90.0;

impl RunReport {
    pub fn build(spec: &RunSpec, m: &Measured, label: &str, command: &[String]) -> RunReport {
        let open = spec.rate.is_some();
        let threads: Vec<ThreadCpu> = m
            .threads
            .iter()
            .map(|t: &ThreadUsage| ThreadCpu {
                thread: t.thread,
                cpu: t.cpu,
                busy_percent: round2(t.busy_percent),
            })
            .collect();
        let cpu_bound = threads.iter().any(|t| t.busy_percent >= CPU_BOUND_PERCENT);
        let achieved_ratio = m.planned.map(|p| {
            if p == 0 {
                1.0
            } else {
                m.completed as f64 / p as f64
            }
        });
        let errors = error_report(&m.errors, &m.first_errors);
        let verify_ok = m.verify.as_ref().is_none_or(|v| v.ok());
        let mut warnings = Vec::new();
        if cpu_bound {
            warnings.push(format!(
                "a load-generator thread was busy {:.0}% of the time: the tool itself may have \
                 been the bottleneck (spread the load over more --threads on free CPUs)",
                threads.iter().map(|t| t.busy_percent).fold(0.0, f64::max)
            ));
        }
        if let Some(ratio) = achieved_ratio
            && ratio < 0.95
        {
            warnings.push(format!(
                "the planned rate was not kept: {:.1}% of the {} planned requests were answered \
                 ({} never sent)",
                ratio * 100.0,
                m.planned.unwrap_or(0),
                m.unsent
            ));
        }
        if open && m.held_by_pipeline > 0 {
            warnings.push(format!(
                "{} times a due request waited because --pipeline {} requests were already in \
                 flight on its connection: replies came back slower than planned (the wait is \
                 in the latency)",
                m.held_by_pipeline, spec.pipeline
            ));
        }
        if open && !m.send_lag.is_empty() {
            let p99 = m.send_lag.value_at_quantile(0.99);
            if p99 > 1_000_000 {
                warnings.push(format!(
                    "requests were sent up to {} (p99) after their planned time{}",
                    format_ns(p99),
                    if cpu_bound {
                        ": the load generator could not keep up"
                    } else {
                        ""
                    }
                ));
            }
        }
        if errors.total > 0 {
            warnings.push(format!(
                "{} errors: the figures do not describe a healthy run",
                errors.total
            ));
        }
        if !verify_ok {
            warnings.push("verification FAILED: numbers were repeated or out of order".into());
        }
        RunReport {
            schema: SCHEMA.into(),
            kind: "run".into(),
            tool: format!("seqd loadgen {}", env!("CARGO_PKG_VERSION")),
            label: label.to_string(),
            command: command.to_vec(),
            machine: Machine::probe(m.started_at),
            config: Config {
                target: format!("{:?}", spec.protocol.kind).to_lowercase(),
                address: spec.addr.to_string(),
                sequence: None,
                batch: spec.protocol.batch,
                mode: if open { "open" } else { "closed" }.into(),
                connections: spec.connections,
                pipeline: spec.pipeline,
                threads: spec.threads.clamp(1, spec.connections.max(1)),
                // The CPUs actually used (thread t runs on cpus[t % len]).
                cpus: spec
                    .cpus
                    .iter()
                    .take(spec.threads.clamp(1, spec.connections.max(1)))
                    .copied()
                    .collect(),
                rate: spec.rate,
                duration_s: spec.duration.map(|d| d.as_secs_f64()),
                requests: spec.requests,
                warmup_s: spec.warmup.as_secs_f64(),
                send_granularity_us: spec.rate.map(|_| spec.send_granularity.as_secs_f64() * 1e6),
                verify: spec.verify,
            },
            totals: Totals {
                duration_s: round6(m.duration_s),
                requests: m.completed,
                numbers: m.numbers,
                throughput_rps: round2(m.throughput_rps()),
                numbers_per_s: round2(if m.duration_s > 0.0 {
                    m.numbers as f64 / m.duration_s
                } else {
                    0.0
                }),
                sent: m.sent,
                planned: m.planned,
                achieved_ratio: achieved_ratio.map(round6),
                unsent: m.unsent,
                held_by_pipeline: m.held_by_pipeline,
            },
            latency_us: Percentiles::of(&m.latency),
            service_time_us: Percentiles::of(&m.service),
            send_lag_us: open.then(|| Percentiles::of(&m.send_lag)),
            trustworthy: errors.total == 0 && verify_ok,
            errors,
            client_cpu: ClientCpu {
                process_percent: round2(m.process_cpu_percent),
                threads,
                cpu_bound,
            },
            verify: m.verify.clone(),
            warnings,
            time_series: m.intervals.clone(),
            distribution: hgrm::distribution(&m.latency, hgrm::TICKS_PER_HALF_DISTANCE)
                .iter()
                .map(|p| DistributionLine {
                    value_us: p.value as f64 / 1e3,
                    percentile: p.quantile * 100.0,
                    count: p.count,
                })
                .collect(),
        }
    }

    /// The human summary printed after a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let t = &self.totals;
        let _ = writeln!(s, "{}", self.label);
        let mode = match c.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            s,
            "  {} connections x pipeline {} on {} thread(s){}, {mode}, batch {}",
            c.connections,
            c.pipeline,
            c.threads,
            if c.cpus.is_empty() {
                String::new()
            } else {
                format!(" (CPUs {:?})", c.cpus)
            },
            c.batch
        );
        let _ = writeln!(
            s,
            "  throughput   {:>14} req/s   {:>14} numbers/s   ({} requests in {:.3} s)",
            group(t.throughput_rps),
            group(t.numbers_per_s),
            t.requests,
            t.duration_s
        );
        if let (Some(planned), Some(ratio)) = (t.planned, t.achieved_ratio) {
            let _ = writeln!(
                s,
                "  planned      {planned} requests, {:.1}% answered, {} never sent",
                ratio * 100.0,
                t.unsent
            );
        }
        let open = c.rate.is_some();
        let heading = if open {
            "  latency (us, from planned send; coordinated-omission corrected)"
        } else {
            "  latency (us, from send)"
        };
        let _ = writeln!(
            s,
            "{heading}\n               {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
        );
        let mut line = |name: &str, p: &Percentiles| {
            let _ = writeln!(
                s,
                "  {name:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max, p.mean
            );
        };
        line(if open { "latency" } else { "service" }, &self.latency_us);
        if open {
            line("service", &self.service_time_us);
            if let Some(lag) = &self.send_lag_us {
                line("send lag", lag);
            }
        }
        let e = &self.errors.counts;
        let _ = writeln!(
            s,
            "  errors       {} (connect failed {}, closed by server {}, malformed reply {}, \
             server error {}, lost in flight {})",
            self.errors.total,
            e.connect_failed,
            e.closed_by_server,
            e.malformed_reply,
            e.server_error,
            e.lost
        );
        if e.redirects + e.reconnects > 0 {
            let _ = writeln!(
                s,
                "  leader       followed: {} requests redirected, {} reconnects",
                e.redirects, e.reconnects
            );
        }
        for first in &self.errors.first {
            let _ = writeln!(s, "    {first}");
        }
        let threads: Vec<String> = self
            .client_cpu
            .threads
            .iter()
            .map(|t| format!("{:.0}%", t.busy_percent))
            .collect();
        let _ = writeln!(
            s,
            "  client CPU   {:.0}% of one core (threads busy: {})",
            self.client_cpu.process_percent,
            threads.join(", ")
        );
        if let Some(v) = &self.verify {
            let _ = writeln!(
                s,
                "  verify       {}: {} numbers on {} connections, {} duplicates, {} out of order",
                if v.ok() { "OK" } else { "FAILED" },
                v.numbers,
                v.streams,
                v.duplicates,
                v.non_increasing
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  WARNING: {w}");
        }
        s
    }
}

fn error_report(e: &Errors, first: &[String]) -> ErrorReport {
    ErrorReport {
        counts: *e,
        total: e.total(),
        first: first.to_vec(),
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// `1234567.8` as `1,234,568`.
pub fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The files `--output PREFIX` writes.
pub struct OutputFiles {
    pub json: PathBuf,
    pub hgrm: PathBuf,
    pub service_hgrm: Option<PathBuf>,
    pub hlog: PathBuf,
}

/// `PREFIX` + `ext` (`results/seqd` + `.json`).
pub fn with_extension(prefix: &Path, ext: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(ext);
    PathBuf::from(name)
}

/// Writes `bytes` to `path`, creating its directory.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `value` as pretty JSON to `PREFIX.json` and returns the path.
pub fn write_json<T: Serialize>(prefix: &Path, value: &T) -> Result<PathBuf> {
    let path = with_extension(prefix, ".json");
    let json = serde_json::to_vec_pretty(value).context("cannot encode the JSON result")?;
    write_file(&path, &json)?;
    Ok(path)
}

/// Writes `PREFIX.json`, `PREFIX.hgrm` (latency, in milliseconds like wrk2's), `PREFIX.hlog`
/// and, in an open loop, `PREFIX.service.hgrm` (service time).
pub fn write_files(prefix: &Path, report: &RunReport, m: &Measured) -> Result<OutputFiles> {
    let files = OutputFiles {
        json: write_json(prefix, report)?,
        hgrm: with_extension(prefix, ".hgrm"),
        service_hgrm: report
            .config
            .rate
            .is_some()
            .then(|| with_extension(prefix, ".service.hgrm")),
        hlog: with_extension(prefix, ".hlog"),
    };
    write_file(
        &files.hgrm,
        hgrm::distribution_text(&m.latency, 1e6).as_bytes(),
    )?;
    if let Some(path) = &files.service_hgrm {
        write_file(path, hgrm::distribution_text(&m.service, 1e6).as_bytes())?;
    }
    write_file(&files.hlog, &m.hlog)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::IntervalPoint;
    use crate::target::{Kind, Protocol};
    use crate::worker::new_histogram;
    use std::time::Duration;

    /// A run report with every optional part present (open loop, verification).
    fn full_report() -> RunReport {
        let spec = RunSpec {
            addr: "127.0.0.1:10001".parse().unwrap(),
            cluster: Vec::new(),
            protocol: Protocol::new(Kind::Binary, 1, None, 0).unwrap(),
            connections: 2,
            pipeline: 4,
            threads: 1,
            cpus: vec![1],
            rate: Some(1000.0),
            duration: Some(Duration::from_secs(1)),
            requests: None,
            warmup: Duration::ZERO,
            drain_timeout: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            tls: None,
            verify: true,
            send_granularity: Duration::from_micros(20),
            start_at: None,
        };
        let mut latency = new_histogram();
        for v in [10_000, 20_000, 30_000] {
            latency.record(v).unwrap();
        }
        let mut log = verify::StreamLog::default();
        log.record(1, 3);
        let streams = vec![log];
        let m = Measured {
            latency: latency.clone(),
            service: latency.clone(),
            send_lag: latency,
            intervals: vec![IntervalPoint {
                t_s: 0.0,
                duration_s: 1.0,
                requests: 3,
                numbers: 3,
                errors: 0,
                throughput_rps: 3.0,
                p50_us: 20.0,
                p99_us: 30.0,
                p99_9_us: 30.0,
                max_us: 30.0,
                client_cpu_percent: 1.0,
            }],
            errors: Errors::default(),
            first_errors: vec![],
            completed: 3,
            numbers: 3,
            sent: 3,
            planned: Some(3),
            unsent: 0,
            held_by_pipeline: 0,
            duration_s: 1.0,
            threads: vec![ThreadUsage {
                thread: 0,
                cpu: Some(1),
                busy_percent: 5.0,
            }],
            process_cpu_percent: 5.0,
            verify: Some(verify::check(&streams)),
            streams,
            hlog: Vec::new(),
            started_at: std::time::SystemTime::UNIX_EPOCH,
        };
        RunReport::build(&spec, &m, "test", &["loadgen".into()])
    }

    /// Every key path of a JSON value, arrays of objects written `name[].field`.
    fn paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    paths(v, &path, out);
                }
            }
            serde_json::Value::Array(items) if items.first().is_some_and(|i| i.is_object()) => {
                paths(&items[0], &format!("{prefix}[]"), out);
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn json_schema_is_the_documented_one() {
        let report = full_report();
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["schema"], SCHEMA);
        assert_eq!(value["kind"], "run");
        let mut found = Vec::new();
        paths(&value, "", &mut found);
        let doc = include_str!("../SCHEMA.md");
        for path in &found {
            // Percentile groups are documented once as `name.*` plus each field of latency_us.
            let field = path.rsplit('.').next().unwrap_or(path);
            let grouped = ["service_time_us.", "send_lag_us."]
                .iter()
                .any(|g| path.starts_with(g) && doc.contains(&format!("`latency_us.{field}`")));
            assert!(
                grouped || doc.contains(&format!("`{path}`")),
                "{path} is in the JSON but not documented in loadgen/SCHEMA.md"
            );
        }
        // The paths scripts rely on, by name.
        for path in [
            "totals.throughput_rps",
            "latency_us.p99",
            "latency_us.p99_9",
            "service_time_us.p99",
            "send_lag_us.p99",
            "errors.total",
            "client_cpu.cpu_bound",
            "verify.duplicates",
            "time_series[].throughput_rps",
            "distribution[].value_us",
            "machine.cpu_model",
            "config.mode",
        ] {
            assert!(found.iter().any(|p| p == path), "{path} missing");
        }
        // And the result reads back unchanged (what `loadgen plot` does).
        let back: RunReport = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn summary_names_everything_a_reader_needs() {
        let text = full_report().summary();
        for part in [
            "open loop at 1000 req/s",
            "coordinated-omission corrected",
            "service",
            "send lag",
            "p99.99",
            "errors       0",
            "client CPU",
            "verify       OK",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
    }

    #[test]
    fn numbers_are_grouped_for_reading() {
        assert_eq!(group(1234567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(0.0), "0");
    }
}
