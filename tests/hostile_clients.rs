//! Issue 20: what one unprivileged client (or local user) can do to everyone else, tried
//! against the real binary as a bounded attack, with what a bystander observes meanwhile.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use seqd_test_support::{SeqdProcess, read_line, temp_dir};

fn data_dir_arg(dir: &Path) -> String {
    format!("--data-dir={}", dir.display())
}

fn command(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---- item 5: the data directory ----

#[test]
fn a_symlink_planted_at_state_tmp_is_not_followed() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    let victim = parent.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let server = SeqdProcess::start(&[&data_dir_arg(&data), "--max-crash-gap=10"]);
    std::os::unix::fs::symlink(&victim, data.join("state.tmp")).unwrap();
    let mut conn = server.connect();
    // Past the ceiling: seqd must write (a journal entry, or a new state through
    // `state.tmp` when it compacts) to answer.
    for _ in 0..50 {
        let number = command(&mut conn, "GETSEQ default");
        assert!(number.starts_with(':'), "{number}");
    }
    let bystander = command(&mut server.connect(), "GETSEQ default");
    assert!(bystander.starts_with(':'), "{bystander}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_symlink_planted_at_the_journal_is_not_followed() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    let victim = parent.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let server = SeqdProcess::start(&[&data_dir_arg(&data), "--max-crash-gap=10"]);
    let journal = data.join("journal");
    let _ = std::fs::remove_file(&journal);
    std::os::unix::fs::symlink(&victim, &journal).unwrap();
    let mut conn = server.connect();
    // Past the ceiling a raise must be written: through the link it must not be. Refusing
    // (the disk is "unavailable") is acceptable, writing into the victim is not.
    for _ in 0..50 {
        let reply = command(&mut conn, "GETSEQ default");
        if !reply.starts_with(':') {
            assert!(reply.starts_with('-'), "{reply}");
            break;
        }
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_symlink_planted_at_the_lock_file_stops_the_start_and_is_not_followed() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = parent.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("seqd.lock")).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&data)]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("seqd.lock"), "{log}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_data_directory_others_can_write_is_refused_with_the_fix_named() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&data)]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("chmod 700 {}", data.display())),
        "{log}"
    );
    assert!(!data.join("state").exists(), "nothing was written: {log}");
}

#[test]
fn a_symlinked_data_directory_is_refused() {
    let parent = temp_dir();
    let real = parent.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = parent.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&link)]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("is a symlink"), "{log}");
}

#[test]
fn under_umask_000_the_data_directory_is_created_0700() {
    let parent = temp_dir();
    let data = parent.path().join("fresh/data");
    let server = SeqdProcess::start_with_umask(0, &[&data_dir_arg(&data)]);
    assert_eq!(command(&mut server.connect(), "GETSEQ default"), ":1");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&parent.path().join("fresh")), 0o700);
}

// ---- item 7: acknowledging another client's lease ----

#[test]
fn a_text_ack_of_another_clients_lease_is_refused_and_the_lease_stays_outstanding() {
    let server = SeqdProcess::start(&[]);
    let mut owner = server.connect();
    assert_eq!(
        command(&mut owner, "GET_SEQUENCE_RANGE 20 owner r1"),
        "1,20"
    );
    assert_eq!(command(&mut owner, "GET_SEQUENCE_RANGE 5"), "21,25");
    let mut attacker = server.connect();
    let refused = command(&mut attacker, "ACK 1,20");
    assert!(
        refused.starts_with("-NOLEASE the lease 1,20 was granted to another client"),
        "{refused}"
    );
    // A lease granted without ids is anyone's to acknowledge, as before.
    assert_eq!(command(&mut attacker, "ACK 21,25"), "+OK");
    assert!(command(&mut owner, "LEASES").contains("outstanding=1 "));
    // The connection that got the lease acknowledges it as before.
    assert_eq!(command(&mut owner, "ACK 1,20"), "+OK");
    // After a reconnect, retrying the request with the same ids re-grants the right.
    assert_eq!(
        command(&mut owner, "GET_SEQUENCE_RANGE 20 owner r2"),
        "26,45"
    );
    let mut reconnected = server.connect();
    assert!(command(&mut reconnected, "ACK 26,45").starts_with("-NOLEASE"));
    assert_eq!(
        command(&mut reconnected, "GET_SEQUENCE_RANGE 20 owner r2"),
        "26,45"
    );
    assert_eq!(command(&mut reconnected, "ACK 26,45"), "+OK");
}

