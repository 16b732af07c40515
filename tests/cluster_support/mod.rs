//! Cluster test support: a real etcd cluster (Debian's etcd-server) and seqd nodes in
//! cluster mode, on free loopback ports in a temporary directory. Everything started here is
//! killed when its handle is dropped, a failing test included.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub use seqd_test_support::{free_port, free_ports};

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create a temporary directory")
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of 1 or 3 members on loopback.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

impl Etcd {
    /// Starts `size` members and waits until every one answers healthy.
    pub fn start(size: usize) -> Etcd {
        assert!(size == 1 || size == 3, "1 or 3 members");
        let dir = temp_dir("seqd-etcd-");
        let ports = free_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "seqd-test-{}-{}",
            std::process::id(),
            members[0].client_port
        );
        let mut etcd = Etcd {
            dir,
            members,
            initial_cluster,
            token,
        };
        for i in 0..size {
            etcd.start_member(i);
        }
        etcd.wait_healthy();
        etcd
    }

    fn start_member(&mut self, index: usize) {
        let dir = self.dir.path().to_path_buf();
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "member {index} runs already");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let child = Command::new(etcd_binary())
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(dir.join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // docs/HA.md's recommended timing: etcd then grants seqd's default 1 s lease TTL
            // (its minimum is 1.5 x the election timeout, rounded up to whole seconds).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (apt-get install etcd-server)");
        member.child = Some(child);
    }

    /// The client URLs, comma-separated (seqd's --etcd).
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&self) {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let healthy = Command::new(etcdctl_binary())
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &running.join(",")])
                .args(["--dial-timeout", "1s", "--command-timeout", "2s"])
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if healthy {
                return;
            }
            if Instant::now() > deadline {
                panic!("etcd never became healthy; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs etcdctl against the cluster and returns its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints()])
            .args(args)
            .output()
            .expect("cannot run etcdctl");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The sum of a Prometheus counter over the running members' /metrics pages.
    pub fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let mut total = 0.0;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", member.client_port))
                .expect("connect to etcd's metrics");
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let mut page = String::new();
            stream.read_to_string(&mut page).unwrap();
            total += page
                .lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }

    /// Every member's log.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let path = self.dir.path().join(format!("{}.log", m.name));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {}:\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops member `index` (SIGKILL) and waits for it to be gone.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data directory.
    pub fn restart_member(&mut self, index: usize) {
        self.start_member(index);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn etcd_binary() -> PathBuf {
    find("etcd")
}

fn etcdctl_binary() -> PathBuf {
    find("etcdctl")
}

fn find(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found: apt-get install etcd-server etcd-client"))
}

/// One seqd node in cluster mode.
pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts seqd with `--etcd`, a free port it also advertises, one event loop, and
    /// `extra` arguments. It listens at once (as a standby until elected) and campaigns.
    pub fn start(etcd: &Etcd, id: u64, dir: &Path, extra: &[&str]) -> Node {
        Node::start_on(&etcd.endpoints(), id, dir, extra)
    }

    /// Like [`Node::start`], reaching etcd only through `endpoints` (comma-separated).
    pub fn start_on(endpoints: &str, id: u64, dir: &Path, extra: &[&str]) -> Node {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut args: Vec<String> = vec![
            "--host=127.0.0.1".into(),
            format!("--port={port}"),
            "--threads=1".into(),
            format!("--etcd={endpoints}"),
            format!("--node-id={id}"),
            format!("--advertise={addr}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = Node {
            id,
            addr,
            args,
            log_path: dir.join(format!("seqd-{id}.log")),
            child: None,
        };
        node.restart();
        node
    }

    /// Starts the process again (same port and arguments) after it exited or was killed.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("seqd log file");
        let child = Command::new(env!("CARGO_BIN_EXE_seqd"))
            .args(&self.args)
            .env("SEQD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start seqd");
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process has exited (without reaping it: [`Node::wait`] still reports how).
    pub fn has_exited(&self) -> bool {
        self.child.as_ref().is_some_and(|child| {
            // SAFETY: a zeroed siginfo_t is valid; waitid with WNOWAIT only reads our own
            // child's state and reaps nothing.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    child.id(),
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: si_pid is set by waitid (0 if the child has not exited).
            r == 0 && unsafe { info.si_pid() } != 0
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGSTOP, returning once every thread of the node is stopped.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            seqd_test_support::stop_process(child.id());
        }
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "seqd node {} did not exit in time; log:\n{}",
                    self.id,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process exited by itself (reaps it then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped (SIGSTOP) process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary directory for node logs.
pub fn log_dir() -> tempfile::TempDir {
    temp_dir("seqd-cluster-")
}
