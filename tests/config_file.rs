//! `--config seqd.toml` against the real binary: the file's settings apply, the command line
//! overrides them, and a key that is no flag stops the start with an error naming it.

mod common;

use std::io::Write;

use common::{SeqdProcess, read_line};

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("seqd.toml");
    std::fs::write(&path, text).unwrap();
    format!("--config={}", path.display())
}

fn first_number(server: &SeqdProcess) -> String {
    let mut c = server.connect();
    c.write_all(b"GETSEQ\r\nGETSEQ_BATCH 11\r\n").unwrap();
    format!("{} | {}", read_line(&mut c), read_line(&mut c))
}

#[test]
fn file_settings_apply_and_the_command_line_overrides_them() {
    let dir = common::temp_dir();
    let config = config_file(
        &dir,
        "# seqd settings\ninitial = 500\nmax-batch = 10\nprotected-mode = false\n\
         log-level = \"info\"\nlease-timeout = \"5s\"\n",
    );
    let server = SeqdProcess::start(&[&config]);
    let reply = first_number(&server);
    assert!(
        reply.starts_with(":500 | -ERR batch size must be between 1 and 10"),
        "{reply}"
    );
    drop(server);

    let server = SeqdProcess::start(&[&config, "--initial=900", "--max-batch=20"]);
    let reply = first_number(&server);
    assert!(reply.starts_with(":900 | *2"), "{reply}");
}

#[test]
fn unknown_keys_are_named() {
    let dir = common::temp_dir();
    let config = config_file(&dir, "max-conections = 5\nport = 0\nbogus = true\n");
    let (status, log) = SeqdProcess::start_failure(&[&config]);
    assert!(!status.success());
    assert!(
        log.contains("unknown keys max-conections, bogus")
            || log.contains("unknown keys bogus, max-conections"),
        "{log}"
    );

    let bad_value = config_file(&dir, "max-batch = \"many\"\n");
    let (status, log) = SeqdProcess::start_failure(&[&bad_value]);
    assert!(!status.success());
    assert!(log.contains("--max-batch"), "{log}");

    let not_toml = config_file(&dir, "initial = \n");
    let (status, log) = SeqdProcess::start_failure(&[&not_toml]);
    assert!(!status.success());
    assert!(log.contains("not valid TOML"), "{log}");
}

#[test]
fn the_shipped_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/seqd.toml");
    // The harness's --host=127.0.0.1 and --port=0 override the file's.
    let server = SeqdProcess::start(&[&format!("--config={example}")]);
    assert!(first_number(&server).starts_with(":1 | *2"));
}
