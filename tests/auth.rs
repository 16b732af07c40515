//! `--requirepass` / `--password-file` against the real binary: Redis's AUTH and HELLO AUTH,
//! NOAUTH before it, WRONGPASS and the close after repeated failures, the binary AUTH frame
//! through `seqd::client`, redis-cli `-a`, redis-py's `password=`, the stream-port rule.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SeqdProcess, read_line, read_to_close, which};
use seqd::client::ClientError;
use seqd::protocol::ErrorCode;

const PASSWORD: &str = "correct-horse-battery";

fn with_password() -> SeqdProcess {
    SeqdProcess::start(&[&format!("--requirepass={PASSWORD}")])
}

fn send(stream: &mut std::net::TcpStream, line: &str) -> String {
    stream.write_all(line.as_bytes()).unwrap();
    read_line(stream)
}

#[test]
fn noauth_before_auth_then_served() {
    let server = with_password();
    let mut c = server.connect();
    assert_eq!(
        send(&mut c, "GETSEQ\r\n"),
        "-NOAUTH Authentication required."
    );
    assert_eq!(
        send(&mut c, "INCR orders\r\n"),
        "-NOAUTH Authentication required."
    );
    assert_eq!(
        send(&mut c, "*2\r\n$4\r\nINFO\r\n$4\r\nseqd\r\n"),
        "-NOAUTH Authentication required."
    );
    assert!(send(&mut c, "HELLO 3\r\n").starts_with("-NOAUTH HELLO must be called"));
    // Pipelined identical requests (which the server counts rather than decodes once one
    // has joined a run) are each refused.
    c.write_all(b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\n").unwrap();
    for _ in 0..3 {
        assert_eq!(read_line(&mut c), "-NOAUTH Authentication required.");
    }
    assert_eq!(
        send(&mut c, "PING\r\n"),
        "+PONG",
        "PING is allowed before AUTH"
    );
    assert_eq!(send(&mut c, &format!("AUTH {PASSWORD}\r\n")), "+OK");
    assert_eq!(
        send(&mut c, "GETSEQ\r\n"),
        ":1",
        "nothing was issued before AUTH"
    );
    // Another connection is not authenticated by this one.
    let mut other = server.connect();
    assert_eq!(
        send(&mut other, "GETSEQ\r\n"),
        "-NOAUTH Authentication required."
    );
}

#[test]
fn wrong_password_and_user_are_wrongpass_and_the_secret_is_not_logged() {
    let server = with_password();
    let mut c = server.connect();
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(send(&mut c, "AUTH guess1\r\n"), wrongpass);
    assert_eq!(send(&mut c, "AUTH default guess2\r\n"), wrongpass);
    assert_eq!(
        send(&mut c, &format!("AUTH bob {PASSWORD}\r\n")),
        wrongpass,
        "only the user default exists"
    );
    assert_eq!(
        send(&mut c, "GETSEQ\r\n"),
        "-NOAUTH Authentication required."
    );
    assert_eq!(send(&mut c, &format!("AUTH default {PASSWORD}\r\n")), "+OK");
    assert_eq!(send(&mut c, "GETSEQ\r\n"), ":1");
    server.wait_for_log("failures=3");
    let log = server.log();
    assert!(log.contains("authentication failed"), "{log}");
    for secret in ["guess1", "guess2", PASSWORD] {
        assert!(!log.contains(secret), "the log shows a secret: {log}");
    }
}

#[test]
fn ten_wrong_passwords_close_the_connection() {
    let server = with_password();
    let mut c = server.connect();
    for _ in 0..9 {
        assert!(send(&mut c, "AUTH nope\r\n").starts_with("-WRONGPASS"));
    }
    c.write_all(b"AUTH nope\r\nGETSEQ\r\n").unwrap();
    let rest = String::from_utf8(read_to_close(&mut c)).unwrap();
    assert!(
        rest.starts_with("-WRONGPASS") && !rest.contains("NOAUTH"),
        "the tenth failure is answered, then the connection closes: {rest:?}"
    );
    server.wait_for_log("closing=true");
    // A new connection may try again (and succeed).
    let mut again = server.connect();
    assert_eq!(send(&mut again, &format!("AUTH {PASSWORD}\r\n")), "+OK");
}

#[test]
fn hello_3_auth_authenticates_and_switches_to_resp3() {
    let server = with_password();
    let mut c = server.connect();
    c.write_all(b"HELLO 3 AUTH default wrong\r\n").unwrap();
    assert!(read_line(&mut c).starts_with("-WRONGPASS"));
    c.write_all(format!("HELLO 3 AUTH default {PASSWORD}\r\n").as_bytes())
        .unwrap();
    assert!(read_line(&mut c).starts_with('%'), "a RESP3 map");
    let mut c = server.connect();
    let hello = format!(
        "*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n${}\r\n{PASSWORD}\r\n",
        PASSWORD.len()
    );
    c.write_all(hello.as_bytes()).unwrap();
    assert!(read_line(&mut c).starts_with('%'));
}

#[test]
fn password_file_first_line_is_the_password() {
    let dir = common::temp_dir();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let server = SeqdProcess::start(&[&format!("--password-file={}", file.display())]);
    let mut c = server.connect();
    assert_eq!(
        send(&mut c, "GETSEQ\r\n"),
        "-NOAUTH Authentication required."
    );
    assert_eq!(send(&mut c, &format!("AUTH {PASSWORD}\r\n")), "+OK");
    assert_eq!(send(&mut c, "GETSEQ\r\n"), ":1");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (status, log) =
        SeqdProcess::start_failure(&[&format!("--password-file={}", empty.display())]);
    assert!(!status.success());
    assert!(log.contains("holds no password"), "{log}");
}

#[test]
fn binary_client_auth() {
    let server = with_password();
    let mut client = server.client();
    match client.get() {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::NoAuth);
            assert_eq!(message, "Authentication required.");
        }
        other => panic!("expected NOAUTH, got {other:?}"),
    }
    match client.auth("wrong") {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::WrongPass),
        other => panic!("expected WRONGPASS, got {other:?}"),
    }
    client.ping().unwrap();
    client.auth(PASSWORD).unwrap();
    assert_eq!(client.get().unwrap(), 1);
    let orders = client.open("orders").unwrap();
    assert_eq!(client.get_from(orders).unwrap(), 1);

    // Without a password the AUTH frame is accepted, as Redis accepts AUTH default.
    let open = SeqdProcess::start(&[]);
    let mut client = open.client();
    client.auth("anything").unwrap();
    assert_eq!(client.get().unwrap(), 1);
}

