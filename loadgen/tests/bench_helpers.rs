//! The benchmark suite's helpers, run as the suite runs them: `loadgen baseline-server` (the
//! naive rival), `loadgen zero-work-server` (the limit) and `loadgen hold` (idle connections).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use seqd::protocol::Reply;
use seqd::protocol::binary::{self, opcode};
use support::{PATIENCE, Server, expect_exit, json, loadgen, spawn_loadgen, temp_dir};

/// A `loadgen` subcommand left running; killed when dropped.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str], from_stderr: bool) -> Running {
        let mut child = spawn_loadgen(args);
        let stream: Box<dyn Read + Send> = if from_stderr {
            Box::new(child.stderr.take().expect("piped"))
        } else {
            Box::new(child.stdout.take().expect("piped"))
        };
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line, which must contain `what`.
    fn expect_line(&self, what: &str) -> String {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("loadgen printed no line with {what:?}"));
        assert!(line.contains(what), "expected {what:?}, got {line:?}");
        line
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "loadgen did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn baseline() -> (Running, SocketAddr) {
    listening("baseline-server", "baseline listening on ")
}

fn zero_work() -> (Running, SocketAddr) {
    listening("zero-work-server", "zero-work listening on ")
}

fn listening(command: &str, line: &str) -> (Running, SocketAddr) {
    let server = Running::start(&[command, "--addr", "127.0.0.1:0"], true);
    let line = server.expect_line(line);
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address");
    (server, addr)
}

fn request(op: u8, argument: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    binary::encode_request(&mut frame, op, 0, argument);
    frame
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream.read_exact(&mut buf).expect("the replies");
    buf
}

#[test]
fn baseline_answers_frames_with_a_counter_per_connection() {
    let (_server, addr) = baseline();
    let mut a = TcpStream::connect(addr).expect("connect");
    let mut b = TcpStream::connect(addr).expect("connect");

    // Pipelined, one request split across two writes.
    let mut burst = request(opcode::GETSEQ, 0);
    burst.extend(request(opcode::GETSEQ_BATCH, 10));
    burst.extend(request(opcode::CURRENT, 0));
    burst.extend(request(opcode::PING, 0));
    let (first, rest) = burst.split_at(20);
    a.write_all(first).expect("write");
    std::thread::sleep(Duration::from_millis(20));
    a.write_all(rest).expect("write");
    let mut expected = Vec::new();
    binary::encode_reply(&mut expected, &Reply::Number(1));
    binary::encode_reply(
        &mut expected,
        &Reply::Range {
            first: 2,
            count: 10,
        },
    );
    binary::encode_reply(&mut expected, &Reply::Current(12));
    binary::encode_reply(&mut expected, &Reply::Pong { echo: None });
    assert_eq!(read_exactly(&mut a, expected.len()), expected);

    // Another connection has its own counter: no shared state, by design.
    b.write_all(&request(opcode::GETSEQ, 0)).expect("write");
    expected.clear();
    binary::encode_reply(&mut expected, &Reply::Number(1));
    assert_eq!(read_exactly(&mut b, 16), expected);

    // An unknown opcode gets an error reply; the connection stays usable.
    a.write_all(&request(0x7f, 0)).expect("write");
    let header = read_exactly(&mut a, 16);
    assert_ne!(header[3], binary::STATUS_OK);
    let message_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    read_exactly(&mut a, message_len);
    a.write_all(&request(opcode::GETSEQ, 0)).expect("write");
    expected.clear();
    binary::encode_reply(&mut expected, &Reply::Number(12));
    assert_eq!(read_exactly(&mut a, 16), expected);
}

