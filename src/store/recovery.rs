//! Start-up with durable state: open and lock the data directory, load the state, decide
//! where every sequence resumes, and make the first windows durable before serving.
//!
//! Rules (docs/STATE.md, "Recovery"):
//! - every recovered sequence resumes at its ceiling: nothing at or above it was issued; after
//!   a clean shutdown the ceiling is the exact next number, so nothing is skipped;
//! - `--initial` only sets where *new* sequences begin; an explicit value below a recovered
//!   sequence's resume point is refused (it reads like the original text server's "restart
//!   at N" and would reissue numbers if it were honoured);
//! - no state in a fresh directory is a fresh start; no state where a previous seqd recorded
//!   itself as owner (so a state existed) is refused, never a silent restart at `--initial`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::data_dir::DataDir;
use super::format::State;
use super::persister::Persister;
use super::window::WindowPolicy;
use crate::commits::Commits;
use crate::lease::{LeaseSettings, LeaseTable};
use crate::sequence::{RecoveredSequence, Registry, SequenceId, Writers};
use crate::state::{LeasesAndStreams, SharedLeaseTable, StreamRecords};

/// How many recovered sequences are logged one by one at info level (the rest at debug).
const LOGGED_SEQUENCES: usize = 16;

/// What the command line says about sequences.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_sequences: u32,
    /// Where new sequences begin.
    pub initial: u64,
    /// Whether `--initial` was given explicitly (only then is it checked against the state).
    pub initial_explicit: bool,
    pub policy: WindowPolicy,
    pub leases: LeaseSettings,
    /// Who reserves from the sequences (one event loop: [`Writers::One`]).
    pub writers: Writers,
}

/// A recovered, durable server state, ready to serve.
pub struct Durable {
    pub registry: Arc<Registry>,
    /// Leases and streams, as recovered.
    pub records: Arc<LeasesAndStreams>,
    /// Already wrote the first windows; spawn it once the event loops can be woken.
    pub persister: Persister,
}

/// Why the recovered state does not allow a start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "state file {} is missing, but a seqd that had written it used this data directory \
         before (its pid is in {}): starting again at --initial could reissue numbers. Restore \
         the state file; or, only if no number from this directory is in use anywhere, remove \
         the directory to start afresh",
        path.display(),
        lock.display()
    )]
    MissingState { path: PathBuf, lock: PathBuf },
    #[error(
        "--initial={initial} is below where sequence {name:?} resumes ({resume_at}): numbers \
         below that may already have been issued, and --initial never moves an existing \
         sequence back (it only sets where new sequences begin). Omit --initial to continue, \
         or give at least {highest}"
    )]
    InitialBelowRecovered {
        initial: u64,
        name: String,
        resume_at: u64,
        highest: u64,
    },
}

/// Why recovered lease or stream records do not fit the recovered sequences.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseAndStreamError {
    #[error(
        "{what} {first}+{count} belongs to sequence id {sequence}, which the state does not hold"
    )]
    UnknownSequence {
        what: &'static str,
        sequence: SequenceId,
        first: u64,
        count: u64,
    },
    #[error(
        "{what} {first}+{count} of sequence {name:?} reaches above where the sequence resumes \
         ({resume_at}): it holds numbers that were never issued"
    )]
    AboveResumePoint {
        what: &'static str,
        name: String,
        first: u64,
        count: u64,
        resume_at: u64,
    },
    #[error(transparent)]
    Leases(#[from] crate::lease::RestoreError),
}

/// Rebuilds the lease table and the stream records from `previous`, checking that every range
/// they hold was issued from a sequence the registry has (below its resume point).
pub fn restore_records(
    previous: Option<&State>,
    registry: &Registry,
    settings: LeaseSettings,
    commits: Commits,
) -> Result<LeasesAndStreams, LeaseAndStreamError> {
    let Some(state) = previous else {
        return Ok(LeasesAndStreams::empty(commits, settings));
    };
    let leases_and_streams = &state.leases_and_streams;
    let ranges = leases_and_streams
        .leases
        .iter()
        .map(|l| ("lease", l.sequence, l.first, l.count))
        .chain(
            leases_and_streams
                .pool
                .iter()
                .map(|r| ("pooled range", r.sequence, r.first, r.count)),
        )
        .chain(
            leases_and_streams
                .streams
                .iter()
                .map(|s| ("stream", s.sequence, s.first, u64::from(s.count))),
        );
    for (what, sequence, first, count) in ranges {
        let Some(holder) = registry.get(sequence) else {
            return Err(LeaseAndStreamError::UnknownSequence {
                what,
                sequence,
                first,
                count,
            });
        };
        if first.saturating_add(count) > holder.current() {
            return Err(LeaseAndStreamError::AboveResumePoint {
                what,
                name: holder.name().to_owned(),
                first,
                count,
                resume_at: holder.current(),
            });
        }
    }
    if !settings.reuse && !leases_and_streams.pool.is_empty() {
        let numbers: u64 = leases_and_streams.pool.iter().map(|r| r.count).sum();
        tracing::warn!(
            ranges = leases_and_streams.pool.len(),
            numbers,
            "--lease-reuse is off: the reuse pool of the previous run is retired (its \
             numbers will never be issued)"
        );
    }
    let table = LeaseTable::restore(
        settings,
        &leases_and_streams.leases,
        &leases_and_streams.pool,
        leases_and_streams.lease_counters,
    )?;
    Ok(LeasesAndStreams::new(
        commits,
        SharedLeaseTable::new(table),
        StreamRecords::new(leases_and_streams.streams.clone()),
    ))
}

