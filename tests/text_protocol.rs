//! The text protocol against the real binary: seed 001's transcript, nc/telnet style input,
//! RESP, redis-cli, and every text error path.

use std::io::Write;
use std::net::Shutdown;

use seqd_test_support::{SeqdProcess, exchange, read_line, read_to_close, which};

#[test]
fn seed_001_telnet_transcript_replays_byte_for_byte() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    // One command at a time, as typed into telnet (CRLF line endings).
    for (command, reply) in [
        ("GETSEQ", ":1"),
        ("GETSEQ", ":2"),
        ("GETSEQ", ":3"),
        ("CURRENT", ":4"),
        ("CURRENT", ":4"),
        ("GETSEQ", ":4"),
    ] {
        let got = exchange(
            &mut conn,
            format!("{command}\r\n").as_bytes(),
            reply.len() + 2,
        );
        assert_eq!(got, format!("{reply}\r\n").as_bytes(), "reply to {command}");
    }
}

#[test]
fn telnet_cr_nul_line_ends_from_piped_text() {
    // `printf 'GETSEQ\r\nCURRENT\r\n' | telnet host 10001`: telnet sends each CR that is not
    // part of CRLF as CR NUL (RFC 854), so every line ends in CR NUL CR LF.
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    let expected = b":1\r\n:2\r\n";
    assert_eq!(
        exchange(&mut conn, b"GETSEQ\r\0\r\nCURRENT\r\0\r\n", expected.len()),
        expected
    );
}

#[test]
fn seed_001_initial_flag_in_seed_syntax() {
    let server = SeqdProcess::start(&["--initial=1000"]);
    let mut conn = server.connect();
    assert_eq!(exchange(&mut conn, b"GETSEQ\r\n", 7), b":1000\r\n");
}

#[test]
fn echo_current_into_nc_with_bare_lf() {
    let server = SeqdProcess::start(&[]);
    // What `echo CURRENT | nc -N host 10001` does: one LF-terminated line, then half-close.
    let mut conn = server.connect();
    conn.write_all(b"CURRENT\n").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut conn), b":1\r\n");
    // Several lines, mixed endings and case, in one write.
    let mut conn = server.connect();
    conn.write_all(b"getseq\nGetSeq\r\n\r\nCURRENT\n").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut conn), b":1\r\n:2\r\n:3\r\n");
}

#[test]
fn resp_arrays_and_inline_commands_share_a_connection() {
    let server = SeqdProcess::start(&["--initial=10"]);
    let mut conn = server.connect();
    let request = b"*1\r\n$6\r\nGETSEQ\r\nGETSEQ\r\n*2\r\n$12\r\nGETSEQ_BATCH\r\n$1\r\n5\r\n*1\r\n$4\r\nPING\r\n";
    let expected = b":10\r\n:11\r\n*2\r\n:12\r\n:16\r\n+PONG\r\n";
    assert_eq!(exchange(&mut conn, request, expected.len()), expected);
}

#[test]
fn named_sequences_are_independent() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    let request = b"GETSEQ orders\r\nGETSEQ orders\r\nGETSEQ events\r\nGETSEQ\r\nGETSEQ_BATCH 3 orders\r\nCURRENT orders\r\n";
    let expected = b":1\r\n:2\r\n:1\r\n:1\r\n*2\r\n:3\r\n:5\r\n:6\r\n";
    assert_eq!(exchange(&mut conn, request, expected.len()), expected);
}

#[test]
fn errors_are_specific_and_keep_the_connection() {
    let server = SeqdProcess::start(&["--max-batch=100", "--max-sequences=2"]);
    let mut conn = server.connect();
    conn.write_all(b"FOOBAR\r\n").unwrap();
    assert_eq!(
        read_line(&mut conn),
        "-ERR Unknown command 'FOOBAR'. Supported: GETSEQ, GETSEQ_BATCH, CURRENT, GET_SEQUENCE_RANGE, ACK, LEASES, PING, QUIT, INCR, INCRBY, GET, MULTI, EXEC, DISCARD, HELLO, AUTH, CLIENT, SELECT, ECHO, INFO, COMMAND, CONFIG GET, TIME, DBSIZE, RESET"
    );
    conn.write_all(b"GETSEQ_BATCH 0\r\nGETSEQ_BATCH 101\r\nGETSEQ_BATCH ten\r\nGETSEQ a b\r\n")
        .unwrap();
    assert_eq!(
        read_line(&mut conn),
        "-ERR batch size must be between 1 and 100 (--max-batch)"
    );
    assert_eq!(
        read_line(&mut conn),
        "-ERR batch size must be between 1 and 100 (--max-batch)"
    );
    assert_eq!(
        read_line(&mut conn),
        "-ERR 'ten' is not a non-negative integer"
    );
    assert_eq!(
        read_line(&mut conn),
        "-ERR wrong number of arguments: usage: GETSEQ [sequence]"
    );
    conn.write_all(b"GETSEQ bad/name\r\nGETSEQ one\r\nGETSEQ two\r\n")
        .unwrap();
    assert_eq!(
        read_line(&mut conn),
        "-ERR sequence name may contain only letters, digits and _ . : -"
    );
    assert_eq!(read_line(&mut conn), ":1");
    assert_eq!(
        read_line(&mut conn),
        "-LIMIT too many sequences: the limit is 2 (--max-sequences)"
    );
    // Nothing above consumed a number.
    conn.write_all(b"GETSEQ\r\n").unwrap();
    assert_eq!(read_line(&mut conn), ":1");
}

