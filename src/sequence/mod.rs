//! Sequences: named, independent 64-bit counters shared by every event loop.
//!
//! A [`Sequence`] hands out numbers with one compare-and-swap per reservation, whatever the
//! reservation's size, so callers that coalesce a batch of requests pay one atomic per batch.
//! When one thread alone reserves from it ([`Writers::One`]: seqd with one event loop), a
//! reservation is a plain load and store instead: a counter with a single writer needs no
//! lock-prefixed read-modify-write, which costs ~10 ns on x86 even uncontended, while readers
//! on other threads (`CURRENT`, the persister) still see every value in order.
//! Every number issued is below the sequence's *ceiling*: in memory-only mode the ceiling is
//! the end of the number space; with durability it is the highest bound already on disk, and
//! a reservation that would cross it is refused with [`Refusal::AwaitingCeiling`] until the
//! ceiling has been raised (so callers never need to know which mode they run in).

mod deadline;
mod registry;
mod signals;

pub use deadline::{IssueDeadline, LeaderAddress, coarse_monotonic_nanos, monotonic_nanos};
pub use registry::{
    MAX_NAME_LEN, NameError, RebuildError, RecoveredSequence, Registry, RegistryError,
    validate_name,
};
pub use signals::{BeyondDurable, ClusterRole, PersisterSignals, Unissuable};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may reserve numbers from a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Any number of threads (compare-and-swap).
    Many,
    /// One thread only, always the same (load and store). Debug builds check it.
    One,
}

impl Writers {
    /// For `threads` threads that all reserve (seqd's event loops, loadgen's in-process
    /// threads).
    pub fn for_threads(threads: usize) -> Writers {
        if threads == 1 {
            Writers::One
        } else {
            Writers::Many
        }
    }
}

/// The largest number any sequence issues: `i64::MAX - 1`, so that every number fits a Java/Kotlin
/// `long`, a PostgreSQL `bigint` and a RESP integer without a sign surprise.
pub const MAX_VALUE: u64 = END_OF_SPACE - 1;

/// The exclusive upper bound of the number space. `CURRENT` of an exhausted sequence reports it,
/// so it too fits a signed 64-bit integer.
pub const END_OF_SPACE: u64 = i64::MAX as u64;

/// Index of a sequence in its [`Registry`]; stable for the life of the registry.
pub type SequenceId = u32;

/// The sequence a client gets when it names none.
pub const DEFAULT_SEQUENCE: SequenceId = 0;
/// Its name, for the text protocol and logs.
pub const DEFAULT_NAME: &str = "default";

/// Why a reservation was not granted. Nothing is consumed when a reservation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Fewer than the requested count of numbers are left before [`MAX_VALUE`].
    Exhausted { remaining: u64 },
    /// The numbers exist but are not yet covered by the durable ceiling; retry after a raise.
    AwaitingCeiling,
}

/// One counter. Aligned to two cache lines so two hot sequences never share a line
/// (adjacent-line prefetch on x86 pulls pairs of lines).
#[repr(align(128))]
#[derive(Debug)]
pub struct Sequence {
    /// The next number to issue. Only ever increases.
    next: AtomicU64,
    /// Exclusive bound: no number `>= ceiling` may be issued. Only ever increases.
    ceiling: AtomicU64,
    /// The highest end (exclusive) a refused reservation asked for, so whoever raises the
    /// ceiling raises it far enough for the waiting requests.
    demand: AtomicU64,
    writers: Writers,
    /// In cluster mode: numbers are issued only before this node's leadership deadline.
    deadline: Option<Arc<IssueDeadline>>,
    /// With [`Writers::One`]: the thread that reserved first, which must be the only one.
    #[cfg(debug_assertions)]
    writer: std::sync::OnceLock<std::thread::ThreadId>,
    id: SequenceId,
    name: Box<str>,
}

impl Sequence {
    /// A sequence whose first number is `initial` and that may issue up to (not including)
    /// `ceiling`.
    pub fn new(id: SequenceId, name: &str, initial: u64, ceiling: u64) -> Sequence {
        assert!(
            initial <= END_OF_SPACE,
            "initial {initial} is beyond the number space"
        );
        Sequence {
            next: AtomicU64::new(initial),
            ceiling: AtomicU64::new(ceiling.min(END_OF_SPACE)),
            demand: AtomicU64::new(0),
            writers: Writers::Many,
            deadline: None,
            #[cfg(debug_assertions)]
            writer: std::sync::OnceLock::new(),
            id,
            name: name.into(),
        }
    }

