//! Range leases (seed 000): a client asks for `n` numbers, gets `start,end`, and
//! acknowledges them. The table ([`LeaseTable`]) is pure state; [`Leases`] shares it between
//! the event loops behind a lock (lease requests are rare next to `GETSEQ`, and a lease waits
//! for a disk write anyway), and [`Keeper`] expires leases on time.

mod table;

pub use table::{
    DEFAULT_MAX_PER_CLIENT, DEFAULT_MAX_TRACKED, DEFAULT_TIMEOUT, GrantError, Granted,
    LeaseSettings, LeaseTable, RestoreError,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::protocol::{LeaseIds, LeaseStats, Problem};
use crate::sequence::{CeilingSignals, Registry, Sequence, SequenceId};
use crate::store::commits::Commits;
use crate::store::format::{LeaseRecord, PooledRange};

/// Lease totals since the data directory was created (kept in the state file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounters {
    /// Leases granted (retries not counted).
    pub granted: u64,
    pub acknowledged: u64,
    /// Leases that expired unacknowledged and whose numbers will never be issued again.
    pub retired: u64,
    /// Leases that expired unacknowledged and were returned to the reuse pool
    /// (`--lease-reuse`).
    pub returned: u64,
    /// Leases served from the reuse pool.
    pub reused: u64,
}
use crate::store::records::Records;

/// Milliseconds since the Unix epoch: lease deadlines are wall-clock times so that they mean
/// the same after a restart.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The lease table, shared by every event loop.
#[derive(Debug)]
pub struct Leases {
    table: Mutex<LeaseTable>,
    /// Wakes the keeper: a new deadline, or the end.
    keeper: Condvar,
}

impl Leases {
    pub fn new(table: LeaseTable) -> Leases {
        Leases {
            table: Mutex::new(table),
            keeper: Condvar::new(),
        }
    }

    pub fn grant(
        &self,
        sequence: &Sequence,
        count: u64,
        ids: Option<LeaseIds<'_>>,
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
        commits: &Commits,
    ) -> Result<u64, Problem<'static>> {
        self.lock()
            .acknowledge(sequence, first, last, unix_ms(), commits)
    }

    pub fn stats(&self) -> LeaseStats {
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

/// The thread that expires leases when their deadline passes and asks for the change to be
/// written.
pub struct Keeper {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    records: Arc<Records>,
}

impl Keeper {
    /// Starts expiring the leases in `records`; `registry`'s signals wake the persister.
    pub fn spawn(records: Arc<Records>, registry: Arc<Registry>) -> anyhow::Result<Keeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::Builder::new()
                .name("seqd-leases".into())
                .spawn(move || {
                    keep(
                        &records.leases,
                        &records.commits,
                        registry.ceiling_signals(),
                        &stop,
                    )
                })
                .context("cannot start the lease keeper thread")?
        };
        Ok(Keeper {
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

fn keep(leases: &Leases, commits: &Commits, signals: &CeilingSignals, stop: &AtomicBool) {
    let mut table = leases.lock();
    while !stop.load(Ordering::Acquire) {
        let before = commits.last();
        let now = unix_ms();
        let next = table.expire(now, commits);
        if commits.last() != before {
            // Expiries and forgotten leases go to disk with the next state.
            signals.request_raise();
        }
        let wait = next.map_or(KEEPER_IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(KEEPER_IDLE)
        });
        table = leases
            .keeper
            .wait_timeout(table, wait)
            .map_or_else(|poison| poison.into_inner().0, |(guard, _)| guard);
    }
}
