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
    Acknowledger, GrantError, Granted, LeaseCounters, LeaseEvent, LeaseRecord, LeaseRefusal,
    LeaseTable, PooledRange, RequestIds, TableStats,
};
use crate::sequence::{PersisterSignals, Registry, Sequence, SequenceId};

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
        commits: &Commits,
    ) -> Result<Granted, GrantError> {
        let granted = self.lock().grant(sequence, count, ids, unix_ms(), commits);
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
    pub fn records(&self) -> (Vec<LeaseRecord>, Vec<PooledRange>, LeaseCounters) {
        self.lock().records()
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
    while !stop.load(Ordering::Acquire) {
        let before = commits.last();
        let totals = table.stats().totals;
        let now = unix_ms();
        let next = table.expire(now, commits);
        if commits.last() != before {
            // Expiries and forgotten leases go to disk with the next state.
            signals.request_write();
        }
        report(&table.take_events(), totals, table.stats().totals);
        let wait = next.map_or(KEEPER_IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(KEEPER_IDLE)
        });
        table = leases
            .keeper
            .wait_timeout(table, wait)
            .map_or_else(|poison| poison.into_inner().0, |(guard, _)| guard);
    }
}

/// Most events of one kind logged one line each per keeper turn; more (a wave of expiries:
/// 10,000 leases granted together expire together) are summed up in one line.
const LOGGED_ONE_BY_ONE: usize = 10;

/// Logs what the table reports; `before` and `after` are its totals around the expiry, which
/// count every lease even when the table kept only the first events of a wave.
fn report(events: &[LeaseEvent], before: LeaseCounters, after: LeaseCounters) {
    let is_expiry = |e: &&LeaseEvent| matches!(e, LeaseEvent::Expired { .. });
    let expiries = events.iter().filter(is_expiry).count();
    let pool_full = events.len() - expiries;
    for event in events {
        let one_by_one = match event {
            LeaseEvent::Expired { .. } => expiries <= LOGGED_ONE_BY_ONE,
            LeaseEvent::PoolFull { .. } => pool_full <= LOGGED_ONE_BY_ONE,
        };
        if one_by_one {
            log(event);
        }
    }
    if expiries > LOGGED_ONE_BY_ONE
        && let Some(LeaseEvent::Expired {
            sequence,
            first,
            last,
            timeout,
            ..
        }) = events.iter().find(is_expiry)
    {
        let retired = after.retired.saturating_sub(before.retired);
        let returned = after.returned.saturating_sub(before.returned);
        let message = format!(
            "{} leases expired unacknowledged after {timeout:?} (--lease-timeout), the first              {first},{last} of sequence {sequence}: {retired} retired, their numbers will never              be issued; {returned} go to the reuse pool once forgotten ({} retired and {}              returned so far)",
            retired + returned,
            after.retired,
            after.returned
        );
        if returned > 0 {
            tracing::warn!("{message}");
        } else {
            tracing::info!("{message}");
        }
    }
    if pool_full > LOGGED_ONE_BY_ONE {
        tracing::warn!(
            "reuse pool full (--max-leases): {pool_full} expired ranges retired instead of              pooled"
        );
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
