//! The stream protocol (seed 003) against the real binary: the bundled client (library and
//! CLI), resuming after a disconnect and after SIGTERM and kill -9 restarts, acknowledgements
//! duplicated, reordered and out of range, one writer per client id, refusals, expiry, and a
//! client written from the seed's document alone (Python).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use seqd::protocol::stream::{self as wire, Message};
use seqd::protocol::{ParseError, ParseOk};
use seqd::stream_client::{self, Options, Outcome};
use seqd_test_support::{
    PATIENCE, SeqdProcess, free_port, read_line, read_to_close, temp_dir, which,
};

fn options(server: &SeqdProcess, id: &str, count: u32, dir: &std::path::Path) -> Options {
    let mut options = Options::new(&server.stream_addr().to_string(), id, count);
    options.state_dir = dir.to_owned();
    options.timeout = PATIENCE;
    options
}

fn run(options: &Options) -> Outcome {
    let stop = AtomicBool::new(false);
    stream_client::run(options, &stop, |_| {}).unwrap_or_else(|e| panic!("stream failed: {e}"))
}

/// A message from the server: (tag, position, number); a checksum's bytes are in `checksum`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    number: Option<u32>,
    position: u32,
    checksum: Vec<u8>,
}

/// Reads messages from a raw connection until `done(all seen so far)` says so.
fn read_messages(conn: &mut TcpStream, mut done: impl FnMut(&[Seen]) -> bool) -> Vec<Seen> {
    let mut input = Vec::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut pos = 0;
        loop {
            match wire::decode(&input[pos..]) {
                Ok(ParseOk { message, consumed }) => {
                    pos += consumed;
                    seen.push(match message {
                        Message::Number { sequence, number } => Seen {
                            number: Some(number),
                            position: sequence,
                            checksum: Vec::new(),
                        },
                        Message::Checksum { sequence, checksum } => Seen {
                            number: None,
                            position: sequence,
                            checksum: checksum.to_vec(),
                        },
                        other => panic!("the server sent {other:?}"),
                    });
                }
                Err(ParseError::Incomplete(_)) => break,
                Err(ParseError::Fatal(problem)) => panic!("garbage from the server: {problem}"),
            }
        }
        input.drain(..pos);
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "the server stopped sending");
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).expect("reading the stream");
        assert!(n > 0, "the server closed the stream connection");
        input.extend_from_slice(&buf[..n]);
    }
}

fn numbers(seen: &[Seen]) -> Vec<(u32, u32)> {
    seen.iter()
        .filter_map(|s| s.number.map(|n| (s.position, n)))
        .collect()
}

/// A raw stream connection that has sent its `CON`.
fn connect(addr: std::net::SocketAddr, count: u32, client_id: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    send(&mut conn, &[Message::Connect { count, client_id }]);
    conn
}

