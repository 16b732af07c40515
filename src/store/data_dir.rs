//! The data directory: its lock, its state file (read, and atomically replaced) and the
//! journal appended after it.
//!
//! A write that follows another is appended to the journal as one entry holding what changed
//! (the persister batches every change made before it starts; one fsync per entry). The first
//! write after start-up, a clean shutdown's, the first after a failed write, and one that
//! would grow the journal past its bound (the larger of [`JOURNAL_MIN_BOUND`] and the last
//! state file's size) instead rewrite the whole state file and start a new journal: a
//! compaction. Every state file write goes to `state.tmp`, is fsync'd, renamed over `state`,
//! and the directory is fsync'd. The rename is atomic, so `state` only ever holds a complete file that was on disk
//! before it got its name: a crash mid-write leaves the previous `state` in force and an
//! unfinished `state.tmp`, which recovery removes. Any damage found in `state` itself can
//! therefore not be a torn write; it is corruption and stops the start (see docs/STATE.md for
//! why falling back to an older state would risk reissuing numbers).
//!
//! Writing a fresh file each time also sidesteps fsync's error semantics on Linux (after a
//! failed fsync the page cache may mark unwritten pages clean, so retrying fsync on the same
//! file can report success for data that never reached the disk): a retry writes new pages.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::changes::RecordLog;
use super::failpoint;
use super::format::{self, SequenceRecord, State};
use super::journal::{self, Change, Entry, Replay};
use crate::lease::{LeaseCounters, PooledRange};

/// The state file, relative to the data directory.
pub const STATE_FILE: &str = "state";
/// Where a new state is written before it is renamed over [`STATE_FILE`].
pub const TEMP_FILE: &str = "state.tmp";
/// Held (flock) by the seqd using the directory; holds its pid.
pub const LOCK_FILE: &str = "seqd.lock";
/// The changes made since the state file was written, appended one entry per write.
pub const JOURNAL_FILE: &str = "journal";
/// Where a compaction writes the new, empty journal before it is renamed over
/// [`JOURNAL_FILE`].
pub const JOURNAL_TEMP_FILE: &str = "journal.tmp";
/// The journal is compacted into the state file once an append would take it past this or
/// the last state file's size, whichever is larger: so appends cost at most about as much
/// again in compactions, and recovery replays at most about a state file's worth.
pub const JOURNAL_MIN_BOUND: u64 = 1 << 20;

/// A failed state write: which step, on which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} {}: {source}", path.display())]
pub struct WriteError {
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Where the persister writes states: the data directory, cluster mode's etcd store, or a
/// stand-in in tests. The persister hands over every sequence, and of the leases and streams
/// only what changed since the last write that succeeded (the whole records are built on
/// demand, [`StateWrite::state`]): the data directory appends the changes to its journal or
/// compacts, the etcd store writes the keys that changed.
pub trait StateSink: Send {
    /// Makes `write`'s state the durable state: when this returns `Ok`, it survives a crash
    /// or power loss. After an `Err` the next write carries the failed one's changes again,
    /// so the sink must not rely on what a failed write left behind.
    fn write_state(&mut self, write: &StateWrite<'_>) -> Result<(), WriteError>;
    /// fsync calls made so far (for the persister's report).
    fn fsyncs(&self) -> u64;
    /// Where states go, for log messages.
    fn location(&self) -> String;
}

/// One write: every sequence, and the lease and stream records by their changes.
#[derive(Debug)]
pub struct StateWrite<'a> {
    pub generation: u64,
    pub clean_shutdown: bool,
    pub written_at_ms: u64,
    pub sequences: Vec<SequenceRecord>,
    /// The lease and stream changes since the last write that succeeded.
    pub changes: Vec<Change>,
    records: &'a RecordLog,
}

impl<'a> StateWrite<'a> {
    /// A write of `sequences`, and of the lease and stream records `records` makes durable
    /// next (its changes, and all of them on demand).
    pub fn new(
        generation: u64,
        clean_shutdown: bool,
        written_at_ms: u64,
        sequences: Vec<SequenceRecord>,
        records: &'a RecordLog,
    ) -> StateWrite<'a> {
        StateWrite {
            generation,
            clean_shutdown,
            written_at_ms,
            sequences,
            changes: records.changes(),
            records,
        }
    }

    /// The whole state: costs every record, for a write of all of them.
    pub fn state(&self) -> State {
        State {
            generation: self.generation,
            clean_shutdown: self.clean_shutdown,
            written_at_ms: self.written_at_ms,
            sequences: self.sequences.clone(),
            leases_and_streams: self.records.records(),
        }
    }

