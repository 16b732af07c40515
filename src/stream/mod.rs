//! Resumable streams (the stream protocol), served by one event loop: the per-stream state
//! machine ([`progress`]) and its durable record.

pub mod progress;

/// One stream's durable record: position `i` carries the number `first + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub client_id: Vec<u8>,
    pub sequence: u32,
    pub first: u64,
    pub count: u32,
    /// Every position below this was acknowledged.
    pub acked: u32,
    /// When the client was last heard from (milliseconds since the Unix epoch).
    pub last_active_ms: u64,
}
