//! `--verify`: every number received is unique across all connections and strictly increasing
//! on each connection, and no two batch ranges overlap.
//!
//! Each connection keeps the ranges it received, merging a range into the previous one when
//! it continues it (seqd hands a pipelined burst consecutive numbers, so this keeps memory
//! small), and checks order as replies arrive. At the end all ranges are sorted by their
//! first number and any overlap is counted, number by number, as duplicates.
//!
//! Ranges can be appended to a file (`--verify-file`) and checked later with `loadgen verify`,
//! across runs and server restarts: the file is a 16-byte header `SEQDVFY1` + 8 reserved
//! bytes, then 24-byte little-endian records `(stream, first, count)`; `stream` identifies
//! one connection of one run, so order is checked per stream and uniqueness over all.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"SEQDVFY1";
const HEADER_LEN: usize = 16;
const RECORD_LEN: usize = 24;

/// What one connection received, in order.
#[derive(Debug, Default, Clone)]
pub struct StreamLog {
    /// `(first, count)`, in arrival order, contiguous ones merged.
    pub ranges: Vec<(u64, u64)>,
    /// Replies whose first number was not above every number received before on the stream.
    pub non_increasing: u64,
    /// Numbers received.
    pub numbers: u64,
}

impl StreamLog {
    /// Records that the stream received `count` numbers starting at `first`.
    #[inline]
    pub fn record(&mut self, first: u64, count: u64) {
        self.numbers += count;
        if let Some(last) = self.ranges.last_mut() {
            let end = last.0.saturating_add(last.1);
            if first < end {
                self.non_increasing += 1;
            } else if first == end {
                last.1 += count;
                return;
            }
        }
        self.ranges.push((first, count));
    }
}

/// The outcome of a verification.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Connections (streams) checked.
    pub streams: u64,
    /// Numbers received in all.
    pub numbers: u64,
    /// Ranges after merging contiguous replies.
    pub ranges: u64,
    /// Numbers received more than once (each extra copy counts once).
    pub duplicates: u64,
    /// Replies that did not increase on their connection.
    pub non_increasing: u64,
    pub lowest: Option<u64>,
    pub highest: Option<u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.duplicates == 0 && self.non_increasing == 0
    }
}

/// Checks the logs of every stream of a run (or of a file).
pub fn check<'a>(streams: impl IntoIterator<Item = &'a StreamLog>) -> Report {
    let mut report = Report::default();
    let mut all: Vec<(u64, u64)> = Vec::new();
    for log in streams {
        report.streams += 1;
        report.numbers += log.numbers;
        report.non_increasing += log.non_increasing;
        all.extend_from_slice(&log.ranges);
    }
    report.ranges = all.len() as u64;
    all.sort_unstable();
    // `covered` is the end (exclusive) of everything seen so far.
    let mut covered: Option<u64> = None;
    for &(first, count) in &all {
        let end = first.saturating_add(count);
        if let Some(covered) = covered
            && first < covered
        {
            report.duplicates += end.min(covered) - first;
        }
        covered = Some(covered.map_or(end, |c| c.max(end)));
    }
    report.lowest = all.first().map(|r| r.0);
    report.highest = covered.map(|end| end - 1);
    report
}

/// Appends the streams of one run to a verify file, creating it if needed. Stream ids are
/// `run << 24 | connection`, so runs appended to one file stay apart.
pub fn append_to_file(path: &Path, run: u64, streams: &[StreamLog]) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("cannot open --verify-file {}", path.display()))?;
    let existing = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let mut out = BufWriter::new(file);
    if existing == 0 {
        out.write_all(MAGIC)?;
        out.write_all(&[0; HEADER_LEN - MAGIC.len()])?;
    } else {
        check_header(path)?;
    }
    for (connection, log) in streams.iter().enumerate() {
        let stream = (run << 24) | connection as u64;
        for &(first, count) in &log.ranges {
            out.write_all(&stream.to_le_bytes())?;
            out.write_all(&first.to_le_bytes())?;
            out.write_all(&count.to_le_bytes())?;
        }
    }
    out.flush()
        .with_context(|| format!("cannot write --verify-file {}", path.display()))
}

