//! Crash-point injection (cargo feature `failpoints`): for every step of a state file write,
//! of a compaction's new journal and of a journal append, seqd is killed there (abort, as a
//! crash would) while clients take numbers and leases, then restarted on the same data
//! directory. After each crash:
//! - the directory reads back (with seqd's own reader, before the restart) as one state that
//!   was written whole — the last acknowledged one or the one being written, never a mix:
//!   its leases are those acknowledged to the client, plus at most the one whose reply was
//!   in flight, and its lease counter agrees with them (both change in one write);
//! - no number is issued twice: every number after the restart is above every number and
//!   lease received before the crash;
//! - every lease granted (and every one acknowledged) before the crash comes back the same:
//!   a retry with its ids gets its range, and its acknowledgement is `+OK` again.
//!
//! Run: `cargo test -p seqd --features failpoints --test crash_points`.

mod common;

use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, SeqdProcess, seqd_binary, temp_dir};
use seqd::client::Client;
use seqd::store::data_dir::DataDir;
use seqd::store::failpoint;

/// A journal this small is compacted every few writes, so a compaction's crash points are
/// reached under load too.
const JOURNAL_BYTES: &str = "2048";

/// What the clients received before the crash.
#[derive(Default)]
struct Received {
    /// Ranges from `GETSEQ_BATCH` and leases.
    numbers: Vec<Range<u64>>,
    /// Leases answered: (request id, range, acknowledged).
    leases: Vec<(String, Range<u64>, bool)>,
}

const CLIENT_ID: &str = "crash-client";
/// Small windows (a ceiling raise every ~1000 numbers) and room for every lease of one
/// client, from one address; the same before and after the crash.
const SERVER_ARGS: [&str; 3] = [
    "--max-crash-gap=1024",
    "--max-leases-per-client=100000",
    "--max-leases-per-peer=0",
];

/// Starts seqd with `SEQD_FAILPOINT=point@nth`, loads it until it crashes there, and returns
/// what the clients received.
fn crash_at(data: &std::path::Path, point: &str, nth: u32) -> Received {
    let mut child = Command::new("sh")
        .arg("-c")
        // No core dump per crash.
        .arg("ulimit -c 0 && exec \"$0\" \"$@\"")
        .arg(seqd_binary())
        .args(["--host=127.0.0.1", "--port=0", "--threads=2"])
        .arg(format!("--data-dir={}", data.display()))
        .args(SERVER_ARGS)
        .env("SEQD_FAILPOINT", format!("{point}@{nth}"))
        .env("SEQD_FAILPOINT_JOURNAL_BYTES", JOURNAL_BYTES)
        .env_remove("SEQD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seqd");
    let stderr = child.stderr.take().expect("piped");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("seqd listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let received = Arc::new(Mutex::new(Received::default()));
    let crashed = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    // A crash point in the first write is reached before seqd listens.
    let deadline = Instant::now() + PATIENCE;
    let listening = loop {
        match addr_rx.recv_timeout(Duration::from_millis(10)) {
            Ok(addr) => break Some(addr),
            Err(_) if child.try_wait().unwrap().is_some() || Instant::now() > deadline => {
                break None;
            }
            Err(_) => {}
        }
    };
    if let Some(addr) = listening {
        // Numbers: batches, so ceilings are raised (journal entries) all the time.
        load.push({
            let (received, crashed, addr) = (received.clone(), crashed.clone(), addr.clone());
            std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(&addr) else {
                    return;
                };
                while !crashed.load(Ordering::Acquire) {
                    match client.get_batch(100) {
                        Ok(range) => received.lock().unwrap().numbers.push(range),
                        Err(_) => return,
                    }
                }
            })
        });
        // Leases, one at a time, every other one acknowledged.
        load.push({
            let (received, crashed) = (received.clone(), crashed.clone());
            std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(&addr) else {
                    return;
                };
                for i in 0.. {
                    if crashed.load(Ordering::Acquire) {
                        return;
                    }
                    let request = format!("r{i}");
                    let Ok(range) = client.lease(0, 5, Some((CLIENT_ID, &request))) else {
                        return;
                    };
                    {
                        let mut received = received.lock().unwrap();
                        received.numbers.push(range.clone());
                        received.leases.push((request, range.clone(), false));
                    }
                    if i % 2 == 1 {
                        if client.ack(0, range).is_err() {
                            return;
                        }
                        received_last_acked(&received);
                    }
                }
            })
        });
    }
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "seqd did not reach crash point {point}@{nth}; log:\n{}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    crashed.store(true, Ordering::Release);
    for thread in load {
        thread.join().unwrap();
    }
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{point}@{nth}: {status}; log:\n{log}"
    );
    assert!(
        log.contains(&format!("crashing at {point}")),
        "{point}@{nth}; log:\n{log}"
    );
    Arc::try_unwrap(received)
        .ok()
        .expect("the load threads ended")
        .into_inner()
        .unwrap()
}

