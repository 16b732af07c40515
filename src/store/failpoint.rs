//! Crash points for tests: with cargo feature `failpoints` (off by default), the process
//! aborts at the named step of a state write or journal append when `SEQD_FAILPOINT` names
//! it (`NAME`: the first time the step is reached; `NAME@N`: the N-th time), so a test can
//! crash seqd between any two steps and check what recovery makes of the directory. Without
//! the feature [`hit`] is empty and compiles to nothing. The names are [`POINTS`].

/// The steps of writing a state file: before the write, after the write (before its
/// fsync), after the fsync (before the rename), after the rename (before the directory's
/// fsync).
pub const STATE_WRITE: [&str; 4] = [
    "state.before_write",
    "state.after_write",
    "state.after_fsync",
    "state.after_rename",
];
/// The same steps for the empty journal a compaction starts after its state file.
pub const NEW_JOURNAL: [&str; 4] = [
    "journal.new_before_write",
    "journal.new_after_write",
    "journal.new_after_fsync",
    "journal.new_after_rename",
];
/// The steps of appending an entry: before the write, after it (before the fsync), after
/// the fsync (before the change is reported durable).
pub const APPEND: [&str; 3] = [
    "journal.before_append",
    "journal.after_append",
    "journal.after_fsync",
];

/// Every crash point: a compaction reaches the first eight in order, an append the last
/// three.
pub const POINTS: [&str; 11] = [
    STATE_WRITE[0],
    STATE_WRITE[1],
    STATE_WRITE[2],
    STATE_WRITE[3],
    NEW_JOURNAL[0],
    NEW_JOURNAL[1],
    NEW_JOURNAL[2],
    NEW_JOURNAL[3],
    APPEND[0],
    APPEND[1],
    APPEND[2],
];

/// The environment variable that selects a crash point.
pub const VARIABLE: &str = "SEQD_FAILPOINT";

/// Aborts the process if `name` is the selected crash point and this is its selected hit.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SELECTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    debug_assert!(POINTS.contains(&name), "{name} is not in POINTS");
    let selected = SELECTED.get_or_init(|| {
        let value = std::env::var(VARIABLE).ok()?;
        let (point, nth) = match value.split_once('@') {
            Some((point, nth)) => (point.to_owned(), nth.parse().ok()?),
            None => (value, 1),
        };
        Some((point, nth))
    });
    if let Some((point, nth)) = selected
        && point == name
        && HITS.fetch_add(1, Ordering::AcqRel) + 1 == *nth
    {
        // The one thing a crash point is for; stderr is unbuffered.
        eprintln!("{VARIABLE}: crashing at {name} (hit {nth})");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// With `failpoints`, `SEQD_FAILPOINT_JOURNAL_BYTES` lowers the size at which the journal is
/// compacted, so a test reaches the compaction's crash points in a few writes.
pub fn journal_bound_override() -> Option<u64> {
    if cfg!(feature = "failpoints") {
        std::env::var("SEQD_FAILPOINT_JOURNAL_BYTES")
            .ok()?
            .parse()
            .ok()
    } else {
        None
    }
}
