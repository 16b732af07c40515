//! The lease table's durable form: what a state file holds of each lease, of the reuse pool
//! and of the lease totals. The disk format (`store::format`) encodes these; the table
//! produces them and is rebuilt from them.

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Granted, not acknowledged; `time_ms` is when it expires.
    Outstanding = 1,
    /// Acknowledged at `time_ms`.
    Acknowledged = 2,
    /// Expired unacknowledged at `time_ms`.
    Expired = 3,
}

/// One range lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub sequence: u32,
    pub first: u64,
    pub count: u64,
    pub status: LeaseStatus,
    /// Milliseconds since the Unix epoch: the deadline while outstanding, else when it
    /// finished.
    pub time_ms: u64,
    /// Empty for a lease requested without ids; otherwise both are set.
    pub client: String,
    pub request: String,
}

/// A range of numbers returned to the reuse pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PooledRange {
    pub sequence: u32,
    pub first: u64,
    pub count: u64,
}

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