/// A binary frame: magic, version, opcode, byte 3, word, value, then `trailer`.
fn frame(opcode: u8, byte3: u8, word: u32, value: u64, trailer: &[u8]) -> Vec<u8> {
    let mut out = vec![0x9e, 0x01, opcode, byte3];
    out.extend_from_slice(&word.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
    out.extend_from_slice(trailer);
    out
}

/// A binary reply: (opcode, status, value, message).
fn binary_reply(conn: &mut TcpStream) -> (u8, u8, u64, String) {
    let header = seqd_test_support::read_exactly(conn, 16);
    let len = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let value = u64::from_be_bytes(header[8..16].try_into().unwrap());
    let message = if header[3] == 0 {
        String::new()
    } else {
        String::from_utf8(seqd_test_support::read_exactly(conn, len as usize)).unwrap()
    };
    (header[2], header[3], value, message)
}

const LEASE: u8 = 0x06;
const ACK: u8 = 0x07;

fn binary_ack(first: u64, count: u64, client: &[u8]) -> Vec<u8> {
    let mut trailer = count.to_be_bytes().to_vec();
    trailer.extend_from_slice(client);
    frame(ACK, client.len() as u8, 0, first, &trailer)
}

#[test]
fn a_binary_ack_must_name_the_client_id_or_come_from_the_granting_connection() {
    let server = SeqdProcess::start(&[]);
    let mut owner = server.connect();
    owner
        .write_all(&frame(LEASE, 0, 0, 20, b"\x02\x02c1r1"))
        .unwrap();
    assert_eq!(binary_reply(&mut owner), (LEASE, 0, 1, String::new()));
    let mut other = server.connect();
    other.write_all(&binary_ack(1, 20, b"")).unwrap();
    let (opcode, status, detail, message) = binary_reply(&mut other);
    assert_eq!((opcode, status, detail), (ACK, 8, 1), "{message}");
    assert!(message.contains("granted to another client"), "{message}");
    other.write_all(&binary_ack(1, 20, b"c2")).unwrap();
    assert_eq!(binary_reply(&mut other).1, 8, "a wrong client id");
    // The owner's id from another connection (a client that reconnected) is accepted.
    other.write_all(&binary_ack(1, 20, b"c1")).unwrap();
    assert_eq!(binary_reply(&mut other), (ACK, 0, 1, String::new()));
    // The bystander, meanwhile, is served.
    owner.write_all(&frame(0x01, 0, 0, 0, b"")).unwrap();
    assert_eq!(binary_reply(&mut owner), (0x01, 0, 21, String::new()));
}

// ---- item 8: binary errors name their request ----

#[test]
fn a_binary_ack_of_zero_numbers_gets_a_specific_error_with_its_opcode() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(&binary_ack(1, 0, b"")).unwrap();
    let (opcode, status, _, message) = binary_reply(&mut conn);
    assert_eq!((opcode, status), (ACK, 1), "{message}");
    assert!(
        message.contains("ACK count must be at least 1"),
        "{message}"
    );
    // A reserved field set on a known opcode: the error carries that opcode.
    conn.write_all(&frame(0x01, 0, 0, 7, b"")).unwrap();
    let (opcode, status, _, message) = binary_reply(&mut conn);
    assert_eq!((opcode, status), (0x01, 1), "{message}");
    conn.write_all(&frame(0x01, 0, 0, 0, b"")).unwrap();
    assert_eq!(binary_reply(&mut conn), (0x01, 0, 1, String::new()));
}

// ---- item 2: reads create nothing ----

