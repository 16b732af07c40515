//! Runs one measurement: starts the worker threads, collects their per-second reports,
//! merges them into totals, a time series and an `.hlog` interval log.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::{Deserialize, Serialize};

use crate::clock::{now_ns, process_cpu_ns};
use crate::schedule::{Schedule, connections_of_thread};
use crate::target::Protocol;
use crate::verify::{self, StreamLog};
use crate::worker::{self, Errors, IntervalReport, Plan, WorkerResult, new_histogram};

const SECOND: u64 = 1_000_000_000;

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub addr: SocketAddr,
    /// Every node of a seqd cluster (`--addr a,b,c`, `addr` first): the connections follow
    /// the leader among them. Empty for one server.
    pub cluster: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    /// CPUs to pin threads to (round-robin); empty: do not pin.
    pub cpus: Vec<usize>,
    /// Open loop at this total rate when set.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub drain_timeout: Duration,
    pub reply_timeout: Duration,
    pub connect_timeout: Duration,
    /// `--tls`: connect with TLS.
    pub tls: Option<crate::tls::TlsTarget>,
    pub verify: bool,
    /// Open loop: the shortest sleep between sends; requests due meanwhile go out together.
    pub send_granularity: Duration,
    /// Start (the warm-up) at this wall-clock time, once connected, so that several
    /// processes' runs line up.
    pub start_at: Option<SystemTime>,
}

/// One second (or the last, shorter interval) of the measured part of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalPoint {
    /// Seconds since the end of the warm-up.
    pub t_s: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub numbers: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    /// CPU used by the load generator's threads, in percent of one core.
    pub client_cpu_percent: f64,
}

/// CPU use of one load-generator thread over the measured part of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadUsage {
    pub thread: usize,
    /// The CPU it was pinned to.
    pub cpu: Option<usize>,
    /// Percent of one core (100 = always busy).
    pub busy_percent: f64,
}

/// The raw results of a run.
pub struct Measured {
    /// From the planned send time in an open loop; from the actual send in a closed loop.
    pub latency: Histogram<u64>,
    /// From the actual send.
    pub service: Histogram<u64>,
    /// Open loop: actual send minus planned send.
    pub send_lag: Histogram<u64>,
    pub intervals: Vec<IntervalPoint>,
    pub errors: Errors,
    pub first_errors: Vec<String>,
    pub completed: u64,
    pub numbers: u64,
    pub sent: u64,
    /// Open loop: requests planned for the measured part.
    pub planned: Option<u64>,
    pub unsent: u64,
    pub held_by_pipeline: u64,
    /// Measured wall time: end of warm-up to the last reply (or the drain timeout).
    pub duration_s: f64,
    pub threads: Vec<ThreadUsage>,
    pub process_cpu_percent: f64,
    pub verify: Option<verify::Report>,
    pub streams: Vec<StreamLog>,
    /// The `.hlog` interval log (V2 deflate-compressed histograms).
    pub hlog: Vec<u8>,
    pub started_at: SystemTime,
}

impl Measured {
    pub fn throughput_rps(&self) -> f64 {
        rate(self.completed, self.duration_s)
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Parses `--cpus`: `1`, `0,2`, `2-5`, or a mix.
pub fn parse_cpus(text: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim().parse::<usize>().with_context(|| {
                format!("--cpus: {s:?} is not a CPU number (e.g. --cpus 1 or 0-3)")
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("--cpus: range {part:?} runs backwards");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(parse(part)?),
        }
    }
    if cpus.is_empty() {
        bail!("--cpus is empty: give CPU numbers such as 1 or 0-3");
    }
    Ok(cpus)
}

/// Checks that the server (one of a cluster's nodes, at least) answers a TCP connect at all,
/// so a wrong port fails in one clear line instead of as N connection errors.
pub fn preflight(addrs: &[SocketAddr], timeout: Duration) -> Result<()> {
    let mut failure = None;
    for &addr in addrs {
        match preflight_one(addr, timeout) {
            Ok(()) => return Ok(()),
            Err(e) => failure = Some(e),
        }
    }
    Err(failure.unwrap_or_else(|| anyhow!("no --addr given")))
}

fn preflight_one(addr: SocketAddr, timeout: Duration) -> Result<()> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing is listening there: start the server, or fix --addr"
                }
                std::io::ErrorKind::TimedOut => "no answer: check the address and any firewall",
                _ => "check the address",
            };
            anyhow!("cannot connect to {addr}: {e} ({hint})")
        })
}

