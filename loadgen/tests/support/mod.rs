//! loadgen's test harness: seqd through the workspace's `seqd-test-support` (one launcher for
//! every integration test), `redis-server` on an ephemeral loopback port, and the `loadgen`
//! binary under test.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use seqd_test_support::{PATIENCE, SeqdProcess, free_port, which};

/// A server the load generator is pointed at, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    seqd: Option<SeqdProcess>,
    child: Option<Child>,
}

impl Server {
    /// seqd on 127.0.0.1, a free port, one event loop, memory only (tests run in parallel
    /// and must not share a data directory), plus `args`.
    pub fn seqd(args: &[&str]) -> Server {
        let mut all = vec!["--no-pin", "--in-memory"];
        all.extend_from_slice(args);
        let seqd = SeqdProcess::start_with_loops(1, &all);
        Server {
            addr: seqd.addr,
            seqd: Some(seqd),
            child: None,
        }
    }

    /// redis-server on 127.0.0.1 and a free port, no persistence; None (after printing
    /// SKIPPED) when redis-server is not installed.
    pub fn redis(test: &str) -> Option<Server> {
        let Some(redis) = which("redis-server") else {
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server; \
                 .ci/run installs it)"
            );
            return None;
        };
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&redis)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start redis-server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken after all: try another
                }
                if redis_ping(addr) {
                    return Some(Server {
                        addr,
                        seqd: None,
                        child: Some(child),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on a free port");
    }

    pub fn kill(&mut self) {
        // Dropping a SeqdProcess kills it and waits for it.
        self.seqd = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Starts `loadgen ARGS` with its output piped.
pub fn spawn_loadgen(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start loadgen")
}

/// Runs `loadgen ARGS` to completion (killed after PATIENCE).
pub fn loadgen(args: &[&str]) -> Output {
    let mut child = spawn_loadgen(args);
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if child.try_wait().expect("waiting for loadgen").is_some() {
            return child.wait_with_output().expect("loadgen output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("loadgen output");
            panic!(
                "loadgen {args:?} did not finish in time\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh temporary directory for one test's files.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics with loadgen's output unless it exited with `code`.
pub fn expect_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "loadgen exited {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Runs `loadgen ARGS` (which must print JSON: `--json`), checks its exit status and parses
/// its standard output.
pub fn loadgen_json(args: &[&str], exit_code: i32) -> serde_json::Value {
    let out = loadgen(args);
    expect_exit(&out, exit_code);
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("loadgen {args:?} printed no JSON ({e}):\n{}", stdout(&out)))
}

/// The first error message of a run result.
pub fn first_error(result: &serde_json::Value) -> String {
    result["errors"]["first"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