#[test]
fn current_of_unknown_names_creates_nothing_and_cannot_fill_max_sequences() {
    let data = temp_dir();
    let args = [data_dir_arg(data.path()), "--max-sequences=100".into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = SeqdProcess::start(&args);
    let mut attacker = server.connect();
    // Pipelined: 2,000 reads of names that do not exist, each answered --initial.
    let requests: String = (0..2000).map(|i| format!("CURRENT name-{i}\r\n")).collect();
    attacker.write_all(requests.as_bytes()).unwrap();
    for _ in 0..2000 {
        assert_eq!(read_line(&mut attacker), ":1");
    }
    let mut bystander = server.connect();
    assert_eq!(command(&mut bystander, "GETSEQ fresh"), ":1");
    assert_eq!(command(&mut bystander, "CURRENT fresh"), ":2");
    assert!(command(&mut bystander, "CURRENT bad/name").starts_with("-ERR"));
    server.terminate();
    // After a restart the reads left nothing behind: beside `default` and `fresh`, 98 new
    // names fill the 100.
    let server = SeqdProcess::start(&args);
    let mut conn = server.connect();
    assert_eq!(command(&mut conn, "CURRENT fresh"), ":2");
    for i in 0..98 {
        assert_eq!(command(&mut conn, &format!("GETSEQ more-{i}")), ":1");
    }
    assert!(command(&mut conn, "GETSEQ one-too-many").starts_with("-LIMIT"));
}

// ---- item 3: the stream protocol's sequence is not the main port's ----

fn stream_con(server: &SeqdProcess, count: u32, client_id: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(server.stream_addr()).unwrap();
    conn.set_read_timeout(Some(seqd_test_support::PATIENCE))
        .unwrap();
    let mut out = Vec::new();
    seqd::protocol::stream::Message::Connect { count, client_id }.encode(&mut out);
    conn.write_all(&out).unwrap();
    conn
}

#[test]
fn the_stream_sequence_cannot_be_drained_from_the_main_port() {
    let server = SeqdProcess::start(&["--stream-port=0"]);
    // A stream creates its sequence and gets numbers.
    let mut stream = stream_con(&server, 5, b"s1");
    let first = seqd_test_support::read_exactly(&mut stream, 11);
    assert_eq!(&first[..3], b"NUM", "{first:?}");
    let mut attacker = server.connect();
    let refusal = "-ERR sequence 'stream' is reserved for the stream protocol (--stream-sequence)";
    for request in [
        "GETSEQ stream",
        "GETSEQ_BATCH 1000000 stream",
        "GET_SEQUENCE_RANGE 1000 stream",
        "ACK 1,5 stream",
    ] {
        assert_eq!(command(&mut attacker, request), refusal, "{request}");
    }
    // Reading it is harmless and allowed.
    assert_eq!(command(&mut attacker, "CURRENT stream"), ":6");
    // Binary: OPEN of the name is refused, and so is its id (ids are guessable).
    let mut binary = server.connect();
    binary.write_all(&frame(0x05, 0, 0, 6, b"stream")).unwrap();
    let (opcode, status, _, message) = binary_reply(&mut binary);
    assert_eq!((opcode, status), (0x05, 1), "{message}");
    assert!(
        message.contains("reserved for the stream protocol"),
        "{message}"
    );
    binary
        .write_all(&frame(0x02, 0, 1, 1_000_000, b""))
        .unwrap();
    let (opcode, status, _, message) = binary_reply(&mut binary);
    assert_eq!((opcode, status), (0x02, 1), "{message}");
    // Streams are still served, from where they were.
    let mut next = stream_con(&server, 5, b"s2");
    let got = seqd_test_support::read_exactly(&mut next, 11);
    assert_eq!(&got[..3], b"NUM");
    assert_eq!(u32::from_be_bytes(got[7..11].try_into().unwrap()), 6);
    // Other sequences are unaffected.
    assert_eq!(command(&mut attacker, "GETSEQ other"), ":1");
}

#[test]
fn without_a_stream_port_the_name_is_an_ordinary_sequence() {
    let server = SeqdProcess::start(&[]);
    assert_eq!(command(&mut server.connect(), "GETSEQ stream"), ":1");
}
