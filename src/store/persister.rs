//! The persister: one background thread that keeps every sequence's durable ceiling ahead of
//! demand, so event loops never wait for the disk in steady state.
//!
//! Ordering is what makes numbers unique across crashes: a ceiling is raised in memory only
//! after the state holding it is durable (its journal entry fsync'd, or its state file
//! fsync'd, renamed and the directory fsync'd: see [`super::data_dir`]), and a
//! number is issued only below the in-memory ceiling. So every number ever issued is below a
//! ceiling on disk, and a restart that resumes at the on-disk ceilings cannot reissue one.
//! A new sequence begins with its ceiling at its first number, so nothing is issued from it
//! before its record is on disk.
//!
//! The same writes carry the lease and stream records ([`LeasesAndStreams`]): a change to them asks
//! for a write (a lease is answered only once it is on disk), and every change made before
//! a write began is marked durable when it ends, so one write serves every waiting change.
//! A write takes only the records changed since the last one from the tables ([`RecordLog`]):
//! its cost follows what changed, not how many leases and streams there are.
//!
//! When a write fails the persister fails closed: it marks ceilings unavailable (requests
//! beyond them are refused instead of left waiting), logs once and then at most every
//! [`FAILURE_LOG_INTERVAL`], retries with backoff, and clears the mark after the first write
//! that succeeds.
//!
//! (Over 600 lines: about half is the unit tests of the write loop, kept beside it.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::changes::RecordLog;
use super::data_dir::{StateSink, StateWrite, WriteError};
use super::format::{SequenceRecord, State};
use super::window::{RateEstimate, SequenceView, WindowPolicy};
use crate::sequence::Registry;
use crate::state::LeasesAndStreams;

/// How often the persister samples rates and headroom while numbers are being issued.
pub const TICK: Duration = Duration::from_millis(10);
/// How often it looks while nothing is issued (a request that outruns a ceiling wakes it at
/// once anyway): an idle server should not wake a hundred times a second.
pub const IDLE_TICK: Duration = Duration::from_millis(100);
/// First retry after a failed write; doubled per failure up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(1);
/// While writes keep failing, a reminder is logged at most this often.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the persister did, for the shutdown log and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub writes: u64,
    pub failed_writes: u64,
    pub fsyncs: u64,
    pub elapsed: Duration,
    /// The widest window written: the most numbers a crash could have skipped.
    pub largest_window: u64,
}

impl Report {
    pub fn fsyncs_per_second(&self) -> f64 {
        self.fsyncs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one pass of the persister did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing needed writing.
    Idle,
    /// Ceilings were made durable and raised.
    Raised,
    /// The write failed; ceilings are unavailable until one succeeds.
    Failed,
    /// A retry is not due yet.
    Waiting,
}

#[derive(Debug)]
struct Failure {
    since: Instant,
    attempts: u64,
    last_logged: Instant,
    retry_at: Instant,
    delay: Duration,
}

pub struct Persister {
    sink: Box<dyn StateSink>,
    registry: Arc<Registry>,
    records: Arc<LeasesAndStreams>,
    /// The lease and stream records as last written, and the changes not written yet.
    log: RecordLog,
    policy: WindowPolicy,
    /// Generation of the last state on disk (0: none yet).
    generation: u64,
    /// Ceiling on disk per sequence id; sequences with an id at or past its length have no
    /// record on disk yet.
    durable: Vec<u64>,
    rates: Vec<RateEstimate>,
    /// No sequence issued a number between the last two samples.
    idle: bool,
    failure: Option<Failure>,
    started: Instant,
    writes: u64,
    failed_writes: u64,
    largest_window: u64,
}

impl Persister {
    /// A persister for `registry`, whose sequences are on disk with the ceilings in
    /// `previous` (None for a fresh data directory). Its first write must hold every lease
    /// and stream record (a sink's first write is whole): they start from a copy of the
    /// live tables, which recovery may have changed from `previous`.
    pub fn new(
        sink: Box<dyn StateSink>,
        registry: Arc<Registry>,
        records: Arc<LeasesAndStreams>,
        policy: WindowPolicy,
        previous: Option<&State>,
    ) -> Persister {
        let durable = previous
            .map(|state| state.sequences.iter().map(|s| s.ceiling).collect())
            .unwrap_or_default();
        let now = Instant::now();
        let log = RecordLog::new(records.baseline());
        Persister {
            sink,
            registry,
            records,
            log,
            policy,
            generation: previous.map_or(0, |state| state.generation),
            durable,
            rates: Vec::new(),
            idle: false,
            failure: None,
            started: now,
            writes: 0,
            failed_writes: 0,
            largest_window: 0,
        }
    }

