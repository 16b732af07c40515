//! `--max-leases-per-peer` and `--max-streams-per-peer` against the real binary, on the
//! backend SEQD_TEST_IO names and on epoll: one client address fills its share and gets the
//! specific refusal, whatever client ids and connections it uses; another address (a second
//! loopback address, 127.0.0.2, that the client socket is bound to) is served meanwhile; a
//! lease acknowledged or a stream finished gives the place back; numbers are never issued
//! twice. Also: plaintext and TLS connections of one address share its bound, and leases
//! recovered after a restart count against no address.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use seqd::protocol::stream::{self as wire, Message};
use seqd::protocol::{ParseError, ParseOk};
use seqd_test_support::pki::Pki;
use seqd_test_support::{PATIENCE, SeqdProcess, free_port, read_line, temp_dir, test_io};

const OTHER_PEER: &str = "127.0.0.2";

/// A connection to `to` whose source address is `from` (any loopback address: all of
/// 127.0.0.0/8 is local).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let source: IpAddr = from.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("cannot bind a client socket to {from}: {e}"));
    socket.connect(&to.into()).unwrap();
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.set_nodelay(true).unwrap();
    conn
}

fn command(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

/// A lease reply `first,last` as its range.
fn range(reply: &str) -> (u64, u64) {
    reply
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or_else(|| panic!("not a lease: {reply:?}"))
}

/// The value of `field` in `INFO`'s answer.
fn info_field(conn: &mut TcpStream, field: &str) -> u64 {
    conn.write_all(b"INFO stats\r\n").unwrap();
    let header = read_line(conn);
    let len: usize = header[1..].parse().unwrap();
    let mut body = vec![0u8; len + 2];
    conn.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{body}"))
}

fn backends() -> [String; 2] {
    [
        format!("--io={}", test_io().unwrap_or_else(|| "auto".into())),
        "--io=epoll".into(),
    ]
}

const PEER_LEASE_LIMIT: &str = "-LIMIT this address already holds 3 unacknowledged leases, the \
     most one peer may hold (--max-leases-per-peer; clients behind one address share it); \
     acknowledge some first";

fn leases_are_bounded_per_peer(io: &str) {
    let server = SeqdProcess::start_with_loops(
        1,
        &[
            "--in-memory",
            io,
            "--max-leases=100",
            "--max-leases-per-peer=3",
            "--max-leases-per-client=100",
            "--metrics-addr=127.0.0.1:0",
        ],
    );
    let mut issued = HashSet::new();
    let mut take = |reply: String| {
        let (first, last) = range(&reply);
        assert!((first..=last).all(|n| issued.insert(n)), "{reply} repeats");
        (first, last)
    };
    let mut first_peer = connect_from("127.0.0.1", server.addr);
    let held: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            take(command(
                &mut first_peer,
                &format!("GET_SEQUENCE_RANGE 10 c{i} r"),
            ))
        })
        .collect();
    // Another client id, no client id, another connection: the address is what counts.
    assert_eq!(
        command(&mut first_peer, "GET_SEQUENCE_RANGE 10 c9 r"),
        PEER_LEASE_LIMIT
    );
    assert_eq!(
        command(&mut first_peer, "GET_SEQUENCE_RANGE 10"),
        PEER_LEASE_LIMIT
    );
    let mut again = connect_from("127.0.0.1", server.addr);
    assert_eq!(
        command(&mut again, "GET_SEQUENCE_RANGE 10 c10 r"),
        PEER_LEASE_LIMIT
    );
    // A retry of a lease it holds takes nothing more: the same range.
    assert_eq!(
        range(&command(&mut again, "GET_SEQUENCE_RANGE 10 c0 r")),
        held[0]
    );
    // Everyone else keeps being served.
    let mut second_peer = connect_from(OTHER_PEER, server.addr);
    for i in 0..3 {
        take(command(
            &mut second_peer,
            &format!("GET_SEQUENCE_RANGE 10 d{i} r"),
        ));
    }
    assert_eq!(command(&mut second_peer, "GETSEQ"), ":61");
    // An acknowledged lease gives its place back.
    let (start, end) = held[1];
    assert_eq!(
        command(&mut first_peer, &format!("ACK {start},{end}")),
        "+OK"
    );
    take(command(&mut again, "GET_SEQUENCE_RANGE 10 c11 r"));
    assert_eq!(
        command(&mut again, "GET_SEQUENCE_RANGE 10 c12 r"),
        PEER_LEASE_LIMIT
    );
    assert_eq!(info_field(&mut second_peer, "leases_refused_per_peer"), 4);
    assert_eq!(info_field(&mut second_peer, "leases_outstanding"), 6);
    let metrics = scrape_metrics(&server);
    assert!(
        metrics
            .lines()
            .any(|line| line == "seqd_leases_refused_per_peer_total 4"),
        "{metrics}"
    );
}

