//! In-process mode: the sequence allocator (`seqd::sequence::Sequence::reserve`) driven by
//! pinned threads with no network, the figure seed 001 quotes as "10 M/s in-process". One
//! thread reserves as seqd's single event loop does (one writer: a load and a store); several
//! threads, as several event loops do (compare-and-swap).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Duration;

use anyhow::{Result, bail};
use seqd::sequence::{DEFAULT_SEQUENCE, Registry, Writers};
use serde::{Deserialize, Serialize};

use crate::clock::{now_ns, thread_cpu_ns};
use crate::report::{Machine, group};

/// Reservations between two looks at the clock.
const CHUNK: u64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadOps {
    pub thread: usize,
    pub cpu: Option<usize>,
    pub reservations: u64,
    pub busy_percent: f64,
}

/// What `loadgen in-process --output PREFIX` writes to `PREFIX.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InProcessReport {
    pub schema: String,
    /// Always "in-process".
    pub kind: String,
    pub label: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub threads: usize,
    pub batch: u64,
    pub cpus: Vec<usize>,
    pub duration_s: f64,
    /// `reserve` calls (GETSEQ, or GETSEQ_BATCH with batch > 1).
    pub reservations: u64,
    pub numbers: u64,
    pub reservations_per_s: f64,
    pub numbers_per_s: f64,
    /// Wall time per reservation on one thread.
    pub ns_per_reservation: f64,
    pub per_thread: Vec<ThreadOps>,
    /// Every number handed out was checked to form one contiguous, gap-free range.
    pub contiguous: bool,
}

pub struct Settings {
    pub threads: usize,
    pub batch: u64,
    pub duration: Duration,
    pub cpus: Vec<usize>,
}

pub fn run(s: &Settings, label: &str, command: &[String]) -> Result<InProcessReport> {
    if s.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let threads = s.threads.max(1);
    let registry = Registry::new(1, 1).with_writers(Writers::for_threads(threads));
    let Some(sequence) = registry.get(DEFAULT_SEQUENCE) else {
        bail!("the default sequence is missing from a new registry");
    };
    let barrier = Barrier::new(threads);
    let duration_ns = s.duration.as_nanos() as u64;
    let started_at = std::time::SystemTime::now();
    let results: Vec<Result<(u64, u64, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let core = (!s.cpus.is_empty()).then(|| s.cpus[t % s.cpus.len()]);
                scope.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    barrier.wait();
                    let cpu0 = thread_cpu_ns();
                    let start = now_ns();
                    let end = start + duration_ns;
                    let mut reservations = 0u64;
                    loop {
                        for _ in 0..CHUNK {
                            if sequence.reserve(black_box(s.batch)).is_err() {
                                bail!(
                                    "the sequence was exhausted after {reservations} reservations"
                                );
                            }
                        }
                        reservations += CHUNK;
                        let now = now_ns();
                        if now >= end {
                            return Ok((reservations, now - start, thread_cpu_ns() - cpu0));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
            })
            .collect()
    });
    let mut per_thread = Vec::new();
    let mut total = 0;
    let mut wall = 0u64;
    for (t, r) in results.into_iter().enumerate() {
        let (ops, wall_ns, cpu_ns) = r?;
        total += ops;
        wall = wall.max(wall_ns);
        per_thread.push(ThreadOps {
            thread: t,
            cpu: (!s.cpus.is_empty()).then(|| s.cpus[t % s.cpus.len()]),
            reservations: ops,
            busy_percent: (1000.0 * cpu_ns as f64 / wall_ns.max(1) as f64).round() / 10.0,
        });
    }
    let numbers = total * s.batch;
    // Every reservation came from one counter starting at 1: it now stands right after them.
    let contiguous = sequence.current() == 1 + numbers;
    let secs = wall as f64 / 1e9;
    Ok(InProcessReport {
        schema: crate::report::SCHEMA.into(),
        kind: "in-process".into(),
        label: label.into(),
        command: command.to_vec(),
        machine: Machine::probe(started_at),
        threads,
        batch: s.batch,
        cpus: s.cpus.iter().take(threads).copied().collect(),
        duration_s: secs,
        reservations: total,
        numbers,
        reservations_per_s: (total as f64 / secs).round(),
        numbers_per_s: (numbers as f64 / secs).round(),
        ns_per_reservation: wall as f64 * threads as f64 / total.max(1) as f64,
        per_thread,
        contiguous,
    })
}

impl InProcessReport {
    pub fn summary(&self) -> String {
        format!(
            "{}\n  in-process allocator, {} thread(s) ({}), batch {}\n  {:>16} reservations/s  \
             {:>16} numbers/s  ({:.2} ns per reservation per thread, {} reservations in {:.3} s)\n  \
             numbers contiguous and unique: {}\n",
            self.label,
            self.threads,
            if self.threads == 1 {
                "one writer: load and store, as seqd with one event loop"
            } else {
                "compare-and-swap, as seqd with several event loops"
            },
            self.batch,
            group(self.reservations_per_s),
            group(self.numbers_per_s),
            self.ns_per_reservation,
            self.reservations,
            self.duration_s,
            if self.contiguous { "yes" } else { "NO" }
        )
    }
}
