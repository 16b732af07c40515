//! Durable sequences against the real binary: kill -9 under load, clean restarts, damaged
//! state files, a second instance, and disks that fail and recover.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seqd::client::{Client, Request, Response};
use seqd_test_support::{PATIENCE, SeqdProcess, read_line, read_to_close, temp_dir};

fn data_dir_arg(dir: &Path) -> String {
    format!("--data-dir={}", dir.display())
}

/// `GETSEQ name` over the text protocol: the number, or the error line.
fn getseq(conn: &mut TcpStream, name: &str) -> Result<u64, String> {
    use std::io::Write;
    conn.write_all(format!("GETSEQ {name}\r\n").as_bytes())
        .unwrap();
    let line = read_line(conn);
    match line.strip_prefix(':') {
        Some(n) => Ok(n.parse().unwrap()),
        None => Err(line),
    }
}

fn command(conn: &mut TcpStream, line: &str) -> String {
    use std::io::Write;
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

// ---- kill -9 under load ----

const LOADED: [&str; 3] = ["default", "orders", "events"];

/// Pipelines requests on all three sequences until the connection dies; returns every
/// number received, per sequence.
fn load(server: std::net::SocketAddr, progress: &AtomicU64) -> [Vec<u64>; 3] {
    let mut got: [Vec<u64>; 3] = Default::default();
    let Ok(mut client) = Client::connect(server) else {
        return got;
    };
    let _ = client.set_timeout(Some(PATIENCE));
    let (Ok(orders), Ok(events)) = (client.open("orders"), client.open("events")) else {
        return got;
    };
    let requests: Vec<Request> = (0..64)
        .map(|i| match i % 4 {
            0 | 1 => Request::Get(0),
            2 => Request::GetBatch(orders, 7),
            _ => Request::Get(events),
        })
        .collect();
    // Only the connection's death (the kill) ends the load; a refused request is a bug.
    while let Ok(replies) = client.pipeline(&requests) {
        for (request, reply) in requests.iter().zip(replies) {
            let index = match request {
                Request::Get(0) => 0,
                Request::GetBatch(..) => 1,
                _ => 2,
            };
            match reply {
                Ok(Response::Number(n)) => got[index].push(n),
                Ok(Response::Range(range)) => got[index].extend(range),
                other => panic!("unexpected reply under load: {other:?}"),
            }
        }
        progress.fetch_add(64, Ordering::Relaxed);
    }
    got
}

#[test]
fn kill_9_under_load_never_reissues_a_number() {
    const CYCLES: usize = 12;
    const CLIENTS: usize = 4;
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let mut all: [Vec<u64>; 3] = Default::default();
    let mut highest = [0u64; 3];
    for cycle in 0..CYCLES {
        // Every other cycle with a small window, so raises (and waits for them) are
        // frequent while the kill lands.
        let gap = if cycle % 2 == 0 {
            "--max-crash-gap=2000"
        } else {
            "--max-crash-gap=1000000"
        };
        // And one or two event loops (a single writer per sequence, or compare-and-swap),
        // in all four combinations with the window.
        let loops = if cycle % 4 < 2 { 1 } else { 2 };
        let mut server = SeqdProcess::start_with_loops(loops, &[&data_dir, gap]);
        if cycle > 0 {
            assert!(
                server.log().contains("did not shut down cleanly"),
                "cycle {cycle}: recovery after a kill is logged:\n{}",
                server.log()
            );
        }
        // The first numbers after the restart are above everything received before.
        let mut client = server.client();
        let (orders, events) = (
            client.open("orders").unwrap(),
            client.open("events").unwrap(),
        );
        let firsts = [
            client.get().unwrap(),
            client.get_from(orders).unwrap(),
            client.get_from(events).unwrap(),
        ];
        for (index, first) in firsts.into_iter().enumerate() {
            assert!(
                first > highest[index],
                "cycle {cycle}: {} restarted at {first}, not above {} issued before the kill",
                LOADED[index],
                highest[index]
            );
            all[index].push(first);
        }
        drop(client);

        let progress = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (addr, progress) = (server.addr, progress.clone());
                std::thread::spawn(move || load(addr, &progress))
            })
            .collect();
        let deadline = Instant::now() + PATIENCE;
        while progress.load(Ordering::Relaxed) < 20_000 {
            assert!(Instant::now() < deadline, "load made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        for client in clients {
            let got = client.join().unwrap();
            for (index, numbers) in got.into_iter().enumerate() {
                if let Some(&max) = numbers.iter().max() {
                    highest[index] = highest[index].max(max);
                }
                all[index].extend(numbers);
            }
        }
    }
    for (index, numbers) in all.iter_mut().enumerate() {
        let received = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            received,
            "{}: {} numbers were received more than once across {CYCLES} kill -9 restarts",
            LOADED[index],
            received - numbers.len()
        );
        assert!(
            received > CYCLES * 1000,
            "{}: load too light",
            LOADED[index]
        );
    }
}