    /// The reuse pool and the lease counters after this write (they share one record in
    /// some stores).
    pub fn pool_and_counters(&self) -> (Vec<PooledRange>, LeaseCounters) {
        (self.records.pool(), self.records.counters())
    }
}

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Kept open to fsync the directory after each rename.
    dir: File,
    /// Holds the flock for as long as this process runs.
    _lock: File,
    /// The lock file already named an owner when we took it: a seqd ran here and wrote a
    /// state before (the pid is recorded only after the first state is durable).
    had_owner: bool,
    /// Our pid is in the lock file (written after our first durable state).
    owner_recorded: bool,
    fsyncs: u64,
    /// The journal being appended to, and the state its entries lead to; None until the
    /// first write of this process, and after a failed write (the next one compacts: after
    /// a failure the journal's tail is unknown, and fsync'ing the same file again could
    /// report success for pages that were lost).
    journal: Option<OpenJournal>,
    /// Compact once an append would take the journal past this many bytes (at least).
    journal_bound: u64,
    /// What was written, by kind, for the persister's report and the benchmark.
    written: Written,
}

/// The journal appended to, and what it holds. It is opened for each append rather than
/// held open: a file open for writing keeps its filesystem from being remounted read-only.
#[derive(Debug)]
struct OpenJournal {
    len: u64,
    /// The sequences the state file and the journal's entries make: what the next entry's
    /// sequence changes are the difference from (the lease and stream changes come with
    /// each write).
    sequences: Vec<SequenceRecord>,
    /// Size of the state file the journal continues.
    state_file_len: u64,
}

/// Counts of what a data directory wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Whole state files (with a new journal each).
    pub compactions: u64,
    pub compaction_bytes: u64,
    /// Journal entries.
    pub appends: u64,
    pub append_bytes: u64,
}

