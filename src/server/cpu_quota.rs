//! Whether this process runs under a CPU bandwidth limit (a CFS quota: systemd's
//! `CPUQuota=`, `docker run --cpus`, a Kubernetes CPU limit), read from its cgroup — v2
//! `cpu.max`, or v1 `cpu.cfs_quota_us` — in its own group and every group above it.
//!
//! `--busy-poll auto` asks this: under a quota, the microseconds a loop spins waiting for the
//! next request are charged to the quota, so the loop is throttled while requests wait
//! (results/busy-poll-quota measures spinning against not spinning under one quota).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often [`watch`] looks again: a quota may be set, or the process moved into a group
/// with one, while it runs.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `check` with the quota in force now (None: none), then again every
/// [`CHECK_INTERVAL`] from a thread that ends once `check` returns false.
pub fn watch(
    mut check: impl FnMut(Option<String>) -> bool + Send + 'static,
) -> std::io::Result<()> {
    if !check(this_process()) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("cpu-quota".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CHECK_INTERVAL);
                if !check(this_process()) {
                    return;
                }
            }
        })
        .map(drop)
}

/// The limit that applies to this process, described for the log (None: none, or the cgroup
/// files cannot be read, which is treated as no limit).
pub fn this_process() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cpu_cgroup_dirs(&cgroups, &mounts)
        .into_iter()
        .find_map(|(version, dir)| limit_at_or_above(version, &dir))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn file(self) -> &'static str {
        match self {
            Version::V1 => "cpu.cfs_quota_us",
            Version::V2 => "cpu.max",
        }
    }
}

/// The directories of this process's cpu cgroup, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`: the v1 hierarchy with the `cpu` controller, and the v2 one.
fn cpu_cgroup_dirs(cgroups: &str, mountinfo: &str) -> Vec<(Version, PathBuf)> {
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        // "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let version = if controllers.is_empty() {
            Version::V2
        } else if controllers.split(',').any(|c| c == "cpu") {
            Version::V1
        } else {
            continue;
        };
        if let Some(mount) = mount_of(version, mountinfo) {
            dirs.push((version, mount.dir_of(path)));
        }
    }
    dirs
}

/// Where a cgroup hierarchy is mounted: `root` is the hierarchy's directory shown there (not
/// `/` inside a container with its own cgroup namespace).
struct Mount<'a> {
    root: &'a str,
    point: &'a str,
}

impl Mount<'_> {
    fn dir_of(&self, path: &str) -> PathBuf {
        let relative = path.strip_prefix(self.root).unwrap_or(path);
        Path::new(self.point).join(relative.trim_start_matches('/'))
    }
}

/// The mount of the v2 hierarchy, or of the v1 one with the `cpu` controller.
fn mount_of(version: Version, mountinfo: &str) -> Option<Mount<'_>> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
        let (mount, fs) = line.split_once(" - ")?;
        let mount: Vec<&str> = mount.split(' ').collect();
        let mut fs = fs.split(' ');
        let (fstype, _source, options) = (fs.next()?, fs.next()?, fs.next().unwrap_or(""));
        let matches = match version {
            Version::V2 => fstype == "cgroup2",
            Version::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "cpu"),
        };
        (matches && mount.len() >= 5).then(|| Mount {
            root: mount[3],
            point: mount[4],
        })
    })
}

/// The first group from `dir` up to the hierarchy's top whose quota file sets a limit.
fn limit_at_or_above(version: Version, dir: &Path) -> Option<String> {
    dir.ancestors().find_map(|group| {
        let file = group.join(version.file());
        let content = std::fs::read_to_string(&file).ok()?;
        is_limit(version, &content).then(|| format!("{} {}", file.display(), content.trim()))
    })
}

/// v2 `cpu.max` is "QUOTA PERIOD", QUOTA "max" for none; v1 `cpu.cfs_quota_us` is -1 for none.
fn is_limit(version: Version, content: &str) -> bool {
    let quota = content.split_whitespace().next().unwrap_or("");
    match version {
        Version::V2 => quota != "max" && quota.parse::<u64>().is_ok(),
        Version::V1 => quota.parse::<i64>().is_ok_and(|q| q > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 31 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
35 24 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
36 24 0:32 / /sys/fs/cgroup/cpuset rw,nosuid shared:16 - cgroup cgroup rw,cpuset
";

    #[test]
    fn finds_the_v2_group_and_the_v1_cpu_group() {
        let cgroups = "12:cpuset:/a\n4:cpu,cpuacct:/bench/run\n0::/system.slice/seqd.service\n";
        assert_eq!(
            cpu_cgroup_dirs(cgroups, MOUNTINFO),
            vec![
                (
                    Version::V1,
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/bench/run")
                ),
                (
                    Version::V2,
                    PathBuf::from("/sys/fs/cgroup/system.slice/seqd.service")
                ),
            ]
        );
    }

    #[test]
    fn a_namespaced_mount_root_is_taken_off_the_path() {
        let mountinfo = "40 30 0:22 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cpu_cgroup_dirs("0::/kubepods/pod1/c1\n", mountinfo),
            vec![(Version::V2, PathBuf::from("/sys/fs/cgroup/c1"))]
        );
        assert_eq!(
            cpu_cgroup_dirs("0::/\n", mountinfo),
            vec![(Version::V2, PathBuf::from("/sys/fs/cgroup/"))]
        );
    }

    #[test]
    fn no_cpu_hierarchy_mounted_is_no_directory() {
        assert!(cpu_cgroup_dirs("4:cpu:/x\n", "").is_empty());
        assert!(cpu_cgroup_dirs("garbage\n", MOUNTINFO).is_empty());
    }

    #[test]
    fn quota_files_say_limit_or_none() {
        assert!(is_limit(Version::V2, "5000 10000\n"));
        assert!(!is_limit(Version::V2, "max 100000\n"));
        assert!(is_limit(Version::V1, "5000\n"));
        assert!(!is_limit(Version::V1, "-1\n"));
        assert!(!is_limit(Version::V1, ""));
    }

    #[test]
    fn a_limit_on_a_parent_group_applies() {
        let top = tempfile::tempdir().unwrap();
        let child = top.path().join("child");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(child.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(limit_at_or_above(Version::V2, &child), None);
        std::fs::write(top.path().join("cpu.max"), "20000 100000\n").unwrap();
        let found = limit_at_or_above(Version::V2, &child).unwrap();
        assert!(found.ends_with("cpu.max 20000 100000"), "{found}");
    }
}