#[test]
fn a_new_sequence_is_on_disk_before_its_first_number() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let mut server = SeqdProcess::start(&[&data_dir]);
    let mut conn = server.connect();
    assert_eq!(getseq(&mut conn, "brand.new"), Ok(1));
    server.kill(); // at once: no time for a background write
    let server = SeqdProcess::start(&[&data_dir]);
    assert!(
        server
            .log()
            .contains("sequence \"brand.new\" (id 1) resumes at")
    );
    let mut conn = server.connect();
    let next = getseq(&mut conn, "brand.new").unwrap();
    assert!(
        next > 1,
        "brand.new restarted at {next}: its first number was reissued"
    );
}

#[test]
fn a_waiting_request_is_answered_after_the_client_half_closes() {
    // `echo "GETSEQ fresh" | nc -N host port`: the request waits for the new sequence's
    // first durable ceiling while the client has already shut down its side.
    use std::io::Write;
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(b"GETSEQ fresh\nGETSEQ fresh\nCURRENT fresh\n")
        .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut conn), b":1\r\n:2\r\n:3\r\n");
}

#[test]
fn requests_beyond_the_ceiling_wait_for_their_raise_and_are_all_answered() {
    // A crash gap of 1: nearly every request outruns the durable ceiling and waits.
    let server = SeqdProcess::start(&["--max-crash-gap=1"]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut client = server.client();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..25 {
                    let replies = client.pipeline(&[Request::Get(0); 8]).unwrap();
                    for reply in replies {
                        match reply.unwrap() {
                            Response::Number(n) => got.push(n),
                            other => panic!("{other:?}"),
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u64> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=800).collect::<Vec<u64>>(),
        "unique and without gaps"
    );
    // Meanwhile the disk was written for them (the count is in the shutdown report).
    let mut server = server;
    assert!(server.terminate().success());
    let log = server.log();
    let writes: u64 = log
        .split(" writes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no persister report:\n{log}"));
    assert!(
        writes > 2,
        "numbers were issued without raises: {writes} writes"
    );
}

// ---- clean restart ----

#[test]
fn clean_restart_continues_without_a_gap_for_every_sequence() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let names = ["default", "orders", "events", "tx.eu-west_1:a"];
    let mut last = HashMap::new();
    let mut server = SeqdProcess::start(&[&data_dir]);
    let mut conn = server.connect();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i {
            last.insert(*name, getseq(&mut conn, name).unwrap());
        }
    }
    // A batch far beyond the first window, to move the ceiling well ahead.
    assert_eq!(command(&mut conn, "GETSEQ_BATCH 5000 orders"), "*2");
    let _first = read_line(&mut conn);
    let batch_last: u64 = read_line(&mut conn)[1..].parse().unwrap();
    last.insert("orders", batch_last);
    drop(conn);
    assert!(server.terminate().success(), "log:\n{}", server.log());
    assert!(server.log().contains("exact next numbers recorded"));

    let server = SeqdProcess::start(&[&data_dir]);
    assert!(
        server.log().contains("by a clean shutdown"),
        "{}",
        server.log()
    );
    let mut conn = server.connect();
    for name in names {
        assert_eq!(
            getseq(&mut conn, name),
            Ok(last[name] + 1),
            "{name} continues with no gap"
        );
    }
}

#[test]
fn initial_applies_only_to_new_sequences() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let mut server = SeqdProcess::start(&[&data_dir, "--initial=100"]);
    let mut conn = server.connect();
    assert_eq!(getseq(&mut conn, "default"), Ok(100));
    drop(conn);
    let status = server.terminate();
    assert!(status.success(), "{status}: {}", server.log());

    // Seed 001's habit of restarting "at N" below the recovered state is refused.
    let (status, log) = SeqdProcess::start_failure(&[&data_dir, "--initial=50"]);
    assert!(!status.success());
    assert!(
        log.contains(
            "--initial=50 is below where sequence \"default\" resumes (101): numbers below \
             that may already have been issued"
        ),
        "{log}"
    );

    // Above the recovered state it is accepted, for new sequences only.
    let server = SeqdProcess::start(&[&data_dir, "--initial=7000"]);
    let mut conn = server.connect();
    assert_eq!(getseq(&mut conn, "default"), Ok(101));
    assert_eq!(getseq(&mut conn, "fresh"), Ok(7000));
}