/// Decides where each recovered sequence resumes. `had_owner`: a seqd that had written a
/// state held the directory before.
pub fn plan(
    previous: Option<&State>,
    had_owner: bool,
    options: &Options,
    dir: &Path,
) -> Result<Vec<RecoveredSequence>, RecoveryError> {
    let Some(state) = previous else {
        if had_owner {
            return Err(RecoveryError::MissingState {
                path: dir.join(super::data_dir::STATE_FILE),
                lock: dir.join(super::data_dir::LOCK_FILE),
            });
        }
        return Ok(Vec::new());
    };
    if options.initial_explicit {
        let highest = state.sequences.iter().map(|s| s.ceiling).max().unwrap_or(0);
        if let Some(above) = state.sequences.iter().find(|s| s.ceiling > options.initial) {
            return Err(RecoveryError::InitialBelowRecovered {
                initial: options.initial,
                name: above.name.clone(),
                resume_at: above.ceiling,
                highest,
            });
        }
    }
    Ok(state
        .sequences
        .iter()
        .map(|s| RecoveredSequence {
            id: s.id,
            name: s.name.clone(),
            resume_at: s.ceiling,
        })
        .collect())
}

/// Opens `dir`, recovers its state and writes the first windows. Every failure is a start-up
/// error that names the file concerned.
pub fn open(dir: &Path, options: &Options) -> anyhow::Result<Durable> {
    let data_dir = DataDir::open(dir)?;
    let previous = data_dir.read_state()?;
    let state_path = data_dir.state_path();
    let recovered = plan(previous.as_ref(), data_dir.had_owner(), options, dir)?;
    let registry = Registry::recovered(options.max_sequences, options.initial, &recovered)
        .with_context(|| format!("state file {} is inconsistent", state_path.display()))?
        .with_writers(options.writers);
    let registry = Arc::new(registry);
    let records = restore_records(
        previous.as_ref(),
        &registry,
        options.leases.clone(),
        Commits::persisted(),
    )
    .with_context(|| format!("state file {} is inconsistent", state_path.display()))?;
    let records = Arc::new(records);
    log_recovery(previous.as_ref(), &state_path, options);

    let mut persister = Persister::new(
        Box::new(data_dir),
        registry.clone(),
        records.clone(),
        options.policy,
        previous.as_ref(),
    );
    persister
        .raise_now()
        .with_context(|| format!("cannot write the state file {}", state_path.display()))?;
    Ok(Durable {
        registry,
        records,
        persister,
    })
}

