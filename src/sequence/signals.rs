//! Coordination between the event loops and the store's persister, which makes ceilings and
//! lease and stream records durable.
//!
//! Two things cross that boundary, both off the hot path: a loop whose request waits for
//! something not yet on disk (a higher ceiling, a lease or stream record) *asks for a write*
//! (waking the persister at once instead of at its next tick), and the persister *reports
//! whether it can write*: while it cannot, such requests are refused instead of left waiting
//! (fail closed). [`PersisterSignals::beyond_durable`] is that rule, in one place.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::IssueDeadline;

#[derive(Debug, Default)]
pub struct PersisterSignals {
    /// A write was asked for and the persister has not yet taken the request.
    write_requested: AtomicBool,
    /// Lets the persister sleep until asked; the mutex guards nothing but the wait itself.
    wakeup: Condvar,
    sleeping: Mutex<()>,
    /// The durable state cannot be written: refuse what the durable ceiling does not cover.
    unavailable: AtomicBool,
    /// Requests refused because of it, for the persister's log.
    refused: AtomicU64,
    /// Cluster mode: past this node's leadership deadline nothing is issuable either.
    deadline: OnceLock<Arc<IssueDeadline>>,
}

/// Why a request cannot be given a number now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unissuable {
    /// The durable state cannot be written, or this leader's deadline passed.
    Unavailable,
    /// This node is a standby: the leader is at `leader` (None: unknown, an election runs).
    NotLeader { leader: Option<&'static str> },
}

/// This node's place in a cluster, for INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    Leader,
    Follower { leader: Option<&'static str> },
}

/// What to do with a request that needs what is not on disk yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeyondDurable {
    /// The durable state cannot be written: refuse the request now (fail closed).
    Refuse,
    /// A write has been asked for: the request waits for it.
    Wait,
}

impl PersisterSignals {
    /// The rule for a request beyond the durable ceiling (or waiting for a record to be
    /// durable): refused while the disk is unavailable, else a write is requested and the
    /// request waits.
    #[inline]
    pub fn beyond_durable(&self) -> BeyondDurable {
        if self.unavailable() {
            BeyondDurable::Refuse
        } else {
            self.request_write();
            BeyondDurable::Wait
        }
    }

    /// Asks for a write (ceilings raised, records saved). Cheap when a request is already
    /// pending (one atomic swap).
    pub fn request_write(&self) {
        if !self.write_requested.swap(true, Ordering::AcqRel) {
            // Taking the lock orders this notification after a waiter's check of the flag,
            // so the wake-up cannot fall between its check and its wait.
            drop(self.lock());
            self.wakeup.notify_all();
        }
    }

    /// Waits up to `timeout` for a write to be asked for; returns whether one was (and takes
    /// the request).
    pub fn wait_for_write_request(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        // `wait_timeout_while` re-waits after spurious wake-ups.
        let _ = self
            .wakeup
            .wait_timeout_while(guard, timeout, |_| {
                !self.write_requested.load(Ordering::Acquire)
            })
            .unwrap_or_else(|poison| poison.into_inner());
        self.write_requested.swap(false, Ordering::AcqRel)
    }

    /// Marks ceilings as impossible to raise (the disk fails) or possible again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::Release);
    }

    /// Whether a refused request must be refused rather than wait: ceilings cannot be
    /// raised, or (cluster mode) this node may not issue at all now.
    #[inline]
    pub fn unavailable(&self) -> bool {
        self.unavailable.load(Ordering::Acquire)
            || self
                .deadline
                .get()
                .is_some_and(|deadline| !deadline.allows_issuing())
    }

    /// Why a refused request (see [`PersisterSignals::beyond_durable`]) is refused.
    pub fn unissuable(&self) -> Unissuable {
        match self.deadline.get() {
            Some(deadline) if deadline.is_follower() => Unissuable::NotLeader {
                leader: deadline.leader(),
            },
            _ => Unissuable::Unavailable,
        }
    }

    /// Cluster mode: whether this node leads or stands by (None: a single node).
    pub fn cluster_role(&self) -> Option<ClusterRole> {
        let deadline = self.deadline.get()?;
        Some(match deadline.is_follower() {
            true => ClusterRole::Follower {
                leader: deadline.leader(),
            },
            false => ClusterRole::Leader,
        })
    }

    /// Cluster mode: requests refused past `deadline` are refused as unavailable.
    pub fn set_issue_deadline(&self, deadline: Arc<IssueDeadline>) {
        // Set once, at start-up, before any request; a second call keeps the first.
        let _ = self.deadline.set(deadline);
    }

    /// Counts a request refused because ceilings are unavailable.
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused since the last call.
    pub fn take_refusals(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sleeping
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn past_the_issue_deadline_every_refusal_is_unavailable() {
        let signals = PersisterSignals::default();
        let deadline = Arc::new(IssueDeadline::new());
        signals.set_issue_deadline(deadline.clone());
        assert!(signals.unavailable(), "not elected yet");
        assert_eq!(signals.beyond_durable(), BeyondDurable::Refuse);
        deadline.extend_to(super::super::monotonic_nanos() + 60_000_000_000);
        assert!(!signals.unavailable());
        deadline.revoke();
        assert!(signals.unavailable());
    }

    #[test]
    fn a_request_made_before_the_wait_is_not_lost() {
        let signals = PersisterSignals::default();
        signals.request_write();
        signals.request_write();
        assert!(signals.wait_for_write_request(Duration::from_secs(60)));
        assert!(!signals.wait_for_write_request(Duration::ZERO));
    }

    #[test]
    fn a_request_wakes_a_waiting_thread() {
        let signals = Arc::new(PersisterSignals::default());
        let waiter = {
            let signals = signals.clone();
            // A lost wake-up makes this wait out its (long) timeout and return false.
            std::thread::spawn(move || signals.wait_for_write_request(Duration::from_secs(600)))
        };
        std::thread::sleep(Duration::from_millis(20));
        signals.request_write();
        assert!(
            waiter.join().unwrap(),
            "woken by the request, not the timeout"
        );
    }

    #[test]
    fn beyond_durable_refuses_while_unavailable_else_asks_for_a_write() {
        let signals = PersisterSignals::default();
        assert_eq!(signals.beyond_durable(), BeyondDurable::Wait);
        assert!(
            signals.wait_for_write_request(Duration::ZERO),
            "a write was asked for"
        );
        signals.set_unavailable(true);
        assert_eq!(signals.beyond_durable(), BeyondDurable::Refuse);
        assert!(!signals.wait_for_write_request(Duration::ZERO));
    }

    #[test]
    fn refusals_are_counted_and_taken() {
        let signals = PersisterSignals::default();
        assert!(!signals.unavailable());
        signals.set_unavailable(true);
        assert!(signals.unavailable());
        signals.count_refusal();
        signals.count_refusal();
        assert_eq!(signals.take_refusals(), 2);
        assert_eq!(signals.take_refusals(), 0);
    }
}
