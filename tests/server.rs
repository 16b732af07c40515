//! Server behaviour: connection limits, vanishing and slow clients, backpressure, graceful
//! shutdown, addresses, command line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use seqd_test_support::{PATIENCE, SeqdProcess, exchange, read_line, read_to_close, seqd_command};

/// Retries `attempt` until it returns Some or PATIENCE runs out.
fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Connects and checks the server answers PING (i.e. the connection was admitted).
fn admitted(server: &SeqdProcess) -> Option<TcpStream> {
    let mut conn = server.connect();
    conn.write_all(b"PING\r\n").ok()?;
    let mut reply = [0u8; 7];
    conn.read_exact(&mut reply).ok()?;
    (&reply == b"+PONG\r\n").then_some(conn)
}

#[test]
fn excess_connection_is_refused_with_an_error_not_a_hang() {
    let server = SeqdProcess::start(&["--max-connections=3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| admitted(&server).expect("within the limit"))
        .collect();
    let mut excess = server.connect();
    let reply = String::from_utf8(read_to_close(&mut excess)).unwrap();
    assert_eq!(
        reply,
        "-LIMIT max number of connections (3) reached (--max-connections); closing connection\r\n"
    );
    // The binary client reports it as a refusal.
    match seqd::client::Client::connect(server.addr).and_then(|mut c| c.get()) {
        Err(seqd::client::ClientError::Refused(message)) => assert!(message.starts_with("LIMIT")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A freed slot is reused.
    drop(held);
    eventually("a slot is free again", || admitted(&server));
    // The log is read by another thread: give it a moment.
    eventually("the refusal is logged", || {
        server
            .log()
            .contains("--max-connections reached")
            .then_some(())
    });
}

#[test]
fn open_file_limit_is_raised_to_fit_max_connections() {
    // Started with a soft limit of 256 open files; 400 clients must still all be served.
    let server = SeqdProcess::start_with_open_file_limit(256, &["--max-connections=500"]);
    let mut held: Vec<TcpStream> = (0..400).map(|_| server.connect()).collect();
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(
            exchange(conn, b"GETSEQ\r\n", read_len(i as u64 + 1)),
            format!(":{}\r\n", i + 1).as_bytes()
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = open_files
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(soft >= 500, "soft limit not raised: {open_files}");
}

/// Length of the text reply `:n\r\n`.
fn read_len(n: u64) -> usize {
    n.to_string().len() + 3
}

#[test]
fn clients_that_send_and_vanish_leak_nothing() {
    let server = SeqdProcess::start(&["--max-connections=4"]);
    for i in 0..60 {
        let mut conn = server.connect();
        match i % 3 {
            // A pipeline, then gone without reading a single reply (the kernel resets).
            0 => conn.write_all(&b"GETSEQ\r\n".repeat(5000)).unwrap(),
            // Half a frame, then gone.
            1 => conn.write_all(&[0x9e, 0x01, 0x01]).unwrap(),
            // Nothing at all.
            _ => {}
        }
        drop(conn);
    }
    // All four slots come back: nothing was leaked by the vanished clients.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| eventually("vanished connections are released", || admitted(&server)))
        .collect();
    assert_eq!(held.len(), 4);
}

#[test]
fn a_client_that_does_not_read_is_held_back_and_others_are_served() {
    // 16 MB of requests and ~18 MB of replies: far more than the kernel's socket buffers and
    // the server's own per-connection limits hold, so the server must stop reading this
    // connection until the client catches up, then resume (with `--client-output-limit=0`,
    // so a receive's replies past the pause can never close it).
    const REQUESTS: usize = 2_000_000;
    let server = SeqdProcess::start(&["--log-level=seqd=debug", "--client-output-limit=0"]);
    let mut greedy = server.connect();
    let writer = {
        let mut conn = greedy.try_clone().unwrap();
        thread::spawn(move || conn.write_all(&b"GETSEQ\r\n".repeat(REQUESTS)).unwrap())
    };
    thread::sleep(Duration::from_millis(300));
    // Meanwhile someone else is served promptly.
    let mut other = server.connect();
    let reply = exchange(&mut other, b"PING\r\n", 7);
    assert_eq!(reply, b"+PONG\r\n");
    // Now the greedy client reads: every reply arrives, in order.
    let mut got = Vec::new();
    let mut last = 0u64;
    let mut count = 0;
    let mut chunk = vec![0u8; 1 << 16];
    while count < REQUESTS {
        let n = greedy.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed the greedy client");
        got.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = got[start..].iter().position(|&b| b == b'\n') {
            let line = &got[start..start + end - 1];
            let n: u64 = std::str::from_utf8(&line[1..]).unwrap().parse().unwrap();
            assert!(n > last, "replies out of order");
            last = n;
            count += 1;
            start += end + 1;
        }
        got.drain(..start);
    }
    writer.join().unwrap();
    assert_eq!(count, REQUESTS);
    let log = server.log();
    assert!(
        log.contains("pausing reads until the connection catches up"),
        "reads were never paused"
    );
    assert!(log.contains("resuming reads"), "reads were never resumed");
}

#[test]
fn sigterm_answers_what_was_received_and_exits_cleanly() {
    let mut server = SeqdProcess::start(&[]);
    let mut idle = server.connect();
    assert_eq!(exchange(&mut idle, b"GETSEQ\r\n", 4), b":1\r\n");
    let mut busy = server.connect();
    busy.write_all(&b"GETSEQ\r\n".repeat(200_000)).unwrap();
    let mut first = [0u8; 4];
    busy.read_exact(&mut first).unwrap();
    assert_eq!(&first, b":2\r\n");

    server.signal(libc::SIGTERM);
    let status = server.wait();
    assert!(status.success(), "seqd exited with {status}");
    let log = server.log();
    assert!(log.contains("SIGTERM received: shutting down"), "{log}");
    assert!(log.contains("seqd stopped"), "{log}");

    // The idle connection was closed cleanly (EOF, no stray bytes).
    assert_eq!(read_to_close(&mut idle), b"");
    // The busy one got whole replies only, consecutive from where it was.
    let rest = read_to_close(&mut busy);
    let text = String::from_utf8(rest).unwrap();
    assert!(
        text.is_empty() || text.ends_with("\r\n"),
        "a reply was cut in half"
    );
    for (expected, line) in (3u64..).zip(text.split_terminator("\r\n")) {
        assert_eq!(line, format!(":{expected}"));
    }
}

#[test]
fn ipv6_loopback() {
    if TcpStream::connect("[::1]:1")
        .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable)
    {
        eprintln!("SKIPPED ipv6_loopback: no IPv6 loopback on this machine");
        return;
    }
    let server =
        SeqdProcess::start_exact(&["--host=::1", "--port=0", "--threads=1", "--in-memory"]);
    assert!(server.addr.is_ipv6());
    let mut conn = server.connect();
    assert_eq!(exchange(&mut conn, b"GETSEQ\r\n", 4), b":1\r\n");
}

#[test]
fn port_in_use_is_a_clear_start_up_error() {
    let first = SeqdProcess::start(&[]);
    let out = seqd_command()
        .args([
            "--in-memory",
            "--host=127.0.0.1",
            &format!("--port={}", first.addr.port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr)),
        "{stderr}"
    );
    assert!(stderr.contains("choose another with --port"), "{stderr}");
    // The first server still owns the port and serves.
    let mut conn = first.connect();
    assert_eq!(exchange(&mut conn, b"GETSEQ\r\n", 4), b":1\r\n");
}

#[test]
fn help_explains_and_bad_flags_are_named() {
    let out = seqd_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--host",
        "--port",
        "--initial",
        "--max-connections",
        "--max-sequences",
        "--max-batch",
        "--threads",
        "--no-pin",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    assert!(help.contains("GETSEQ"));

    let out = seqd_command().arg("--max-batch=0").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-batch must be between 1 and"));

    let out = seqd_command().arg("--port=banana").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn text_error_lines_are_well_formed_under_pipelining() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(&b"NOPE\r\nGETSEQ\r\n".repeat(1000)).unwrap();
    for i in 1..=1000u64 {
        assert!(read_line(&mut conn).starts_with("-ERR Unknown command 'NOPE'"));
        assert_eq!(read_line(&mut conn), format!(":{i}"));
    }
}

#[test]
fn loops_serve_bursts_and_idle_gaps_alike_spinning_or_not() {
    for busy_poll in ["--busy-poll=0", "--busy-poll=200"] {
        serve_bursts_and_idle_gaps(busy_poll);
    }
}

fn serve_bursts_and_idle_gaps(busy_poll: &str) {
    let server = SeqdProcess::start(&[busy_poll]);
    let mut conn = server.connect();
    let mut expected = 1u64;
    for gap_ms in [0u64, 1, 0, 20, 0, 5] {
        // A burst, then a gap longer or shorter than the spin.
        let burst = b"GETSEQ\r\n".repeat(100);
        conn.write_all(&burst).unwrap();
        for _ in 0..100 {
            assert_eq!(read_line(&mut conn), format!(":{expected}"));
            expected += 1;
        }
        thread::sleep(Duration::from_millis(gap_ms));
    }
    let mut client = server.client();
    assert_eq!(client.get().unwrap(), expected);
}
