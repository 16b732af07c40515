//! Issue 20: what one unprivileged client (or local user) can do to everyone else, tried
//! against the real binary as a bounded attack, with what a bystander observes meanwhile.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use seqd_test_support::{SeqdProcess, read_line, temp_dir};

fn data_dir_arg(dir: &Path) -> String {
    format!("--data-dir={}", dir.display())
}

fn command(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_line(conn)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---- item 5: the data directory ----

#[test]
fn a_symlink_planted_at_state_tmp_is_not_followed() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    let victim = parent.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let server = SeqdProcess::start(&[&data_dir_arg(&data), "--max-crash-gap=10"]);
    std::os::unix::fs::symlink(&victim, data.join("state.tmp")).unwrap();
    let mut conn = server.connect();
    // Past the ceiling: seqd must write a new state (through `state.tmp`) to answer.
    for _ in 0..50 {
        let number = command(&mut conn, "GETSEQ default");
        assert!(number.starts_with(':'), "{number}");
    }
    let bystander = command(&mut server.connect(), "GETSEQ default");
    assert!(bystander.starts_with(':'), "{bystander}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!data.join("state.tmp").exists(), "the planted link is gone");
}

#[test]
fn a_symlink_planted_at_the_lock_file_stops_the_start_and_is_not_followed() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = parent.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("seqd.lock")).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&data)]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("seqd.lock"), "{log}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_data_directory_others_can_write_is_refused_with_the_fix_named() {
    let parent = temp_dir();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&data)]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("chmod 700 {}", data.display())),
        "{log}"
    );
    assert!(!data.join("state").exists(), "nothing was written: {log}");
}

#[test]
fn a_symlinked_data_directory_is_refused() {
    let parent = temp_dir();
    let real = parent.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = parent.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (status, log) = SeqdProcess::start_failure(&[&data_dir_arg(&link)]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("is a symlink"), "{log}");
}

#[test]
fn under_umask_000_the_data_directory_is_created_0700() {
    let parent = temp_dir();
    let data = parent.path().join("fresh/data");
    let server = SeqdProcess::start_with_umask(0, &[&data_dir_arg(&data)]);
    assert_eq!(command(&mut server.connect(), "GETSEQ default"), ":1");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&parent.path().join("fresh")), 0o700);
}