impl DataDir {
    /// Opens the data directory (created if missing, 0700) and locks it against a second
    /// seqd. A directory that is a symlink, is not ours or that others may write is refused:
    /// whoever can write it can plant a symlink where seqd (often root) writes its files.
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        if std::fs::symlink_metadata(path).is_err() {
            let missing: Vec<&Path> = path
                .ancestors()
                .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
                .collect();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("cannot create data directory {}", path.display()))?;
            // Each new directory's entry must survive a crash too: fsync every parent that
            // gained one, outermost first.
            for created in missing.iter().rev() {
                let parent = created
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                fsync_dir(parent)
                    .with_context(|| format!("cannot fsync directory {}", parent.display()))?;
            }
        }
        check_ownership(path)?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("cannot open data directory {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        // Held open read-only: a file open for writing would keep the filesystem from being
        // remounted read-only, and the pid is written through a short-lived descriptor.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .with_context(|| format!("cannot create lock file {}", lock_path.display()))?;
        let mut lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = match read_owner(&mut lock) {
                    Some(pid) => format!("pid {pid}"),
                    None => "a process that has not recorded its pid yet".to_string(),
                };
                bail!(
                    "data directory {} is in use by another seqd ({holder}, per {}): \
                     two servers on one directory would issue the same numbers; stop the \
                     other one or choose another --data-dir",
                    path.display(),
                    lock_path.display()
                );
            }
            return Err(error).with_context(|| format!("cannot lock {}", lock_path.display()));
        }
        let had_owner = read_owner(&mut lock).is_some();
        Ok(DataDir {
            path: path.to_path_buf(),
            dir,
            _lock: lock,
            had_owner,
            owner_recorded: false,
            fsyncs: 0,
            journal: None,
            journal_bound: failpoint::journal_bound_override().unwrap_or(JOURNAL_MIN_BOUND),
            written: Written::default(),
        })
    }

    /// Compacts once the journal would pass `bytes` (or the state file's size, if larger).
    pub fn with_journal_bound(mut self, bytes: u64) -> DataDir {
        self.journal_bound = bytes;
        self
    }

    /// What this data directory wrote so far.
    pub fn written(&self) -> Written {
        self.written
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path.join(JOURNAL_FILE)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Whether a seqd that had written a state here held the lock before.
    pub fn had_owner(&self) -> bool {
        self.had_owner
    }

    /// Reads the state, if there is one: the state file, with the journal's entries applied
    /// (a torn last entry is dropped, with a warning). Unfinished writes (`state.tmp`,
    /// `journal.tmp`) are removed: they never took effect. A state file or journal that
    /// cannot be read or decoded is an error naming it.
    pub fn read_state(&self) -> anyhow::Result<Option<State>> {
        for (name, what) in [(TEMP_FILE, "state"), (JOURNAL_TEMP_FILE, "journal")] {
            let temp = self.path.join(name);
            match std::fs::remove_file(&temp) {
                Ok(()) => tracing::warn!(
                    "removed {}: a {what} write that a crash interrupted (it never took effect)",
                    temp.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", temp.display()));
                }
            }
        }
        let path = self.state_path();
        let journal_path = self.journal_path();
        let Some(bytes) = read_file(&path, "state file")? else {
            if std::fs::symlink_metadata(&journal_path).is_ok() {
                bail!(
                    "state file {} is missing but its journal {} is there: the journal only \
                     holds changes to a state file, so seqd cannot tell where its sequences \
                     stand; restore the state file (see docs/STATE.md, \"Recovery\")",
                    path.display(),
                    journal_path.display()
                );
            }
            return Ok(None);
        };
        let mut state = format::decode(&bytes).with_context(|| {
            format!(
                "state file {} is unusable; seqd will not guess where its sequences stand \
                 (see docs/STATE.md, \"Recovery\")",
                path.display()
            )
        })?;
        let Some(bytes) = read_file(&journal_path, "journal")? else {
            return Ok(Some(state));
        };
        let base = state.generation;
        let unusable = || {
            format!(
                "journal {} (after state file generation {}) is unusable; seqd will not guess \
                 where its sequences stand (see docs/STATE.md, \"Recovery\")",
                journal_path.display(),
                base
            )
        };
        let journal = journal::decode(&bytes).with_context(unusable)?;
        match journal::replay(&mut state, &journal).with_context(unusable)? {
            Replay::Stale => tracing::info!(
                "journal {} continues state generation {}, older than the state file's ({base}): \
                 a compaction was interrupted after its state file was in place, so the state \
                 file holds everything; the journal is replaced at the first write",
                journal_path.display(),
                journal.base_generation,
            ),
            Replay::Applied(entries) => tracing::info!(
                "replayed {entries} journal entries ({} bytes) onto state file generation \
                 {base}: generation {}",
                journal.valid_len,
                state.generation
            ),
        }
        if let Some(torn) = journal.torn_bytes {
            tracing::warn!(
                "dropped the last {torn} bytes of journal {}: an entry a crash interrupted \
                 (nothing that depended on it was acknowledged)",
                journal_path.display()
            );
        }
        Ok(Some(state))
    }

    /// Records this process's pid in the lock file, for a second seqd's error message. Done
    /// after the first state is durable: a recorded owner tells later starts that a state
    /// must exist.
    fn record_owner(&mut self) -> Result<(), WriteError> {
        let path = self.path.join(LOCK_FILE);
        let pid = format!("{}\n", std::process::id());
        self.fsyncs += 1;
        let written = OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(pid.as_bytes())?;
                file.sync_all()
            });
        written.map_err(|source| WriteError {
            step: "record the pid in",
            path,
            source,
        })?;
        self.owner_recorded = true;
        Ok(())
    }
}

