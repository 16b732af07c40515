//! What clients that send without reading may cost (Redis's conventions): one is closed,
//! with a log line naming it, once its unsent replies reach `--client-output-limit`; all of
//! them together are capped by `--maxmemory-clients`, beyond which the largest are closed;
//! and the memory they made seqd allocate is given back once they are gone. Meanwhile other
//! clients are served. Both backends (SEQD_TEST_IO=epoll runs the default-backend tests on
//! epoll too). `--client-output-limit 0` (held, not closed) is tests/slow_reader.rs.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{PATIENCE, SeqdProcess, read_exactly, read_line};

/// How a client that only writes ended.
#[derive(Debug)]
enum Ended {
    /// seqd closed the connection.
    Closed,
    /// Its writes stalled (seqd stopped reading it); the socket is kept open.
    Stalled { _open: TcpStream },
}

/// Pipelines GETSEQ without ever reading until seqd closes the connection or stops reading.
fn flood(mut client: TcpStream, most: u64) -> Ended {
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = b"GETSEQ\r\n".repeat(8192); // 64 KiB of requests
    let mut sent: u64 = 0;
    while sent < most {
        match client.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ended::Stalled { _open: client };
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ended::Closed;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    panic!("seqd read {sent} bytes of requests from a client that never reads its replies");
}

fn start(io: &str, args: &[&str]) -> SeqdProcess {
    let io = format!("--io={io}");
    let mut all = vec![
        "--host=127.0.0.1",
        "--port=0",
        "--threads=1",
        "--in-memory",
        &io,
    ];
    all.extend_from_slice(args);
    SeqdProcess::start_exact(&all)
}

/// A fresh client's GETSEQ is answered with a number.
fn served(server: &SeqdProcess) {
    let mut other = server.connect();
    // A bound on a hang, not a latency requirement (the machine running the suite may be busy).
    other.set_read_timeout(Some(PATIENCE)).unwrap();
    other.write_all(b"PING\r\nGETSEQ\r\n").unwrap();
    assert_eq!(read_line(&mut other), "+PONG");
    let reply = read_line(&mut other);
    assert!(reply.starts_with(':'), "GETSEQ answered {reply:?}");
}

/// The value of `field` in the INFO text.
fn info_field(server: &SeqdProcess, field: &str) -> u64 {
    let mut c = server.connect();
    c.write_all(b"INFO\r\n").unwrap();
    let header = read_line(&mut c);
    let len: usize = header[1..].parse().unwrap();
    let text = String::from_utf8(read_exactly(&mut c, len + 2)).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{text}"))
}

/// What seqd may keep resident after a burst, beyond what it had before: io_uring's receive
/// buffer ring (1024 × 16 KiB, fixed, its pages touched once a burst used them) and the
/// output pool's bounded spare buffers (4 MiB).
const KEPT_AFTER_BURST_KIB: u64 = 24 * 1024;

/// Waits until seqd's resident memory is at most `kib` (or fails, naming what it stayed at).
fn rss_falls_to(server: &SeqdProcess, kib: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rss = server.rss_kib();
        if rss <= kib {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seqd kept {rss} KiB resident after the clients left (wanted at most {kib} KiB)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn never_reading_client_is_disconnected(io: &str) {
    let server = start(io, &[]);
    served(&server);
    let before = server.rss_kib();
    let greedy = server.connect();
    let peer = greedy.local_addr().unwrap();
    let attack = std::thread::spawn(move || flood(greedy, 1 << 30));
    // Everyone else is served meanwhile.
    for _ in 0..20 {
        served(&server);
    }
    let ended = attack.join().unwrap();
    assert!(matches!(ended, Ended::Closed), "{ended:?}");
    server.wait_for_log("--client-output-limit");
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains("--client-output-limit"))
        .unwrap();
    for part in [
        format!("peer={peer}"),
        "limit=4194304".to_owned(),
        "queued=".to_owned(),
    ] {
        assert!(line.contains(&part), "no {part:?} in the log line: {line}");
    }
    assert_eq!(
        info_field(&server, "client_output_buffer_limit_disconnections"),
        1
    );
    served(&server);
    // The limit's worth of replies was allocated for it, and is given back.
    rss_falls_to(&server, before + KEPT_AFTER_BURST_KIB);
}

fn many_never_reading_clients_are_capped(io: &str) {
    // Each client held (not closed) at about 2 MiB of unsent replies: the cap acts alone.
    let server = start(io, &["--client-output-limit=0", "--maxmemory-clients=8mb"]);
    served(&server);
    let before = server.rss_kib();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let client = server.connect();
            std::thread::spawn(move || flood(client, 1 << 30))
        })
        .collect();
    let ended: Vec<Ended> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let closed = ended.iter().filter(|e| matches!(e, Ended::Closed)).count();
    served(&server);
    server.wait_for_log("--maxmemory-clients");
    assert!(closed >= 1, "no client was closed: {ended:?}");
    assert!(info_field(&server, "evicted_clients") >= 1);
    let held = info_field(&server, "mem_clients_normal");
    assert!(
        held <= 8 << 20,
        "{held} bytes of unsent replies are held, over --maxmemory-clients"
    );
    let grown = server.rss_kib().saturating_sub(before);
    // The cap, plus what held clients' unread input costs (at most 1 MiB each).
    assert!(
        grown < 64 * 1024,
        "seqd grew by {grown} KiB for 16 clients that do not read"
    );
    // The memory is given back once they leave.
    drop(ended);
    let deadline = Instant::now() + PATIENCE;
    while info_field(&server, "connected_clients") > 1 {
        assert!(
            Instant::now() < deadline,
            "the clients' connections stayed open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rss_falls_to(&server, before + KEPT_AFTER_BURST_KIB);
    served(&server);
}

fn default_io() -> String {
    common::test_io().unwrap_or_else(|| "auto".into())
}

#[test]
fn never_reading_client_is_disconnected_default_backend() {
    never_reading_client_is_disconnected(&default_io());
}

#[test]
fn never_reading_client_is_disconnected_epoll() {
    never_reading_client_is_disconnected("epoll");
}

#[test]
fn many_never_reading_clients_are_capped_default_backend() {
    many_never_reading_clients_are_capped(&default_io());
}

#[test]
fn many_never_reading_clients_are_capped_epoll() {
    many_never_reading_clients_are_capped("epoll");
}

#[test]
fn a_limit_below_one_receive_of_replies_is_refused() {
    let (status, log) = SeqdProcess::start_failure(&["--client-output-limit=1kb"]);
    assert!(!status.success());
    assert!(
        log.contains("--client-output-limit") && log.contains("64kb"),
        "{log}"
    );
    let (status, log) = SeqdProcess::start_failure(&["--maxmemory-clients=4mib"]);
    assert!(!status.success());
    assert!(log.contains("unknown unit"), "{log}");
}
