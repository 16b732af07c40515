//! The shared records the domain is made of, besides the sequences themselves: the lease
//! table and the stream records, shared by the event loops, the lease keeper and the
//! persister, with the change numbers ([`Commits`]) that say which changes are on disk.

pub mod leases;
pub mod streams;

use crate::commits::Commits;
use crate::lease::{LeaseCounters, LeaseRecord, LeaseSettings, LeaseTable, PooledRange};
use crate::stream::StreamRecord;
pub use leases::{LeaseKeeper, SharedLeaseTable};
pub use streams::StreamRecords;

/// The lease table and the stream records, live.
#[derive(Debug)]
pub struct LeasesAndStreams {
    pub commits: Commits,
    pub leases: SharedLeaseTable,
    pub streams: StreamRecords,
}

/// A copy of every lease and stream record, as a state file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseAndStreamRecords {
    pub leases: Vec<LeaseRecord>,
    pub pool: Vec<PooledRange>,
    pub lease_counters: LeaseCounters,
    pub streams: Vec<StreamRecord>,
}

impl LeasesAndStreams {
    /// No leases and no streams yet.
    pub fn empty(commits: Commits, settings: LeaseSettings) -> LeasesAndStreams {
        LeasesAndStreams {
            commits,
            leases: SharedLeaseTable::new(LeaseTable::new(settings)),
            streams: StreamRecords::default(),
        }
    }

    /// The records to write, and the last change they hold. The number is read before the
    /// records are copied, so the copy holds at least every change up to it.
    pub fn snapshot(&self) -> (u64, LeaseAndStreamRecords) {
        let change = self.commits.last();
        let (leases, pool, lease_counters) = self.leases.records();
        let records = LeaseAndStreamRecords {
            leases,
            pool,
            lease_counters,
            streams: self.streams.records(),
        };
        (change, records)
    }
}
