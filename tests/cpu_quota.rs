//! `--busy-poll auto` (the default) follows the CPU quota of seqd's cgroup: moved into a group
//! with a CFS quota, seqd stops busy-polling (and says so); moved out, it spins again. Needs a
//! writable cgroup `cpu` controller (v1 `cpu.cfs_quota_us` or v2 `cpu.max`), as root.

use std::path::{Path, PathBuf};

use seqd_test_support::SeqdProcess;

/// A child cgroup with a quota of half a CPU, removed on drop (its tasks moved back first).
struct QuotaGroup {
    dir: PathBuf,
    /// Where a task goes back to: the group's parent.
    parent: PathBuf,
}

impl QuotaGroup {
    fn create(test: &str) -> Option<QuotaGroup> {
        let name = format!("seqd-test-quota-{}-{test}", std::process::id());
        for (root, file, quota) in [
            ("/sys/fs/cgroup/cpu", "cpu.cfs_quota_us", "5000"),
            ("/sys/fs/cgroup/cpu,cpuacct", "cpu.cfs_quota_us", "5000"),
            ("/sys/fs/cgroup", "cpu.max", "5000 10000"),
        ] {
            let parent = Path::new(root);
            let dir = parent.join(&name);
            if !parent.join("cgroup.procs").exists() || std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if file == "cpu.cfs_quota_us" {
                let _ = std::fs::write(dir.join("cpu.cfs_period_us"), "10000");
            }
            if std::fs::write(dir.join(file), quota).is_ok() {
                return Some(QuotaGroup {
                    dir,
                    parent: parent.to_path_buf(),
                });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn leave(&self, pid: u32) {
        std::fs::write(self.parent.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for QuotaGroup {
    fn drop(&mut self) {
        if let Ok(tasks) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in tasks.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn busy_polling_stops_under_a_cpu_quota_and_resumes_without_one() {
    let Some(group) = QuotaGroup::create("moved") else {
        eprintln!("skipped: no writable cgroup cpu controller here (needs root)");
        return;
    };
    let server = SeqdProcess::start(&["--log-level=info"]);
    let mut client = server.client();
    assert!(client.get().is_ok());
    assert!(!server.log().contains("CPU quota in force"));

    group.enter(server.pid());
    server.wait_for_log("CPU quota in force");
    assert!(
        server.log().contains(group.dir.to_str().unwrap()),
        "the log names the group: {}",
        server.log()
    );
    let before = client.get().unwrap();
    group.leave(server.pid());
    server.wait_for_log("no CPU quota any more: event loops busy-poll again");
    assert!(client.get().unwrap() > before);
}

#[test]
fn a_fixed_busy_poll_ignores_the_quota_and_a_quota_at_start_is_seen_at_start() {
    let Some(group) = QuotaGroup::create("at-start") else {
        eprintln!("skipped: no writable cgroup cpu controller here (needs root)");
        return;
    };
    // Started inside the group (a shell moves itself in first): seen before serving.
    let server = SeqdProcess::start_in_cgroup(&group.dir, &["--log-level=info"]);
    let log = server.log();
    let quota_line = log.find("CPU quota in force").expect("the quota is logged");
    let listening = log
        .find("seqd listening")
        .expect("seqd listening is logged");
    assert!(quota_line < listening, "{log}");
    assert!(log.contains("busy_poll_us=0"), "{log}");
    drop(server);

    let fixed = SeqdProcess::start_in_cgroup(&group.dir, &["--log-level=info", "--busy-poll=50"]);
    assert!(fixed.log().contains("busy_poll_us=50"), "{}", fixed.log());
    assert!(
        !fixed.log().contains("CPU quota in force"),
        "{}",
        fixed.log()
    );
}