    /// Sets who may reserve; exclusive access, so no reservation can be under way.
    pub fn set_writers(&mut self, writers: Writers) {
        self.writers = writers;
    }

    /// Issues numbers only before `deadline` (cluster mode); exclusive access, so no
    /// reservation can be under way.
    pub fn set_deadline(&mut self, deadline: Arc<IssueDeadline>) {
        self.deadline = Some(deadline);
    }

    pub fn id(&self) -> SequenceId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reserves `count` consecutive numbers and returns the first. `count` must be at least 1.
    #[inline]
    pub fn reserve(&self, count: u64) -> Result<u64, Refusal> {
        debug_assert!(count > 0);
        let mut first = self.next.load(Ordering::Relaxed);
        if self.writers == Writers::One {
            self.debug_check_single_writer();
            let end = self.end_if_issuable(first, count)?;
            // Release: a reader that sees `end` also sees what this thread did before.
            self.next.store(end, Ordering::Release);
            return Ok(first);
        }
        loop {
            let end = self.end_if_issuable(first, count)?;
            match self
                .next
                .compare_exchange_weak(first, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(first),
                Err(actual) => first = actual,
            }
        }
    }

    /// The end (exclusive) of `count` numbers from `first`, if they may be issued now.
    #[inline]
    fn end_if_issuable(&self, first: u64, count: u64) -> Result<u64, Refusal> {
        let remaining = END_OF_SPACE - first;
        if count > remaining {
            return Err(Refusal::Exhausted { remaining });
        }
        let end = first + count;
        // Acquire pairs with the release in `raise_ceiling`: a raised ceiling is only
        // observed after whatever made it durable.
        if end > self.ceiling.load(Ordering::Acquire) {
            self.demand.fetch_max(end, Ordering::AcqRel);
            return Err(Refusal::AwaitingCeiling);
        }
        // Checked before the number is taken (the store or CAS that follows), so a process
        // paused past its deadline issues nothing when it resumes.
        if let Some(deadline) = &self.deadline
            && !deadline.allows_issuing()
        {
            return Err(Refusal::AwaitingCeiling);
        }
        Ok(end)
    }

    /// Debug builds: a [`Writers::One`] sequence reserved from a second thread is a bug that
    /// would issue numbers twice.
    #[inline]
    fn debug_check_single_writer(&self) {
        #[cfg(debug_assertions)]
        {
            let me = std::thread::current().id();
            let writer = *self.writer.get_or_init(|| me);
            assert_eq!(
                writer, me,
                "sequence '{}' has one writer, but a second thread reserved from it",
                self.name
            );
        }
    }

