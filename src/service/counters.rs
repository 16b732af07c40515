//! Process-wide counts an operator watches. The metrics endpoint and Redis's `INFO` read the
//! same values from here, so the two never disagree.
//!
//! Rare events (a refusal, an error reply, an accepted connection) are counted in shared
//! atomics. Requests are counted per event loop ([`LoopCounters`]: one writer each, so a
//! count is a plain load and store, no locked instruction on the hot path) and summed when read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Wrong passwords given (AUTH, HELLO AUTH, the binary AUTH frame).
pub static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Connections refused by protected mode.
pub static DENIED_PROTECTED_MODE: AtomicU64 = AtomicU64::new(0);
/// Connections closed by `--timeout`.
pub static IDLE_CLOSED: AtomicU64 = AtomicU64::new(0);
/// Client connections open now (the main and TLS ports); the event loops admit against it.
pub static CONNECTED: AtomicUsize = AtomicUsize::new(0);
/// Stream-port connections open now (`--max-stream-connections` admits against it).
pub static STREAM_CONNECTED: AtomicUsize = AtomicUsize::new(0);
/// Connections accepted since start (refused ones included, as Redis counts them).
pub static CONNECTIONS_RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Connections refused by `--max-connections`.
pub static REJECTED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Connections closed for holding more unsent replies than `--client-output-limit`.
pub static OUTPUT_LIMIT_DISCONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Connections closed to bring all clients' unsent replies under `--maxmemory-clients`.
pub static EVICTED_CLIENTS: AtomicU64 = AtomicU64::new(0);
/// Lease requests refused by `--max-leases-per-peer` (the client's address held its share).
pub static LEASES_REFUSED_PER_PEER: AtomicU64 = AtomicU64::new(0);
/// Stream CONs refused by `--max-streams-per-peer`.
pub static STREAMS_REFUSED_PER_PEER: AtomicU64 = AtomicU64::new(0);
/// Reply bytes waiting to be sent, all connections together (published by each event loop
/// once per turn).
pub static CLIENT_OUTPUT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The protocols a main-port request can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    /// Text lines (`GETSEQ name`).
    Inline,
    /// RESP arrays (Redis clients).
    Resp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Binary, Protocol::Inline, Protocol::Resp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::Inline => "inline",
            Protocol::Resp => "resp",
        }
    }
}

/// One event loop's request counts. Only its loop writes them.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LoopCounters {
    requests: [AtomicU64; 3],
}

impl LoopCounters {
    /// Counters for a new event loop, summed into [`requests`] from now on; when the
    /// registration is dropped (the loop ends: a standby's loops, a restarted server), its
    /// counts move into the retired totals, so the sums never go back and the list does not
    /// grow with every loop ever started.
    pub fn register() -> Registered {
        let counters = Arc::new(LoopCounters::default());
        loops().push(counters.clone());
        Registered(counters)
    }

    /// Counts `n` requests in `protocol`. Called by the owning loop only: a load and a store
    /// (a reader on another thread sees the old or the new total, never a torn one).
    #[inline(always)]
    pub fn count(&self, protocol: Protocol, n: u64) {
        let slot = &self.requests[protocol as usize];
        slot.store(slot.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// An event loop's registered counters (see [`LoopCounters::register`]).
#[derive(Debug)]
pub struct Registered(Arc<LoopCounters>);

impl std::ops::Deref for Registered {
    type Target = LoopCounters;
    fn deref(&self) -> &LoopCounters {
        &self.0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Under the lock readers sum under: each count is in the list or retired, never both
        // or neither.
        let mut loops = loops();
        loops.retain(|counters| !Arc::ptr_eq(counters, &self.0));
        for (retired, count) in RETIRED.iter().zip(&self.0.requests) {
            retired.fetch_add(count.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

static LOOPS: Mutex<Vec<Arc<LoopCounters>>> = Mutex::new(Vec::new());
/// Requests counted by loops that have ended, per protocol.
static RETIRED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

fn loops() -> std::sync::MutexGuard<'static, Vec<Arc<LoopCounters>>> {
    LOOPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Requests received since start in `protocol`, all event loops together.
pub fn requests(protocol: Protocol) -> u64 {
    let loops = loops();
    let live: u64 = loops
        .iter()
        .map(|counters| counters.requests[protocol as usize].load(Ordering::Relaxed))
        .sum();
    live + RETIRED[protocol as usize].load(Ordering::Relaxed)
}

/// Every error reply's first word (Redis's error prefixes, which `INFO errorstats` and the
/// metrics label with). Unknown words count under the last entry.
pub const ERROR_KINDS: [&str; 14] = [
    "ERR",
    "EXHAUSTED",
    "NOSEQUENCE",
    "LIMIT",
    "UNAVAILABLE",
    "NOLEASE",
    "EXPIRED",
    "NOAUTH",
    "WRONGPASS",
    "DENIED",
    "NOTLEADER",
    "NOPROTO",
    "EXECABORT",
    "OTHER",
];

static ERRORS: [AtomicU64; ERROR_KINDS.len()] = [const { AtomicU64::new(0) }; ERROR_KINDS.len()];

/// Counts an error reply that begins with `prefix` (cold: error replies are rare).
#[cold]
pub fn error_reply(prefix: &str) {
    let index = ERROR_KINDS
        .iter()
        .position(|kind| *kind == prefix)
        .unwrap_or(ERROR_KINDS.len() - 1);
    ERRORS[index].fetch_add(1, Ordering::Relaxed);
}

/// Error replies sent since start, by kind, leaving out kinds never sent.
pub fn errors() -> Vec<(&'static str, u64)> {
    ERROR_KINDS
        .iter()
        .zip(&ERRORS)
        .map(|(kind, count)| (*kind, count.load(Ordering::Relaxed)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_every_loop_are_summed() {
        let (a, b) = (LoopCounters::register(), LoopCounters::register());
        let before = requests(Protocol::Inline);
        a.count(Protocol::Inline, 3);
        b.count(Protocol::Inline, 4);
        assert!(requests(Protocol::Inline) >= before + 7);
    }

    #[test]
    fn an_ended_loop_leaves_its_counts_and_not_its_entry() {
        let ended = LoopCounters::register();
        let entry = Arc::as_ptr(&ended.0);
        ended.count(Protocol::Binary, 5);
        let before = requests(Protocol::Binary);
        drop(ended);
        // Other tests count concurrently: the sum only grows.
        assert!(requests(Protocol::Binary) >= before);
        assert!(!loops().iter().any(|c| Arc::as_ptr(c) == entry));
    }

    #[test]
    fn an_unknown_error_word_counts_as_other() {
        let before = errors()
            .iter()
            .find(|(kind, _)| *kind == "OTHER")
            .map_or(0, |(_, n)| *n);
        error_reply("SOMETHINGNEW");
        let after = errors()
            .iter()
            .find(|(kind, _)| *kind == "OTHER")
            .map_or(0, |(_, n)| *n);
        assert!(after > before);
    }
}
