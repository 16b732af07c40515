//! The lease table shared by every event loop, and the thread that expires its leases.
//!
//! One lock guards the table: lease requests are rare next to `GETSEQ`, and a lease waits
//! for a disk write anyway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use super::LeasesAndStreams;
use crate::clock::unix_ms;
use crate::commits::Commits;
use crate::lease::{
    Acknowledger, GrantError, Granted, LeaseChanges, LeaseCounters, LeaseEvent, LeaseRecord,
    LeaseRefusal, LeaseTable, Peer, PooledRange, RequestIds, TableStats,
};
use crate::sequence::{PersisterSignals, Registry, Sequence, SequenceId};

/// Every lease, the reuse pool and the counters, as the table gives them to persist.
pub type LeaseTableRecords = (Vec<LeaseRecord>, Vec<PooledRange>, LeaseCounters);

/// The lease table, shared by every event loop.
#[derive(Debug)]
pub struct SharedLeaseTable {
    table: Mutex<LeaseTable>,
    /// Wakes the keeper: a new deadline, or the end.
    keeper: Condvar,
}

impl SharedLeaseTable {
    pub fn new(table: LeaseTable) -> SharedLeaseTable {
        SharedLeaseTable {
            table: Mutex::new(table),
            keeper: Condvar::new(),
        }
    }

    pub fn grant(
        &self,
        sequence: &Sequence,
        count: u64,
        ids: Option<RequestIds<'_>>,
        from: Peer,
        commits: &Commits,
    ) -> Result<Granted, GrantError> {
        let granted = self
            .lock()
            .grant(sequence, count, ids, from, unix_ms(), commits);
        if granted.is_ok() {
            self.keeper.notify_one();
        }
        granted
    }

    pub fn acknowledge(
        &self,
        sequence: SequenceId,
        first: u64,
        last: u64,
        by: Acknowledger<'_>,
        commits: &Commits,
    ) -> Result<u64, LeaseRefusal> {
        self.lock()
            .acknowledge(sequence, first, last, by, unix_ms(), commits)
    }

    pub fn stats(&self) -> TableStats {
        self.lock().stats()
    }

    /// Everything to persist. Take the change number first (see [`Commits`]).
    pub fn records(&self) -> LeaseTableRecords {
        self.lock().records()
    }

    /// What changed since the last call, for a write (take the change number first, see
    /// [`Commits`]); with `all`, also every record, under the same lock.
    pub fn take_changes(&self, all: bool) -> (LeaseChanges, Option<LeaseTableRecords>) {
        let mut table = self.lock();
        let changes = table.take_changes();
        (changes, all.then(|| table.records()))
    }

    fn lock(&self) -> MutexGuard<'_, LeaseTable> {
        // Every table method leaves the table consistent before it can panic (panics are
        // bugs and abort the release build), so a poisoned lock still guards a usable table.
        self.table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Longest the keeper sleeps with nothing due (it is woken by every new lease anyway).
const KEEPER_IDLE: Duration = Duration::from_secs(60);

/// The thread that expires leases when their deadline passes, asks for the change to be
/// written, and logs what the table reports.
pub struct LeaseKeeper {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    records: Arc<LeasesAndStreams>,
}

impl LeaseKeeper {
    /// Starts expiring the leases in `records`; `registry`'s signals wake the persister.
    pub fn spawn(
        records: Arc<LeasesAndStreams>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<LeaseKeeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::Builder::new()
                .name("seqd-leases".into())
                .spawn(move || {
                    keep(
                        &records.leases,
                        &records.commits,
                        registry.persister_signals(),
                        &stop,
                    )
                })
                .context("cannot start the lease keeper thread")?
        };
        Ok(LeaseKeeper {
            thread,
            stop,
            records,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // Taking the lock orders the flag before the keeper's next check.
        drop(self.records.leases.lock());
        self.records.leases.keeper.notify_all();
        let _ = self.thread.join();
    }
}

fn keep(
    leases: &SharedLeaseTable,
    commits: &Commits,
    signals: &PersisterSignals,
    stop: &AtomicBool,
) {
    let mut table = leases.lock();
    let mut expiries = ExpiryLog::default();
    while !stop.load(Ordering::Acquire) {
        let before = commits.last();
        let totals = table.stats().totals;
        let now = unix_ms();
        let next = table.expire(now, commits);
        if commits.last() != before {
            // Expiries and forgotten leases go to disk with the next state.
            signals.request_write();
        }
        let events = table.take_events();
        expiries.report(&events, totals, table.stats().totals, now);
        let next = next.into_iter().chain(expiries.due_ms()).min();
        let wait = next.map_or(KEEPER_IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(KEEPER_IDLE)
        });
        table = leases
            .keeper
            .wait_timeout(table, wait)
            .map_or_else(|poison| poison.into_inner().0, |(guard, _)| guard);
    }
    expiries.summarise(table.stats().totals);
}

/// Lease events logged one line each per window; beyond, they are counted and summed up in
/// one line when the window ends: 10,000 leases granted together expire together, and would
/// otherwise log 10,000 lines.
const LOGGED_ONE_BY_ONE: u32 = 10;
const LOG_WINDOW_MS: u64 = 1000;

/// The keeper's log of expiries: a few one line each, a wave in one line per window.
#[derive(Debug, Default)]
struct ExpiryLog {
    window_start_ms: u64,
    logged: u32,
    /// Expired in this window and not logged one by one.
    retired: u64,
    returned: u64,
    /// The first of those: sequence, range and the timeout it had.
    first: Option<(SequenceId, u64, u64, Duration)>,
    /// Ranges the full reuse pool could not take, not logged one by one.
    pool_full: u64,
}

impl ExpiryLog {
    /// Logs the events of one keeper turn at `now_ms`; `before` and `after` are the table's
    /// totals around it, which count every expiry even when the table kept only the first
    /// events of a wave.
    fn report(
        &mut self,
        events: &[LeaseEvent],
        before: LeaseCounters,
        after: LeaseCounters,
        now_ms: u64,
    ) {
        if now_ms >= self.window_start_ms.saturating_add(LOG_WINDOW_MS) {
            self.summarise(after);
            self.window_start_ms = now_ms;
            self.logged = 0;
        }
        let (mut retired, mut returned) = (0, 0);
        for event in events {
            if self.logged < LOGGED_ONE_BY_ONE {
                self.logged += 1;
                log(event);
                if let LeaseEvent::Expired { to_pool, .. } = event {
                    *(if *to_pool {
                        &mut returned
                    } else {
                        &mut retired
                    }) += 1;
                }
                continue;
            }
            match event {
                LeaseEvent::Expired {
                    sequence,
                    first,
                    last,
                    timeout,
                    ..
                } => {
                    self.first
                        .get_or_insert((*sequence, *first, *last, *timeout));
                }
                LeaseEvent::PoolFull { .. } => self.pool_full += 1,
            }
        }
        self.retired += after
            .retired
            .saturating_sub(before.retired)
            .saturating_sub(retired);
        self.returned += after
            .returned
            .saturating_sub(before.returned)
            .saturating_sub(returned);
    }

