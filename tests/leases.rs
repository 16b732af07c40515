//! Range leases (seed 000) against the real binary: the seed's exchange, retries with the
//! same ids (also across SIGTERM and kill -9 restarts), expiry, acknowledgements that do not
//! match, limits, and the binary client.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use seqd::protocol::ErrorCode;
use seqd_test_support::{SeqdProcess, read_line, read_to_close, temp_dir};

fn command(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

/// `start,end` as the seed's client parses it.
fn range(reply: &str) -> (u64, u64) {
    let (start, end) = reply
        .split_once(',')
        .unwrap_or_else(|| panic!("not a range: {reply:?}"));
    (start.parse().unwrap(), end.parse().unwrap())
}

fn data_dir_arg(dir: &Path) -> String {
    format!("--data-dir={}", dir.display())
}

#[test]
fn seed_000_exchange_as_telnet_and_nc_send_it() {
    // One event loop: leases and GETSEQ reserve from single-writer sequences.
    let server = SeqdProcess::start_with_loops(1, &["--initial=1001"]);
    let mut conn = server.connect();
    assert_eq!(command(&mut conn, "GET_SEQUENCE_RANGE 20"), "1001,1020");
    assert_eq!(command(&mut conn, "ACK 1001,1020"), "+OK");
    assert_eq!(
        command(&mut conn, "GETSEQ"),
        ":1021",
        "leases and GETSEQ never overlap"
    );
    assert_eq!(command(&mut conn, "GET_SEQUENCE_RANGE 5"), "1022,1026");
    // An `ACK start,end` without a line ending, then a close, is discarded as Redis discards
    // an unfinished command: `ACK 1022,102` may be the start of `ACK 1022,1026`.
    let mut conn = server.connect();
    conn.write_all(b"ACK 1022,1026").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut conn), b"");
    let mut conn = server.connect();
    assert_eq!(
        command(&mut conn, "LEASES"),
        "+outstanding=1 granted=2 acknowledged=1 retired=0 returned=0 reused=0"
    );
    assert_eq!(command(&mut conn, "ACK 1022,1026"), "+OK");
    assert_eq!(
        command(&mut conn, "LEASES"),
        "+outstanding=0 granted=2 acknowledged=2 retired=0 returned=0 reused=0"
    );
    // From a named sequence, and as a RESP status for redis-cli.
    conn.write_all(b"*3\r\n$18\r\nGET_SEQUENCE_RANGE\r\n$1\r\n3\r\n$6\r\norders\r\n")
        .unwrap();
    assert_eq!(
        read_line(&mut conn),
        "+1001,1003",
        "new sequences begin at --initial"
    );
    assert_eq!(command(&mut conn, "ACK 1001,1003 orders"), "+OK");
}

#[test]
fn a_retry_gets_the_same_range_also_after_sigterm_and_kill_9() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    // One event loop before the restarts (single-writer sequences), two after.
    let mut server = SeqdProcess::start_with_loops(1, &[&data_dir]);
    let mut conn = server.connect();
    let first = command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r1");
    // The reply was "lost": the client asks again, on a new connection.
    let mut conn = server.connect();
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r1"),
        first
    );
    let other = command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r2");
    assert_ne!(other, first);
    let anonymous = command(&mut conn, "GET_SEQUENCE_RANGE 7");
    drop(conn);

    assert!(server.terminate().success());
    let mut server = SeqdProcess::start(&[&data_dir]);
    assert!(
        server
            .log()
            .contains("recovered 3 leases (3 unacknowledged)"),
        "{}",
        server.log()
    );
    let mut conn = server.connect();
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r1"),
        first
    );
    // An ACK after the restart, of a lease granted before it.
    let (start, end) = range(&anonymous);
    assert_eq!(command(&mut conn, &format!("ACK {start},{end}")), "+OK");
    let later = command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r3");
    drop(conn);

    server.kill(); // the lease r3 was answered, so it is on disk
    let server = SeqdProcess::start(&[&data_dir]);
    let mut conn = server.connect();
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r3"),
        later
    );
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 20 scanner-7 r1"),
        first
    );
    let (start, end) = range(&first);
    assert_eq!(command(&mut conn, &format!("ACK {start},{end}")), "+OK");
    assert_eq!(
        command(&mut conn, &format!("ACK {start},{end}")),
        "+OK",
        "repeated ACK"
    );
    // Nothing granted before the crash is handed out again.
    let (_, highest) = range(&later);
    let (fresh, _) = range(&command(&mut conn, "GET_SEQUENCE_RANGE 1"));
    assert!(fresh > highest, "{fresh} was issued again");
    assert!(command(&mut conn, "GETSEQ")[1..].parse::<u64>().unwrap() > fresh);
}

#[test]
fn unacknowledged_leases_expire_and_are_retired() {
    let server = SeqdProcess::start(&["--lease-timeout=300ms"]);
    let mut conn = server.connect();
    let (start, end) = range(&command(&mut conn, "GET_SEQUENCE_RANGE 10 c1 r1"));
    server.wait_for_log("expired unacknowledged after 300ms: retired");
    let expired = format!(
        "-EXPIRED lease {start},{end} expired before it was acknowledged (--lease-timeout); \
         it was retired: its numbers will never be issued again"
    );
    assert_eq!(command(&mut conn, &format!("ACK {start},{end}")), expired);
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 10 c1 r1"),
        expired,
        "a late retry"
    );
    assert!(command(&mut conn, "LEASES").contains(" retired=1 "));
    let (next, _) = range(&command(&mut conn, "GET_SEQUENCE_RANGE 10"));
    assert!(next > end, "a retired range is never reissued");
}

