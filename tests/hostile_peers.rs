//! What attackers do at scale, against the real binary, each bounded to seconds: slowloris
//! with thousands of connections, RESP arrays split byte by byte or declaring huge lengths,
//! floods of new sequence names, lease ids and stream CONs (one address gets its share of the
//! table, then the per-peer refusal), idle connections filling a port, waves of expiries.
//! Each asserts what the attacker gets (a specific error), that the server's memory
//! stays bounded (RSS from /proc), and that a bystander keeps being served with correct
//! numbers meanwhile. No timings are asserted.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use seqd::protocol::stream::Message;
use seqd_test_support::{SeqdProcess, read_line, read_to_close};

fn command(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

/// The server's resident memory, in bytes.
fn rss(server: &SeqdProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// A fresh client's GETSEQ on the default sequence: the number it is answered.
fn bystander_getseq(server: &SeqdProcess) -> u64 {
    let reply = command(&mut server.connect(), "GETSEQ");
    reply
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a bystander's GETSEQ got {reply:?}"))
}

/// Lets this process open `needed` descriptors (the soft limit up to the hard one).
fn allow_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and setting this process's own limit through a live struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "this test needs {needed} open files; the hard limit is {} (ulimit -Hn)",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_cur.max(needed);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Whether the server closed `conn` (EOF or reset) rather than keeping it open and silent.
fn closed_by_server(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

#[test]
fn a_huge_array_sent_byte_by_byte_costs_its_sender_and_nobody_else() {
    let server = SeqdProcess::start_with_loops(1, &["--in-memory"]);
    let mut array = b"*1024\r\n$12\r\nGETSEQ_BATCH\r\n".to_vec();
    for _ in 1..1024 {
        array.extend_from_slice(b"$5\r\nabcde\r\n");
    }
    let mut attacker = server.connect();
    let mut expected = 1;
    for (i, byte) in array.iter().enumerate() {
        attacker.write_all(std::slice::from_ref(byte)).unwrap();
        if i % 2048 == 1024 {
            // Mid-array: a fresh client is answered, with the next number.
            assert_eq!(bystander_getseq(&server), expected);
            expected += 1;
        }
    }
    assert_eq!(
        read_line(&mut attacker),
        "-ERR wrong number of arguments: usage: GETSEQ_BATCH count [sequence]",
        "the whole array arrived and was decoded as one request"
    );
    assert_eq!(command(&mut attacker, "GETSEQ"), format!(":{expected}"));
}

#[test]
fn huge_declared_lengths_are_refused_by_name_and_allocate_nothing() {
    let server = SeqdProcess::start(&["--in-memory", "--max-connections=600"]);
    assert_eq!(bystander_getseq(&server), 1);
    let before = rss(&server);
    let cases: [(&[u8], &str); 3] = [
        (
            b"*2147483647\r\n",
            "-ERR malformed request: RESP array declares 2147483647 elements, more than the 1024 \
             a request may have; closing connection",
        ),
        (
            b"*1\r\n$999999999\r\n",
            "-ERR malformed request: RESP bulk string declares 999999999 bytes, more than the \
             65536 a request may have; closing connection",
        ),
        (
            b"*2\r\n$6\r\nGETSEQ\r\n$18446744073709551615\r\n",
            "-ERR malformed request: RESP bulk string declares 18446744073709551615 bytes, more \
             than the 65536 a request may have; closing connection",
        ),
    ];
    // 500 attackers at once, each declaring a huge size and then sending nothing more.
    let mut attackers: Vec<(TcpStream, &str)> = (0..500)
        .map(|i| {
            let (request, reply) = cases[i % cases.len()];
            let mut conn = server.connect();
            conn.write_all(request).unwrap();
            (conn, reply)
        })
        .collect();
    for (conn, reply) in &mut attackers {
        let answer = read_to_close(conn);
        assert_eq!(String::from_utf8_lossy(&answer), format!("{reply}\r\n"));
    }
    assert_eq!(bystander_getseq(&server), 2);
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 32 * MIB, "RSS grew by {} MiB", grown / MIB);
}

#[test]
fn slowloris_with_two_thousand_connections_leaves_others_served() {
    const CONNECTIONS: usize = 2000;
    allow_open_files(CONNECTIONS as u64 + 200);
    let server = SeqdProcess::start(&["--in-memory", "--max-connections=2100"]);
    let before = rss(&server);
    let mut slow: Vec<TcpStream> = (0..CONNECTIONS).map(|_| server.connect()).collect();
    let request = b"GETSEQ_BATCH 2\r\n";
    let mut bystander_numbers = Vec::new();
    // Every connection sends its request one byte at a time, all but the last byte.
    for i in 0..request.len() - 1 {
        for conn in &mut slow {
            conn.write_all(&request[i..i + 1]).unwrap();
        }
        bystander_numbers.push(bystander_getseq(&server));
    }
    let held = rss(&server).saturating_sub(before);
    assert!(
        held < 64 * MIB,
        "{CONNECTIONS} slow connections hold {} MiB",
        held / MIB
    );
    for conn in &mut slow {
        conn.write_all(b"\n").unwrap();
    }
    let mut issued = bystander_numbers.clone();
    for conn in &mut slow {
        assert_eq!(read_line(conn), "*2");
        let first: u64 = read_line(conn)[1..].parse().unwrap();
        let last: u64 = read_line(conn)[1..].parse().unwrap();
        assert_eq!(last, first + 1);
        issued.extend([first, last]);
    }
    issued.sort_unstable();
    let count = issued.len();
    issued.dedup();
    assert_eq!(issued.len(), count, "no number issued twice");
    assert!(bystander_numbers.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_flood_of_new_sequence_names_is_refused_and_others_are_served() {
    let server = SeqdProcess::start(&["--in-memory", "--max-sequences=64"]);
    let mut regular = server.connect();
    assert_eq!(command(&mut regular, "GETSEQ orders"), ":1");
    let before = rss(&server);
    let mut flood = Vec::new();
    for i in 0..5000 {
        flood.extend_from_slice(format!("GETSEQ flood-{i}\r\n").as_bytes());
    }
    let mut attacker = server.connect();
    attacker.write_all(&flood).unwrap();
    let mut created = 0;
    for _ in 0..5000 {
        let reply = read_line(&mut attacker);
        if reply == ":1" {
            created += 1;
        } else {
            assert_eq!(
                reply,
                "-LIMIT too many sequences: the limit is 64 (--max-sequences)"
            );
        }
    }
    assert_eq!(created, 62, "64 in all, with default and orders");
    assert_eq!(command(&mut regular, "GETSEQ orders"), ":2");
    assert_eq!(bystander_getseq(&server), 1);
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {} MiB", grown / MIB);
}

/// A connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is local): a
/// second peer, as the per-peer bounds count them.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let source: IpAddr = from.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

/// Reads a lease reply: its range, or the error line.
fn lease_reply(conn: &mut TcpStream) -> Result<(u64, u64), String> {
    let reply = read_line(conn);
    reply
        .split_once(',')
        .and_then(|(first, last)| Some((first.parse().ok()?, last.parse().ok()?)))
        .ok_or(reply)
}

#[test]
fn a_flood_of_lease_ids_from_one_address_gets_its_share_and_others_are_served() {
    let server = SeqdProcess::start_with_loops(
        1,
        &[
            "--in-memory",
            "--max-leases=500",
            "--max-leases-per-client=2",
        ],
    );
    let before = rss(&server);
    let flood = |from: usize| {
        let mut flood = Vec::new();
        for i in from..from + 3000 {
            flood.extend_from_slice(
                format!("GET_SEQUENCE_RANGE 10 client-{i} request-1\r\n").as_bytes(),
            );
        }
        flood
    };
    // A new client id per request, all from one address: it gets a quarter of the table
    // (the default --max-leases-per-peer), then the per-peer refusal.
    let mut attacker = server.connect();
    attacker.write_all(&flood(0)).unwrap();
    let mut leased = Vec::new();
    for _ in 0..3000 {
        match lease_reply(&mut attacker) {
            Ok(range) => leased.push(range),
            Err(reply) => assert_eq!(
                reply,
                "-LIMIT this address already holds 125 unacknowledged leases, the most one \
                 peer may hold (--max-leases-per-peer; clients behind one address share it); \
                 acknowledge some first"
            ),
        }
    }
    assert_eq!(leased.len(), 125);
    // Another address is served: the table is not full.
    let mut bystander = connect_from("127.0.0.2", server.addr);
    bystander
        .write_all(b"GET_SEQUENCE_RANGE 10 bystander r\r\n")
        .unwrap();
    leased.push(lease_reply(&mut bystander).unwrap());
    // Leases and GETSEQ share the default sequence and never overlap.
    let number = bystander_getseq(&server);
    assert!(
        leased
            .iter()
            .all(|&(first, last)| number < first || number > last)
    );
    assert_eq!(number, 1261, "after the 126 leases of 10");
    // Four addresses together can still fill the table: then --max-leases refuses.
    for (i, from) in ["127.0.0.3", "127.0.0.4", "127.0.0.5"].iter().enumerate() {
        let mut attacker = connect_from(from, server.addr);
        attacker.write_all(&flood(3000 * (i + 1))).unwrap();
        for _ in 0..3000 {
            if let Ok(range) = lease_reply(&mut attacker) {
                leased.push(range);
            }
        }
    }
    assert_eq!(leased.len(), 500);
    let mut late = connect_from("127.0.0.6", server.addr);
    late.write_all(b"GET_SEQUENCE_RANGE 10\r\n").unwrap();
    assert_eq!(
        lease_reply(&mut late),
        Err(
            "-LIMIT too many unacknowledged leases: the server tracks at most 500 \
             (--max-leases); retry later"
                .into()
        )
    );
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {} MiB", grown / MIB);
}

#[test]
fn a_flood_of_stream_cons_from_one_address_gets_its_share_and_others_are_served() {
    let server =
        SeqdProcess::start_with_loops(1, &["--in-memory", "--stream-port=0", "--max-streams=100"]);
    let to = server.stream_addr();
    let con = |conn: &mut TcpStream, id: &str| {
        let mut out = Vec::new();
        Message::Connect {
            count: 1,
            client_id: id.as_bytes(),
        }
        .encode(&mut out);
        conn.write_all(&out).unwrap();
    };
    // 300 streams from one address, each on its own connection: a quarter of --max-streams
    // (the default --max-streams-per-peer) is served, the rest refused.
    let mut flood: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut conn = TcpStream::connect(to).unwrap();
            con(&mut conn, &format!("flood-{i}"));
            conn
        })
        .collect();
    let refused = flood
        .iter_mut()
        .map(closed_by_server)
        .filter(|&closed| closed)
        .count();
    assert_eq!(refused, 275);
    // Another address is served meanwhile.
    let mut bystander = connect_from("127.0.0.2", to);
    con(&mut bystander, "bystander");
    let mut tag = [0u8; 3];
    bystander.read_exact(&mut tag).unwrap();
    assert_eq!(&tag, b"NUM", "the stream is served");
    // 275 refusals, one warning: the rest are counted, not logged one by one.
    server.wait_for_log("stream CON refused: this address already holds 25 streams");
    let warned = server
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("--max-streams-per-peer"))
        .count();
    assert_eq!(warned, 1, "{}", server.log());
    let mut conn = server.connect();
    conn.write_all(b"INFO stats\r\n").unwrap();
    let mut info = String::new();
    while !info.contains("streams_refused_per_peer:") {
        info.push_str(&read_line(&mut conn));
        info.push('\n');
    }
    assert!(info.contains("streams_refused_per_peer:275"), "{info}");
    assert_eq!(bystander_getseq(&server), 1);
}

#[test]
fn idle_stream_connections_never_take_the_main_ports_places() {
    let server = SeqdProcess::start_with_loops(
        1,
        &[
            "--in-memory",
            "--stream-port=0",
            "--max-connections=4",
            "--max-stream-connections=3",
        ],
    );
    let stream_port = server.stream_addr();
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(stream_port).unwrap())
        .collect();
    let mut over = TcpStream::connect(stream_port).unwrap();
    assert!(
        closed_by_server(&mut over),
        "a 4th stream connection is closed"
    );
    assert!(
        idle.iter_mut().all(|conn| !closed_by_server(conn)),
        "the first three stay open"
    );
    // The main port still has all its 4 places.
    let mut main: Vec<TcpStream> = (0..4).map(|_| server.connect()).collect();
    for (i, conn) in main.iter_mut().enumerate() {
        assert_eq!(command(conn, "GETSEQ"), format!(":{}", i + 1));
    }
    let mut fifth = server.connect();
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut fifth)),
        "-LIMIT max number of connections (4) reached (--max-connections); closing connection\r\n"
    );
    // A full main port leaves the stream port's places alone: one freed is taken again.
    drop(idle.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut conn = TcpStream::connect(stream_port).unwrap();
        if !closed_by_server(&mut conn) {
            again = Some(conn);
            break;
        }
    }
    let mut again = again.expect("the freed stream place is taken again");
    let mut con = Vec::new();
    Message::Connect {
        count: 1,
        client_id: b"late",
    }
    .encode(&mut con);
    again.write_all(&con).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tag = [0u8; 3];
    again.read_exact(&mut tag).unwrap();
    assert_eq!(&tag, b"NUM", "the stream is served");
    server.wait_for_log("connection refused: --max-stream-connections reached");
}

