//! Range leases (the lease protocol): a client asks for `n` numbers, gets `start,end`, and
//! acknowledges them. The table ([`LeaseTable`]) is pure state: it returns refusals and
//! events rather than wording or logging them. `state::SharedLeaseTable` shares it between
//! the event loops; `state::LeaseKeeper` expires leases on time.

mod peers;
mod records;
mod table;

pub use peers::{Peer, PeerHoldings, default_per_peer};
pub use records::{LeaseCounters, LeaseRecord, LeaseStatus, PooledRange};
pub use table::{
    Acknowledger, DEFAULT_MAX_PER_CLIENT, DEFAULT_MAX_TRACKED, DEFAULT_TIMEOUT, GrantError,
    Granted, LeaseChanges, LeaseEvent, LeaseRefusal, LeaseSettings, LeaseTable, RequestIds,
    RestoreError, TableStats,
};
