//! Time: wall-clock milliseconds for what is persisted, and the monotonic clock for pacing.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: deadlines that are persisted are wall-clock times so
/// that they mean the same after a restart.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time, twice: monotonic for pacing, wall-clock for what is persisted.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: unix_ms(),
        }
    }
}
