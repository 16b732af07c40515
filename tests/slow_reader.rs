//! A client that sends without ever reading, with `--client-output-limit 0` (no limit: such
//! clients are held, not closed; tests/output_limits.rs has the default): seqd stops
//! decoding its requests once about 128 KiB of replies waits (OUTPUT_HIGH_WATER) and stops
//! reading it, so its memory stays bounded however much it sends; other clients are served
//! meanwhile. Both backends.

mod common;

use std::io::{ErrorKind, Write};
use std::time::Duration;

use common::{SeqdProcess, read_line};

fn never_reading_client_is_held_with_bounded_memory(io: &str) {
    let io = format!("--io={io}");
    let server = SeqdProcess::start_exact(&[
        "--host=127.0.0.1",
        "--port=0",
        "--threads=1",
        "--in-memory",
        "--client-output-limit=0",
        &io,
    ]);
    let before = server.rss_kib();
    let mut greedy = server.connect();
    greedy
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = b"GETSEQ\r\n".repeat(8192); // 64 KiB of requests
    let mut sent: u64 = 0;
    // Up to 256 MiB: far more than the server buffers. The writes stall once it stops reading.
    while sent < 256 << 20 {
        match greedy.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(
        sent < 256 << 20,
        "the server kept reading a client that never reads"
    );
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "seqd grew by {grown} KiB for one client that does not read"
    );
    // Everyone else is served meanwhile.
    let mut other = server.connect();
    other.write_all(b"PING\r\nCURRENT\r\n").unwrap();
    assert_eq!(read_line(&mut other), "+PONG");
    let current: u64 = read_line(&mut other)[1..].parse().unwrap();
    assert!(
        current < sent / 8,
        "numbers were issued for requests never decoded"
    );
}

#[test]
fn never_reading_client_default_backend() {
    never_reading_client_is_held_with_bounded_memory(
        &common::test_io().unwrap_or_else(|| "auto".into()),
    );
}

#[test]
fn never_reading_client_epoll() {
    never_reading_client_is_held_with_bounded_memory("epoll");
}