    /// Writes the first windows synchronously, so the server starts with numbers to issue.
    pub fn raise_now(&mut self) -> Result<(), WriteError> {
        let views = self.views(Instant::now());
        self.write(&views)
    }

    /// Runs the persister on its own thread. `wake` must wake every event loop (they retry
    /// requests that wait for a ceiling).
    pub fn spawn(self, wake: impl Fn() + Send + 'static) -> anyhow::Result<PersisterHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let registry = self.registry.clone();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("seqd-persister".into())
                .spawn(move || self.run(&stop, &wake))
                .context("cannot start the persister thread")?
        };
        Ok(PersisterHandle {
            thread,
            stop,
            registry,
        })
    }

    fn run(mut self, stop: &AtomicBool, wake: &dyn Fn()) -> (Persister, Result<(), WriteError>) {
        loop {
            let timeout = match &self.failure {
                Some(failure) => failure.retry_at.saturating_duration_since(Instant::now()),
                None if self.idle => IDLE_TICK,
                None => TICK,
            };
            self.registry
                .persister_signals()
                .wait_for_write_request(timeout);
            if stop.load(Ordering::Acquire) {
                break;
            }
            match self.tick(Instant::now()) {
                Tick::Raised | Tick::Failed => wake(),
                Tick::Idle | Tick::Waiting => {}
            }
        }
        let result = self.write_final();
        (self, result)
    }

