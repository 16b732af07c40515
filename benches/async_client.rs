//! The Rust clients against a running seqd (bench/async-client.sh starts one and runs this
//! in rounds). One measurement per run, printed as one tab-separated line:
//!
//! ```text
//! async_client -- async    ADDR TASKS SECONDS  # one AsyncClient (1 connection), TASKS tasks
//! async_client -- shared   ADDR TASKS SECONDS  # one blocking Client behind a mutex, TASKS threads
//! async_client -- per-thread ADDR TASKS SECONDS # TASKS threads, a blocking Client each
//!     -> MODE  TASKS  numbers_per_s  p50_us  p99_us  connections
//! async_client -- idsource ADDR IDS            # IdSource::next_id on one thread, IDS ids
//!     -> idsource  ids_per_s  calls  waited  ranges
//! ```
//! Each task or thread takes one number per call (`GETSEQ`) and waits for it before the
//! next, timing every call.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqd::client::{AsyncClient, Client, IdSource, IdSourceOptions};

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let usage =
        "usage: async_client (async|shared|per-thread) ADDR TASKS SECONDS | idsource ADDR IDS";
    let Some(mode) = args.first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:10001".into());
    let number = |i: usize, default: u64| {
        args.get(i)
            .map(|a| {
                a.parse::<u64>().unwrap_or_else(|_| {
                    eprintln!("{a:?} is not a number; {usage}");
                    std::process::exit(2)
                })
            })
            .unwrap_or(default)
    };
    let result = match mode.as_str() {
        "async" | "shared" | "per-thread" => {
            let tasks = number(2, 64) as usize;
            let duration = Duration::from_secs(number(3, 3));
            let (latencies, elapsed) = match mode.as_str() {
                "async" => run_async(&addr, tasks, duration),
                "shared" => run_shared(&addr, tasks, duration),
                _ => run_per_thread(&addr, tasks, duration),
            };
            report_numbers(mode, tasks, latencies, elapsed);
            Ok(())
        }
        "idsource" => run_id_source(&addr, number(2, 500_000_000)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("async_client {mode}: {e}");
        std::process::exit(1);
    }
}

fn report_numbers(mode: &str, tasks: usize, mut latencies: Vec<u32>, elapsed: Duration) {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |&ns| f64::from(ns) / 1000.0)
    };
    let connections = match mode {
        "per-thread" => tasks,
        _ => 1,
    };
    println!(
        "{mode}\t{tasks}\t{:.0}\t{:.1}\t{:.1}\t{connections}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99)
    );
}

fn nanos(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_nanos()).unwrap_or(u32::MAX)
}

fn run_async(addr: &str, tasks: usize, duration: Duration) -> (Vec<u32>, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    runtime.block_on(async {
        let client = AsyncClient::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(1 << 20);
                    while started.elapsed() < duration {
                        let sent = Instant::now();
                        let n = client.get().await.unwrap_or_else(|e| panic!("get: {e}"));
                        latencies.push(nanos(sent));
                        black_box(n);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap_or_default());
        }
        (all, started.elapsed())
    })
}

fn run_threads(
    tasks: usize,
    duration: Duration,
    mut call: impl FnMut() -> Box<dyn FnMut() -> u64 + Send>,
) -> (Vec<u32>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..tasks)
        .map(|_| {
            let mut get = call();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(1 << 18);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    black_box(get());
                    latencies.push(nanos(sent));
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().unwrap_or_default());
    }
    (all, started.elapsed())
}

fn blocking_client(addr: &str) -> Client {
    Client::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

fn run_shared(addr: &str, tasks: usize, duration: Duration) -> (Vec<u32>, Duration) {
    let client = Arc::new(Mutex::new(blocking_client(addr)));
    run_threads(tasks, duration, || {
        let client = client.clone();
        Box::new(move || {
            let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
            client.get().unwrap_or_else(|e| panic!("get: {e}"))
        })
    })
}

fn run_per_thread(addr: &str, tasks: usize, duration: Duration) -> (Vec<u32>, Duration) {
    run_threads(tasks, duration, || {
        let mut client = blocking_client(addr);
        Box::new(move || client.get().unwrap_or_else(|e| panic!("get: {e}")))
    })
}

fn run_id_source(addr: &str, ids: u64) -> Result<(), seqd::client::ClientError> {
    let mut client = Client::connect_any(&[addr])?;
    let mut ids_source = IdSource::new(
        move |count| client.get_batch(count),
        IdSourceOptions::default(),
    );
    // The first range, so that the measurement starts with ids in hand as a warm source does.
    black_box(ids_source.next_id()?);
    let started = Instant::now();
    let mut sum = 0u64;
    for _ in 0..ids {
        sum = sum.wrapping_add(ids_source.next_id()?);
    }
    let elapsed = started.elapsed();
    black_box(sum);
    let stats = ids_source.stats();
    println!(
        "idsource\t{:.0}\t{}\t{}\t{}",
        ids as f64 / elapsed.as_secs_f64(),
        stats.handed_out - 1,
        stats.waited.saturating_sub(1),
        stats.ranges
    );
    Ok(())
}
