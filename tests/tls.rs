//! `--tls-port` against the real binary with real TLS clients: redis-cli --tls, openssl
//! s_client, the Rust client; client certificates required by `--tls-ca-cert-file`; a
//! plaintext client on the TLS port; AUTH over TLS; start-up errors that name the bad file.
//! Certificates are made fresh per test (`seqd_test_support::pki`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use seqd::client::tls::{client_config, client_config_with_identity};
use seqd::client::{Client, ClientError, Request, Response};
use seqd::protocol::ErrorCode;
use seqd_test_support::pki::Pki;
use seqd_test_support::{PATIENCE, SeqdProcess, free_port, read_to_close, which};

/// seqd serving TLS only (`--port 0 --tls-port 0`), plus `args`.
fn tls_only(pki: &Pki, args: &[&str]) -> SeqdProcess {
    let mut all = pki.server_flags();
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    SeqdProcess::start(&all)
}

fn trusting(pki: &Pki) -> Arc<rustls::ClientConfig> {
    client_config(&pki.path("ca.crt")).expect("the test CA loads")
}

fn tls_client(server: &SeqdProcess, config: Arc<rustls::ClientConfig>) -> Client {
    let mut client =
        Client::connect_tls(server.tls_addr(), config, "localhost").expect("TLS connect");
    client.set_timeout(Some(PATIENCE)).unwrap();
    client
}

/// Runs redis-cli over TLS against `server` with `args`; its standard output.
fn redis_cli(server: &SeqdProcess, pki: &Pki, tls_args: &[String], args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.tls_addr().port().to_string(),
        ])
        .args(["--tls", "--cacert", &pki.arg("ca.crt")])
        .args(tls_args)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}

#[test]
fn tls_only_serves_the_rust_client_and_no_plaintext_port() {
    let pki = Pki::new();
    let server = tls_only(&pki, &[]);
    let listening = server
        .log()
        .lines()
        .find(|line| line.contains("seqd listening on"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        listening.contains(&format!("listening on {} (TLS)", server.tls_addr())),
        "--port 0 with --tls-port serves TLS alone: {listening}"
    );
    let mut client = tls_client(&server, trusting(&pki));
    assert_eq!(client.get().unwrap(), 1);
    assert_eq!(client.get_batch(10).unwrap(), 2..12);
    let orders = client.open("orders").unwrap();
    assert_eq!(client.get_from(orders).unwrap(), 1);
    // Many replies in one go: several TLS records per send.
    let requests = vec![Request::Get(0); 20_000];
    let replies = client.pipeline(&requests).unwrap();
    let numbers: Vec<u64> = replies
        .into_iter()
        .map(|reply| match reply {
            Ok(Response::Number(n)) => n,
            other => panic!("unexpected reply {other:?}"),
        })
        .collect();
    assert_eq!(numbers, (12..20_012).collect::<Vec<u64>>());
}

#[test]
fn plaintext_and_tls_ports_share_the_sequences() {
    let pki = Pki::new();
    let mut args = vec![
        "--host=127.0.0.1".to_string(),
        format!("--port={}", free_port()),
        "--threads=2".to_string(),
        "--in-memory".to_string(),
    ];
    args.extend(pki.server_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = SeqdProcess::start_exact(&args);
    assert_ne!(server.addr, server.tls_addr());
    let mut plain = server.client();
    let mut tls = tls_client(&server, trusting(&pki));
    assert_eq!(plain.get().unwrap(), 1);
    assert_eq!(tls.get().unwrap(), 2);
    assert_eq!(plain.get().unwrap(), 3);
}

#[test]
fn redis_cli_over_tls() {
    if which("redis-cli").is_none() {
        eprintln!("SKIPPED: redis-cli is not installed");
        return;
    }
    let pki = Pki::new();
    let server = tls_only(&pki, &[]);
    assert_eq!(redis_cli(&server, &pki, &[], &["PING"]), "PONG");
    assert_eq!(redis_cli(&server, &pki, &[], &["GETSEQ"]), "1");
    assert_eq!(
        redis_cli(&server, &pki, &[], &["GETSEQ_BATCH", "3"]),
        "2\n4"
    );
    // A CA the server's certificate does not chain to: redis-cli refuses the server.
    let output = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.tls_addr().port().to_string(),
        ])
        .args(["--tls", "--cacert", &pki.arg("other-ca.crt"), "GETSEQ"])
        .output()
        .expect("redis-cli runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.stdout.is_empty() && stderr.contains("certificate verify failed"),
        "no number for an untrusted server: {stderr}"
    );
    assert_eq!(redis_cli(&server, &pki, &[], &["GETSEQ"]), "5");
}