    /// One pass: sample rates, write if a sequence needs it (or retry a failed write when
    /// due), raise ceilings on success, fail closed on error.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if self.failure.as_ref().is_some_and(|f| now < f.retry_at) {
            return Tick::Waiting;
        }
        let views = self.views(now);
        // After a failure every retry writes, needed or not: only a write that succeeds
        // shows the disk works again.
        if self.failure.is_none()
            && !views.iter().any(SequenceView::needs_write)
            && !self.records.commits.pending()
        {
            return Tick::Idle;
        }
        match self.write(&views) {
            Ok(()) => {
                if let Some(failure) = self.failure.take() {
                    let refused = self.registry.persister_signals().take_refusals();
                    tracing::info!(
                        "state written to {} again after {} failed attempts over {:.1?}; \
                         issuing resumes ({refused} requests refused since the last report)",
                        self.sink.location(),
                        failure.attempts,
                        now.saturating_duration_since(failure.since),
                    );
                    self.registry.persister_signals().set_unavailable(false);
                }
                Tick::Raised
            }
            Err(error) => {
                self.failed_writes += 1;
                self.fail(now, &error);
                Tick::Failed
            }
        }
    }

    fn fail(&mut self, now: Instant, error: &WriteError) {
        match &mut self.failure {
            None => {
                self.registry.persister_signals().set_unavailable(true);
                tracing::error!(
                    "{error}: cannot make higher ceilings durable; numbers below the durable \
                     ceilings are still issued, requests beyond them are refused with \
                     UNAVAILABLE until a write succeeds (retrying, up to every {RETRY_MAX:?})"
                );
                self.failure = Some(Failure {
                    since: now,
                    attempts: 1,
                    last_logged: now,
                    retry_at: now + RETRY_MIN,
                    delay: RETRY_MIN,
                });
            }
            Some(failure) => {
                failure.attempts += 1;
                failure.delay = (failure.delay * 2).min(RETRY_MAX);
                failure.retry_at = now + failure.delay;
                if now.saturating_duration_since(failure.last_logged) >= FAILURE_LOG_INTERVAL {
                    failure.last_logged = now;
                    let refused = self.registry.persister_signals().take_refusals();
                    tracing::warn!(
                        "still cannot write state: {error} ({} attempts over {:.0?}; {refused} \
                         requests refused since the last report)",
                        failure.attempts,
                        now.saturating_duration_since(failure.since),
                    );
                }
            }
        }
    }

    /// Every sequence's view, with its rate sampled now.
    fn views(&mut self, now: Instant) -> Vec<SequenceView> {
        let mut views = Vec::with_capacity(self.durable.len() + 1);
        let mut issued = 0;
        for sequence in self.registry.iter() {
            let id = sequence.id() as usize;
            let next = sequence.current();
            if self.rates.len() <= id {
                self.rates.push(RateEstimate::new(next, now));
            }
            let rate = &mut self.rates[id];
            issued |= rate.observe(next, now);
            views.push(SequenceView {
                next,
                durable: self.durable.get(id).copied().unwrap_or(0),
                demand: sequence.demand(),
                on_disk: id < self.durable.len(),
                window: self.policy.window(rate.per_second()),
            });
        }
        self.idle = issued == 0;
        views
    }

    /// Writes the targets of `views` (one per sequence, in id order) and, once durable,
    /// raises the in-memory ceilings to them.
    fn write(&mut self, views: &[SequenceView]) -> Result<(), WriteError> {
        let targets: Vec<u64> = views.iter().map(SequenceView::target).collect();
        let records = self
            .registry
            .iter()
            .zip(views.iter().zip(&targets))
            .map(|(sequence, (view, &ceiling))| SequenceRecord {
                id: sequence.id(),
                name: sequence.name().to_owned(),
                next: view.next,
                ceiling,
            })
            .collect();
        self.write_state(records, false)?;
        // Durable now: only from here on may numbers below the new ceilings be issued.
        self.durable = targets.clone();
        for (sequence, (view, &ceiling)) in self.registry.iter().zip(views.iter().zip(&targets)) {
            sequence.raise_ceiling(ceiling);
            let window = ceiling.saturating_sub(view.next);
            self.largest_window = self.largest_window.max(window);
            tracing::trace!(
                sequence = sequence.name(),
                ceiling,
                window,
                "durable ceiling raised"
            );
        }
        tracing::debug!(generation = self.generation, "state written");
        Ok(())
    }

    /// LeasesAndStreams the exact next number of every sequence, so a restart continues without a
    /// gap, and the last state of every lease and stream. Only correct once nothing issues
    /// numbers any more: the event loops must have stopped.
    fn write_final(&mut self) -> Result<(), WriteError> {
        let records = self
            .registry
            .iter()
            .map(|sequence| {
                let next = sequence.current();
                SequenceRecord {
                    id: sequence.id(),
                    name: sequence.name().to_owned(),
                    next,
                    ceiling: next,
                }
            })
            .collect();
        self.write_state(records, true)
    }

    /// Writes `sequences` and the lease and stream records changed since the last write,
    /// then marks every change they hold durable. A failed write's changes stay pending,
    /// for the next.
    fn write_state(
        &mut self,
        sequences: Vec<SequenceRecord>,
        clean_shutdown: bool,
    ) -> Result<(), WriteError> {
        let (change, changes) = self.records.take_changes();
        self.log.add(changes);
        let write = StateWrite::new(
            self.generation + 1,
            clean_shutdown,
            crate::clock::unix_ms(),
            sequences,
            &self.log,
        );
        self.sink.write_state(&write)?;
        self.generation = write.generation;
        self.log.written();
        self.records.commits.mark_durable(change);
        self.writes += 1;
        Ok(())
    }

    fn report(&self) -> Report {
        Report {
            writes: self.writes,
            failed_writes: self.failed_writes,
            fsyncs: self.sink.fsyncs(),
            elapsed: self.started.elapsed(),
            largest_window: self.largest_window,
        }
    }
}

