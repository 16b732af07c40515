//! Support for every integration test of the workspace (seqd's `tests/`, loadgen's
//! `tests/`): starts the real `seqd` binary on an ephemeral loopback port, reads its log for
//! the address it listens on, and talks to it.
//!
//! Which binary: `CARGO_BIN_EXE_seqd` when cargo sets it at run time (seqd's own integration
//! tests), else `seqd` beside the running test's directory (`target/<profile>/seqd`, where
//! cargo puts it), built with `cargo build -p seqd --bin seqd` if it is not there yet.
//!
//! Environment:
//! - `SEQD_TEST_IO`: when set (non-empty), every seqd started here gets `--io=<value>`, so
//!   that the whole suite runs against the I/O backend named (for example `SEQD_TEST_IO=epoll
//!   cargo test --workspace`), except where a test passes `--io` itself. Unset, seqd chooses
//!   its default backend. [`test_io`] tells a test which backend was asked for.
//! - `SEQD_LOG` is removed from every seqd's environment: the tests read the default log.

pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct SeqdProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Copies seqd's stderr into `log`; ends when seqd has exited and its last line is in.
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// The data directory made for this process, removed with it.
    _data_dir: Option<tempfile::TempDir>,
}

/// A fresh, empty directory for a test, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("seqd-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

impl SeqdProcess {
    /// Starts seqd on 127.0.0.1 with a free port, two event loops and `args`; with a data
    /// directory of its own unless `args` name one (or `--in-memory`).
    pub fn start(args: &[&str]) -> SeqdProcess {
        SeqdProcess::start_with_loops(2, args)
    }

    /// Like [`SeqdProcess::start`], with `loops` event loops. With one, every sequence has a
    /// single writer (a plain store instead of a compare-and-swap; this debug build panics
    /// if a second thread reserves).
    pub fn start_with_loops(loops: usize, args: &[&str]) -> SeqdProcess {
        let mut all: Vec<String> = vec![
            "--host=127.0.0.1".into(),
            "--port=0".into(),
            format!("--threads={loops}"),
        ];
        let data_dir = own_data_dir(args, &mut all);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut process = SeqdProcess::start_exact(&all);
        process._data_dir = data_dir;
        process
    }