/// Waits until the log accounts for `total` events, as lines containing `single` (one event
/// each) and lines containing `summary` preceded by a count; asserts at most ten single lines
/// per summary line (one summary per window). Returns the log.
fn wait_for_counted(server: &SeqdProcess, total: u64, single: &str, summary: &str) -> String {
    for _ in 0..1000 {
        let log = server.log();
        let singles = log.lines().filter(|l| l.contains(single)).count() as u64;
        let summaries: Vec<u64> = log
            .lines()
            .filter_map(|l| l.split_once(summary))
            .filter_map(|(before, _)| before.rsplit(' ').next()?.parse().ok())
            .collect();
        if singles + summaries.iter().sum::<u64>() >= total {
            assert_eq!(singles + summaries.iter().sum::<u64>(), total, "{log}");
            assert!(
                !summaries.is_empty() && singles <= 10 * summaries.len() as u64,
                "{singles} lines one by one for {total}:\n{log}"
            );
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the log never accounted for {total} expiries:\n{}",
        server.log()
    );
}

#[test]
fn a_wave_of_expiries_is_logged_in_a_few_lines() {
    let server = SeqdProcess::start_with_loops(
        1,
        &[
            "--in-memory",
            "--lease-timeout=200ms",
            "--stream-port=0",
            "--stream-ttl=200ms",
        ],
    );
    let mut conn = server.connect();
    let mut requests = Vec::new();
    for i in 0..300 {
        requests.extend_from_slice(format!("GET_SEQUENCE_RANGE 1 wave-{i} r\r\n").as_bytes());
    }
    conn.write_all(&requests).unwrap();
    for _ in 0..300 {
        assert!(read_line(&mut conn).contains(','));
    }
    let mut streams = Vec::new();
    for i in 0..30 {
        let mut stream = TcpStream::connect(server.stream_addr()).unwrap();
        let mut con = Vec::new();
        Message::Connect {
            count: 5,
            client_id: format!("gone-{i}").as_bytes(),
        }
        .encode(&mut con);
        stream.write_all(&con).unwrap();
        streams.push(stream);
    }
    drop(streams);
    // All expire within the first second: ten lines one by one, the rest in one line each.
    let log = wait_for_counted(
        &server,
        300,
        "(client wave-",
        " more leases expired unacknowledged",
    );
    assert!(log.contains("more leases expired unacknowledged after 200ms (--lease-timeout)"));
    wait_for_counted(
        &server,
        30,
        "stream expired:",
        " streams expired: not heard from",
    );
    assert_eq!(bystander_getseq(&server), 301);
}
