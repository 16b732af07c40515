//! `--timeout`: a connection that sends nothing for that long is closed; one that keeps
//! talking is not. Against the real binary, on the backend SEQD_TEST_IO names and on epoll.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{SeqdProcess, read_line, read_to_close};

fn idle_connections_are_closed(io: &str) {
    let io = format!("--io={io}");
    let server = SeqdProcess::start_exact(&[
        "--host=127.0.0.1",
        "--port=0",
        "--threads=1",
        "--in-memory",
        "--timeout=1",
        &io,
    ]);
    let mut silent = server.connect();
    let mut used = server.connect();
    used.write_all(b"GETSEQ\r\n").unwrap();
    assert_eq!(read_line(&mut used), ":1");
    let mut talking = server.connect();
    // Keeps talking, every 200 ms, until the idle ones are closed.
    let started = Instant::now();
    let keep_talking = std::thread::spawn(move || {
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(4) {
            talking.write_all(b"PING\r\n").unwrap();
            assert_eq!(read_line(&mut talking), "+PONG");
            n += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        (talking, n)
    });
    // The server closes both idle connections (read_to_close waits for it, within the
    // harness's patience).
    assert!(read_to_close(&mut silent).is_empty());
    assert!(read_to_close(&mut used).is_empty());
    let (mut talking, n) = keep_talking.join().unwrap();
    assert!(n > 0);
    talking.write_all(b"GETSEQ\r\n").unwrap();
    assert_eq!(
        read_line(&mut talking),
        ":2",
        "a connection in use stays open"
    );
}

#[test]
fn idle_timeout_default_backend() {
    idle_connections_are_closed(&common::test_io().unwrap_or_else(|| "auto".into()));
}

#[test]
fn idle_timeout_epoll() {
    idle_connections_are_closed("epoll");
}

#[test]
fn no_timeout_by_default() {
    let server = SeqdProcess::start(&[]);
    let mut c = server.connect();
    std::thread::sleep(Duration::from_millis(1500));
    c.write_all(b"GETSEQ\r\n").unwrap();
    assert_eq!(read_line(&mut c), ":1");
}
