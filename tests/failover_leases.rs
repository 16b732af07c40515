//! Leases and streams across a failover: their records live in etcd in cluster mode, so a
//! lease retried with the same ids after the leader was killed gets the same range from the
//! new leader, an acknowledgement given to the old leader is known to the new one, and a
//! stream resumes on the new leader where it was.
//!
//! Built with the `cluster` feature only: `cargo test --features cluster --test NAME`.
#![cfg(feature = "cluster")]

mod cluster_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cluster_support::{Etcd, Node, PATIENCE, free_port, log_dir};
use seqd::client::Client;
use seqd::stream_client::{self, Options, Outcome};

/// A text connection: one request line, one reply line.
struct Text {
    reader: BufReader<TcpStream>,
}

impl Text {
    fn connect(addr: SocketAddr) -> Text {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Text {
            reader: BufReader::new(stream),
        }
    }

    fn ask(&mut self, request: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{request}\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

/// Waits until `addr` issues numbers (it leads).
fn wait_until_leading(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut client) = Client::connect(addr) {
            let _ = client.set_timeout(Some(Duration::from_secs(2)));
            if client.get().is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never led");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stream_options(addr: SocketAddr, id: &str, count: u32, dir: &std::path::Path) -> Options {
    let mut options = Options::new(&addr.to_string(), id, count);
    options.state_dir = dir.to_owned();
    options.timeout = PATIENCE;
    options
}

#[test]
fn a_lease_retried_on_the_new_leader_gets_its_range_and_a_stream_resumes_there() {
    let etcd = Etcd::start(1);
    let logs = log_dir();
    let prefix = format!("--etcd-prefix=/leases-{}", std::process::id());
    let pace = ["--stream-interval=2ms", "--stream-burst=4"];
    let start = |id: u64| {
        let stream_port = format!("--stream-port={}", free_port());
        let node = Node::start(
            &etcd,
            id,
            logs.path(),
            &[&prefix, &stream_port, pace[0], pace[1]],
        );
        let stream_addr: SocketAddr = format!(
            "127.0.0.1:{}",
            stream_port.trim_start_matches("--stream-port=")
        )
        .parse()
        .unwrap();
        (node, stream_addr)
    };
    let (mut first, first_streams) = start(1);
    wait_until_leading(first.addr);
    let (second, second_streams) = start(2);

    // On the first leader: a lease left outstanding, one acknowledged, a stream half read.
    let mut text = Text::connect(first.addr);
    let outstanding = text.ask("GET_SEQUENCE_RANGE 20 scanner-7 r1");
    let acknowledged = text.ask("GET_SEQUENCE_RANGE 5 scanner-7 r2");
    assert!(outstanding.contains(','), "{outstanding}");
    assert_eq!(text.ask(&format!("ACK {acknowledged}")), "+OK");
    let states = tempfile::tempdir().unwrap();
    let mut stream = stream_options(first_streams, "reader", 300, states.path());
    stream.stop_after = Some(100);
    let stop = AtomicBool::new(false);
    let interrupted = stream_client::run(&stream, &stop, |_| {}).expect("stream on the leader");
    assert_eq!(interrupted, Outcome::Interrupted);

    // The leader dies; the standby takes over once its lease expires.
    first.kill();
    wait_until_leading(second.addr);

    let mut text = Text::connect(second.addr);
    assert_eq!(
        text.ask("GET_SEQUENCE_RANGE 20 scanner-7 r1"),
        outstanding,
        "a retried lease gets the range the old leader granted; log:\n{}",
        second.log()
    );
    assert_eq!(text.ask(&format!("ACK {outstanding}")), "+OK");
    assert_eq!(
        text.ask("GET_SEQUENCE_RANGE 5 scanner-7 r2"),
        acknowledged,
        "the acknowledged lease is remembered too"
    );
    // New numbers are above every lease the old leader granted.
    let last: u64 = outstanding
        .split(',')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    let mut client = Client::connect(second.addr).unwrap();
    assert!(client.get().unwrap() > last);

    stream.addr = second_streams.to_string();
    stream.stop_after = None;
    let outcome = stream_client::run(&stream, &stop, |_| {}).unwrap_or_else(|e| {
        panic!(
            "the stream did not resume on the new leader: {e}; log:\n{}",
            second.log()
        )
    });
    assert!(matches!(outcome, Outcome::Verified { .. }));
    assert!(
        second.log().contains("stream resumed client_id=\"reader\""),
        "{}",
        second.log()
    );
}
