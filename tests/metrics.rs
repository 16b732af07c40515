//! `--metrics-addr`: scraped over HTTP from the real binary, checked by `promtool check
//! metrics` (Debian's prometheus package) and read for the values the test caused.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::{SeqdProcess, read_line, which};

fn metrics_addr(server: &SeqdProcess) -> SocketAddr {
    server.wait_for_log("metrics (Prometheus) listening on ");
    let log = server.log();
    log.lines()
        .find_map(|line| line.split("metrics (Prometheus) listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
}

/// A RESP bulk string's text (`$len` then the bytes), as INFO answers an inline request.
fn read_bulk(stream: &mut TcpStream) -> String {
    let header = read_line(stream);
    let len: usize = header
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a bulk string: {header:?}"));
    let bytes = common::read_exactly(stream, len + 2);
    String::from_utf8(bytes[..len].to_vec())
        .unwrap()
        .replace("\r\n", "\n")
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: seqd\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_owned()
}

#[test]
fn metrics_are_valid_exposition_and_count_what_happened() {
    let server = SeqdProcess::start(&["--metrics-addr=127.0.0.1:0", "--requirepass=pw"]);
    let mut c = server.connect();
    c.write_all(b"AUTH nope\r\n").unwrap();
    assert!(read_line(&mut c).starts_with("-WRONGPASS"));
    c.write_all(b"AUTH pw\r\nGETSEQ\r\nINCR orders\r\n")
        .unwrap();
    assert_eq!(read_line(&mut c), "+OK");
    assert_eq!(read_line(&mut c), ":1");
    assert_eq!(read_line(&mut c), ":1");

    let body = scrape(metrics_addr(&server));
    for expected in [
        "seqd_auth_failures_total 1",
        "seqd_connections 1",
        "seqd_sequence_next{sequence=\"default\"} 2",
        "seqd_sequence_next{sequence=\"orders\"} 2",
        "seqd_sequences 2",
        "seqd_connections_received_total 1",
        "seqd_rejected_connections_total 0",
        "seqd_requests_total{protocol=\"inline\"} 4",
        "seqd_requests_total{protocol=\"binary\"} 0",
        "seqd_errors_total{kind=\"WRONGPASS\"} 1",
        "seqd_client_output_limit_bytes 4194304",
        "seqd_maxmemory_clients_bytes 268435456",
        "seqd_client_output_limit_disconnections_total 0",
    ] {
        assert!(
            body.lines().any(|l| l == expected),
            "no {expected:?} in:\n{body}"
        );
    }
    assert!(body.contains("seqd_sequence_ceiling_headroom{sequence=\"default\"}"));

    // INFO reads the same counters (the INFO request itself is counted once it is answered).
    c.write_all(b"INFO\r\n").unwrap();
    let info = read_bulk(&mut c);
    for expected in [
        "connected_clients:1",
        "total_connections_received:1",
        "total_commands_processed:4",
        "rejected_connections:0",
        "total_error_replies:1",
        "client_output_buffer_limit_disconnections:0",
        "evicted_clients:0",
        "seqd_requests_inline:4",
        "errorstat_WRONGPASS:count=1",
        "seqd_auth_failures:1",
    ] {
        assert!(
            info.lines().any(|l| l == expected),
            "no {expected:?} in INFO:\n{info}"
        );
    }
    let body = scrape(metrics_addr(&server));
    assert!(
        body.lines()
            .any(|l| l == "seqd_requests_total{protocol=\"inline\"} 5"),
        "INFO is a request too:\n{body}"
    );

    if which("promtool").is_none() {
        eprintln!("SKIPPED promtool check: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