fn send(conn: &mut TcpStream, messages: &[Message<'_>]) {
    let mut out = Vec::new();
    for message in messages {
        message.encode(&mut out);
    }
    conn.write_all(&out).unwrap();
}

#[test]
fn the_bundled_client_gets_a_verified_stream_and_cleans_up() {
    // One event loop: the stream's numbers come from a single-writer sequence.
    let server = SeqdProcess::start_with_loops(1, &["--stream-port=0"]);
    let dir = temp_dir();
    let options = options(&server, "whole", 500, dir.path());
    let Outcome::Verified { checksum } = run(&options) else {
        panic!("not verified");
    };
    assert!(
        !dir.path().join("whole.state").exists(),
        "state removed once done"
    );
    server.wait_for_log("stream finished: checksum acknowledged client_id=\"whole\"");
    // The numbers were 1..=500 of the "stream" sequence.
    assert_eq!(checksum, wire::checksum(1..=500));
    let mut conn = server.connect();
    conn.write_all(b"CURRENT stream\r\n").unwrap();
    assert_eq!(read_line(&mut conn), ":501");
}

#[test]
fn a_client_that_disconnects_mid_stream_resumes_where_it_was() {
    let server = SeqdProcess::start(&[
        "--stream-port=0",
        "--stream-burst=8",
        "--stream-interval=2ms",
    ]);
    let dir = temp_dir();
    let mut options = options(&server, "resumer", 400, dir.path());
    options.stop_after = Some(100);
    assert_eq!(run(&options), Outcome::Interrupted);
    let state = std::fs::read_to_string(dir.path().join("resumer.state")).unwrap();
    let kept = state.lines().count() - 1;
    assert!((100..400).contains(&kept), "{kept} numbers kept");
    options.stop_after = None;
    let Outcome::Verified { checksum } = run(&options) else {
        panic!("not verified");
    };
    assert_eq!(checksum, wire::checksum(1..=400));
    assert!(
        server
            .log()
            .contains("stream resumed client_id=\"resumer\"")
    );
}

#[test]
fn acks_duplicated_reordered_and_out_of_range_are_harmless() {
    let server = SeqdProcess::start(&["--stream-port=0", "--initial=7"]);
    let mut conn = connect(server.stream_addr(), 5, b"raw");
    let first_pass = read_messages(&mut conn, |seen| seen.len() >= 5);
    assert_eq!(
        numbers(&first_pass),
        [(0, 7), (1, 8), (2, 9), (3, 10), (4, 11)]
    );
    // Out of range, the checksum's position too early, duplicates, reversed order; 2 missing.
    let acks: Vec<Message<'_>> = [99, 5, u32::MAX, 4, 4, 3, 1, 0, 0, 3]
        .into_iter()
        .map(|sequence| Message::Ack { sequence })
        .collect();
    send(&mut conn, &acks);
    // Only position 2 comes again (each resend pass), never the checksum before it is acked.
    let resent = read_messages(&mut conn, |seen| !seen.is_empty());
    assert!(
        resent
            .iter()
            .all(|s| (s.position, s.number) == (2, Some(9))),
        "{resent:?}"
    );
    send(
        &mut conn,
        &[Message::Ack { sequence: 2 }, Message::Ack { sequence: 2 }],
    );
    let seen = read_messages(&mut conn, |seen| seen.iter().any(|s| s.number.is_none()));
    let checksum = seen.last().unwrap();
    assert_eq!(checksum.position, 5);
    assert_eq!(checksum.checksum[..], wire::checksum(7..12));
    send(&mut conn, &[Message::Ack { sequence: 5 }]);
    read_to_close(&mut conn);
}

#[test]
fn resume_after_sigterm_and_kill_9_restarts_gives_the_same_checksum() {
    let dir = temp_dir();
    let data_dir = format!("--data-dir={}", dir.path().join("data").display());
    let port = format!("--stream-port={}", free_port());
    let pace = ["--stream-interval=2ms", "--stream-burst=4"];
    let args = [data_dir.as_str(), port.as_str(), pace[0], pace[1]];
    // One event loop before the restarts, two after: both ways of reserving.
    let mut server = SeqdProcess::start_with_loops(1, &args);
    let states = temp_dir();

    // SIGTERM mid-stream: the client had stopped; it resumes after the restart.
    let mut sigterm = options(&server, "after-sigterm", 300, states.path());
    sigterm.stop_after = Some(60);
    assert_eq!(run(&sigterm), Outcome::Interrupted);
    assert!(server.terminate().success());
    let mut server = SeqdProcess::start(&args);
    assert!(server.log().contains("1 streams"), "{}", server.log());
    sigterm.stop_after = None;
    let Outcome::Verified { checksum } = run(&sigterm) else {
        panic!("not verified after SIGTERM");
    };
    assert_eq!(checksum, wire::checksum(1..=300));

    // kill -9 while the client is connected: it reconnects by itself and resumes.
    let killed = options(&server, "after-kill", 2000, states.path());
    let client = std::thread::spawn(move || run(&killed));
    let journal = states.path().join("after-kill.state");
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_to_string(&journal).map_or(0, |s| s.lines().count()) < 200 {
        assert!(Instant::now() < deadline, "the stream did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let server = SeqdProcess::start(&args);
    let Outcome::Verified { checksum } = client.join().unwrap() else {
        panic!("not verified after kill -9");
    };
    // The stream's numbers are the ones recorded before the crash: 301..=2300.
    assert_eq!(checksum, wire::checksum(301..=2300));
    assert!(
        server
            .log()
            .contains("stream resumed client_id=\"after-kill\"")
    );
}

#[test]
fn a_resume_closes_the_previous_connection_of_the_same_client_id() {
    let server = SeqdProcess::start(&[
        "--stream-port=0",
        "--stream-interval=50ms",
        "--stream-burst=1",
    ]);
    let mut first = connect(server.stream_addr(), 100, b"twice");
    read_messages(&mut first, |seen| !seen.is_empty());
    let mut second = connect(server.stream_addr(), 100, b"twice");
    let resent = read_messages(&mut second, |seen| !seen.is_empty());
    assert_eq!(
        numbers(&resent)[0],
        (0, 1),
        "the resend starts at the first unacked"
    );
    // The first connection is closed: at most what was already on its way, then EOF.
    let rest = read_to_close(&mut first);
    assert!(
        rest.len() < 11 * 10,
        "{} bytes after the takeover",
        rest.len()
    );
}

#[test]
fn cons_that_cannot_be_served_are_closed_and_logged() {
    let server = SeqdProcess::start(&[
        "--stream-port=0",
        "--max-stream-numbers=100",
        "--initial=4294967100",
    ]);
    let addr = server.stream_addr();
    for (count, id, log) in [
        (0, &b"zero"[..], "n must be between 1 and 100"),
        (101, b"big", "n must be between 1 and 100"),
        (1, b"", "the client id must not be empty"),
    ] {
        let mut conn = connect(addr, count, id);
        assert_eq!(read_to_close(&mut conn), b"", "refused without a word");
        server.wait_for_log(log);
    }
    // 4294967100..=4294967199 fits 32 bits; the next 100 would pass 2^32 - 1: refused.
    let mut conn = connect(addr, 100, b"wide");
    let got = read_messages(&mut conn, |seen| !seen.is_empty());
    assert_eq!(numbers(&got)[0], (0, 4_294_967_100));
    let mut conn = connect(addr, 100, b"too-wide");
    assert_eq!(read_to_close(&mut conn), b"");
    server.wait_for_log("its numbers would not fit 32 bits");
    // Garbage is not a stream: closed too; ordinary connections are unaffected.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(b"GETSEQ\r\n").unwrap();
    assert_eq!(read_to_close(&mut conn), b"");
    assert!(server.client().get().is_ok());
}

#[test]
fn abandoned_streams_expire() {
    let server = SeqdProcess::start(&["--stream-port=0", "--stream-ttl=300ms"]);
    let mut conn = connect(server.stream_addr(), 3, b"gone");
    read_messages(&mut conn, |seen| !seen.is_empty());
    drop(conn);
    server
        .wait_for_log("stream expired: not heard from for 300ms (--stream-ttl) client_id=\"gone\"");
}

#[test]
fn the_cli_resumes_after_ctrl_c() {
    let server = SeqdProcess::start(&[
        "--stream-port=0",
        "--stream-interval=10ms",
        "--stream-burst=1",
    ]);
    let port = server.stream_addr().port().to_string();
    let states = temp_dir();
    let cli = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_seqd-stream"));
        command
            .args(["--port", &port, "-n", "50", "--id", "cli-abc"])
            .arg("--state-dir")
            .arg(states.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let first = cli(&[]).spawn().unwrap();
    let journal = states.path().join("cli-abc.state");
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_to_string(&journal).map_or(0, |s| s.lines().count()) < 10 {
        assert!(Instant::now() < deadline, "no numbers arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let output = first.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("[0] number: 1\n"), "{stdout}");
    assert!(stdout.contains("exiting; resume with"), "{stdout}");
    assert!(
        !stdout.contains("connection lost"),
        "Ctrl-C is not a lost connection: {stdout}"
    );
    let output = cli(&["--quiet"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert!(stdout.contains("[50] checksum: "), "{stdout}");
    assert!(stdout.contains("[OK] checksum match"), "{stdout}");
}

#[test]
fn a_client_written_from_seed_003_alone_works_unmodified() {
    let Some(python) = which("python3") else {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    };
    let server = SeqdProcess::start(&["--stream-port=0"]);
    let addr = server.stream_addr();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/seed003_client.py");
    for extra in [&[][..], &["300"][..]] {
        let id = format!("py-{}", extra.len());
        let output = Command::new(&python)
            .arg(script)
            .args([
                addr.ip().to_string(),
                addr.port().to_string(),
                "1000".into(),
                id,
            ])
            .args(extra)
            .output()
            .expect("running python3");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "seed003_client.py {extra:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with("OK "), "{stdout}");
    }
}