/// Runs one measurement.
pub fn execute(spec: &RunSpec, stop: Arc<AtomicBool>) -> Result<Measured> {
    let threads = spec.threads.clamp(1, spec.connections.max(1));
    let schedule = match spec.rate {
        Some(rate) => Some(Schedule::new(rate, spec.connections)?),
        None => None,
    };
    let plan = Arc::new(Plan {
        addrs: if spec.cluster.len() > 1 {
            spec.cluster.clone()
        } else {
            vec![spec.addr]
        },
        protocol: spec.protocol.clone(),
        connections: spec.connections,
        pipeline: spec.pipeline.max(1),
        schedule,
        requests: spec.requests,
        warmup_ns: spec.warmup.as_nanos() as u64,
        granularity_ns: spec.send_granularity.as_nanos() as u64,
        duration_ns: spec.duration.map(|d| d.as_nanos() as u64),
        drain_ns: spec.drain_timeout.as_nanos() as u64,
        reply_timeout_ns: spec.reply_timeout.as_nanos() as u64,
        connect_timeout: spec.connect_timeout,
        tls: spec.tls.clone(),
        verify: spec.verify,
        start_ns: AtomicU64::new(0),
        ready: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        stop,
    });
    let (tx, rx) = mpsc::channel::<IntervalReport>();
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let plan = plan.clone();
        let tx = tx.clone();
        let core = (!spec.cpus.is_empty()).then(|| spec.cpus[thread % spec.cpus.len()]);
        let connections = connections_of_thread(thread, threads, spec.connections);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                {
                    eprintln!("loadgen: warning: could not pin thread {thread} to CPU {core}");
                }
                worker::run(&plan, thread, core, connections, tx)
            })
            .context("cannot start a load-generator thread")?;
        handles.push(handle);
    }
    drop(tx);

    plan.ready.wait();
    if let Some(at) = spec.start_at {
        match at.duration_since(SystemTime::now()) {
            Ok(wait) => std::thread::sleep(wait),
            Err(late) => eprintln!(
                "loadgen: warning: --start-at passed {:.3} s before the connections were \
                 open; starting now, out of step with the other processes",
                late.duration().as_secs_f64()
            ),
        }
    }
    // Start a little in the future so every thread sees the same start.
    let start_ns = now_ns() + 1_000_000;
    plan.start_ns.store(start_ns, Ordering::Release);
    let started_at = SystemTime::now() + Duration::from_millis(1);
    plan.go.wait();
    let measure_start_ns = start_ns + plan.warmup_ns;
    let process_cpu_start = process_cpu_ns();

    let measured_at = started_at + spec.warmup;
    let mut collector = Collector::new(threads, measure_start_ns);
    let mut hlog = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("[Logged with seqd loadgen]")
            .add_comment("[Histogram log format version 1.3]")
            .add_comment("[Values in nanoseconds; untagged: latency, tag=service: service time]")
            .with_start_time(measured_at)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut hlog, &mut serializer)
            .context("cannot start the .hlog interval log")?;
        let mut write = |merged: &MergedInterval, open_loop: bool| -> Result<()> {
            if merged.index < 0 {
                return Ok(()); // the warm-up is not part of the measurement
            }
            let start = Duration::from_nanos(merged.start_ns.saturating_sub(measure_start_ns));
            let length = Duration::from_nanos(merged.end_ns.saturating_sub(merged.start_ns));
            log.write_histogram(&merged.latency, start, length, None)
                .map_err(|e| anyhow!("cannot write the .hlog interval log: {e:?}"))?;
            if open_loop {
                log.write_histogram(&merged.service, start, length, Tag::new("service"))
                    .map_err(|e| anyhow!("cannot write the .hlog interval log: {e:?}"))?;
            }
            Ok(())
        };
        let open_loop = spec.rate.is_some();
        for report in rx {
            if let Some(merged) = collector.add(report) {
                write(&merged, open_loop)?;
                collector.finish(merged);
            }
        }
        for merged in collector.leftovers() {
            write(&merged, open_loop)?;
            collector.finish(merged);
        }
    }
    let process_cpu = process_cpu_ns().saturating_sub(process_cpu_start);

    let mut results: Vec<WorkerResult> = Vec::with_capacity(threads);
    for handle in handles {
        match handle.join() {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => return Err(anyhow!("a load-generator thread failed: {e}")),
            Err(_) => return Err(anyhow!("a load-generator thread panicked")),
        }
    }

    let mut send_lag = new_histogram();
    let mut first_errors = collector.first_errors;
    let mut streams: Vec<(usize, StreamLog)> = Vec::new();
    let (mut sent, mut unsent, mut held) = (0, 0, 0);
    let mut finished_ns = measure_start_ns;
    let mut threads_usage = Vec::new();
    for r in results {
        let _ = send_lag.add(&r.send_lag);
        for e in r.first_errors {
            if first_errors.len() < 10 && !first_errors.contains(&e) {
                first_errors.push(e);
            }
        }
        streams.extend(r.streams);
        sent += r.sent;
        unsent += r.unsent;
        held += r.held_by_pipeline;
        finished_ns = finished_ns.max(r.finished_ns);
        threads_usage.push(ThreadUsage {
            thread: r.thread,
            cpu: r.core,
            busy_percent: percent(r.cpu_ns, r.wall_ns),
        });
    }
    let duration_ns = finished_ns.saturating_sub(measure_start_ns);
    let duration_s = duration_ns as f64 / 1e9;
    streams.sort_by_key(|(index, _)| *index);
    let streams: Vec<StreamLog> = streams.into_iter().map(|(_, log)| log).collect();
    let verify = spec.verify.then(|| verify::check(&streams));
    let planned = spec.rate.map(|r| {
        // Requests planned between the end of the warm-up and the end of the run.
        let s = Schedule::new(r, spec.connections);
        s.map(|s| {
            let end = spec.duration.map_or(duration_ns, |d| {
                (d.as_nanos() as u64).min(duration_ns.max(1))
            });
            s.planned_before(plan.warmup_ns + end) - s.planned_before(plan.warmup_ns)
        })
        .unwrap_or(0)
    });
    Ok(Measured {
        latency: collector.latency,
        service: collector.service,
        send_lag,
        intervals: collector.points,
        errors: collector.errors,
        first_errors,
        completed: collector.completed,
        numbers: collector.numbers,
        sent,
        planned,
        unsent,
        held_by_pipeline: held,
        duration_s,
        threads: threads_usage,
        process_cpu_percent: percent(process_cpu, duration_ns + plan.warmup_ns),
        verify,
        streams,
        hlog,
        started_at: measured_at,
    })
}