#[test]
fn redis_cli_with_a_password() {
    if which("redis-cli").is_none() {
        eprintln!("SKIPPED: redis-cli is not installed");
        return;
    }
    let server = with_password();
    let port = server.addr.port().to_string();
    let run = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .env_remove("REDISCLI_AUTH")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(run(&["--no-auth-warning", "-a", PASSWORD, "GETSEQ"]), "1");
    assert_eq!(
        run(&["--no-auth-warning", "-a", PASSWORD, "INCR", "x"]),
        "1"
    );
    assert!(run(&["GETSEQ"]).contains("NOAUTH"));
    assert!(run(&["--no-auth-warning", "-a", "wrong", "GETSEQ"]).contains("NOAUTH"));
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "GETSEQ"])
        .env("REDISCLI_AUTH", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "2");
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[test]
fn redis_py_with_password() {
    let has_redis_py = which("python3").is_some()
        && Command::new("python3")
            .args(["-c", "import redis"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_redis_py {
        eprintln!("SKIPPED: redis-py is not installed");
        return;
    }
    let server = with_password();
    let output = Command::new("python3")
        .args([
            "redis_py_auth.py",
            &server.addr.port().to_string(),
            PASSWORD,
        ])
        .current_dir(clients_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "redis_py_auth.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn stream_port_with_a_password_only_on_loopback() {
    // On 127.0.0.1 (the test's --host) the stream port starts with a password set.
    let server = SeqdProcess::start(&[&format!("--requirepass={PASSWORD}"), "--stream-port=0"]);
    let _ = server.stream_addr();
    drop(server);
    let output = common::seqd_command()
        .args([
            &format!("--requirepass={PASSWORD}"),
            "--stream-port=0",
            "--host=0.0.0.0",
            "--port=0",
            "--in-memory",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(log.contains("--stream-port-insecure"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    let server = SeqdProcess::start_exact(&[
        &format!("--requirepass={PASSWORD}"),
        "--stream-port=0",
        "--host=0.0.0.0",
        "--port=0",
        "--threads=1",
        "--in-memory",
        "--stream-port-insecure",
    ]);
    let _ = server.stream_addr();
}
