//! Creating an io_uring with the best flags this kernel offers, and explaining plainly when
//! io_uring cannot be used at all.

use std::io;

use io_uring::{IoUring, Probe, opcode};

/// Which optional io_uring features a ring was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// SINGLE_ISSUER + DEFER_TASKRUN (6.1+); otherwise COOP_TASKRUN (5.19+) or neither.
    pub task_run: TaskRun,
    /// Completions are never dropped when the completion queue is full (5.5+).
    pub no_drop: bool,
    /// The kernel flags pending deferred work in shared memory (TASKRUN_FLAG, 5.19+), which
    /// busy polling watches.
    pub work_pending_flag: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    Deferred,
    Cooperative,
    Default,
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let task_run = match self.task_run {
            TaskRun::Deferred => "SINGLE_ISSUER+DEFER_TASKRUN",
            TaskRun::Cooperative => "COOP_TASKRUN (DEFER_TASKRUN needs Linux 6.1)",
            TaskRun::Default => "default task running (COOP_TASKRUN needs Linux 5.19)",
        };
        write!(
            f,
            "{task_run}, multishot accept, multishot recv, provided buffer ring"
        )?;
        if !self.work_pending_flag {
            write!(
                f,
                ", no busy polling (--busy-poll needs TASKRUN_FLAG, Linux 5.19)"
            )?;
        }
        if !self.no_drop {
            write!(
                f,
                ", WITHOUT FEAT_NODROP (completions may be lost if the queue overflows)"
            )?;
        }
        Ok(())
    }
}

/// Creates a ring with `entries` submission slots and room for `cq_entries` completions,
/// using the best task-running mode available. Call it on the thread that will use the ring
/// (SINGLE_ISSUER ties the ring to its creator).
pub fn create_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, Features)> {
    let attempts = [TaskRun::Deferred, TaskRun::Cooperative, TaskRun::Default];
    let mut last_error = None;
    for task_run in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_submit_all();
        match task_run {
            TaskRun::Deferred => {
                builder
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            TaskRun::Cooperative => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Default => {}
        }
        match builder.build(entries) {
            Ok(ring) => {
                let no_drop = ring.params().is_feature_nodrop();
                check_opcodes(&ring)?;
                let work_pending_flag = task_run != TaskRun::Default;
                return Ok((
                    ring,
                    Features {
                        task_run,
                        no_drop,
                        work_pending_flag,
                    },
                ));
            }
            // EINVAL: a flag this kernel does not know; try the next, plainer set.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_error = Some(e),
            Err(e) => return Err(explain_setup_error(e)),
        }
    }
    Err(explain_setup_error(
        last_error.unwrap_or_else(|| io::Error::other("no attempt made")),
    ))
}

/// Whether this process can run the io_uring event loops: a ring with every operation they
/// use, and a provided buffer ring registered on it. The error says why not and what fixes it.
pub fn uring_usable() -> io::Result<()> {
    let (ring, _) = create_ring(8, 16)?;
    let buffers = super::bufring::BufRing::new(0, 1, 4096)?;
    let registered = buffers.register(&ring.submitter()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot register a provided buffer ring ({e}); seqd needs Linux 6.0 or newer"),
        )
    });
    // The ring goes first, so the kernel is done with the buffers before they are freed.
    drop(ring);
    drop(buffers);
    registered
}

fn check_opcodes(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring probe failed ({e}); seqd needs Linux 6.0 or newer"),
        )
    })?;
    let needed = [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Read::CODE, "READ"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Timeout::CODE, "TIMEOUT"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "this kernel's io_uring lacks the {name} operation; seqd needs Linux 6.0 or newer"
                ),
            ));
        }
    }
    Ok(())
}

/// Turns a failed io_uring_setup into an error that says why and what to do.
pub fn explain_setup_error(e: io::Error) -> io::Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let advice = match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(2)) => {
            "io_uring is disabled by the sysctl kernel.io_uring_disabled=2; enable it with \
             `sysctl -w kernel.io_uring_disabled=0` (as root)"
                .to_string()
        }
        (Some(libc::EPERM), Some(1)) => {
            "io_uring is restricted by kernel.io_uring_disabled=1 to members of the group in \
             kernel.io_uring_group; run seqd as a member of that group, or set \
             `sysctl -w kernel.io_uring_disabled=0`"
                .to_string()
        }
        (Some(libc::EPERM), _) => "io_uring_setup was refused (EPERM), most likely by a seccomp \
             filter: Docker's default profile blocks io_uring. Run the container with \
             `--security-opt seccomp=unconfined` or a profile that allows io_uring_setup, \
             io_uring_enter and io_uring_register"
            .to_string(),
        (Some(libc::ENOSYS), _) => "this kernel was built without io_uring (CONFIG_IO_URING); \
             seqd needs Linux 6.0 or newer with io_uring enabled"
            .to_string(),
        (Some(libc::ENOMEM), _) => "not enough locked memory for the io_uring rings; raise the \
             limit with `ulimit -l unlimited` (or LimitMEMLOCK=infinity in a systemd unit), or \
             use a kernel newer than 5.12 which does not charge rings to it"
            .to_string(),
        _ => format!(
            "seqd needs Linux 6.0 or newer with io_uring enabled (kernel: {})",
            kernel_release()
        ),
    };
    io::Error::new(
        e.kind(),
        format!("cannot create an io_uring instance: {e}. {advice}"),
    )
}

/// The running kernel's release string, e.g. `6.8.0-45-generic`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