fn log_recovery(previous: Option<&State>, path: &Path, options: &Options) {
    let Some(state) = previous else {
        tracing::info!(
            "new data directory: state file {} created; sequences begin at {}",
            path.display(),
            options.initial
        );
        return;
    };
    let age = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|now| now.checked_sub(Duration::from_millis(state.written_at_ms)))
        .map_or_else(
            || "at an unknown time".to_string(),
            |d| format!("{}s ago", d.as_secs()),
        );
    if state.clean_shutdown {
        tracing::info!(
            "recovered {} sequences from {} (generation {}, written {age} by a clean \
             shutdown): every sequence continues exactly where it stopped",
            state.sequences.len(),
            path.display(),
            state.generation,
        );
    } else {
        tracing::warn!(
            "recovered {} sequences from {} (generation {}, written {age}); the previous run \
             did not shut down cleanly (crash, kill or power loss): every sequence resumes at \
             its durable ceiling, above every number it could have issued",
            state.sequences.len(),
            path.display(),
            state.generation,
        );
    }
    for (index, sequence) in state.sequences.iter().enumerate() {
        let skipped = sequence.ceiling - sequence.next;
        if index < LOGGED_SEQUENCES {
            tracing::info!(
                "sequence {:?} (id {}) resumes at {}{}",
                sequence.name,
                sequence.id,
                sequence.ceiling,
                if state.clean_shutdown {
                    String::new()
                } else {
                    format!(" (skipping at most {skipped} numbers)")
                }
            );
        } else {
            tracing::debug!(
                "sequence {:?} (id {}) resumes at {} (skipping at most {skipped})",
                sequence.name,
                sequence.id,
                sequence.ceiling
            );
        }
    }
    if state.sequences.len() > LOGGED_SEQUENCES {
        tracing::info!(
            "... and {} more sequences (listed at debug level)",
            state.sequences.len() - LOGGED_SEQUENCES
        );
    }
    let leases_and_streams = &state.leases_and_streams;
    if !leases_and_streams.leases.is_empty() || !leases_and_streams.streams.is_empty() {
        let outstanding = leases_and_streams
            .leases
            .iter()
            .filter(|l| l.status == crate::lease::LeaseStatus::Outstanding)
            .count();
        tracing::info!(
            "recovered {} leases ({outstanding} unacknowledged), {} pooled ranges and {} \
             streams",
            leases_and_streams.leases.len(),
            leases_and_streams.pool.len(),
            leases_and_streams.streams.len()
        );
    }
    if options.initial_explicit {
        tracing::info!(
            "--initial={} applies to sequences created from now on; recovered ones continue \
             where they were",
            options.initial
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::SequenceRecord;

    fn options(initial: u64, explicit: bool) -> Options {
        Options {
            max_sequences: 8,
            initial,
            initial_explicit: explicit,
            policy: WindowPolicy { max_crash_gap: 100 },
            writers: Writers::Many,
            leases: LeaseSettings {
                timeout: Duration::from_secs(30),
                max_size: 100,
                max_per_client: 4,
                max_tracked: 100,
                max_per_peer: 0,
                reuse: false,
            },
        }
    }

    fn state() -> State {
        let record = |id, name: &str, next, ceiling| SequenceRecord {
            id,
            name: name.into(),
            next,
            ceiling,
        };
        State {
            generation: 3,
            clean_shutdown: false,
            written_at_ms: 0,
            sequences: vec![record(0, "default", 90, 120), record(1, "orders", 7, 50)],
            leases_and_streams: Default::default(),
        }
    }

    #[test]
    fn every_sequence_resumes_at_its_ceiling() {
        let plan = plan(Some(&state()), true, &options(1, false), Path::new("/d")).unwrap();
        let resume: Vec<(&str, u64)> = plan
            .iter()
            .map(|s| (s.name.as_str(), s.resume_at))
            .collect();
        assert_eq!(resume, [("default", 120), ("orders", 50)]);
    }

    #[test]
    fn an_explicit_initial_below_a_recovered_sequence_is_refused() {
        let err = plan(Some(&state()), true, &options(100, true), Path::new("/d")).unwrap_err();
        assert_eq!(
            err,
            RecoveryError::InitialBelowRecovered {
                initial: 100,
                name: "default".into(),
                resume_at: 120,
                highest: 120
            }
        );
        assert!(
            err.to_string()
                .contains("never moves an existing sequence back")
        );
        // At or above every resume point it is accepted (for new sequences).
        assert!(plan(Some(&state()), true, &options(120, true), Path::new("/d")).is_ok());
        // The default --initial is never checked.
        assert!(plan(Some(&state()), true, &options(1, false), Path::new("/d")).is_ok());
    }

    #[test]
    fn no_state_is_a_fresh_start_only_where_none_was_written() {
        assert_eq!(
            plan(None, false, &options(5, true), Path::new("/d")).unwrap(),
            vec![]
        );
        let err = plan(None, true, &options(5, true), Path::new("/d")).unwrap_err();
        assert!(matches!(err, RecoveryError::MissingState { .. }));
        assert!(err.to_string().contains("/d/state is missing"), "{err}");
    }

    #[test]
    fn open_recovers_what_a_previous_run_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), &options(10, true)).unwrap();
        let default = first.registry.get(0).unwrap();
        assert_eq!(default.reserve(5), Ok(10));
        let ceiling = default.ceiling();
        assert_eq!(ceiling, 110, "max crash gap 100");
        drop(first); // a crash: no final write
        let second = open(dir.path(), &options(1, false)).unwrap();
        assert_eq!(second.registry.get(0).unwrap().reserve(1), Ok(ceiling));
        drop(second);
        let mut refused = std::fs::read(dir.path().join("state")).unwrap();
        refused.truncate(10);
        std::fs::write(dir.path().join("state"), refused).unwrap();
        let err = format!("{:#}", open(dir.path(), &options(1, false)).err().unwrap());
        assert!(err.contains("state is unusable"), "{err}");
    }
}