fn percent(part_ns: u64, whole_ns: u64) -> f64 {
    if whole_ns == 0 {
        0.0
    } else {
        100.0 * part_ns as f64 / whole_ns as f64
    }
}

struct MergedInterval {
    index: i64,
    reported: usize,
    start_ns: u64,
    end_ns: u64,
    latency: Histogram<u64>,
    service: Histogram<u64>,
    completed: u64,
    numbers: u64,
    errors: Errors,
    cpu_ns: u64,
}

/// Merges the threads' reports of each interval and accumulates the totals.
struct Collector {
    threads: usize,
    measure_start_ns: u64,
    pending: HashMap<i64, MergedInterval>,
    latency: Histogram<u64>,
    service: Histogram<u64>,
    points: Vec<IntervalPoint>,
    errors: Errors,
    first_errors: Vec<String>,
    completed: u64,
    numbers: u64,
}

impl Collector {
    fn new(threads: usize, measure_start_ns: u64) -> Collector {
        Collector {
            threads,
            measure_start_ns,
            pending: HashMap::new(),
            latency: new_histogram(),
            service: new_histogram(),
            points: Vec::new(),
            errors: Errors::default(),
            first_errors: Vec::new(),
            completed: 0,
            numbers: 0,
        }
    }

    /// Adds one thread's report; returns the merged interval once every thread reported it.
    fn add(&mut self, r: IntervalReport) -> Option<MergedInterval> {
        let merged = self
            .pending
            .entry(r.index)
            .or_insert_with(|| MergedInterval {
                index: r.index,
                reported: 0,
                start_ns: r.start_ns,
                end_ns: r.end_ns,
                latency: new_histogram(),
                service: new_histogram(),
                completed: 0,
                numbers: 0,
                errors: Errors::default(),
                cpu_ns: 0,
            });
        merged.reported += 1;
        merged.start_ns = merged.start_ns.min(r.start_ns);
        merged.end_ns = merged.end_ns.max(r.end_ns);
        // Same bounds on both sides: adding cannot fail.
        let _ = merged.latency.add(&r.latency);
        let _ = merged.service.add(&r.service);
        merged.completed += r.completed;
        merged.numbers += r.numbers;
        merged.errors.add(&r.errors);
        merged.cpu_ns += r.cpu_ns;
        if merged.reported == self.threads {
            self.pending.remove(&r.index)
        } else {
            None
        }
    }

    /// Intervals some thread never reported (it ended early), oldest first.
    fn leftovers(&mut self) -> Vec<MergedInterval> {
        let mut rest: Vec<MergedInterval> = self.pending.drain().map(|(_, m)| m).collect();
        rest.sort_by_key(|m| m.index);
        rest
    }

    /// Folds a merged interval into the totals (the warm-up only counts its errors).
    fn finish(&mut self, m: MergedInterval) {
        self.errors.add(&m.errors);
        if m.index < 0 {
            return;
        }
        let _ = self.latency.add(&m.latency);
        let _ = self.service.add(&m.service);
        self.completed += m.completed;
        self.numbers += m.numbers;
        if m.completed == 0 && m.errors.total() == 0 && m.end_ns - m.start_ns < SECOND / 10 {
            return; // the idle moment spent draining after the last second: not a data point
        }
        let duration_ns = m.end_ns.saturating_sub(m.start_ns);
        let seconds = duration_ns as f64 / 1e9;
        let us = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        self.points.push(IntervalPoint {
            t_s: m.start_ns.saturating_sub(self.measure_start_ns) as f64 / 1e9,
            duration_s: seconds,
            requests: m.completed,
            numbers: m.numbers,
            errors: m.errors.total(),
            throughput_rps: rate(m.completed, seconds),
            p50_us: us(&m.latency, 0.5),
            p99_us: us(&m.latency, 0.99),
            p99_9_us: us(&m.latency, 0.999),
            max_us: if m.latency.is_empty() {
                0.0
            } else {
                m.latency.max() as f64 / 1e3
            },
            client_cpu_percent: percent(m.cpu_ns, duration_ns),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("1").unwrap(), vec![1]);
        assert_eq!(parse_cpus("0,2").unwrap(), vec![0, 2]);
        assert_eq!(parse_cpus("1-3,6").unwrap(), vec![1, 2, 3, 6]);
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