/// The running persister.
pub struct PersisterHandle {
    thread: JoinHandle<(Persister, Result<(), WriteError>)>,
    stop: Arc<AtomicBool>,
    registry: Arc<Registry>,
}

impl PersisterHandle {
    /// Stops the persister and records the exact next numbers (a clean shutdown). Call only
    /// after every event loop has stopped.
    pub fn shutdown(self) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Release);
        self.registry.persister_signals().request_write();
        let (persister, result) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the persister thread panicked"))?;
        let report = persister.report();
        result.context(
            "cannot record the exact next numbers at shutdown; the state on disk still holds \
             ceilings above every number issued, so the next start resumes there (skipping \
             what was left of each window)",
        )?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Acknowledger, LeaseStatus, Peer};
    use crate::sequence::Refusal;
    use crate::store::journal::Change;
    use crate::store::window::MIN_WINDOW;
    use std::sync::Mutex;

    /// LeasesAndStreams what it is asked to write, and what the in-memory ceiling of sequence 0 was
    /// at that moment; fails while `failing` is set.
    #[derive(Clone, Default)]
    struct FakeSink {
        written: Arc<Mutex<Vec<(State, u64)>>>,
        /// The lease and stream changes each write (failed ones too) carried.
        changes: Arc<Mutex<Vec<Vec<Change>>>>,
        failing: Arc<AtomicBool>,
        registry: Arc<Mutex<Option<Arc<Registry>>>>,
    }

    impl FakeSink {
        fn states(&self) -> Vec<State> {
            self.written
                .lock()
                .unwrap()
                .iter()
                .map(|(s, _)| s.clone())
                .collect()
        }
        fn last(&self) -> State {
            self.states().pop().expect("a state was written")
        }
    }

    impl StateSink for FakeSink {
        fn write_state(&mut self, write: &StateWrite<'_>) -> Result<(), WriteError> {
            self.changes.lock().unwrap().push(write.changes.clone());
            if self.failing.load(Ordering::Acquire) {
                return Err(WriteError {
                    step: "write",
                    path: "/fake/state.tmp".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            let memory = self
                .registry
                .lock()
                .unwrap()
                .as_ref()
                .map_or(0, |r| r.get(0).unwrap().ceiling());
            self.written.lock().unwrap().push((write.state(), memory));
            Ok(())
        }
        fn fsyncs(&self) -> u64 {
            2 * self.written.lock().unwrap().len() as u64
        }
        fn location(&self) -> String {
            "/fake/state".into()
        }
    }

    const POLICY: WindowPolicy = WindowPolicy {
        max_crash_gap: 1_000_000,
    };

    fn records() -> Arc<LeasesAndStreams> {
        Arc::new(LeasesAndStreams::empty(
            crate::commits::Commits::persisted(),
            crate::lease::LeaseSettings {
                timeout: Duration::from_secs(30),
                max_size: 100,
                max_per_client: 4,
                max_tracked: 100,
                max_per_peer: 0,
                reuse: false,
            },
        ))
    }

    fn fresh(initial: u64) -> (Persister, Arc<Registry>, FakeSink) {
        let (persister, registry, sink, _) = fresh_with_records(initial);
        (persister, registry, sink)
    }

    fn fresh_with_records(
        initial: u64,
    ) -> (Persister, Arc<Registry>, FakeSink, Arc<LeasesAndStreams>) {
        let registry = Arc::new(Registry::durable(8, initial));
        let sink = FakeSink::default();
        *sink.registry.lock().unwrap() = Some(registry.clone());
        let records = records();
        let persister = Persister::new(
            Box::new(sink.clone()),
            registry.clone(),
            records.clone(),
            POLICY,
            None,
        );
        (persister, registry, sink, records)
    }

    #[test]
    fn a_lease_is_written_at_once_and_marked_durable_after_the_write() {
        let (mut persister, registry, sink, records) = fresh_with_records(1);
        persister.raise_now().unwrap();
        let start = Instant::now();
        assert_eq!(persister.tick(start), Tick::Idle);
        let granted = records
            .leases
            .grant(
                registry.get(0).unwrap(),
                20,
                None,
                crate::lease::Peer::LOCALHOST,
                &records.commits,
            )
            .unwrap();
        assert!(!records.commits.is_durable(granted.change));
        sink.failing.store(true, Ordering::Release);
        assert_eq!(persister.tick(start), Tick::Failed);
        assert!(!records.commits.is_durable(granted.change), "not on disk");
        sink.failing.store(false, Ordering::Release);
        assert_eq!(persister.tick(start + RETRY_MAX), Tick::Raised);
        assert!(records.commits.is_durable(granted.change));
        let lease = &sink.last().leases_and_streams.leases[0];
        assert_eq!((lease.first, lease.count), (granted.first, 20));
        assert_eq!(
            persister.tick(start + RETRY_MAX),
            Tick::Idle,
            "nothing left to write"
        );
    }

    /// The table grows to 2 000 leases, one write each; then one acknowledgement. Each write
    /// carries only its own lease (and the counters), taken from what changed: the tables are
    /// copied once, when the persister starts, never per write.
    #[test]
    fn a_write_carries_only_what_changed_without_copying_the_tables() {
        let registry = Arc::new(Registry::durable(8, 1));
        let sink = FakeSink::default();
        let records = Arc::new(LeasesAndStreams::empty(
            crate::commits::Commits::persisted(),
            crate::lease::LeaseSettings {
                max_tracked: 10_000,
                max_per_client: 10_000,
                ..crate::lease::LeaseSettings::default()
            },
        ));
        let mut persister = Persister::new(
            Box::new(sink.clone()),
            registry.clone(),
            records.clone(),
            POLICY,
            None,
        );
        persister.raise_now().unwrap();
        assert_eq!(records.full_copies(), 1);
        let default = registry.get(0).unwrap();
        let mut firsts = Vec::new();
        let now = Instant::now();
        for _ in 0..2_000 {
            let granted = records
                .leases
                .grant(default, 1, None, Peer::LOCALHOST, &records.commits)
                .unwrap();
            firsts.push(granted.first);
            assert_eq!(persister.tick(now), Tick::Raised);
            assert!(records.commits.is_durable(granted.change));
            let changes = sink.changes.lock().unwrap().pop().unwrap();
            assert_eq!(changes.len(), 2, "the lease and the counters: {changes:?}");
            assert!(matches!(&changes[0], Change::Lease(l) if l.first == granted.first));
        }
        let change = records
            .leases
            .acknowledge(
                0,
                firsts[700],
                firsts[700],
                Acknowledger {
                    client: None,
                    connection: 0,
                },
                &records.commits,
            )
            .unwrap();
        assert_eq!(persister.tick(now), Tick::Raised);
        assert!(records.commits.is_durable(change));
        let changes = sink.changes.lock().unwrap().pop().unwrap();
        match &changes[..] {
            [Change::Lease(lease), Change::LeaseCounters(counters)] => {
                assert_eq!(
                    (lease.first, lease.status),
                    (firsts[700], LeaseStatus::Acknowledged)
                );
                assert_eq!((counters.granted, counters.acknowledged), (2_000, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(records.full_copies(), 1, "no write copied the tables");
        let last = sink.last().leases_and_streams;
        assert_eq!(
            last.leases.len(),
            2_000,
            "the whole state, for a compaction"
        );
        assert_eq!(last.leases[700].status, LeaseStatus::Acknowledged);
    }

    #[test]
    fn a_failed_writes_changes_go_with_the_next_and_a_record_gone_meanwhile_leaves_nothing() {
        let (mut persister, registry, sink, records) = fresh_with_records(1);
        persister.raise_now().unwrap();
        let default = registry.get(0).unwrap();
        let grant = || {
            records
                .leases
                .grant(default, 1, None, Peer::LOCALHOST, &records.commits)
                .unwrap()
        };
        let kept = grant();
        let start = Instant::now();
        sink.failing.store(true, Ordering::Release);
        assert_eq!(persister.tick(start), Tick::Failed);
        sink.failing.store(false, Ordering::Release);
        let second = grant();
        assert_eq!(persister.tick(start + RETRY_MAX), Tick::Raised);
        assert!(records.commits.is_durable(second.change));
        let changes = sink.changes.lock().unwrap().pop().unwrap();
        let leases: Vec<u64> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Lease(l) => Some(l.first),
                _ => None,
            })
            .collect();
        assert_eq!(
            leases,
            [kept.first, second.first],
            "the failed write's lease too"
        );
        assert_eq!(sink.last().leases_and_streams.leases.len(), 2);
        // A stream made and removed between two writes leaves nothing to write; one removed
        // after it was written is written as gone.
        let stream = |id: &[u8]| crate::stream::StreamRecord {
            client_id: id.to_vec(),
            sequence: 0,
            first: kept.first,
            count: 1,
            acked: 0,
            last_active_ms: 1,
        };
        records.streams.put(stream(b"kept"), &records.commits);
        records.streams.put(stream(b"brief"), &records.commits);
        records.streams.remove(b"brief", &records.commits);
        assert_eq!(persister.tick(start + RETRY_MAX), Tick::Raised);
        let changes = sink.changes.lock().unwrap().pop().unwrap();
        assert_eq!(changes, [Change::Stream(stream(b"kept"))]);
        records.streams.remove(b"kept", &records.commits);
        assert_eq!(persister.tick(start + RETRY_MAX), Tick::Raised);
        let changes = sink.changes.lock().unwrap().pop().unwrap();
        assert_eq!(
            changes,
            [Change::StreamGone {
                client_id: b"kept".to_vec()
            }]
        );
        assert!(sink.last().leases_and_streams.streams.is_empty());
    }

    #[test]
    fn the_first_window_is_written_before_anything_is_issuable() {
        let (mut persister, registry, sink) = fresh(100);
        let default = registry.get(0).unwrap();
        assert_eq!(default.reserve(1), Err(Refusal::AwaitingCeiling));
        persister.raise_now().unwrap();
        let (state, memory_at_write) = sink.written.lock().unwrap()[0].clone();
        assert_eq!(
            memory_at_write, 100,
            "raised in memory only after the write"
        );
        assert_eq!(state.generation, 1);
        assert!(!state.clean_shutdown);
        assert_eq!(state.sequences[0].ceiling, 100 + MIN_WINDOW);
        assert_eq!(default.ceiling(), 100 + MIN_WINDOW);
        assert_eq!(default.reserve(1), Ok(100));
    }

    #[test]
    fn ceilings_are_raised_ahead_of_use_and_never_before_they_are_durable() {
        let (mut persister, registry, sink) = fresh(1);
        persister.raise_now().unwrap();
        let default = registry.get(0).unwrap();
        let start = Instant::now();
        assert_eq!(persister.tick(start), Tick::Idle, "a full window is left");
        default.reserve(MIN_WINDOW / 2 + 1).unwrap();
        assert_eq!(
            persister.tick(start + Duration::from_secs(1)),
            Tick::Raised,
            "less than half the window is left"
        );
        for (state, memory_at_write) in sink.written.lock().unwrap().iter() {
            assert!(memory_at_write < &state.sequences[0].ceiling);
        }
        assert!(default.ceiling() > 1 + MIN_WINDOW);
        assert_eq!(default.ceiling(), sink.last().sequences[0].ceiling);
    }

    #[test]
    fn the_window_grows_with_the_rate_up_to_the_crash_gap() {
        let (mut persister, registry, sink) = fresh(1);
        persister.raise_now().unwrap();
        let default = registry.get(0).unwrap();
        let mut now = Instant::now();
        // Up to 100 000 numbers per 10 ms: ten million a second, beyond the bound. A
        // reservation that does not fit yet leaves its demand for the next tick.
        for _ in 0..100 {
            let _ = default.reserve(100_000);
            now += Duration::from_millis(10);
            persister.tick(now);
        }
        let last = sink.last().sequences[0].clone();
        assert_eq!(last.ceiling - last.next, POLICY.max_crash_gap);
        assert_eq!(persister.report().largest_window, POLICY.max_crash_gap);
    }

    #[test]
    fn a_waiting_request_and_a_new_sequence_are_written_at_once() {
        let (mut persister, registry, sink) = fresh(1);
        persister.raise_now().unwrap();
        let default = registry.get(0).unwrap();
        assert_eq!(default.reserve(5000), Err(Refusal::AwaitingCeiling));
        let orders = registry.resolve(b"orders").unwrap();
        assert_eq!(persister.tick(Instant::now()), Tick::Raised);
        let state = sink.last();
        assert_eq!(state.sequences.len(), 2);
        assert_eq!(state.sequences[1].name, "orders");
        assert!(state.sequences[0].ceiling >= 5001);
        assert_eq!(default.reserve(5000), Ok(1));
        assert_eq!(orders.reserve(1), Ok(1));
    }

    #[test]
    fn a_failing_disk_fails_closed_then_recovers_by_itself() {
        let (mut persister, registry, sink) = fresh(1);
        persister.raise_now().unwrap();
        let default = registry.get(0).unwrap();
        let durable = default.ceiling();
        sink.failing.store(true, Ordering::Release);
        default.reserve(durable - 1).unwrap(); // everything durable is used
        let t0 = Instant::now();
        assert_eq!(persister.tick(t0), Tick::Failed);
        assert!(registry.persister_signals().unavailable());
        assert_eq!(default.ceiling(), durable, "nothing raised without a write");
        assert_eq!(persister.tick(t0), Tick::Waiting, "backing off");
        assert_eq!(persister.tick(t0 + RETRY_MIN), Tick::Failed);
        sink.failing.store(false, Ordering::Release);
        assert_eq!(persister.tick(t0 + RETRY_MAX * 2), Tick::Raised);
        assert!(!registry.persister_signals().unavailable());
        assert!(default.ceiling() > durable);
        assert_eq!(persister.report().failed_writes, 2);
    }

    #[test]
    fn shutdown_records_the_exact_next_numbers() {
        let (mut persister, registry, sink) = fresh(1);
        persister.raise_now().unwrap();
        let handle = persister.spawn(|| {}).unwrap();
        let default = registry.get(0).unwrap();
        for _ in 0..10 {
            while default.reserve(1).is_err() {
                std::thread::yield_now();
            }
        }
        let report = handle.shutdown().unwrap();
        let last = sink.last();
        assert!(last.clean_shutdown);
        assert_eq!(
            (last.sequences[0].next, last.sequences[0].ceiling),
            (11, 11)
        );
        assert_eq!(report.writes as usize, sink.states().len());
        let generations: Vec<u64> = sink.states().iter().map(|s| s.generation).collect();
        assert!(
            generations.windows(2).all(|w| w[1] == w[0] + 1),
            "{generations:?}"
        );
    }

    #[test]
    fn a_recovered_state_continues_its_generations_and_ceilings() {
        let previous = State {
            generation: 41,
            clean_shutdown: true,
            written_at_ms: 0,
            sequences: vec![SequenceRecord {
                id: 0,
                name: "default".into(),
                next: 500,
                ceiling: 500,
            }],
            leases_and_streams: crate::state::LeaseAndStreamRecords::default(),
        };
        let registry = Arc::new(
            Registry::recovered(
                8,
                1,
                &[crate::sequence::RecoveredSequence {
                    id: 0,
                    name: "default".into(),
                    resume_at: 500,
                }],
            )
            .unwrap(),
        );
        let sink = FakeSink::default();
        let mut persister = Persister::new(
            Box::new(sink.clone()),
            registry.clone(),
            records(),
            POLICY,
            Some(&previous),
        );
        persister.raise_now().unwrap();
        let state = sink.last();
        assert_eq!(state.generation, 42);
        assert_eq!(state.sequences[0].ceiling, 500 + MIN_WINDOW);
        assert_eq!(registry.get(0).unwrap().reserve(1), Ok(500));
    }
}