#[test]
fn exhausted_sequence_refuses_clearly() {
    let max = seqd::sequence::MAX_VALUE;
    let initial = format!("--initial={}", max - 1);
    let server = SeqdProcess::start(&[&initial]);
    let mut conn = server.connect();
    conn.write_all(b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nGETSEQ_BATCH 2\r\n")
        .unwrap();
    assert_eq!(read_line(&mut conn), format!(":{}", max - 1));
    assert_eq!(read_line(&mut conn), format!(":{max}"));
    let refused = read_line(&mut conn);
    assert!(
        refused.starts_with("-EXHAUSTED sequence exhausted: only 0 numbers are left"),
        "{refused}"
    );
    assert!(read_line(&mut conn).starts_with("-EXHAUSTED"));
}

#[test]
fn overlong_line_is_refused_and_closed_others_unaffected() {
    let server = SeqdProcess::start(&[]);
    let mut bystander = server.connect();
    assert_eq!(exchange(&mut bystander, b"GETSEQ\r\n", 4), b":1\r\n");

    let mut conn = server.connect();
    let long = vec![b'A'; 70 * 1024];
    // The server may close before taking it all; a failed write is fine.
    let _ = conn.write_all(&long);
    let reply = String::from_utf8(read_to_close(&mut conn)).unwrap();
    assert_eq!(
        reply,
        "-ERR request longer than 65536 bytes; closing connection\r\n"
    );

    assert_eq!(exchange(&mut bystander, b"GETSEQ\r\n", 4), b":2\r\n");
}

#[test]
fn unknown_protocol_byte_is_refused_and_closed() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap(); // a TLS ClientHello
    let reply = String::from_utf8(read_to_close(&mut conn)).unwrap();
    assert!(
        reply.starts_with("-ERR unknown protocol: first byte 0x16"),
        "{reply}"
    );
}

#[test]
fn malformed_resp_is_refused_and_closed() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(b"*1\r\n:5\r\n").unwrap();
    let reply = String::from_utf8(read_to_close(&mut conn)).unwrap();
    assert!(
        reply.starts_with("-ERR malformed request: expected a RESP bulk string"),
        "{reply}"
    );
}

#[test]
fn quit_answers_and_closes() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    conn.write_all(b"GETSEQ\r\nQUIT\r\nGETSEQ\r\n").unwrap();
    assert_eq!(read_to_close(&mut conn), b":1\r\n+OK\r\n");
}

#[test]
fn redis_cli_works_unmodified() {
    let Some(cli) = which("redis-cli") else {
        eprintln!(
            "SKIPPED redis_cli_works_unmodified: redis-cli is not installed (.ci/run installs it)"
        );
        return;
    };
    let server = SeqdProcess::start(&[]);
    let port = server.addr.port().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["GETSEQ"]), "1\n");
    assert_eq!(run(&["GETSEQ_BATCH", "5"]), "2\n6\n");
    assert_eq!(run(&["CURRENT"]), "7\n");
    assert_eq!(run(&["PING"]), "PONG\n");
    assert!(run(&["FOOBAR"]).starts_with("ERR Unknown command 'FOOBAR'"));
}

#[test]
fn redis_benchmark_works_unmodified() {
    let Some(bench) = which("redis-benchmark") else {
        eprintln!(
            "SKIPPED redis_benchmark_works_unmodified: redis-benchmark is not installed (.ci/run installs it)"
        );
        return;
    };
    let server = SeqdProcess::start(&[]);
    let out = std::process::Command::new(bench)
        .args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
        .args(["-c", "4", "-n", "20000", "-P", "16", "-q", "GETSEQ"])
        .output()
        .expect("run redis-benchmark");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("WARNING"),
        "redis-benchmark complained: {stderr}"
    );
    // Every request was a GETSEQ: the next number is exactly one past them.
    let mut conn = server.connect();
    assert_eq!(exchange(&mut conn, b"CURRENT\r\n", 8), b":20001\r\n");
}