impl DataDir {
    /// Appends `state`'s difference from the last one to the journal, if a journal is open
    /// and the entry fits under its bound. `None`: compact instead.
    fn try_append(&mut self, write: &StateWrite<'_>) -> Option<Result<(), WriteError>> {
        let open = self.journal.as_mut()?;
        if write.clean_shutdown {
            return None;
        }
        let mut changes = journal::diff_sequences(&open.sequences, &write.sequences);
        changes.extend(write.changes.iter().cloned());
        let entry = journal::encode_entry(&Entry {
            generation: write.generation,
            written_at_ms: write.written_at_ms,
            changes,
        });
        let bound = self.journal_bound.max(open.state_file_len);
        if open.len + entry.len() as u64 > bound {
            return None;
        }
        let path = self.path.join(JOURNAL_FILE);
        let fail = |step, source| WriteError {
            step,
            path: path.clone(),
            source,
        };
        let appended = (|| {
            let mut file = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| fail("open", e))?;
            // Anything but the length this process left means someone else wrote there.
            let len = file.metadata().map_err(|e| fail("inspect", e))?.len();
            if len != open.len {
                let what = format!("{len} bytes where this seqd wrote {}", open.len);
                return Err(fail("append to", io::Error::other(what)));
            }
            failpoint::hit(failpoint::APPEND[0]);
            file.write_all(&entry).map_err(|e| fail("append to", e))?;
            failpoint::hit(failpoint::APPEND[1]);
            self.fsyncs += 1;
            file.sync_data().map_err(|e| fail("fsync", e))
        })();
        match appended {
            Ok(()) => {
                failpoint::hit(failpoint::APPEND[2]);
                open.len += entry.len() as u64;
                open.sequences.clone_from(&write.sequences);
                self.written.appends += 1;
                self.written.append_bytes += entry.len() as u64;
                Some(Ok(()))
            }
            Err(e) => {
                self.journal = None;
                Some(Err(e))
            }
        }
    }

    /// Replaces the state file with `state` (write, fsync, rename, fsync the directory),
    /// then the journal with an empty one continuing it. Returns the state file's size.
    fn compact(&mut self, state: &State) -> Result<u64, WriteError> {
        self.journal = None;
        let bytes = format::encode(state);
        self.replace(TEMP_FILE, STATE_FILE, &bytes, &failpoint::STATE_WRITE)?;
        let header = journal::encode_header(state.generation);
        self.replace(
            JOURNAL_TEMP_FILE,
            JOURNAL_FILE,
            &header,
            &failpoint::NEW_JOURNAL,
        )?;
        self.journal = Some(OpenJournal {
            len: header.len() as u64,
            sequences: state.sequences.clone(),
            state_file_len: bytes.len() as u64,
        });
        self.written.compactions += 1;
        self.written.compaction_bytes += (bytes.len() + header.len()) as u64;
        Ok(bytes.len() as u64)
    }

    /// Makes `bytes` the content of `target`: written to `temp` (created afresh), fsync'd,
    /// renamed over `target`, and the directory fsync'd. `points` names its crash points: before the write, after it, after the
    /// fsync and after the rename.
    fn replace(
        &mut self,
        temp: &str,
        target: &str,
        bytes: &[u8],
        points: &[&'static str; 4],
    ) -> Result<(), WriteError> {
        let [before_write, after_write, after_fsync, after_rename] = *points;
        let (temp, target) = (self.path.join(temp), self.path.join(target));
        let fail = |step, path: &Path, source| WriteError {
            step,
            path: path.to_path_buf(),
            source,
        };
        let written = (|| {
            // Whatever is at the temporary path is not ours to write through (a symlink
            // planted there would redirect the write): remove it and create a new file
            // exclusively.
            match std::fs::remove_file(&temp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(fail("remove", &temp, e));
                }
                _ => {}
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
                .map_err(|e| fail("create", &temp, e))?;
            failpoint::hit(before_write);
            file.write_all(bytes).map_err(|e| fail("write", &temp, e))?;
            failpoint::hit(after_write);
            self.fsyncs += 1;
            file.sync_all().map_err(|e| fail("fsync", &temp, e))?;
            failpoint::hit(after_fsync);
            std::fs::rename(&temp, &target).map_err(|e| fail("rename over", &target, e))
        })();
        if let Err(e) = written {
            // Best effort: a partial file should not hold on to space on a full disk.
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        failpoint::hit(after_rename);
        self.fsyncs += 1;
        self.dir
            .sync_all()
            .map_err(|e| fail("fsync directory", &self.path, e))
    }
}

impl StateSink for DataDir {
    fn write_state(&mut self, write: &StateWrite<'_>) -> Result<(), WriteError> {
        if let Some(appended) = self.try_append(write) {
            return appended;
        }
        self.compact(&write.state())?;
        if !self.owner_recorded
            && let Err(e) = self.record_owner()
        {
            // The caller takes the write as failed and sends its changes again: the next
            // write must be whole, not an entry that may remove what the new state file
            // already lacks.
            self.journal = None;
            return Err(e);
        }
        Ok(())
    }

    fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    fn location(&self) -> String {
        self.state_path().display().to_string()
    }
}

/// Refuses a data directory that is a symlink, is not a directory, is owned by another user
/// or is writable by group or others, naming the fix.
fn check_ownership(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot inspect data directory {}", path.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "data directory {} is a symlink: seqd will not follow it (whoever can change the \
             link decides where seqd writes); give the real directory as --data-dir",
            path.display()
        );
    }
    if !meta.is_dir() {
        bail!("data directory {} is not a directory", path.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        bail!(
            "data directory {} is owned by uid {}, not by this process (uid {uid}): its \
             owner could redirect seqd's writes; fix with `chown {uid} {}` and `chmod 700 {}`",
            path.display(),
            meta.uid(),
            path.display(),
            path.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "data directory {} is writable by others (mode {:o}): anyone who can write it \
             can plant a symlink where seqd writes its state; fix with `chmod 700 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// The pid recorded in a lock file, if any.
fn read_owner(lock: &mut File) -> Option<u32> {
    let mut text = String::new();
    lock.seek(io::SeekFrom::Start(0)).ok()?;
    lock.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The bytes of `path` (never through a symlink), or None if there is no such file.
fn read_file(path: &Path, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let read = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut file| {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map(|_| bytes)
        });
    match read {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::SequenceRecord;

    /// Writes `state` as the persister would: its lease and stream records by their changes
    /// from what the directory holds.
    fn write(dir: &mut DataDir, state: &State) -> Result<(), WriteError> {
        let mut log = RecordLog::default();
        if dir.journal.is_some() {
            let held = dir.read_state().unwrap().unwrap();
            log = RecordLog::new(held.leases_and_streams);
        }
        log.replace_all(state.leases_and_streams.clone());
        let write = StateWrite::new(
            state.generation,
            state.clean_shutdown,
            state.written_at_ms,
            state.sequences.clone(),
            &log,
        );
        dir.write_state(&write)
    }

    #[test]
    fn one_changed_lease_of_a_large_table_appends_only_that_change() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        let mut state = state_with_leases(10_000);
        state.generation = 1;
        write(&mut dir, &state).unwrap();
        let full = dir.written();
        assert!(full.compaction_bytes > 300_000, "{full:?}");
        // What the persister hands over: one change, never the table.
        let mut log = RecordLog::new(state.leases_and_streams.clone());
        state.leases_and_streams.leases[700].status = crate::lease::LeaseStatus::Acknowledged;
        log.replace_all(state.leases_and_streams.clone());
        let write = StateWrite::new(2, false, 0, state.sequences.clone(), &log);
        assert_eq!(
            write.changes,
            [Change::Lease(state.leases_and_streams.leases[700].clone())]
        );
        dir.write_state(&write).unwrap();
        let written = dir.written();
        assert_eq!(
            (written.compactions, written.appends),
            (1, 1),
            "{written:?}"
        );
        assert!(written.append_bytes < 100, "{written:?}");
        state.generation = 2;
        assert_eq!(dir.read_state().unwrap(), Some(state));
    }

    fn state(generation: u64, ceiling: u64) -> State {
        State {
            generation,
            clean_shutdown: false,
            written_at_ms: 0,
            sequences: vec![SequenceRecord {
                id: 0,
                name: "default".into(),
                next: 1,
                ceiling,
            }],
            leases_and_streams: Default::default(),
        }
    }

    #[test]
    fn a_new_directory_is_created_empty_and_written_atomically() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("nested/data");
        let mut dir = DataDir::open(&path).unwrap();
        assert!(!dir.had_owner());
        assert_eq!(dir.read_state().unwrap(), None);
        write(&mut dir, &state(1, 100)).unwrap();
        assert_eq!(
            dir.fsyncs(),
            5,
            "state file and directory, journal and directory, the lock file's pid"
        );
        write(&mut dir, &state(2, 200)).unwrap();
        assert_eq!(dir.fsyncs(), 6, "one per journal entry");
        assert_eq!(dir.read_state().unwrap(), Some(state(2, 200)));
        assert!(!path.join(TEMP_FILE).exists());
        assert!(!path.join(JOURNAL_TEMP_FILE).exists());
    }

    /// `state(generation, ceiling)` with a lease per generation, so each write changes more
    /// than the ceiling.
    fn state_with_leases(generation: u64) -> State {
        let mut state = state(generation, 1000 * generation);
        state.leases_and_streams.leases = (1..=generation)
            .map(|i| crate::lease::LeaseRecord {
                sequence: 0,
                first: 10 * i,
                count: 10,
                status: crate::lease::LeaseStatus::Outstanding,
                time_ms: i,
                client: String::new(),
                request: String::new(),
            })
            .collect();
        state
    }

    #[test]
    fn writes_after_the_first_are_appended_and_compacted_past_the_bound() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path())
            .unwrap()
            .with_journal_bound(400);
        for generation in 1..=12 {
            write(&mut dir, &state_with_leases(generation)).unwrap();
            assert_eq!(
                dir.read_state().unwrap(),
                Some(state_with_leases(generation)),
                "after generation {generation}"
            );
        }
        let written = dir.written();
        assert!(written.compactions >= 2, "{written:?}");
        assert!(written.appends >= 6, "{written:?}");
        let journal = std::fs::metadata(dir.journal_path()).unwrap().len();
        assert!(journal <= 400, "{journal} bytes");
        // A clean shutdown's write always compacts: the journal is empty after it.
        let mut clean = state_with_leases(13);
        clean.clean_shutdown = true;
        write(&mut dir, &clean).unwrap();
        let journal = std::fs::metadata(dir.journal_path()).unwrap().len();
        assert_eq!(journal, journal::HEADER_LEN as u64);
        assert_eq!(dir.read_state().unwrap(), Some(clean));
    }

    #[test]
    fn a_torn_journal_entry_is_dropped_and_the_next_start_compacts() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        write(&mut dir, &state_with_leases(1)).unwrap();
        write(&mut dir, &state_with_leases(2)).unwrap();
        write(&mut dir, &state_with_leases(3)).unwrap();
        drop(dir);
        let path = parent.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        assert_eq!(dir.read_state().unwrap(), Some(state_with_leases(2)));
        write(&mut dir, &state_with_leases(3)).unwrap();
        assert_eq!(dir.written().compactions, 1, "the first write of a process");
        assert_eq!(dir.read_state().unwrap(), Some(state_with_leases(3)));
    }

    #[test]
    fn a_journal_older_than_the_state_file_is_ignored_and_one_without_it_refused() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        write(&mut dir, &state_with_leases(1)).unwrap();
        write(&mut dir, &state_with_leases(2)).unwrap();
        // A compaction whose state file was renamed into place, and then the crash.
        std::fs::write(
            parent.path().join(STATE_FILE),
            format::encode(&state_with_leases(3)),
        )
        .unwrap();
        assert_eq!(dir.read_state().unwrap(), Some(state_with_leases(3)));
        std::fs::remove_file(parent.path().join(STATE_FILE)).unwrap();
        let err = format!("{:#}", dir.read_state().unwrap_err());
        assert!(err.contains("is missing but its journal"), "{err}");
    }

    #[test]
    fn a_damaged_journal_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        for generation in 1..=3 {
            write(&mut dir, &state_with_leases(generation)).unwrap();
        }
        let path = parent.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[journal::HEADER_LEN + journal::FRAME_LEN + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", dir.read_state().unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("fails its checksum but is not the last"),
            "{err}"
        );
    }

    #[test]
    fn a_second_opener_is_refused_with_the_holders_pid() {
        let parent = tempfile::tempdir().unwrap();
        let mut first = DataDir::open(parent.path()).unwrap();
        let err = DataDir::open(parent.path()).unwrap_err().to_string();
        assert!(err.contains("has not recorded its pid yet"), "{err}");
        write(&mut first, &state(1, 100)).unwrap();
        let err = DataDir::open(parent.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by another seqd (pid {}",
                std::process::id()
            )),
            "{err}"
        );
        drop(first);
        let again = DataDir::open(parent.path()).unwrap();
        assert!(again.had_owner(), "the pid stays behind as a marker");
    }

    #[test]
    fn an_unfinished_write_is_removed_and_the_previous_state_kept() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        write(&mut dir, &state(1, 100)).unwrap();
        let torn = format::encode(&state(2, 200));
        std::fs::write(parent.path().join(TEMP_FILE), &torn[..torn.len() / 2]).unwrap();
        assert_eq!(dir.read_state().unwrap(), Some(state(1, 100)));
        assert!(!parent.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn a_damaged_state_is_an_error_naming_the_file() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir = DataDir::open(parent.path()).unwrap();
        write(&mut dir, &state(1, 100)).unwrap();
        let path = parent.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", dir.read_state().unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("file");
        std::fs::write(&path, b"x").unwrap();
        let err = DataDir::open(&path).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn a_directory_others_can_write_or_a_symlink_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let open = parent.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = DataDir::open(&open).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 700 {}", open.display())),
            "{err}"
        );
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(parent.path(), &link).unwrap();
        let err = DataDir::open(&link).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
    }

    #[test]
    fn a_symlink_at_the_temp_or_lock_file_is_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let victim = parent.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let data = parent.path().join("data");
        let mut dir = DataDir::open(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join(TEMP_FILE)).unwrap();
        write(&mut dir, &state(1, 100)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(dir.read_state().unwrap(), Some(state(1, 100)));
        drop(dir);
        std::fs::remove_file(data.join(LOCK_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, data.join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", DataDir::open(&data).unwrap_err());
        assert!(err.contains("lock file"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