// ---- damaged state ----

#[test]
fn damaged_state_stops_the_start_with_the_file_named_and_changes_nothing() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let state_path = dir.path().join("state");
    let mut server = SeqdProcess::start(&[&data_dir]);
    let mut conn = server.connect();
    assert_eq!(getseq(&mut conn, "orders"), Ok(1));
    drop(conn);
    assert!(server.terminate().success());
    let original = std::fs::read(&state_path).unwrap();

    let mut version = original.clone();
    version[9] = 9;
    let mut flipped = original.clone();
    flipped[50] ^= 0x04;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "truncated",
            original[..original.len() / 2].to_vec(),
            "truncated or extended",
        ),
        ("a flipped bit", flipped, "checksum mismatch"),
        (
            "a newer version",
            version,
            "format version 9 is not supported",
        ),
        (
            "a foreign file",
            b"next=5\n".to_vec(),
            "not a seqd state file",
        ),
        ("empty", Vec::new(), "empty (0 bytes)"),
    ];
    for (what, bytes, reason) in cases {
        std::fs::write(&state_path, &bytes).unwrap();
        let (status, log) = SeqdProcess::start_failure(&[&data_dir]);
        assert!(!status.success(), "{what}: seqd must not start");
        assert!(
            log.contains(&format!("state file {} is unusable", state_path.display())),
            "{what}: the file is named:\n{log}"
        );
        assert!(log.contains(reason), "{what}: says {reason:?}:\n{log}");
        assert!(!log.contains("listening"), "{what}: never serves");
    }

    // A torn write is the temporary file: it is removed and the previous state used.
    std::fs::write(&state_path, &original).unwrap();
    std::fs::write(dir.path().join("state.tmp"), &original[..20]).unwrap();
    let mut server = SeqdProcess::start(&[&data_dir]);
    assert!(
        server.log().contains("a crash interrupted"),
        "{}",
        server.log()
    );
    assert!(!dir.path().join("state.tmp").exists());
    let mut conn = server.connect();
    assert_eq!(
        getseq(&mut conn, "orders"),
        Ok(2),
        "nothing was lost or skipped"
    );
    drop(conn);
    assert!(server.terminate().success());

    // A state file removed from under a directory that had one is not a fresh start.
    std::fs::remove_file(&state_path).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir]);
    assert!(!status.success());
    assert!(
        log.contains(&format!("state file {} is missing", state_path.display())),
        "{log}"
    );
}

// ---- single writer ----

#[test]
fn a_second_instance_on_the_same_data_dir_is_refused() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let first = SeqdProcess::start(&[&data_dir]);
    let (status, log) = SeqdProcess::start_failure(&[&data_dir]);
    assert!(!status.success());
    assert!(
        log.contains(&format!(
            "data directory {} is in use by another seqd (pid {}",
            dir.path().display(),
            first.pid()
        )),
        "{log}"
    );
    // The first one is unaffected.
    let mut conn = first.connect();
    assert_eq!(getseq(&mut conn, "default"), Ok(1));
}

// ---- failing disks ----

/// Takes numbers until a request is refused; returns them and the refusal.
fn numbers_until_refused(conn: &mut TcpStream) -> (Vec<u64>, String) {
    let mut got = Vec::new();
    loop {
        match getseq(conn, "default") {
            Ok(n) => got.push(n),
            Err(line) => return (got, line),
        }
        assert!(got.len() < 10_000, "numbers kept coming from a broken disk");
    }
}