#[test]
fn with_lease_reuse_an_expired_range_is_handed_out_again() {
    let server = SeqdProcess::start(&["--lease-timeout=500ms", "--lease-reuse"]);
    assert!(server.log().contains("--lease-reuse: numbers of leases"));
    let mut conn = server.connect();
    let first = command(&mut conn, "GET_SEQUENCE_RANGE 10");
    server.wait_for_log("go to the reuse pool once it is forgotten");
    // Remembered for one more timeout (a late ACK is told), then pooled; the sleep leaves a
    // second of slack for a busy machine's expiry check.
    std::thread::sleep(Duration::from_millis(1500));
    let reused = command(&mut conn, "GET_SEQUENCE_RANGE 10");
    assert_eq!(reused, first);
    // Acknowledged at once, so that it cannot expire (and be returned) before LEASES.
    assert_eq!(command(&mut conn, &format!("ACK {reused}")), "+OK");
    let leases = command(&mut conn, "LEASES");
    assert!(leases.ends_with("returned=1 reused=1"), "{leases}");
}

#[test]
fn acks_that_match_no_lease_get_specific_errors() {
    let server = SeqdProcess::start(&["--initial=1001"]);
    let mut conn = server.connect();
    assert_eq!(command(&mut conn, "GET_SEQUENCE_RANGE 20"), "1001,1020");
    assert_eq!(
        command(&mut conn, "ACK 1,5"),
        "-NOLEASE no lease has the range 1,5 (never granted, already forgotten, or of another \
         sequence)"
    );
    assert_eq!(
        command(&mut conn, "ACK 1001,1019"),
        "-NOLEASE no lease has the range 1001,1019: the lease holding 1001 is 1001,1020"
    );
    assert_eq!(
        command(&mut conn, "ACK 1001,1020 orders"),
        "-NOLEASE no lease has the range 1001,1020 (never granted, already forgotten, or of \
         another sequence)"
    );
    assert!(command(&mut conn, "ACK 1020,1001").starts_with("-ERR '1020,1001' is not a range"));
    assert_eq!(
        command(&mut conn, "ACK 1001,1020"),
        "+OK",
        "the connection still works"
    );
}

#[test]
fn lease_limits_are_enforced_with_the_flag_named() {
    let server = SeqdProcess::start(&[
        "--max-batch=100",
        "--max-leases-per-client=2",
        "--max-leases=3",
        // One address fills the table here: no per-peer bound (tests/peer_bounds.rs has it).
        "--max-leases-per-peer=0",
    ]);
    let mut conn = server.connect();
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 101"),
        "-ERR lease size must be between 1 and 100 (--max-batch)"
    );
    assert_eq!(
        command(&mut conn, "GET_SEQUENCE_RANGE 0"),
        "-ERR lease size must be between 1 and 100 (--max-batch)"
    );
    command(&mut conn, "GET_SEQUENCE_RANGE 1 c 1");
    command(&mut conn, "GET_SEQUENCE_RANGE 1 c 2");
    assert!(
        command(&mut conn, "GET_SEQUENCE_RANGE 1 c 3")
            .starts_with("-LIMIT this client already holds 2 unacknowledged leases")
    );
    command(&mut conn, "GET_SEQUENCE_RANGE 1");
    assert!(
        command(&mut conn, "GET_SEQUENCE_RANGE 1")
            .starts_with("-LIMIT too many unacknowledged leases: the server tracks at most 3")
    );
    assert!(command(&mut conn, "GET_SEQUENCE_RANGE 1 bad/id 1").starts_with("-ERR bad client id"));
    assert!(
        command(&mut conn, "GETSEQ").starts_with(':'),
        "still serving"
    );
}

#[test]
fn binary_client_leases_and_acknowledges() {
    let dir = temp_dir();
    let data_dir = data_dir_arg(dir.path());
    let mut server = SeqdProcess::start(&[&data_dir]);
    let mut client = server.client();
    let orders = client.open("orders").unwrap();
    let lease = client.lease(orders, 20, Some(("app-1", "7"))).unwrap();
    assert_eq!(lease.end - lease.start, 20);
    assert_eq!(
        client.lease(orders, 20, Some(("app-1", "7"))).unwrap(),
        lease
    );
    let anonymous = client.lease(0, 3, None).unwrap();
    server.kill();
    let server = SeqdProcess::start(&[&data_dir]);
    let mut client = server.client();
    let orders = client.open("orders").unwrap();
    assert_eq!(
        client.lease(orders, 20, Some(("app-1", "7"))).unwrap(),
        lease
    );
    client.ack(orders, lease.clone()).unwrap();
    client.ack(0, anonymous).unwrap();
    let err = client.ack(orders, lease.start..lease.end - 1).unwrap_err();
    assert!(
        matches!(
            err,
            seqd::client::ClientError::Server {
                code: ErrorCode::NoLease,
                ..
            }
        ),
        "{err}"
    );
    assert!(client.get_from(orders).unwrap() >= lease.end);
}
