//! Real Redis clients, with their default settings, against the real seqd binary: redis-py
//! (sync, asyncio, RESP2 and RESP3, pipelines, a pool shared by threads), node-redis,
//! ioredis (each also with a password: `--requirepass`), redigo (Go), `redis-cli -3` and
//! `redis-benchmark -t incr`. The client scripts are in
//! `tests/clients/` with their pinned versions (`requirements.txt`, `package-lock.json`);
//! `.ci/run` installs them. A test whose client is not installed says SKIPPED.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{SeqdProcess, which};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs `program args` in tests/clients, returning its output (the test fails if it cannot
/// be started at all).
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn port(server: &SeqdProcess) -> String {
    server.addr.port().to_string()
}

#[test]
fn redis_py_sync_asyncio_resp2_resp3_pipelines_and_a_shared_pool() {
    if which("python3").is_none() || !run("python3", &["-c", "import redis"]).status.success() {
        eprintln!(
            "SKIPPED: redis-py is not installed (pip install -r tests/clients/requirements.txt)"
        );
        return;
    }
    let server = SeqdProcess::start(&[]);
    let output = run("python3", &["redis_py.py", &port(&server)]);
    assert_success("redis_py.py", &output);
}

/// Whether `tests/clients/node_modules` holds `package` (installed by `npm ci`).
fn node_package(package: &str) -> bool {
    which("node").is_some() && clients_dir().join("node_modules").join(package).is_dir()
}

#[test]
fn node_redis_connects_pipelines_and_runs_a_transaction() {
    if !node_package("redis") {
        eprintln!("SKIPPED: node-redis is not installed (npm ci in tests/clients)");
        return;
    }
    let server = SeqdProcess::start(&[]);
    let output = run("node", &["node_redis.mjs", &port(&server)]);
    assert_success("node_redis.mjs", &output);
}

#[test]
fn ioredis_connects_pipelines_and_runs_a_transaction() {
    if !node_package("ioredis") {
        eprintln!("SKIPPED: ioredis is not installed (npm ci in tests/clients)");
        return;
    }
    let server = SeqdProcess::start(&[]);
    let output = run("node", &["ioredis.mjs", &port(&server)]);
    assert_success("ioredis.mjs", &output);
}

/// Debian's Go sources (golang-github-gomodule-redigo-dev) live in this GOPATH.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

#[test]
fn redigo_from_go_connects_pipelines_runs_a_transaction_and_shares_a_pool() {
    let redigo = Path::new(DEBIAN_GOPATH).join("src/github.com/gomodule/redigo");
    if which("go").is_none() || !redigo.is_dir() {
        eprintln!(
            "SKIPPED: Go or redigo is not installed (apt-get install golang-go golang-github-gomodule-redigo-dev)"
        );
        return;
    }
    let server = SeqdProcess::start(&[]);
    // GOPATH mode: the machine has no module proxy, and Debian installs the sources there.
    let output = Command::new("go")
        .args(["run", "redigo.go", &port(&server)])
        .current_dir(clients_dir().join("go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        .output()
        .unwrap_or_else(|e| panic!("cannot run go: {e}"));
    assert_success("redigo.go", &output);
}

/// The password seqd is started with for the clients' password options.
const PASSWORD: &str = "client-secret";

#[test]
fn node_redis_with_a_password() {
    if !node_package("redis") {
        eprintln!("SKIPPED: node-redis is not installed (npm ci in tests/clients)");
        return;
    }
    let server = SeqdProcess::start(&[&format!("--requirepass={PASSWORD}")]);
    let output = run("node", &["node_redis_auth.mjs", &port(&server), PASSWORD]);
    assert_success("node_redis_auth.mjs", &output);
}

#[test]
fn ioredis_with_a_password() {
    if !node_package("ioredis") {
        eprintln!("SKIPPED: ioredis is not installed (npm ci in tests/clients)");
        return;
    }
    let server = SeqdProcess::start(&[&format!("--requirepass={PASSWORD}")]);
    let output = run("node", &["ioredis_auth.mjs", &port(&server), PASSWORD]);
    assert_success("ioredis_auth.mjs", &output);
}

#[test]
fn redis_cli_in_resp3() {
    if which("redis-cli").is_none() {
        eprintln!("SKIPPED: redis-cli is not installed");
        return;
    }
    let server = SeqdProcess::start(&[]);
    let port = port(&server);
    let cli = |args: &[&str]| {
        let mut all = vec!["-3", "-h", "127.0.0.1", "-p", &port];
        all.extend_from_slice(args);
        let output = run("redis-cli", &all);
        assert_success("redis-cli", &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(cli(&["GETSEQ"]), "1\n");
    assert_eq!(cli(&["INCR", "ids"]), "1\n");
    assert_eq!(cli(&["GET", "ids"]), "1\n");
    assert_eq!(cli(&["GET", "unused"]), "\n", "nil");
    let hello = cli(&["HELLO", "3"]);
    assert!(hello.contains("proto 3\n"), "{hello}");
    let info = cli(&["INFO", "seqd"]);
    assert!(info.contains("sequence_1:name=ids,next=2,"), "{info}");
}

#[test]
fn redis_benchmark_incr_runs_and_every_request_takes_one_number() {
    if which("redis-benchmark").is_none() {
        eprintln!("SKIPPED: redis-benchmark is not installed");
        return;
    }
    let server = SeqdProcess::start(&[]);
    let port = port(&server);
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "incr",
        "-n",
        "2000",
        "-c",
        "4",
        "-q",
    ];
    let output = run("redis-benchmark", &args);
    assert_success("redis-benchmark", &output);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("INCR: "), "{report}");
    // redis-benchmark's INCR key, unless -r is given.
    let mut conn = server.connect();
    let reply = common::exchange(&mut conn, b"GET counter:__rand_int__\r\n", 10);
    assert_eq!(reply, b"$4\r\n2000\r\n");
}

#[test]
fn an_unfinished_resp_command_at_end_of_input_is_dropped() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    // A client killed one byte before the end of a lease request.
    conn.write_all(b"*2\r\n$18\r\nGET_SEQUENCE_RANGE\r\n$2\r\n20\r")
        .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        common::read_to_close(&mut conn),
        b"",
        "no reply: not executed"
    );
    let mut conn = server.connect();
    let reply = common::exchange(&mut conn, b"LEASES\r\nGETSEQ\r\n", 75);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "+outstanding=0 granted=0 acknowledged=0 retired=0 returned=0 reused=0\r\n:1\r\n"
    );
}
