//! Process-wide counts of refusals an operator watches (the metrics endpoint reads them).

use std::sync::atomic::AtomicU64;

/// Wrong passwords given (AUTH, HELLO AUTH, the binary AUTH frame).
pub static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Connections refused by protected mode.
pub static DENIED_PROTECTED_MODE: AtomicU64 = AtomicU64::new(0);
/// Connections closed by `--timeout`.
pub static IDLE_CLOSED: AtomicU64 = AtomicU64::new(0);
