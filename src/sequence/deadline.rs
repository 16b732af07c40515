//! The issuing deadline of a cluster node: until when (on the monotonic clock) this process
//! may issue numbers, because its leadership lease in etcd cannot have expired before then.
//!
//! It is checked on every reservation, not by a timer thread that would lower the ceilings:
//! a process that is paused (SIGSTOP, a VM freeze) and resumes after its deadline must not
//! issue one number, and on resume its event loops may run before any timer thread does.
//! The check is a coarse monotonic clock read (a vDSO read of a shared page, no system
//! call): the coarse clock lags the precise one by at most one kernel tick, which the
//! leadership margin covers (see `cluster::deadline`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Nothing may be issued yet (not elected, or no lease renewal answered).
const NOT_YET: u64 = 0;
/// Leadership is over for good in this process; no renewal may extend it again.
const REVOKED: u64 = 1;

/// Until when this node may issue: CLOCK_MONOTONIC nanoseconds, exclusive.
#[derive(Debug, Default)]
pub struct IssueDeadline {
    until: AtomicU64,
    /// Where the cluster's leader is (cluster mode), for refusals and INFO.
    leader: Option<Arc<LeaderAddress>>,
    /// A standby's deadline: revoked from the start, never extended.
    follower: bool,
}

impl IssueDeadline {
    pub fn new() -> IssueDeadline {
        IssueDeadline {
            until: AtomicU64::new(NOT_YET),
            leader: None,
            follower: false,
        }
    }

    /// A leader candidate's deadline (nothing issuable until extended), knowing where the
    /// cluster's leader is.
    pub fn for_candidate(leader: Arc<LeaderAddress>) -> IssueDeadline {
        IssueDeadline {
            leader: Some(leader),
            ..IssueDeadline::new()
        }
    }

    /// A standby's deadline: nothing is ever issuable under it (it starts revoked, and a
    /// revoked deadline is never extended); refusals name the leader.
    pub fn follower(leader: Arc<LeaderAddress>) -> IssueDeadline {
        IssueDeadline {
            until: AtomicU64::new(REVOKED),
            leader: Some(leader),
            follower: true,
        }
    }

    /// Whether this is a standby's deadline.
    pub fn is_follower(&self) -> bool {
        self.follower
    }

    /// The leader's address as last seen in etcd (None: unknown, e.g. during an election, or
    /// not in cluster mode).
    pub fn leader(&self) -> Option<&'static str> {
        self.leader.as_ref().and_then(|leader| leader.get())
    }

    /// Whether a number may be issued now.
    #[inline]
    pub fn allows_issuing(&self) -> bool {
        self.allows_at(coarse_monotonic_nanos())
    }

    /// Whether a number may be issued at monotonic time `now` (nanoseconds).
    #[inline]
    pub fn allows_at(&self, now: u64) -> bool {
        now < self.until.load(Ordering::Acquire)
    }

    /// Moves the deadline forward to `until` (never back), unless leadership was revoked.
    /// Returns whether the deadline is now `until` or later.
    pub fn extend_to(&self, until: u64) -> bool {
        let mut current = self.until.load(Ordering::Acquire);
        loop {
            if current == REVOKED {
                return false;
            }
            if current >= until {
                return true;
            }
            match self.until.compare_exchange_weak(
                current,
                until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Ends issuing in this process for good (leadership lost or given up).
    pub fn revoke(&self) {
        self.until.store(REVOKED, Ordering::Release);
    }

    /// Whether [`IssueDeadline::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.until.load(Ordering::Acquire) == REVOKED
    }

    /// The current deadline in monotonic nanoseconds (0 or 1: none).
    pub fn until(&self) -> u64 {
        self.until.load(Ordering::Acquire)
    }
}

/// Most distinct leader addresses one process keeps: each is leaked once (so a refusal can
/// carry it without an allocation); a cluster has a handful.
const MAX_LEADER_ADDRESSES: usize = 64;

/// Where the cluster's leader is, as the election last saw it (`host:port`), shared by the
/// election and the event loops' refusals.
#[derive(Debug, Default)]
pub struct LeaderAddress {
    current: Mutex<Option<&'static str>>,
    known: Mutex<Vec<&'static str>>,
}

impl LeaderAddress {
    /// Records the leader's address (None: unknown).
    pub fn set(&self, address: Option<&str>) {
        let interned = address.and_then(|address| {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&same) = known.iter().find(|&&k| k == address) {
                return Some(same);
            }
            if known.len() >= MAX_LEADER_ADDRESSES {
                return None;
            }
            let leaked: &'static str = Box::leak(address.to_owned().into_boxed_str());
            known.push(leaked);
            Some(leaked)
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = interned;
    }

    pub fn get(&self) -> Option<&'static str> {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock deadlines are computed on.
pub fn monotonic_nanos() -> u64 {
    clock_nanos(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the same clock, read at kernel-tick resolution
/// (never ahead of [`monotonic_nanos`], behind it by at most one tick).
#[inline]
pub fn coarse_monotonic_nanos() -> u64 {
    clock_nanos(libc::CLOCK_MONOTONIC_COARSE)
}

#[inline]
fn clock_nanos(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux seqd runs
    // on (io_uring needs 5.x), so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_issuable_before_the_first_extension() {
        let deadline = IssueDeadline::new();
        assert!(!deadline.allows_issuing());
        assert!(!deadline.allows_at(0));
    }

    #[test]
    fn the_deadline_only_moves_forward_and_is_exclusive() {
        let deadline = IssueDeadline::new();
        assert!(deadline.extend_to(1_000));
        assert!(deadline.allows_at(999));
        assert!(!deadline.allows_at(1_000));
        assert!(
            deadline.extend_to(500),
            "an older renewal does not shorten it"
        );
        assert_eq!(deadline.until(), 1_000);
        assert!(deadline.extend_to(2_000));
        assert!(deadline.allows_at(1_500));
    }

    #[test]
    fn a_revoked_deadline_is_never_extended_again() {
        let deadline = IssueDeadline::new();
        deadline.extend_to(monotonic_nanos() + 60_000_000_000);
        assert!(deadline.allows_issuing());
        deadline.revoke();
        assert!(deadline.is_revoked());
        assert!(!deadline.allows_issuing());
        assert!(!deadline.extend_to(u64::MAX));
        assert!(!deadline.allows_at(2));
    }

    #[test]
    fn a_follower_never_issues_and_names_the_leader() {
        let leader = Arc::new(LeaderAddress::default());
        let deadline = IssueDeadline::follower(leader.clone());
        assert!(deadline.is_follower());
        assert!(!deadline.extend_to(u64::MAX));
        assert!(!deadline.allows_issuing());
        assert_eq!(deadline.leader(), None);
        leader.set(Some("h1:7000"));
        assert_eq!(deadline.leader(), Some("h1:7000"));
        leader.set(None);
        assert_eq!(deadline.leader(), None);
        leader.set(Some("h1:7000"));
        let first = deadline.leader().unwrap().as_ptr();
        leader.set(Some("h2:7000"));
        leader.set(Some("h1:7000"));
        assert_eq!(deadline.leader().unwrap().as_ptr(), first, "interned once");
    }

    #[test]
    fn the_coarse_clock_is_never_ahead_of_the_precise_one() {
        for _ in 0..1000 {
            let coarse = coarse_monotonic_nanos();
            let precise = monotonic_nanos();
            assert!(coarse <= precise, "{coarse} > {precise}");
        }
    }
}
