//! A build without the `cluster` feature refuses cluster mode with how to get it, instead of
//! starting as a single node that clients would take for a cluster member.
#![cfg(not(feature = "cluster"))]

mod common;

use std::process::Stdio;

#[test]
fn etcd_is_refused_with_the_build_that_has_it() {
    let output = common::seqd_command()
        .args([
            "--host=127.0.0.1",
            "--port=0",
            "--etcd=http://127.0.0.1:2379",
            "--node-id=1",
            "--advertise=127.0.0.1:10001",
        ])
        .env_remove("SEQD_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run seqd");
    assert!(!output.status.success(), "seqd must not start");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("built without cluster mode") && log.contains("--features cluster"),
        "the refusal names the fix:\n{log}"
    );
}