/// Retries until a number is issued again; only UNAVAILABLE refusals are expected meanwhile.
fn next_number_once_repaired(conn: &mut TcpStream) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match getseq(conn, "default") {
            Ok(n) => return n,
            Err(line) => assert!(line.starts_with("-UNAVAILABLE"), "{line}"),
        }
        assert!(Instant::now() < deadline, "issuing did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drives a server through a disk failure: numbers below the durable ceiling keep coming,
/// then requests are refused with UNAVAILABLE while CURRENT and PING still work; once
/// `repair` runs, issuing resumes by itself. Returns every number received.
fn fail_and_recover(
    server: &SeqdProcess,
    break_disk: impl FnOnce(),
    repair: impl FnOnce(),
) -> Vec<u64> {
    let mut conn = server.connect();
    let mut got = vec![getseq(&mut conn, "default").unwrap()];
    break_disk();
    // The window is at most --max-crash-gap (100): refusals start within it.
    let (issued, refusal) = numbers_until_refused(&mut conn);
    got.extend(issued);
    assert!(
        refusal.starts_with("-UNAVAILABLE cannot issue numbers"),
        "{refusal}"
    );
    // A new sequence cannot reach the disk either.
    assert!(
        getseq(&mut conn, "created.while.broken")
            .unwrap_err()
            .starts_with("-UNAVAILABLE")
    );
    for _ in 0..50 {
        assert!(
            getseq(&mut conn, "default")
                .unwrap_err()
                .starts_with("-UNAVAILABLE")
        );
    }
    assert_eq!(command(&mut conn, "PING"), "+PONG");
    let current = command(&mut conn, "CURRENT");
    assert_eq!(current, format!(":{}", got.last().unwrap() + 1));
    server.wait_for_log("cannot make higher ceilings durable");
    repair();
    let resumed = next_number_once_repaired(&mut conn);
    assert_eq!(
        resumed,
        got.last().unwrap() + 1,
        "refusals consumed nothing"
    );
    got.push(resumed);
    server.wait_for_log("issuing resumes");
    let log = server.log();
    assert_eq!(
        log.matches("cannot make higher ceilings durable").count(),
        1,
        "the failure is logged once, not per request:\n{log}"
    );
    got
}

/// Restarts after a kill -9 and checks nothing received before is issued again.
fn restart_after_kill(mut server: SeqdProcess, args: &[&str], got: &[u64]) {
    server.kill();
    let server = SeqdProcess::start(args);
    let mut conn = server.connect();
    let next = getseq(&mut conn, "default").unwrap();
    let highest = got.iter().max().copied().unwrap_or(0);
    assert!(next > highest, "restarted at {next}, not above {highest}");
}

fn set_file_size_limit(pid: u32, limit: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child with a valid rlimit; the old limit is not asked for.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A write error injected from outside, runnable anywhere: the server's file size limit
/// is set to zero, so writing the state fails (EFBIG) until the limit is lifted.
#[test]
fn write_errors_fail_closed_and_recover_by_themselves() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let args = [data_dir.as_str(), "--max-crash-gap=100"];
    let server = SeqdProcess::start(&args);
    let pid = server.pid();
    let got = fail_and_recover(
        &server,
        || set_file_size_limit(pid, 0),
        || set_file_size_limit(pid, libc::RLIM_INFINITY),
    );
    assert!(server.log().contains("File too large"), "{}", server.log());
    restart_after_kill(server, &args, &got);
}

/// A real full disk, and a read-only one: the data directory on a tiny tmpfs. Needs root
/// (CI runs as root); anyone else is told plainly that this test did not run.
#[test]
fn full_and_read_only_disks_fail_closed_and_recover() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED full_and_read_only_disks_fail_closed_and_recover: needs root to mount a tmpfs"
        );
        return;
    }
    let mount = TmpfsMount::new("64k");
    let data_dir = data_dir_arg(&mount.path);
    let args = [data_dir.as_str(), "--max-crash-gap=100"];
    let server = SeqdProcess::start(&args);
    let filler = mount.path.join("filler");
    let mut got = fail_and_recover(
        &server,
        || fill(&filler),
        || std::fs::remove_file(&filler).unwrap(),
    );
    assert!(
        server.log().contains("No space left on device"),
        "{}",
        server.log()
    );
    // Now read-only.
    let path = mount.path.display().to_string();
    got.extend(fail_and_recover_again(
        &server,
        || run("mount", &["-o", "remount,ro", &path]),
        || run("mount", &["-o", "remount,rw", &path]),
    ));
    assert!(
        server.log().contains("Read-only file system"),
        "{}",
        server.log()
    );
    restart_after_kill(server, &args, &got);
}

/// A second failure of the same server (the once-only log check counts from the first).
fn fail_and_recover_again(
    server: &SeqdProcess,
    break_disk: impl FnOnce(),
    repair: impl FnOnce(),
) -> Vec<u64> {
    let mut conn = server.connect();
    break_disk();
    let (mut got, refusal) = numbers_until_refused(&mut conn);
    assert!(refusal.starts_with("-UNAVAILABLE"), "{refusal}");
    repair();
    got.push(next_number_once_repaired(&mut conn));
    got
}

/// Writes to `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    loop {
        if let Err(e) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct TmpfsMount {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> TmpfsMount {
        let dir = temp_dir();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                // seqd refuses a data directory others may write (a tmpfs root is 1777).
                &format!("size={size},mode=0700"),
                "seqd-test",
                &path.display().to_string(),
            ],
        );
        TmpfsMount { path, _dir: dir }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy: a server still holding files there must not make the unmount fail.
        let _ = std::process::Command::new("umount")
            .args(["-l", &self.path.display().to_string()])
            .status();
    }
}
