//! `loadgen run --tls` against seqd's `--tls-port` (TLS only): verified numbers over
//! verified certificates, over no verification at all (`--tls-insecure`), and the refusals
//! that say how to fix the command line. Bounded by request counts.

mod support;

use seqd_test_support::pki::Pki;
use support::{Server, expect_exit, loadgen, stderr, stdout};

fn tls_seqd(pki: &Pki) -> Server {
    let flags = pki.server_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::seqd(&flags)
}

fn run_over_tls(server: &Server, target: &str, tls: &[&str]) -> std::process::Output {
    let addr = server.addr.to_string();
    let mut args = vec![
        "run", "--addr", &addr, "--target", target, "-c", "4", "-P", "16", "-n", "20000",
        "--warmup", "0s", "--verify", "--no-pin", "--tls",
    ];
    args.extend_from_slice(tls);
    loadgen(&args)
}

#[test]
fn closed_loop_over_tls_verifies_every_number() {
    let pki = Pki::new();
    let server = tls_seqd(&pki);
    let ca = pki.arg("ca.crt");
    for target in ["binary", "resp"] {
        let out = run_over_tls(&server, target, &["--tls-ca-cert-file", &ca]);
        expect_exit(&out, 0);
        let summary = stdout(&out);
        for text in ["errors       0", "verify       OK"] {
            assert!(
                summary.contains(text),
                "{target}: {text:?} missing from:\n{summary}"
            );
        }
    }
    let out = run_over_tls(&server, "binary", &["--tls-insecure"]);
    expect_exit(&out, 0);
}

#[test]
fn tls_without_a_trust_choice_or_with_the_wrong_ca_fails_clearly() {
    let pki = Pki::new();
    let server = tls_seqd(&pki);
    let out = run_over_tls(&server, "binary", &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--tls-insecure"), "{}", stderr(&out));

    let other = pki.arg("other-ca.crt");
    let out = run_over_tls(&server, "binary", &["--tls-ca-cert-file", &other]);
    assert_ne!(out.status.code(), Some(0));
    let said = stdout(&out) + &stderr(&out);
    assert!(
        said.contains("cannot connect") && said.contains("certificate"),
        "{said}"
    );
}
