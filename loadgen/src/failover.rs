//! `loadgen failover`: blocking clients that follow a seqd cluster's leader
//! ([`seqd::client::LeaderClient`]) ask for numbers until stopped, and report every pause in
//! the replies (to measure the outage of each failover) and whether any number repeated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

pub struct FailoverSpec {
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub duration: Duration,
    /// Pauses in the replies at least this long are reported.
    pub min_gap: Duration,
}

/// A time without any reply from the cluster (all clients together).
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    /// When the last reply before it arrived (Unix milliseconds).
    pub start_unix_ms: u64,
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub seconds: f64,
    pub numbers: u64,
    /// Numbers received more than once (over all clients): must be 0.
    pub duplicates: u64,
    /// Numbers not larger than the same client's previous one: must be 0.
    pub out_of_order: u64,
    pub redirects: u64,
    pub reconnects: u64,
    /// Requests that failed after the client's retry time (none expected).
    pub failed: u64,
    pub gaps: Vec<Gap>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the clients until `spec.duration` passes or `stop` is set.
pub fn run(spec: &FailoverSpec, stop: Arc<AtomicBool>) -> Result<FailoverReport> {
    let started = Instant::now();
    let wall_start = SystemTime::now();
    // Nanoseconds since `started` of the latest reply, any client.
    let last_reply = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(Mutex::new(Vec::new()));
    let min_gap = spec.min_gap.as_nanos() as u64;
    let mut workers = Vec::new();
    for _ in 0..spec.clients {
        let mut client = seqd::client::Client::connect_any(&spec.endpoints)
            .with_context(|| format!("no node of {} answers", spec.endpoints.join(",")))?;
        let (stop, last_reply, gaps) = (stop.clone(), last_reply.clone(), gaps.clone());
        let duration = spec.duration;
        workers.push(std::thread::spawn(move || {
            let mut numbers = Vec::new();
            let mut out_of_order = 0u64;
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
                match client.get() {
                    Ok(number) => {
                        let now = started.elapsed().as_nanos() as u64;
                        let previous = last_reply.fetch_max(now, Ordering::AcqRel);
                        if now > previous && now - previous >= min_gap {
                            let gap = Gap {
                                start_unix_ms: unix_ms(wall_start + Duration::from_nanos(previous)),
                                ms: (now - previous) as f64 / 1e6,
                            };
                            gaps.lock().unwrap_or_else(|p| p.into_inner()).push(gap);
                        }
                        if numbers.last().is_some_and(|&last| number <= last) {
                            out_of_order += 1;
                        }
                        numbers.push(number);
                    }
                    Err(_) => failed += 1,
                }
            }
            (
                numbers,
                out_of_order,
                failed,
                client.redirects(),
                client.reconnects(),
            )
        }));
    }
    let mut all = Vec::new();
    let mut report = FailoverReport {
        endpoints: spec.endpoints.clone(),
        clients: spec.clients,
        seconds: 0.0,
        numbers: 0,
        duplicates: 0,
        out_of_order: 0,
        redirects: 0,
        reconnects: 0,
        failed: 0,
        gaps: Vec::new(),
    };
    for worker in workers {
        let (numbers, out_of_order, failed, redirects, reconnects) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        all.extend(numbers);
        report.out_of_order += out_of_order;
        report.failed += failed;
        report.redirects += redirects;
        report.reconnects += reconnects;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.numbers = all.len() as u64;
    all.sort_unstable();
    report.duplicates = all.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    let mut gaps = std::mem::take(&mut *gaps.lock().unwrap_or_else(|p| p.into_inner()));
    gaps.sort_by_key(|g| g.start_unix_ms);
    report.gaps = gaps;
    Ok(report)
}