    /// When the window's summary is due (None: nothing to sum up).
    fn due_ms(&self) -> Option<u64> {
        (self.retired + self.returned + self.pool_full > 0)
            .then(|| self.window_start_ms.saturating_add(LOG_WINDOW_MS))
    }

    /// Logs what the window did not log one by one, in one line (two if the pool was full).
    fn summarise(&mut self, totals: LeaseCounters) {
        let (retired, returned) = (self.retired, self.returned);
        if let Some((sequence, first, last, timeout)) = self.first.take()
            && retired + returned > 0
        {
            let message = format!(
                "{} more leases expired unacknowledged after {timeout:?} (--lease-timeout) \
                 within {LOG_WINDOW_MS}ms, beyond the {LOGGED_ONE_BY_ONE} logged one by one \
                 (the first {first},{last} of sequence {sequence}): {retired} retired, their \
                 numbers will never be issued; {returned} go to the reuse pool once forgotten \
                 ({} retired and {} returned so far)",
                retired + returned,
                totals.retired,
                totals.returned
            );
            if returned > 0 {
                tracing::warn!("{message}");
            } else {
                tracing::info!("{message}");
            }
        }
        if self.pool_full > 0 {
            tracing::warn!(
                "reuse pool full (--max-leases): {} more expired ranges retired instead of \
                 pooled within {LOG_WINDOW_MS}ms",
                self.pool_full
            );
        }
        self.retired = 0;
        self.returned = 0;
        self.pool_full = 0;
    }
}

fn log(event: &LeaseEvent) {
    match event {
        LeaseEvent::Expired {
            sequence,
            first,
            last,
            owner,
            timeout,
            to_pool,
            so_far,
        } => {
            let who = owner
                .as_ref()
                .map_or_else(String::new, |(client, request)| {
                    format!(" (client {client}, request {request})")
                });
            if *to_pool {
                tracing::warn!(
                    sequence,
                    "lease {first},{last}{who} expired unacknowledged after {timeout:?}: its \
                     numbers go to the reuse pool once it is forgotten (--lease-reuse; \
                     {so_far} returned so far)"
                );
            } else {
                let count = last - first + 1;
                tracing::info!(
                    sequence,
                    "lease {first},{last}{who} expired unacknowledged after {timeout:?}: \
                     retired, its {count} numbers will never be issued ({so_far} leases \
                     retired so far)"
                );
            }
        }
        LeaseEvent::PoolFull {
            sequence,
            ranges,
            first,
            count,
        } => tracing::warn!(
            sequence,
            "reuse pool full ({ranges} ranges, --max-leases): range {first}+{count} retired \
             instead"
        ),
    }
}