fn check_header(path: &Path) -> Result<()> {
    let mut header = [0u8; HEADER_LEN];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("cannot read the header of {}", path.display()))?;
    if &header[..MAGIC.len()] != MAGIC {
        bail!(
            "{} is not a loadgen verify file (it does not start with {:?}); \
             give --verify-file a new path",
            path.display(),
            String::from_utf8_lossy(MAGIC)
        );
    }
    Ok(())
}

/// Reads a verify file back into one log per stream, re-checking order per stream.
pub fn read_file(path: &Path) -> Result<Vec<StreamLog>> {
    check_header(path)?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    let body = len.saturating_sub(HEADER_LEN as u64);
    if body % RECORD_LEN as u64 != 0 {
        bail!(
            "{} ends in a partial record ({} stray bytes): the file was cut short while \
             being written",
            path.display(),
            body % RECORD_LEN as u64
        );
    }
    let mut input = BufReader::new(file);
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header)?;
    let mut streams: std::collections::HashMap<u64, StreamLog> = Default::default();
    let mut record = [0u8; RECORD_LEN];
    for _ in 0..body / RECORD_LEN as u64 {
        input
            .read_exact(&mut record)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        streams
            .entry(field(0))
            .or_default()
            .record(field(1), field(2));
    }
    Ok(streams.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(ranges: &[(u64, u64)]) -> StreamLog {
        let mut log = StreamLog::default();
        for &(first, count) in ranges {
            log.record(first, count);
        }
        log
    }

    #[test]
    fn interleaved_connections_pass() {
        let a = log(&[(1, 1), (3, 1), (5, 10)]);
        let b = log(&[(2, 1), (4, 1), (15, 1)]);
        let report = check([&a, &b]);
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.numbers, 15);
        assert_eq!(report.lowest, Some(1));
        assert_eq!(report.highest, Some(15));
    }

    #[test]
    fn contiguous_replies_merge() {
        let a = log(&[(1, 1), (2, 1), (3, 5), (10, 1)]);
        assert_eq!(a.ranges, vec![(1, 7), (10, 1)]);
    }

    #[test]
    fn a_duplicated_number_is_caught() {
        let a = log(&[(1, 1), (2, 1), (3, 1)]);
        let b = log(&[(4, 1), (2, 1), (5, 1)]); // 2 again, and out of order
        let report = check([&a, &b]);
        assert!(!report.ok());
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.non_increasing, 1);
    }

    #[test]
    fn overlapping_batches_count_each_shared_number() {
        let a = log(&[(100, 10)]);
        let b = log(&[(105, 10)]);
        let c = log(&[(90, 30)]);
        let report = check([&a, &b, &c]);
        // 105..110 is in a and b; c covers 100..115 again: 5 + 15 duplicates.
        assert_eq!(report.duplicates, 20);
        assert_eq!(report.non_increasing, 0);
    }

    #[test]
    fn same_connection_repeat_is_non_increasing_and_duplicate() {
        let a = log(&[(7, 1), (7, 1)]);
        let report = check([&a]);
        assert_eq!((report.duplicates, report.non_increasing), (1, 1));
    }

    #[test]
    fn file_round_trip_across_runs() {
        let dir = std::env::temp_dir().join(format!("loadgen-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("numbers.vfy");
        let _ = std::fs::remove_file(&path);
        append_to_file(&path, 1, &[log(&[(1, 5)]), log(&[(6, 1)])]).unwrap();
        // A second run (after a restart) appends; it repeats number 6.
        append_to_file(&path, 2, &[log(&[(6, 3)])]).unwrap();
        let streams = read_file(&path).unwrap();
        assert_eq!(streams.len(), 3);
        let report = check(&streams);
        assert_eq!(report.numbers, 9);
        assert_eq!(report.duplicates, 1);
        // A file that is not ours is refused.
        std::fs::write(&path, b"hello").unwrap();
        assert!(read_file(&path).is_err());
        assert!(append_to_file(&path, 3, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