/// Marks the last lease received as acknowledged.
fn received_last_acked(received: &Mutex<Received>) {
    if let Some(last) = received.lock().unwrap().leases.last_mut() {
        last.2 = true;
    }
}

/// Crashes at `point@nth`, checks the directory, restarts and checks what clients see.
fn check(point: &str, nth: u32) {
    let dir = temp_dir();
    let received = crash_at(dir.path(), point, nth);
    assert!(
        !received.numbers.is_empty() || nth == 1,
        "{point}@{nth}: no load reached seqd before the crash"
    );

    // The state on disk, read as the next start will read it.
    let state = {
        let data = DataDir::open(dir.path()).expect("the data directory opens");
        data.read_state()
            .unwrap_or_else(|e| panic!("{point}@{nth}: the state does not read back: {e:#}"))
    };
    if let Some(state) = &state {
        let leases = &state.leases_and_streams.leases;
        let answered = received.leases.len();
        assert!(
            leases.len() == answered || leases.len() == answered + 1,
            "{point}@{nth}: {} leases on disk, {answered} answered: neither the state \
             acknowledged last nor the one being written",
            leases.len()
        );
        assert_eq!(
            state.leases_and_streams.lease_counters.granted,
            leases.len() as u64,
            "{point}@{nth}: the lease counter and the leases come from different writes"
        );
        for (request, range, _) in &received.leases {
            let on_disk = leases.iter().find(|l| l.request == *request);
            assert_eq!(
                on_disk.map(|l| l.first..l.first + l.count),
                Some(range.clone()),
                "{point}@{nth}: lease {request} was answered but is not on disk as answered"
            );
        }
        let ceiling = state.sequences[0].ceiling;
        let highest = received.numbers.iter().map(|r| r.end).max().unwrap_or(0);
        assert!(
            ceiling >= highest,
            "{point}@{nth}: ceiling {ceiling} on disk below issued {highest}"
        );
    }

    eprintln!(
        "{point}@{nth}: {} ranges and {} leases received; on disk: {}",
        received.numbers.len(),
        received.leases.len(),
        state.as_ref().map_or_else(
            || "no state".to_string(),
            |s| format!(
                "generation {}, {} leases, ceiling {}",
                s.generation,
                s.leases_and_streams.leases.len(),
                s.sequences[0].ceiling
            )
        )
    );

    // The restart.
    let data_dir = format!("--data-dir={}", dir.path().display());
    let mut args = vec![data_dir.as_str()];
    args.extend(SERVER_ARGS);
    let mut server = SeqdProcess::start(&args);
    let mut client = server.client();
    let after = client.get_batch(100).expect("numbers after the restart");
    for range in &received.numbers {
        assert!(
            range.end <= after.start,
            "{point}@{nth}: {range:?} before the crash, {after:?} after: a number repeats"
        );
    }
    for (request, range, acknowledged) in &received.leases {
        let again = client
            .lease(0, 5, Some((CLIENT_ID, request)))
            .unwrap_or_else(|e| panic!("{point}@{nth}: retry of lease {request}: {e}"));
        assert_eq!(
            &again, range,
            "{point}@{nth}: lease {request} came back different"
        );
        if *acknowledged {
            client
                .ack(0, range.clone())
                .unwrap_or_else(|e| panic!("{point}@{nth}: lease {request} ACK again: {e}"));
        }
    }
    server.terminate();
}

/// Every crash point under load: the first compaction is the start-up's first write, so the
/// compaction points crash at their third hit (the second compaction under load); appends
/// begin with the load, so they crash at their tenth.
#[test]
fn every_crash_point_recovers_the_old_or_the_new_state() {
    for point in failpoint::POINTS {
        let nth = if failpoint::APPEND.contains(&point) {
            10
        } else {
            3
        };
        check(point, nth);
    }
}

/// A crash in the very first write of a data directory: nothing was issued yet, and the
/// start after it either finds that state or begins afresh.
#[test]
fn a_crash_in_the_first_write_starts_cleanly() {
    for point in failpoint::STATE_WRITE.iter().chain(&failpoint::NEW_JOURNAL) {
        check(point, 1);
    }
}