    /// The next number to be issued (the text protocol's `CURRENT`: after 1, 2, 3 it is 4).
    #[inline]
    pub fn current(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// The exclusive bound below which numbers may currently be issued.
    pub fn ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// The highest exclusive end a refused reservation has asked for (0 if none).
    pub fn demand(&self) -> u64 {
        self.demand.load(Ordering::Acquire)
    }

    /// Raises the ceiling to `ceiling` (never lowers it). Call only once `ceiling` is durable.
    pub fn raise_ceiling(&self, ceiling: u64) {
        self.ceiling
            .fetch_max(ceiling.min(END_OF_SPACE), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(initial: u64) -> Sequence {
        Sequence::new(0, "t", initial, END_OF_SPACE)
    }

    #[test]
    fn first_number_is_initial_and_current_is_next() {
        let s = open(1);
        assert_eq!(s.current(), 1);
        assert_eq!(s.reserve(1), Ok(1));
        assert_eq!(s.reserve(1), Ok(2));
        assert_eq!(s.reserve(1), Ok(3));
        assert_eq!(s.current(), 4);
        assert_eq!(s.current(), 4);
        assert_eq!(s.reserve(1), Ok(4));
    }

    #[test]
    fn batches_are_contiguous_and_disjoint() {
        let s = open(1000);
        assert_eq!(s.reserve(20), Ok(1000));
        assert_eq!(s.reserve(1), Ok(1020));
        assert_eq!(s.reserve(5), Ok(1021));
        assert_eq!(s.current(), 1026);
    }

    #[test]
    fn never_wraps_and_refusal_consumes_nothing() {
        let s = open(MAX_VALUE - 2);
        assert_eq!(s.reserve(5), Err(Refusal::Exhausted { remaining: 3 }));
        assert_eq!(s.current(), MAX_VALUE - 2);
        assert_eq!(s.reserve(3), Ok(MAX_VALUE - 2));
        assert_eq!(s.current(), END_OF_SPACE);
        assert_eq!(s.reserve(1), Err(Refusal::Exhausted { remaining: 0 }));
        assert_eq!(s.current(), END_OF_SPACE);
    }

    #[test]
    fn ceiling_blocks_until_raised() {
        let s = Sequence::new(0, "t", 10, 15);
        assert_eq!(s.reserve(5), Ok(10));
        assert_eq!(s.reserve(1), Err(Refusal::AwaitingCeiling));
        assert_eq!(s.current(), 15);
        assert_eq!(s.demand(), 16);
        s.raise_ceiling(12); // never lowers
        assert_eq!(s.ceiling(), 15);
        s.raise_ceiling(100);
        assert_eq!(s.reserve(1), Ok(15));
    }

    #[test]
    fn past_the_issue_deadline_nothing_is_issued_or_consumed() {
        for writers in [Writers::Many, Writers::One] {
            let mut s = open(10);
            s.set_writers(writers);
            let deadline = Arc::new(IssueDeadline::new());
            s.set_deadline(deadline.clone());
            assert_eq!(s.reserve(1), Err(Refusal::AwaitingCeiling), "not elected");
            deadline.extend_to(monotonic_nanos() + 60_000_000_000);
            assert_eq!(s.reserve(2), Ok(10));
            deadline.revoke();
            assert_eq!(s.reserve(1), Err(Refusal::AwaitingCeiling));
            assert_eq!(s.current(), 12, "the refused reservation consumed nothing");
        }
    }

    #[test]
    fn one_writer_reserves_like_many() {
        let mut s = Sequence::new(0, "t", 10, 15);
        s.set_writers(Writers::One);
        assert_eq!(s.reserve(3), Ok(10));
        assert_eq!(s.reserve(2), Ok(13));
        assert_eq!(s.reserve(1), Err(Refusal::AwaitingCeiling));
        assert_eq!((s.current(), s.demand()), (15, 16));
        s.raise_ceiling(END_OF_SPACE);
        assert_eq!(s.reserve(1), Ok(15));
        let mut s = Sequence::new(0, "t", MAX_VALUE - 1, END_OF_SPACE);
        s.set_writers(Writers::One);
        assert_eq!(s.reserve(3), Err(Refusal::Exhausted { remaining: 2 }));
        assert_eq!(s.reserve(2), Ok(MAX_VALUE - 1));
        assert_eq!(s.current(), END_OF_SPACE);
    }

    #[test]
    fn one_writer_is_read_in_order_from_another_thread() {
        let mut s = open(1);
        s.set_writers(Writers::One);
        let s = std::sync::Arc::new(s);
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                while last < 100_001 {
                    let now = s.current();
                    assert!(now >= last, "CURRENT went back from {last} to {now}");
                    last = now;
                }
            })
        };
        for expected in 1..=100_000 {
            assert_eq!(s.reserve(1), Ok(expected));
        }
        reader.join().unwrap();
    }

    #[cfg(debug_assertions)]
    #[test]
    fn one_writer_refuses_a_second_thread_in_debug_builds() {
        let mut s = open(1);
        s.set_writers(Writers::One);
        let s = std::sync::Arc::new(s);
        assert_eq!(s.reserve(1), Ok(1));
        let other = s.clone();
        let result = std::thread::spawn(move || other.reserve(1)).join();
        assert!(result.is_err(), "a second writer thread must panic");
        assert_eq!(s.current(), 2, "the refused reservation consumed nothing");
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let s = std::sync::Arc::new(open(1));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for i in 0..10_000u64 {
                        let n = 1 + (i + t) % 3;
                        let first = s.reserve(n).unwrap();
                        got.extend(first..first + n);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        let expected: Vec<u64> = (1..=all.len() as u64).collect();
        assert_eq!(
            all, expected,
            "union must be one contiguous range without duplicates"
        );
    }
}
