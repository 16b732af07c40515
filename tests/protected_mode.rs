//! Protected mode against the real binary, from a real non-loopback address: the test makes
//! a network namespace joined to this one by a veth pair (10.x addresses on those two ends
//! only, removed with the namespace), seqd listens on 0.0.0.0, and a client inside the
//! namespace connects to the veth address. Both I/O backends. Needs root and `ip`
//! (iproute2); says SKIPPED otherwise.

mod common;

use std::io::Write;
use std::process::{Command, Output};

use common::{SeqdProcess, read_line, which};

/// A namespace and the veth pair into it; removed on drop (deleting the namespace deletes
/// the pair).
struct Namespace {
    name: String,
    /// The address of this side of the pair (where seqd is reached from the namespace).
    host_addr: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run ip")
}

fn ip_ok(args: &[&str]) {
    let output = ip(args);
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Namespace {
    /// `None` (the test skips) when namespaces cannot be made here.
    fn create(tag: &str) -> Option<Namespace> {
        // SAFETY: geteuid has no preconditions.
        if which("ip").is_none() || unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let pid = std::process::id();
        let name = format!("seqd-pm-{tag}-{pid}");
        // Interface names are at most 15 bytes.
        let (outer, inner) = (
            format!("sqo{tag}{}", pid % 100_000),
            format!("sqi{tag}{}", pid % 100_000),
        );
        // A /30 per test process and tag, inside 10.213.0.0/16.
        let block = (pid % 8000) * 8 + if tag == "a" { 0 } else { 4 };
        let (b2, b3) = (block / 256 % 256, block % 256);
        let host_addr = format!("10.213.{b2}.{}", b3 + 1);
        let client_addr = format!("10.213.{b2}.{}", b3 + 2);
        if !ip(&["netns", "add", &name]).status.success() {
            return None;
        }
        let namespace = Namespace { name, host_addr };
        ip_ok(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip_ok(&["link", "set", &inner, "netns", &namespace.name]);
        ip_ok(&[
            "addr",
            "add",
            &format!("{}/30", namespace.host_addr),
            "dev",
            &outer,
        ]);
        ip_ok(&["link", "set", &outer, "up"]);
        let ns = namespace.name.as_str();
        ip_ok(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{client_addr}/30"),
            "dev",
            &inner,
        ]);
        ip_ok(&["-n", ns, "link", "set", &inner, "up"]);
        ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
        Some(namespace)
    }

    /// Runs a client in the namespace: connects to seqd at `port`, sends PING, returns what
    /// arrives until the server closes or answers one line.
    fn ping(&self, port: u16) -> String {
        let script = format!(
            "import socket\n\
             s = socket.create_connection(('{}', {port}), timeout=20)\n\
             s.sendall(b'PING\\r\\n')\n\
             data = b''\n\
             while not data.endswith(b'\\r\\n'):\n\
             \x20   chunk = s.recv(4096)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print(data.decode(), end='')\n",
            self.host_addr
        );
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", &script])
            .output()
            .expect("cannot run a client in the namespace");
        assert!(
            output.status.success(),
            "namespace client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn start(io: &str, extra: &[&str]) -> SeqdProcess {
    let io = format!("--io={io}");
    let mut args = vec![
        "--host=0.0.0.0",
        "--port=0",
        "--threads=1",
        "--in-memory",
        &io,
    ];
    args.extend_from_slice(extra);
    SeqdProcess::start_exact(&args)
}

fn loopback_ping(server: &SeqdProcess) -> String {
    let mut c = server.connect();
    c.write_all(b"PING\r\n").unwrap();
    read_line(&mut c)
}

fn protected_mode_on(io: &str, tag: &str) {
    let Some(namespace) = Namespace::create(tag) else {
        eprintln!("SKIPPED: needs root and ip (iproute2) to make a network namespace");
        return;
    };
    let server = start(io, &[]);
    server.wait_for_log("protected mode");
    let port = server.addr.port();
    let denied = namespace.ping(port);
    assert!(
        denied.starts_with("-DENIED seqd is running in protected mode")
            && denied.contains("--requirepass")
            && denied.contains("--protected-mode no")
            && denied.contains("127.0.0.1"),
        "{denied:?}"
    );
    assert_eq!(
        loopback_ping(&server),
        "+PONG",
        "loopback clients are served"
    );
    drop(server);

    let open = start(io, &["--protected-mode=no"]);
    assert_eq!(namespace.ping(open.addr.port()), "+PONG\r\n");
    drop(open);

    let with_password = start(io, &["--requirepass=pw"]);
    assert_eq!(
        namespace.ping(with_password.addr.port()),
        "+PONG\r\n",
        "with a password, other hosts are served (after AUTH)"
    );
}

#[test]
fn protected_mode_denies_other_hosts_io_uring() {
    protected_mode_on("auto", "a");
}

#[test]
fn protected_mode_denies_other_hosts_epoll() {
    protected_mode_on("epoll", "b");
}