/// The /metrics page of a server started with `--metrics-addr=127.0.0.1:0`.
fn scrape_metrics(server: &SeqdProcess) -> String {
    let marker = "metrics (Prometheus) listening on ";
    server.wait_for_log(marker);
    let addr: SocketAddr = server
        .log()
        .lines()
        .find_map(|line| line.split(marker).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .expect("the metrics address in the log");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: seqd\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn leases_are_bounded_per_peer_default_backend() {
    leases_are_bounded_per_peer(&backends()[0]);
}

#[test]
fn leases_are_bounded_per_peer_epoll() {
    leases_are_bounded_per_peer(&backends()[1]);
}

/// A raw stream connection from `from` that has sent its `CON`.
fn stream_from(from: &str, to: SocketAddr, count: u32, client_id: &str) -> TcpStream {
    let mut conn = connect_from(from, to);
    send(
        &mut conn,
        &Message::Connect {
            count,
            client_id: client_id.as_bytes(),
        },
    );
    conn
}

fn send(conn: &mut TcpStream, message: &Message<'_>) {
    let mut out = Vec::new();
    message.encode(&mut out);
    conn.write_all(&out).unwrap();
}

/// What a stream connection receives until the server closes it, or until `count` numbers
/// and the checksum came: each number once, acknowledged as it arrives. Returns the numbers
/// and whether the server closed the connection before sending any.
fn serve_stream(conn: &mut TcpStream, count: u32) -> (Vec<u32>, bool) {
    let mut input = Vec::new();
    let mut numbers = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut pos = 0;
        loop {
            match wire::decode(&input[pos..]) {
                Ok(ParseOk { message, consumed }) => {
                    pos += consumed;
                    match message {
                        Message::Number { sequence, number } => {
                            if !numbers.contains(&number) {
                                numbers.push(number);
                            }
                            send(conn, &Message::Ack { sequence });
                        }
                        Message::Checksum { sequence, .. } => {
                            assert_eq!(numbers.len(), count as usize);
                            send(conn, &Message::Ack { sequence });
                            return (numbers, false);
                        }
                        other => panic!("the server sent {other:?}"),
                    }
                }
                Err(ParseError::Incomplete(_)) => break,
                Err(ParseError::Fatal(problem)) => panic!("garbage from the server: {problem}"),
            }
        }
        input.drain(..pos);
        assert!(Instant::now() < deadline, "the server stopped sending");
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return (numbers.clone(), numbers.is_empty()),
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the server closes `conn` without sending anything (rather than serving it, or
/// keeping it open and silent).
fn refused(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Reads one `NUM` from a stream connection: the stream is served.
fn served(conn: &mut TcpStream) -> bool {
    let mut tag = [0u8; 3];
    conn.read_exact(&mut tag).is_ok() && &tag == b"NUM"
}

fn streams_are_bounded_per_peer(io: &str) {
    let server = SeqdProcess::start_with_loops(
        1,
        &[
            "--in-memory",
            io,
            "--stream-port=0",
            "--max-streams=100",
            "--max-streams-per-peer=2",
            "--metrics-addr=127.0.0.1:0",
        ],
    );
    let to = server.stream_addr();
    let mut a = stream_from("127.0.0.1", to, 3, "a");
    let mut b = stream_from("127.0.0.1", to, 3, "b");
    assert!(served(&mut a) && served(&mut b));
    let mut c = stream_from("127.0.0.1", to, 3, "c");
    assert!(refused(&mut c), "a third stream of one address is refused");
    server.wait_for_log(
        "stream CON refused: this address already holds 2 streams, the most one peer may hold \
         (--max-streams-per-peer",
    );
    // Another address is served meanwhile.
    let mut d = stream_from(OTHER_PEER, to, 3, "d");
    let (d_numbers, _) = serve_stream(&mut d, 3);
    assert_eq!(d_numbers.len(), 3);
    // A resume of a stream the address holds is not a new stream: served.
    drop(b);
    let mut b = stream_from("127.0.0.1", to, 3, "b");
    let (b_numbers, _) = serve_stream(&mut b, 3);
    assert_eq!(b_numbers.len(), 3);
    // "b" finished: its place is given back.
    let mut c = None;
    for _ in 0..100 {
        let mut conn = stream_from("127.0.0.1", to, 3, "c");
        match serve_stream(&mut conn, 3) {
            (numbers, false) => {
                c = Some(numbers);
                break;
            }
            // Not yet: the finishing ACK may still be on its way.
            (_, true) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let c_numbers = c.expect("the address may open a stream again once one finished");
    let (mut a_numbers, _) = {
        drop(a);
        let mut a = stream_from("127.0.0.1", to, 3, "a");
        serve_stream(&mut a, 3)
    };
    a_numbers.extend(b_numbers);
    a_numbers.extend(c_numbers);
    a_numbers.extend(d_numbers);
    let unique: HashSet<u32> = a_numbers.iter().copied().collect();
    assert_eq!(unique.len(), 12, "no number issued twice: {a_numbers:?}");
    let mut main = server.connect();
    let refused = info_field(&mut main, "streams_refused_per_peer");
    assert!(refused >= 1);
    let metrics = scrape_metrics(&server);
    assert!(
        metrics
            .lines()
            .any(|line| line == format!("seqd_streams_refused_per_peer_total {refused}")),
        "{metrics}"
    );
}

#[test]
fn streams_are_bounded_per_peer_default_backend() {
    streams_are_bounded_per_peer(&backends()[0]);
}

#[test]
fn streams_are_bounded_per_peer_epoll() {
    streams_are_bounded_per_peer(&backends()[1]);
}

#[test]
fn plaintext_and_tls_connections_of_one_address_share_its_bound() {
    let pki = Pki::new();
    // A port of its own for plaintext: --port 0 with --tls-port would serve TLS alone.
    let mut args = vec![
        "--host=127.0.0.1".to_string(),
        format!("--port={}", free_port()),
        "--threads=1".to_string(),
        "--in-memory".to_string(),
        "--max-leases-per-peer=2".to_string(),
    ];
    args.extend(pki.server_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = SeqdProcess::start_exact(&args);
    let config = seqd::client::tls::client_config(&pki.path("ca.crt")).unwrap();
    let mut tls =
        seqd::client::Client::connect_tls(server.tls_addr(), config, "localhost").unwrap();
    tls.set_timeout(Some(PATIENCE)).unwrap();
    let mut plain = server.client();
    plain.lease(0, 5, Some(("p", "1"))).unwrap();
    tls.lease(0, 5, Some(("t", "1"))).unwrap();
    for client in [&mut plain, &mut tls] {
        match client.lease(0, 5, Some(("x", "1"))) {
            Err(seqd::client::ClientError::Server {
                code,
                detail,
                message,
            }) => {
                assert_eq!(code, seqd::protocol::ErrorCode::Limit);
                assert_eq!(detail, 2);
                assert!(message.contains("--max-leases-per-peer"), "{message}");
            }
            other => panic!("a third lease of one address: {other:?}"),
        }
    }
}

#[test]
fn leases_recovered_after_a_restart_count_against_no_peer() {
    let dir = temp_dir();
    let data_dir = format!("--data-dir={}", dir.path().display());
    let args = [data_dir.as_str(), "--max-leases-per-peer=2"];
    let mut server = SeqdProcess::start_with_loops(1, &args);
    let mut conn = server.connect();
    let before: Vec<(u64, u64)> = (0..2)
        .map(|i| range(&command(&mut conn, &format!("GET_SEQUENCE_RANGE 5 r{i} q"))))
        .collect();
    assert!(command(&mut conn, "GET_SEQUENCE_RANGE 5 r2 q").starts_with("-LIMIT this address"));
    drop(conn);
    assert!(server.terminate().success());

    let server = SeqdProcess::start_with_loops(1, &args);
    let mut conn = server.connect();
    // The recovered leases are still there (a retry finds them) but no address holds them.
    assert_eq!(
        range(&command(&mut conn, "GET_SEQUENCE_RANGE 5 r0 q")),
        before[0]
    );
    let after: Vec<(u64, u64)> = (2..4)
        .map(|i| range(&command(&mut conn, &format!("GET_SEQUENCE_RANGE 5 r{i} q"))))
        .collect();
    assert!(command(&mut conn, "GET_SEQUENCE_RANGE 5 r4 q").starts_with("-LIMIT this address"));
    let highest = before.iter().map(|r| r.1).max().unwrap();
    assert!(
        after.iter().all(|r| r.0 > highest),
        "nothing granted before the restart is handed out again: {before:?} {after:?}"
    );
}
