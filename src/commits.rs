//! Which changes to lease and stream records are on disk.
//!
//! Every change gets a number, taken while the changed records are locked. The persister
//! reads the last number *before* it copies the records for a write, so the copy holds every
//! change up to that number; once the write is durable it marks them so. A reply that
//! depends on change `n` (a lease granted, an acknowledgement, a stream's numbers) is sent
//! only once `n` is durable: many such waits share one write (group commit).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Commits {
    /// The number of the last change made.
    last: AtomicU64,
    /// Every change up to this one is on disk.
    durable: AtomicU64,
    /// Nothing is persisted (`--in-memory`): every change counts as durable at once.
    memory_only: bool,
}

impl Commits {
    /// Changes become durable when the persister says so.
    pub fn persisted() -> Commits {
        Commits {
            last: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            memory_only: false,
        }
    }

    /// Without a data directory: every change is as durable as it will ever be.
    pub fn memory_only() -> Commits {
        Commits {
            memory_only: true,
            ..Commits::persisted()
        }
    }

    /// Numbers a new change. Call while holding the lock of what changed.
    pub fn next(&self) -> u64 {
        self.last.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number of the last change made.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Whether change `change` (and every earlier one) is on disk.
    #[inline]
    pub fn is_durable(&self, change: u64) -> bool {
        self.memory_only || self.durable.load(Ordering::Acquire) >= change
    }

    /// Whether some change still waits for a write.
    pub fn pending(&self) -> bool {
        !self.memory_only && self.last() > self.durable.load(Ordering::Acquire)
    }

    /// Records that every change up to `change` is on disk.
    pub fn mark_durable(&self, change: u64) {
        self.durable.fetch_max(change, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_wait_for_the_write_that_covers_them() {
        let commits = Commits::persisted();
        assert!(!commits.pending());
        let a = commits.next();
        let covered = commits.last();
        let b = commits.next();
        assert!(commits.pending());
        assert!(!commits.is_durable(a));
        commits.mark_durable(covered);
        assert!(commits.is_durable(a));
        assert!(!commits.is_durable(b), "made after the copy was taken");
        commits.mark_durable(0); // never goes back
        assert!(commits.is_durable(a));
        commits.mark_durable(b);
        assert!(!commits.pending());
    }

    #[test]
    fn memory_only_changes_are_durable_at_once() {
        let commits = Commits::memory_only();
        let change = commits.next();
        assert!(commits.is_durable(change));
        assert!(!commits.pending());
    }
}