#[test]
fn openssl_s_client_round_trip() {
    if which("openssl").is_none() {
        eprintln!("SKIPPED: openssl is not installed");
        return;
    }
    let pki = Pki::new();
    let server = tls_only(&pki, &[]);
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error"])
        .args(["-connect", &server.tls_addr().to_string()])
        .args(["-CAfile", &pki.arg("ca.crt"), "-verify_ip", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    // QUIT makes seqd close the connection, which ends s_client.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GETSEQ\r\nGETSEQ_BATCH 5\r\nQUIT\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout,
        ":1\r\n*2\r\n:2\r\n:6\r\n+OK\r\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn auth_over_tls() {
    let pki = Pki::new();
    let server = tls_only(&pki, &["--requirepass=sesame"]);
    let mut client = tls_client(&server, trusting(&pki));
    let code = |e: ClientError| match e {
        ClientError::Server { code, .. } => code,
        other => panic!("expected a refusal, got {other}"),
    };
    assert_eq!(code(client.get().unwrap_err()), ErrorCode::NoAuth);
    assert_eq!(
        code(client.auth("wrong").unwrap_err()),
        ErrorCode::WrongPass
    );
    client.auth("sesame").unwrap();
    assert_eq!(client.get().unwrap(), 1);
    if which("redis-cli").is_some() {
        let with_password = ["-a".to_string(), "sesame".to_string()];
        assert_eq!(
            redis_cli(
                &server,
                &pki,
                &with_password,
                &["--no-auth-warning", "GETSEQ"]
            ),
            "2"
        );
        assert!(redis_cli(&server, &pki, &[], &["GETSEQ"]).starts_with("NOAUTH"));
    }
}

#[test]
fn client_certificates_are_required_with_a_ca() {
    let pki = Pki::new();
    let ca = format!("--tls-ca-cert-file={}", pki.arg("ca.crt"));
    let server = tls_only(&pki, &[&ca]);

    let identity = client_config_with_identity(
        &pki.path("ca.crt"),
        &pki.path("client.crt"),
        &pki.path("client.key"),
    )
    .unwrap();
    let mut known = tls_client(&server, identity);
    assert_eq!(known.get().unwrap(), 1);

    // TLS 1.3: the client's half of the handshake ends before the server judges its
    // certificate, so the refusal arrives with the first reply.
    let refused = |config| match Client::connect_tls(server.tls_addr(), config, "localhost") {
        Err(e) => e.to_string(),
        Ok(mut client) => {
            client.set_timeout(Some(PATIENCE)).unwrap();
            client
                .get()
                .expect_err("no number without a good certificate")
                .to_string()
        }
    };
    let without = refused(trusting(&pki));
    assert!(
        without.contains("Certificate") || without.contains("certificate"),
        "{without}"
    );
    let stranger = client_config_with_identity(
        &pki.path("ca.crt"),
        &pki.path("stranger.crt"),
        &pki.path("stranger.key"),
    )
    .unwrap();
    refused(stranger);
    server.wait_for_log("TLS connection refused");
    assert_eq!(known.get().unwrap(), 2, "the refusals touched nobody else");

    if which("redis-cli").is_some() {
        let cert = ["--cert".to_string(), pki.arg("client.crt")];
        let cert = [
            cert[0].clone(),
            cert[1].clone(),
            "--key".into(),
            pki.arg("client.key"),
        ];
        assert_eq!(redis_cli(&server, &pki, &cert, &["GETSEQ"]), "3");
        assert_ne!(redis_cli(&server, &pki, &[], &["GETSEQ"]), "4");
    }
}

#[test]
fn a_plaintext_client_on_the_tls_port_is_disconnected_and_logged() {
    let pki = Pki::new();
    let server = tls_only(&pki, &[]);
    let mut tls = tls_client(&server, trusting(&pki));
    assert_eq!(tls.get().unwrap(), 1);

    let mut plain = std::net::TcpStream::connect(server.tls_addr()).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"GETSEQ\r\n").unwrap();
    let answer = read_to_close(&mut plain);
    assert!(
        !answer.starts_with(b":"),
        "no number in plaintext on the TLS port: {answer:?}"
    );
    server.wait_for_log("does not speak TLS");

    assert_eq!(tls.get().unwrap(), 2, "the TLS client goes on");
    let mut another = tls_client(&server, trusting(&pki));
    assert_eq!(another.get().unwrap(), 3);
}

#[test]
fn bad_tls_files_stop_the_start_and_are_named() {
    let pki = Pki::new();
    let with = |cert: &str, key: &str, extra: &[&str]| {
        let mut args = vec![
            "--tls-port=0".to_string(),
            format!("--tls-cert-file={cert}"),
            format!("--tls-key-file={key}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, log) = SeqdProcess::start_failure(&args);
        assert!(!status.success(), "{log}");
        log
    };
    let missing = pki.arg("missing.crt");
    let log = with(&missing, &pki.arg("server.key"), &[]);
    assert!(
        log.contains("--tls-port") && log.contains(&missing),
        "{log}"
    );

    // The files swapped: no certificate in the key file.
    let log = with(&pki.arg("server.key"), &pki.arg("server.crt"), &[]);
    assert!(log.contains("holds no certificate"), "{log}");

    // Another certificate's key.
    let log = with(&pki.arg("server.crt"), &pki.arg("client.key"), &[]);
    assert!(log.contains(&pki.arg("client.key")), "{log}");

    let log = with(
        &pki.arg("server.crt"),
        &pki.arg("server.key"),
        &["--tls-ca-cert-file=/nonexistent/ca.pem"],
    );
    assert!(log.contains("cannot read /nonexistent/ca.pem"), "{log}");

    let (status, log) = SeqdProcess::start_failure(&["--tls-port=0"]);
    assert!(!status.success());
    assert!(log.contains("--tls-cert-file"), "{log}");
}

#[test]
fn redis_py_over_tls_with_a_password_and_a_client_certificate() {
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let python = |args: &[&str]| {
        Command::new("python3")
            .args(args)
            .current_dir(&clients)
            .output()
            .expect("python3 runs")
    };
    if which("python3").is_none() || !python(&["-c", "import redis"]).status.success() {
        eprintln!(
            "SKIPPED: redis-py is not installed (pip install -r tests/clients/requirements.txt)"
        );
        return;
    }
    let pki = Pki::new();
    let ca = format!("--tls-ca-cert-file={}", pki.arg("ca.crt"));
    let server = tls_only(&pki, &[&ca, "--requirepass=sesame"]);
    let port = server.tls_addr().port().to_string();
    let output = python(&[
        "redis_py_tls.py",
        &port,
        &pki.arg("ca.crt"),
        "sesame",
        &pki.arg("client.crt"),
        &pki.arg("client.key"),
    ]);
    assert!(
        output.status.success(),
        "redis_py_tls.py failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
