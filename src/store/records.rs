//! Lease and stream records: the durable state besides sequences, and which of its changes
//! are on disk.

use crate::lease::{LeaseSettings, LeaseTable, Leases};
use crate::store::commits::Commits;
use crate::store::format::Ledger;
use crate::stream::book::StreamBook;

#[derive(Debug)]
pub struct Records {
    pub commits: Commits,
    pub leases: Leases,
    pub streams: StreamBook,
}

impl Records {
    /// No leases and no streams yet.
    pub fn empty(commits: Commits, settings: LeaseSettings) -> Records {
        Records {
            commits,
            leases: Leases::new(LeaseTable::new(settings)),
            streams: StreamBook::default(),
        }
    }

    /// The ledger to write, and the last change it holds. The number is read before the
    /// records are copied, so the copy holds at least every change up to it.
    pub fn snapshot(&self) -> (u64, Ledger) {
        let change = self.commits.last();
        let (leases, pool, lease_counters) = self.leases.records();
        let ledger = Ledger {
            leases,
            pool,
            lease_counters,
            streams: self.streams.records(),
        };
        (change, ledger)
    }
}