/// `loadgen run` against `addr` as the suite runs it, 2000 requests on `connections` (plus
/// `extra`); its JSON result.
fn run_against(
    addr: SocketAddr,
    name: &str,
    connections: &str,
    extra: &[&str],
) -> serde_json::Value {
    let dir = temp_dir(name);
    let prefix = dir.join(name);
    let addr = addr.to_string();
    let mut args = vec![
        "run",
        "--addr",
        &addr,
        "-c",
        connections,
        "-P",
        "8",
        "-n",
        "2000",
        "--warmup",
        "0s",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    args.extend(["-o", prefix.to_str().expect("utf-8 path")]);
    let out = loadgen(&args);
    expect_exit(&out, 0);
    json(&dir.join(format!("{name}.json")))
}

#[test]
fn loadgen_drives_the_baseline_like_seqd() {
    let (_server, addr) = baseline();
    let result = run_against(addr, "baseline", "4", &[]);
    assert_eq!(result["totals"]["requests"], 2000);
    assert_eq!(result["errors"]["total"], 0);
}

#[test]
fn zero_work_answers_getseq_from_one_counter_and_closes_on_anything_else() {
    let (_server, addr) = zero_work();
    let mut a = TcpStream::connect(addr).expect("connect");
    let mut b = TcpStream::connect(addr).expect("connect");
    // Three requests, the second split across two writes.
    let burst: Vec<u8> = (0..3).flat_map(|_| request(opcode::GETSEQ, 0)).collect();
    a.write_all(&burst[..20]).expect("write");
    std::thread::sleep(Duration::from_millis(20));
    a.write_all(&burst[20..]).expect("write");
    let mut expected = Vec::new();
    for n in 1..=3 {
        binary::encode_reply(&mut expected, &Reply::Number(n));
    }
    assert_eq!(read_exactly(&mut a, expected.len()), expected);
    // One counter for every connection.
    b.write_all(&request(opcode::GETSEQ, 0)).expect("write");
    expected.clear();
    binary::encode_reply(&mut expected, &Reply::Number(4));
    assert_eq!(read_exactly(&mut b, 16), expected);
    // Anything but GETSEQ: an error reply, then the connection is closed.
    b.write_all(&request(opcode::PING, 0)).expect("write");
    let header = read_exactly(&mut b, 16);
    assert_ne!(header[3], binary::STATUS_OK);
    let message_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    read_exactly(&mut b, message_len);
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).expect("the server closes");
    assert!(rest.is_empty());
    // The other connection is unaffected.
    a.write_all(&request(opcode::GETSEQ, 0)).expect("write");
    expected.clear();
    binary::encode_reply(&mut expected, &Reply::Number(5));
    assert_eq!(read_exactly(&mut a, 16), expected);
}

#[test]
fn loadgen_verify_accepts_the_zero_work_replies() {
    let (_server, addr) = zero_work();
    // Several connections: the numbers are unique across them, not only on each.
    let result = run_against(addr, "zero-work", "8", &["--verify"]);
    assert_eq!(result["totals"]["requests"], 2000);
    assert_eq!(result["errors"]["total"], 0);
    assert_eq!(result["verify"]["duplicates"], 0, "{result}");
    assert_eq!(result["verify"]["non_increasing"], 0, "{result}");
}

#[test]
fn hold_opens_connections_then_serves_one_request_on_each() {
    let server = Server::seqd(&["--max-connections=100"]);
    let addr = server.addr.to_string();
    let mut hold = Running::start(&["hold", "--addr", &addr, "-c", "40"], false);
    hold.expect_line("connected 40");
    let mut probe = seqd::client::Client::connect(server.addr).expect("connect");
    let before = probe.current().expect("CURRENT");
    hold.signal(libc::SIGUSR1);
    hold.expect_line("answered 40");
    // Each held connection took exactly one number.
    assert_eq!(probe.current().expect("CURRENT"), before + 40);
    hold.signal(libc::SIGTERM);
    assert!(hold.wait().success());
}

#[test]
fn hold_says_what_failed_when_the_server_refuses() {
    let server = Server::seqd(&["--max-connections=5"]);
    let addr = server.addr.to_string();
    let mut hold = Running::start(&["hold", "--addr", &addr, "-c", "10"], false);
    hold.expect_line("connected 10");
    hold.signal(libc::SIGUSR1);
    let status = hold.wait();
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    if let Some(mut e) = hold.child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    // Which of refusal, reset or closed shows depends on timing; the connection is named.
    assert!(
        stderr.contains("connection "),
        "the error names the connection: {stderr}"
    );
}
