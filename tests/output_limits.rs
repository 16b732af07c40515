//! What clients that send without reading may cost: one is paused (its requests no longer
//! decoded, its input no longer read) once its replies back up, well before
//! `--client-output-limit`, which closes it, with a log line naming it, only when it is set
//! below the pause; what all of them hold (output buffers and held input, as allocated) is
//! capped by `--maxmemory-clients`, beyond which the largest are closed, so the process grows
//! by no more than the cap and its fixed buffers; and the memory is given back once they are
//! gone. Meanwhile other clients are served. Both backends (SEQD_TEST_IO=epoll runs the
//! default-backend tests on epoll too). `--client-output-limit 0` is tests/slow_reader.rs.

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

fn never_reading_client_is_paused(io: &str) {
    let server = start(io, &[]);
    served(&server);
    let before = server.rss_kib();
    let greedy = server.connect();
    let attack = std::thread::spawn(move || flood(greedy, 1 << 30));
    // Everyone else is served meanwhile.
    for _ in 0..20 {
        served(&server);
    }
    let ended = attack.join().unwrap();
    // Paused long before --client-output-limit (4mb): its requests are no longer decoded and
    // its input no longer read, so it cannot make seqd hold more.
    assert!(matches!(ended, Ended::Stalled { .. }), "{ended:?}");
    served(&server);
    assert!(
        !server.log().contains("--client-output-limit"),
        "{}",
        server.log()
    );
    assert_eq!(
        info_field(&server, "client_output_buffer_limit_disconnections"),
        0
    );
    // Its output buffers and the input that was in flight when it was paused (io_uring's
    // multishot receive may have brought a few MiB): a bound, however much it sends.
    let held = info_field(&server, "mem_clients_normal");
    assert!(
        held < 16 << 20,
        "{held} bytes held for a paused client: the pause did not bound it"
    );
    // Held memory is counted: the process grew by no more than that and its fixed buffers.
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown <= held / 1024 + KEPT_AFTER_BURST_KIB,
        "seqd grew by {grown} KiB for one paused client, counted as {held} bytes"
    );
    drop(ended);
    rss_falls_to(&server, before + KEPT_AFTER_BURST_KIB);
    served(&server);
}

fn a_limit_below_the_pause_disconnects(io: &str) {
    let server = start(io, &["--client-output-limit=64kb"]);
    served(&server);
    let greedy = server.connect();
    let peer = greedy.local_addr().unwrap();
    let attack = std::thread::spawn(move || flood(greedy, 1 << 30));
    served(&server);
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
        "limit=65536".to_owned(),
        "held=".to_owned(),
    ] {
        assert!(line.contains(&part), "no {part:?} in the log line: {line}");
    }
    assert_eq!(
        info_field(&server, "client_output_buffer_limit_disconnections"),
        1
    );
    served(&server);
}

fn many_never_reading_clients_are_capped(io: &str) {
    // Each client paused, not closed (no per-connection limit), holding a few hundred KiB of
    // output buffers and held input: 16 of them are over the cap, which acts alone.
    const CAP: u64 = 2 << 20;
    let cap = format!("--maxmemory-clients={CAP}");
    let server = start(io, &["--client-output-limit=0", &cap]);
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
    assert!(
        closed < 16,
        "every client was closed: the pause did not bound them"
    );
    assert!(info_field(&server, "evicted_clients") >= 1);
    let held = info_field(&server, "mem_clients_normal");
    assert!(
        held <= CAP,
        "{held} bytes are held for clients, over --maxmemory-clients"
    );
    // What is counted is what is held: the process grew by the cap and its fixed buffers at
    // most, whatever the clients sent.
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown <= CAP / 1024 + KEPT_AFTER_BURST_KIB,
        "seqd grew by {grown} KiB for 16 clients that do not read, with a cap of {CAP} bytes"
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
fn never_reading_client_is_paused_default_backend() {
    never_reading_client_is_paused(&default_io());
}

#[test]
fn never_reading_client_is_paused_epoll() {
    never_reading_client_is_paused("epoll");
}

#[test]
fn a_limit_below_the_pause_disconnects_default_backend() {
    a_limit_below_the_pause_disconnects(&default_io());
}

#[test]
fn a_limit_below_the_pause_disconnects_epoll() {
    a_limit_below_the_pause_disconnects("epoll");
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
