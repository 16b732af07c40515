//! In-process allocation: the cost of handing out numbers without the network.
//! Seed 001 claims ~10 M/s for its AtomicLong; the goals here are ≥ 100 M/s on one thread and
//! ≥ 20 M/s combined for two threads contending on one sequence.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seqd::sequence::{END_OF_SPACE, IssueDeadline, Sequence, Writers};

fn sequence(writers: Writers) -> Sequence {
    let mut sequence = Sequence::new(0, "bench", 1, END_OF_SPACE);
    sequence.set_writers(writers);
    sequence
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate/one_thread");
    group.throughput(Throughput::Elements(1));
    // One writer: seqd with one event loop (a load and a store per reservation).
    let seq = sequence(Writers::One);
    group.bench_function("getseq", |b| b.iter(|| black_box(seq.reserve(1))));
    // Cluster mode: the same, plus the leadership deadline check (a coarse clock read).
    let mut clustered = sequence(Writers::One);
    let deadline = Arc::new(IssueDeadline::new());
    deadline.extend_to(u64::MAX - 1);
    clustered.set_deadline(deadline);
    group.bench_function("getseq_cluster", |b| {
        b.iter(|| black_box(clustered.reserve(1)))
    });
    // Several event loops: a compare-and-swap per reservation, even when uncontended.
    let shared = sequence(Writers::Many);
    group.bench_function("getseq_shared", |b| b.iter(|| black_box(shared.reserve(1))));
    // The floor for any allocator that hands out numbers shared across threads: one atomic
    // read-modify-write. Its cost varies several-fold between machines, so `getseq_shared` is
    // judged against it, measured in the same run.
    let counter = AtomicU64::new(1);
    group.bench_function("bare_fetch_add", |b| {
        b.iter(|| black_box(counter.fetch_add(1, Ordering::AcqRel)))
    });
    for batch in [16u64, 100, 1000] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| black_box(seq.reserve(batch)))
        });
    }
    group.finish();
}

/// Two threads hammering one sequence; throughput counts both threads' numbers.
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate/two_threads_one_sequence");
    for batch in [1u64, 100] {
        group.throughput(Throughput::Elements(2 * batch));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| run_contended(iters, batch));
        });
    }
    group.finish();
}

/// Runs `iters` reservations on each of two threads at once and returns the wall time.
fn run_contended(iters: u64, batch: u64) -> Duration {
    let seq = Arc::new(sequence(Writers::Many));
    let start = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (seq, start) = (seq.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..iters {
                    black_box(seq.reserve(batch)).ok();
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for worker in workers {
        worker.join().ok();
    }
    began.elapsed()
}

criterion_group!(benches, single_thread, contended);
criterion_main!(benches);
