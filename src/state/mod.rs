//! The shared records the domain is made of, besides the sequences themselves: the lease
//! table and the stream records, shared by the event loops, the lease keeper and the
//! persister, with the change numbers ([`Commits`]) that say which changes are on disk.

pub mod leases;
pub mod streams;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::commits::Commits;
use crate::lease::{
    LeaseChanges, LeaseCounters, LeaseRecord, LeaseSettings, LeaseTable, PooledRange,
};
use crate::stream::StreamRecord;
pub use leases::{LeaseKeeper, SharedLeaseTable};
pub use streams::{StreamChanges, StreamRecords};

/// The lease table and the stream records, live.
#[derive(Debug)]
pub struct LeasesAndStreams {
    pub commits: Commits,
    pub leases: SharedLeaseTable,
    pub streams: StreamRecords,
    /// How many times every record was copied ([`LeasesAndStreams::baseline`]): once per
    /// persister, not once per write.
    full_copies: AtomicU64,
}

/// A copy of every lease and stream record, as a state file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseAndStreamRecords {
    pub leases: Vec<LeaseRecord>,
    pub pool: Vec<PooledRange>,
    pub lease_counters: LeaseCounters,
    pub streams: Vec<StreamRecord>,
}

/// The lease and stream records changed since the persister last took them, as they are now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseAndStreamChanges {
    pub leases: LeaseChanges,
    pub streams: StreamChanges,
}

impl LeasesAndStreams {
    pub fn new(commits: Commits, leases: SharedLeaseTable, streams: StreamRecords) -> Self {
        LeasesAndStreams {
            commits,
            leases,
            streams,
            full_copies: AtomicU64::new(0),
        }
    }

    /// No leases and no streams yet.
    pub fn empty(commits: Commits, settings: LeaseSettings) -> LeasesAndStreams {
        LeasesAndStreams::new(
            commits,
            SharedLeaseTable::new(LeaseTable::new(settings)),
            StreamRecords::default(),
        )
    }

    /// The records changed since the last call, for a write, and the last change they hold.
    /// The number is read before the changes are taken, so they hold at least every change
    /// up to it (see [`Commits`]). Costs what changed, not the tables.
    pub fn take_changes(&self) -> (u64, LeaseAndStreamChanges) {
        let change = self.commits.last();
        let (leases, _) = self.leases.take_changes(false);
        let (streams, _) = self.streams.take_changes(false);
        (change, LeaseAndStreamChanges { leases, streams })
    }

    /// Every record, as the starting point of a persister, with the changes made so far
    /// taken (they are in the copy). Costs the whole tables: done once, at start-up.
    pub fn baseline(&self) -> LeaseAndStreamRecords {
        self.full_copies.fetch_add(1, Ordering::Relaxed);
        let (_, all) = self.leases.take_changes(true);
        let (leases, pool, lease_counters) = all.unwrap_or_default();
        let (_, streams) = self.streams.take_changes(true);
        LeaseAndStreamRecords {
            leases,
            pool,
            lease_counters,
            streams,
        }
    }

    /// How many times every record was copied (see [`LeasesAndStreams::baseline`]).
    pub fn full_copies(&self) -> u64 {
        self.full_copies.load(Ordering::Relaxed)
    }
}
