//! The I/O backends where io_uring is blocked as Docker's default seccomp profile blocks it:
//! `io_uring_setup` fails with EPERM. seqd is started under such a filter (installed in the
//! child before exec, so the test process itself keeps io_uring).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::temp_dir;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

const PATIENCE: Duration = Duration::from_secs(20);

/// A classic BPF seccomp program: `io_uring_setup` fails with EPERM, everything else is
/// allowed (a foreign architecture's calls too: only this one's numbers are known here).
fn deny_io_uring_setup() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump_if_equal = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    // Offsets in struct seccomp_data.
    let (nr, arch) = (0, 4);
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, arch),
        jump_if_equal(AUDIT_ARCH, 0, 2),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr),
        jump_if_equal(libc::SYS_io_uring_setup as u32, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    ]
}

/// seqd with `args`, under the filter; stderr piped.
fn spawn_without_io_uring(args: &[&str]) -> (Child, tempfile::TempDir) {
    let dir = temp_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_seqd"));
    command
        .args(["--host=127.0.0.1", "--port=0", "--threads=2"])
        .arg(format!("--data-dir={}", dir.path().display()))
        .args(args)
        .env_remove("SEQD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let filter = deny_io_uring_setup();
    // SAFETY: between fork and exec the closure only makes two system calls on memory
    // allocated before the fork (no allocation, no locks).
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (command.spawn().expect("cannot start seqd"), dir)
}

/// Every line seqd logs, as it logs them.
fn log_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether io_uring's EPERM here can only be the seccomp filter (the sysctl would explain it
/// otherwise, and the advice names the sysctl instead).
fn sysctl_allows_io_uring() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |value| value.trim() == "0")
}

#[test]
fn auto_serves_on_epoll_when_seccomp_denies_io_uring_and_says_why_once() {
    let (mut child, _dir) = spawn_without_io_uring(&["--io=auto"]);
    let lines = log_lines(&mut child);
    let mut log = Vec::new();
    let addr = loop {
        let line = match lines.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("seqd did not start; log:\n{}", log.join("\n"));
            }
        };
        log.push(line.clone());
        if let Some(rest) = line.split("seqd listening on ").nth(1) {
            let addr: std::net::SocketAddr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("listening address");
            break addr;
        }
    };
    let log = log.join("\n");

    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"GETSEQ\r\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    assert_eq!(reply, ":1\r\n", "log:\n{log}");

    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "exactly one warning; log:\n{log}");
    let warning = warnings[0];
    assert!(warning.contains("serving with epoll"), "{warning}");
    assert!(
        warning.contains("EPERM") || warning.contains("Operation not permitted"),
        "the cause is named: {warning}"
    );
    if sysctl_allows_io_uring() {
        assert!(warning.contains("seccomp"), "the cause is named: {warning}");
    }
    assert!(
        warning.contains("per read and per write"),
        "the cost is named: {warning}"
    );
    assert!(
        log.contains("io=epoll"),
        "the start-up log names the backend:\n{log}"
    );

    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn uring_refuses_to_start_when_seccomp_denies_io_uring_and_names_the_fix() {
    let (mut child, _dir) = spawn_without_io_uring(&["--io=uring"]);
    let lines = log_lines(&mut child);
    let status = child.wait().unwrap();
    let log: Vec<String> = lines.iter().collect();
    let log = log.join("\n");
    assert!(!status.success(), "log:\n{log}");
    assert!(!log.contains("seqd listening on"), "log:\n{log}");
    assert!(
        log.contains("EPERM") || log.contains("Operation not permitted"),
        "log:\n{log}"
    );
    if sysctl_allows_io_uring() {
        assert!(
            log.contains("--security-opt seccomp=unconfined"),
            "the fix is named:\n{log}"
        );
    }
    assert!(
        log.contains("--io epoll"),
        "the other way out is named:\n{log}"
    );
}

#[test]
fn epoll_chosen_serves_and_the_start_up_log_says_so_without_a_warning() {
    let server = common::SeqdProcess::start(&["--io=epoll"]);
    let mut stream = server.connect();
    assert_eq!(common::exchange(&mut stream, b"GETSEQ\r\n", 4), b":1\r\n");
    let log = server.log();
    assert!(log.contains("io=epoll"), "{log}");
    assert!(log.contains("epoll: edge-triggered"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
}