    /// Runs seqd with `args` (plus a free port and, unless named, a data directory of its
    /// own) expecting it to refuse to start; returns its exit status and log.
    pub fn start_failure(args: &[&str]) -> (ExitStatus, String) {
        let mut all: Vec<String> = ["--host=127.0.0.1", "--port=0", "--threads=1"]
            .map(String::from)
            .to_vec();
        let _data_dir = own_data_dir(args, &mut all);
        all.extend(args.iter().map(|a| a.to_string()));
        let mut command = seqd_command_without_io();
        command.args(&all);
        with_test_io(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start seqd");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            log
        });
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("seqd did not exit although it was expected to refuse to start");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, reader.join().unwrap())
    }

    /// Starts seqd with exactly `args`; they must make it listen on a free port.
    pub fn start_exact(args: &[&str]) -> SeqdProcess {
        let mut command = seqd_command_without_io();
        command.args(args);
        SeqdProcess::launch(command)
    }

    /// Like [`SeqdProcess::start`], with the soft limit on open files lowered to
    /// `soft_limit` first, as a default `ulimit -n` would.
    pub fn start_with_open_file_limit(soft_limit: u32, args: &[&str]) -> SeqdProcess {
        SeqdProcess::start_after_shell(&format!("ulimit -S -n {soft_limit}"), args)
    }

    /// Like [`SeqdProcess::start`], with the file-creation mask set to `mask` first.
    pub fn start_with_umask(mask: u32, args: &[&str]) -> SeqdProcess {
        SeqdProcess::start_after_shell(&format!("umask {mask:03o}"), args)
    }

    /// Like [`SeqdProcess::start`], in the cgroup `dir` (its `cgroup.procs`) from the start.
    pub fn start_in_cgroup(dir: &Path, args: &[&str]) -> SeqdProcess {
        let procs = dir.join("cgroup.procs");
        SeqdProcess::start_after_shell(&format!("echo $$ > '{}'", procs.display()), args)
    }

    /// Starts seqd as [`SeqdProcess::start`] does, from `sh -c "PRELUDE && exec seqd ..."`.
    fn start_after_shell(prelude: &str, args: &[&str]) -> SeqdProcess {
        let mut all: Vec<String> = ["--host=127.0.0.1", "--port=0", "--threads=2"]
            .map(String::from)
            .to_vec();
        let data_dir = own_data_dir(args, &mut all);
        all.extend(args.iter().map(|a| a.to_string()));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude} && exec \"$0\" \"$@\""))
            .arg(seqd_binary())
            .args(&all)
            .env_remove("SEQD_LOG");
        let mut process = SeqdProcess::launch(command);
        process._data_dir = data_dir;
        process
    }

    fn launch(mut command: Command) -> SeqdProcess {
        with_test_io(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start seqd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        let log_reader = std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Into the log before the address is handed over: a test that reads the log
                // as soon as `start` returns sees the listening line.
                {
                    let mut log = log_writer.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("seqd listening on ").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match addr_rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "seqd did not start ({status:?}); log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        SeqdProcess {
            child: Some(child),
            addr,
            log,
            log_reader: Some(log_reader),
            _data_dir: None,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to seqd");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    pub fn client(&self) -> seqd::client::Client {
        let mut client = seqd::client::Client::connect(self.addr).expect("connect to seqd");
        client.set_timeout(Some(PATIENCE)).unwrap();
        client
    }

    /// Where the stream protocol listens (started with `--stream-port`): the address on the
    /// log line that says "stream protocol ... listening on ADDR".
    pub fn stream_addr(&self) -> SocketAddr {
        self.logged_addr("the stream protocol", |line| {
            line.contains("stream protocol")
                .then(|| {
                    line.split("listening on ")
                        .nth(1)?
                        .split_whitespace()
                        .next()
                })
                .flatten()
        })
    }

    /// Where the TLS port listens (started with `--tls-port`): the address before "(TLS)" on
    /// the line that says "seqd listening on ...".
    pub fn tls_addr(&self) -> SocketAddr {
        self.logged_addr("the TLS port", |line| {
            let listening = line.split("seqd listening on ").nth(1)?;
            let before = listening
                .split(" (TLS)")
                .next()
                .filter(|_| listening.contains(" (TLS)"))?;
            before.split_whitespace().last()
        })
    }

    /// The address `find` picks from a line of the log, once it is there.
    fn logged_addr(&self, what: &str, find: impl Fn(&str) -> Option<&str>) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            let addr = log.lines().find_map(&find).map(|addr| {
                addr.parse()
                    .unwrap_or_else(|_| panic!("no address of {what} in the log:\n{log}"))
            });
            if let Some(addr) = addr {
                return addr;
            }
            if Instant::now() > deadline {
                panic!("seqd never logged where {what} listens; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("seqd's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// SIGKILL: the crash case. Returns once the process is gone.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }

    /// SIGTERM, then waits for the graceful exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Waits until the log contains `text` (or fails the test).
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                panic!("seqd never logged {text:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // The process is gone, so its stderr is at end of file: once the reader has
                // seen that, `log()` holds every line seqd wrote (a test may look for the
                // last one, e.g. the shutdown summary).
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("seqd did not exit in time; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SeqdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `request` and reads until `expected_len` bytes have arrived.
pub fn exchange(stream: &mut TcpStream, request: &[u8], expected_len: usize) -> Vec<u8> {
    stream.write_all(request).unwrap();
    read_exactly(stream, expected_len)
}

pub fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {len} bytes: {e}"));
    buf
}

/// Reads until the server closes the connection.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => {}
        // A reset after the server's close still means closed.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("waiting for the server to close: {e}"),
    }
    buf
}

/// Reads one CRLF-terminated text line (without the CRLF).
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("reading a reply line");
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap()
}

/// A thread's state letter from /proc/PID/task/TID/stat ("" if unreadable): the field after
/// the command name, which ends with the last ')'.
fn thread_state(task: &Path) -> String {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    after_name
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// SIGSTOP to `pid`, returning once every one of its threads is stopped. `kill` only queues
/// the stop: one thread takes it and then stops the others, so an event loop on another CPU
/// can answer for a while after `kill` returned.
pub fn stop_process(pid: u32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .flatten()
                    .map(|task| thread_state(&task.path()))
                    .collect()
            })
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|state| state == "T") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never stopped after SIGSTOP: thread states {states:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A TCP port that was free a moment ago (for a server that must come back on the same
/// port after a restart), never one this process handed out before: the port is released at
/// once and the process given it binds later, so the kernel could hand it out again meanwhile
/// (two etcd members were given the same port, and one failed to start).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports as [`free_port`] finds them.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Held until all are found, so the kernel cannot give one twice within the call.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener
            .local_addr()
            .expect("a bound listener's address")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// A command that runs the seqd binary under test (see the module documentation), starting
/// with `--io=$SEQD_TEST_IO` when that is set; add the arguments. For runs that end by
/// themselves (`--help`, refused flags); a test that chooses `--io` uses [`SeqdProcess`].
pub fn seqd_command() -> Command {
    let mut command = seqd_command_without_io();
    if let Some(io) = test_io() {
        command.arg(format!("--io={io}"));
    }
    command
}

/// The I/O backend the suite runs against: `SEQD_TEST_IO`, if set and not empty.
pub fn test_io() -> Option<String> {
    std::env::var("SEQD_TEST_IO")
        .ok()
        .filter(|io| !io.is_empty())
}

fn seqd_command_without_io() -> Command {
    let mut command = Command::new(seqd_binary());
    command.env_remove("SEQD_LOG");
    command
}

/// Adds `--io=$SEQD_TEST_IO` to a complete seqd command, unless it is unset or the test
/// chose `--io` itself.
fn with_test_io(command: &mut Command) {
    let chosen = command
        .get_args()
        .any(|a| a == "--io" || a.to_str().is_some_and(|a| a.starts_with("--io=")));
    if let (Some(io), false) = (test_io(), chosen) {
        command.arg(format!("--io={io}"));
    }
}

/// The seqd binary under test (see the module documentation).
pub fn seqd_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_build_seqd).clone()
}

fn find_or_build_seqd() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_seqd") {
        return path.into();
    }
    let test_exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/<test> -> target/<profile>/seqd
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let seqd = profile_dir.join("seqd");
    if seqd.is_file() {
        return seqd;
    }
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
    seqd
}

/// Path of an executable on PATH, if installed.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Adds a fresh data directory to `all` unless `args` choose one or `--in-memory`.
fn own_data_dir(args: &[&str], all: &mut Vec<String>) -> Option<tempfile::TempDir> {
    let chosen = args
        .iter()
        .any(|a| a.starts_with("--data-dir") || *a == "--in-memory");
    if chosen {
        return None;
    }
    let dir = temp_dir();
    all.push(format!("--data-dir={}", dir.path().display()));
    Some(dir)
}
