//! Test harness: the real `seqd` and `redis-server` on ephemeral loopback ports, and the
//! `loadgen` binary under test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const PATIENCE: Duration = Duration::from_secs(20);

/// The seqd binary next to this test's binary (target/<profile>/seqd), built with
/// `cargo build -p seqd --bin seqd` if it is not there yet.
pub fn seqd_binary() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let test_exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/<test> -> target/<profile>/seqd
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let seqd = profile_dir.join("seqd");
    if !seqd.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "seqd", "--bin", "seqd"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap_or_else(|e| {
            panic!("seqd is not built and `cargo build -p seqd --bin seqd` could not run: {e}")
        });
        assert!(
            status.success() && seqd.is_file(),
            "seqd is not built at {} and `cargo build -p seqd --bin seqd` failed ({status}); \
             build it by hand and rerun the tests",
            seqd.display()
        );
    }
    seqd
}

/// A server process killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Server {
    /// seqd on 127.0.0.1, a free port, one event loop, memory only (tests run in parallel
    /// and must not share a data directory), plus `args`.
    pub fn seqd(args: &[&str]) -> Server {
        let mut child = Command::new(seqd_binary())
            .args([
                "--host=127.0.0.1",
                "--port=0",
                "--threads=1",
                "--no-pin",
                "--in-memory",
            ])
            .args(args)
            .env_remove("SEQD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start seqd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("seqd listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr.parse().expect("seqd's listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("seqd did not start");
            }
        };
        Server {
            child: Some(child),
            addr,
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
                        child: Some(child),
                        addr,
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
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
