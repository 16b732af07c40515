//! The journal's byte layout and meaning: what changed between two states, as entries
//! appended after the state file, and how recovery replays them. No I/O. docs/STATE.md
//! ("The journal") describes the layout.
//!
//! A write that changes a few leases, streams or ceilings appends one entry (the changes
//! since the previous write) instead of rewriting the whole state file; when the journal has
//! grown past a bound, the next write is a full state file again and the journal starts
//! afresh ("compaction"). The journal names the generation of the state file it continues,
//! and each entry carries the generation of the state it makes, one more per entry.
//!
//! Each entry is framed by its length and a CRC-32, and written and fsync'd whole before the
//! next one begins, so only the last entry can be torn by a crash: an entry that runs past
//! the end of the file, or fails its checksum with nothing but zeros after where it ends, is
//! that torn write, dropped. Nothing that depended on it was acknowledged (its ceilings were not raised,
//! its leases not answered). A failing entry with data after it cannot be a torn write and
//! stops the start, like a damaged state file.

use std::collections::BTreeMap;

use super::format::{
    self, Reader, Record, SequenceRecord, State, kind, lease_counters_payload, lease_payload,
    pooled_range_payload, put_record, sequence_payload, stream_payload,
};
use crate::lease::{LeaseCounters, LeaseRecord, PooledRange};
use crate::stream::StreamRecord;

/// First bytes of every journal.
pub const MAGIC: [u8; 8] = *b"SEQDJRNL";
/// The journal format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Header: magic, version, base generation, CRC-32 of the 18 bytes before it.
pub const HEADER_LEN: usize = 22;
/// Before each entry's payload: its length (u32) and the CRC-32 of that length and the
/// payload (u32).
pub const FRAME_LEN: usize = 8;
/// Fixed part of an entry's payload: generation (8), written at (8), change count (4).
const ENTRY_FIXED_LEN: usize = 20;
/// Payload of a lease or pooled range removal: sequence (4), first (8).
const GONE_LEN: usize = 12;

/// Kinds of the changes an entry holds besides the state file's record kinds (1–5, which
/// here mean "this record, added or replaced").
pub mod change_kind {
    /// A lease was forgotten: sequence, first.
    pub const LEASE_GONE: u16 = 6;
    /// A pooled range was handed out again or retired: sequence, first.
    pub const POOLED_RANGE_GONE: u16 = 7;
    /// A stream finished or expired: client id length (u16), client id.
    pub const STREAM_GONE: u16 = 8;
}

/// One change between two states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new sequence, or a sequence's new next and ceiling.
    Sequence(SequenceRecord),
    /// A lease, new or changed (keyed by sequence and first number).
    Lease(LeaseRecord),
    LeaseGone {
        sequence: u32,
        first: u64,
    },
    /// A pooled range, new or changed (keyed by sequence and first number).
    PooledRange(PooledRange),
    PooledRangeGone {
        sequence: u32,
        first: u64,
    },
    LeaseCounters(LeaseCounters),
    /// A stream, new or changed (keyed by client id).
    Stream(StreamRecord),
    StreamGone {
        client_id: Vec<u8>,
    },
}

/// One entry: the changes that make state `generation` from the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub generation: u64,
    pub written_at_ms: u64,
    pub changes: Vec<Change>,
}

/// A decoded journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// The generation of the state file the entries continue.
    pub base_generation: u64,
    pub entries: Vec<Entry>,
    /// How many bytes the header and the entries kept take.
    pub valid_len: usize,
    /// A last entry a crash interrupted, dropped: how many bytes it left.
    pub torn_bytes: Option<usize>,
}

/// Why bytes are not a valid journal, or its entries do not continue the state file. Each
/// message says what is wrong; the caller adds which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error(
        "truncated: {len} bytes, shorter than a journal's header ({HEADER_LEN} bytes; a \
         journal is complete before it gets its name)"
    )]
    TooShort { len: usize },
    #[error(
        "not a seqd journal: it does not begin with {:?}",
        String::from_utf8_lossy(&MAGIC)
    )]
    Foreign,
    #[error("journal format version {found} is not supported: this seqd reads version {VERSION}")]
    UnsupportedVersion { found: u16 },
    #[error("the header's checksum does not match (the file is damaged)")]
    HeaderChecksum,
    #[error(
        "entry {index} at byte {offset} fails its checksum but is not the last thing in the \
         file, so it is not a write a crash interrupted: the journal is damaged"
    )]
    Damaged { index: usize, offset: usize },
    #[error("entry {index} at byte {offset} is malformed: {what}")]
    BadEntry {
        index: usize,
        offset: usize,
        what: &'static str,
    },
    #[error(
        "the journal continues generation {base}, but the state file is generation {state}: \
         the state file is older than its journal (replaced by an older copy?)"
    )]
    Ahead { base: u64, state: u64 },
    #[error("entry {index} makes generation {found}, expected {expected}")]
    OutOfOrder {
        index: usize,
        expected: u64,
        found: u64,
    },
    #[error("entry {index} does not fit the state it continues: {what}")]
    Inconsistent { index: usize, what: &'static str },
}

/// The header of a journal continuing state file generation `base_generation`.
pub fn encode_header(base_generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&base_generation.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// One entry, framed: length, checksum, payload.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut body = Vec::with_capacity(ENTRY_FIXED_LEN + entry.changes.len() * 64);
    body.extend_from_slice(&entry.generation.to_be_bytes());
    body.extend_from_slice(&entry.written_at_ms.to_be_bytes());
    body.extend_from_slice(&(entry.changes.len() as u32).to_be_bytes());
    let mut payload = Vec::with_capacity(256);
    for change in &entry.changes {
        let kind = encode_change(change, &mut payload);
        put_record(&mut body, kind, &payload);
    }
    let len = (body.len() as u32).to_be_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&body);
    let mut out = Vec::with_capacity(FRAME_LEN + body.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Replaces `payload` with the change's payload; returns its kind.
fn encode_change(change: &Change, payload: &mut Vec<u8>) -> u16 {
    let gone = |payload: &mut Vec<u8>, sequence: u32, first: u64| {
        payload.clear();
        payload.extend_from_slice(&sequence.to_be_bytes());
        payload.extend_from_slice(&first.to_be_bytes());
    };
    match change {
        Change::Sequence(sequence) => {
            sequence_payload(sequence, payload);
            kind::SEQUENCE
        }
        Change::Lease(lease) => {
            lease_payload(lease, payload);
            kind::LEASE
        }
        Change::LeaseGone { sequence, first } => {
            gone(payload, *sequence, *first);
            change_kind::LEASE_GONE
        }
        Change::PooledRange(range) => {
            pooled_range_payload(range, payload);
            kind::POOLED_RANGE
        }
        Change::PooledRangeGone { sequence, first } => {
            gone(payload, *sequence, *first);
            change_kind::POOLED_RANGE_GONE
        }
        Change::LeaseCounters(counters) => {
            lease_counters_payload(counters, payload);
            kind::LEASE_COUNTERS
        }
        Change::Stream(stream) => {
            stream_payload(stream, payload);
            kind::STREAM
        }
        Change::StreamGone { client_id } => {
            payload.clear();
            let id = &client_id[..client_id.len().min(format::MAX_STREAM_CLIENT_ID)];
            payload.extend_from_slice(&(id.len() as u16).to_be_bytes());
            payload.extend_from_slice(id);
            change_kind::STREAM_GONE
        }
    }
}

/// Decodes a journal: its header, then every entry up to the end or to a torn last entry
/// (dropped, and reported in [`Journal::torn_bytes`]). Anything else unexpected is an error.
pub fn decode(bytes: &[u8]) -> Result<Journal, JournalError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(JournalError::Foreign);
    }
    if bytes.len() < HEADER_LEN {
        return Err(JournalError::TooShort { len: bytes.len() });
    }
    let mut header = Reader::new(&bytes[MAGIC.len()..HEADER_LEN]);
    let version = header.u16();
    let base_generation = header.u64();
    let stored = header.u32();
    if stored != crc32fast::hash(&bytes[..HEADER_LEN - 4]) {
        return Err(JournalError::HeaderChecksum);
    }
    if version != VERSION {
        return Err(JournalError::UnsupportedVersion { found: version });
    }
    let mut journal = Journal {
        base_generation,
        entries: Vec::new(),
        valid_len: HEADER_LEN,
        torn_bytes: None,
    };
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let index = journal.entries.len();
        let len = (rest.len() >= FRAME_LEN)
            .then(|| u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize);
        let Some(len) = len.filter(|&len| len <= rest.len() - FRAME_LEN) else {
            // Runs past the end of the file: the last write, cut short.
            journal.torn_bytes = Some(rest.len());
            break;
        };
        let stored = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&rest[..4]);
        crc.update(&rest[FRAME_LEN..FRAME_LEN + len]);
        if crc.finalize() != stored {
            // Only zeros after it: nothing was written after this entry, so it is the last
            // write, torn (its length may have reached the disk before all its data).
            if rest[FRAME_LEN + len..].iter().all(|&b| b == 0) {
                journal.torn_bytes = Some(rest.len());
                break;
            }
            return Err(JournalError::Damaged { index, offset });
        }
        let entry = decode_entry(&rest[FRAME_LEN..FRAME_LEN + len]).map_err(|what| {
            JournalError::BadEntry {
                index,
                offset,
                what,
            }
        })?;
        journal.entries.push(entry);
        offset += FRAME_LEN + len;
        journal.valid_len = offset;
    }
    Ok(journal)
}

fn decode_entry(body: &[u8]) -> Result<Entry, &'static str> {
    if body.len() < ENTRY_FIXED_LEN {
        return Err("shorter than an entry's fixed fields");
    }
    let mut reader = Reader::new(body);
    let generation = reader.u64();
    let written_at_ms = reader.u64();
    let count = reader.u32() as usize;
    // Each change takes at least its 6-byte header: a count beyond that is a lie, and must
    // not size an allocation.
    if count > reader.remaining() / 6 {
        return Err("it counts more changes than it holds");
    }
    let mut changes = Vec::with_capacity(count);
    while !reader.is_empty() {
        if reader.remaining() < 6 {
            return Err("a change's header is cut short");
        }
        let kind = reader.u16();
        let len = reader.u32() as usize;
        if reader.remaining() < len {
            return Err("a change's payload runs past the end of the entry");
        }
        changes.push(decode_change(kind, reader.take(len))?);
    }
    if changes.len() != count {
        return Err("the change count does not match the changes");
    }
    Ok(Entry {
        generation,
        written_at_ms,
        changes,
    })
}

fn decode_change(kind: u16, payload: &[u8]) -> Result<Change, &'static str> {
    let gone = |payload: &[u8]| {
        if payload.len() != GONE_LEN {
            return Err("a removal has the wrong length");
        }
        let mut reader = Reader::new(payload);
        Ok((reader.u32(), reader.u64()))
    };
    match kind {
        change_kind::LEASE_GONE => {
            gone(payload).map(|(sequence, first)| Change::LeaseGone { sequence, first })
        }
        change_kind::POOLED_RANGE_GONE => {
            gone(payload).map(|(sequence, first)| Change::PooledRangeGone { sequence, first })
        }
        change_kind::STREAM_GONE => {
            let mut reader = Reader::new(payload);
            if reader.remaining() < 2 {
                return Err("a stream removal is cut short");
            }
            let len = usize::from(reader.u16());
            if len == 0 || len > format::MAX_STREAM_CLIENT_ID || reader.remaining() != len {
                return Err("a stream removal's client id is empty, too long or cut short");
            }
            Ok(Change::StreamGone {
                client_id: reader.take(len).to_vec(),
            })
        }
        kind => match format::decode_record(kind, payload)? {
            Some(Record::Sequence(s)) => Ok(Change::Sequence(s)),
            Some(Record::Lease(l)) => Ok(Change::Lease(l)),
            Some(Record::PooledRange(r)) => Ok(Change::PooledRange(r)),
            Some(Record::LeaseCounters(c)) => Ok(Change::LeaseCounters(c)),
            Some(Record::Stream(s)) => Ok(Change::Stream(s)),
            None => Err("a change of a kind unknown to this seqd"),
        },
    }
}

/// The changes that make `new` from `old`: sequences whose record differs (new ones
/// included), leases, pooled ranges and streams added, changed or gone, and the counters if
/// they changed. Sequences are never removed, so `new` holds at least `old`'s.
pub fn diff(old: &State, new: &State) -> Vec<Change> {
    let mut changes = diff_sequences(&old.sequences, &new.sequences);
    let (old_records, new_records) = (&old.leases_and_streams, &new.leases_and_streams);
    diff_keyed(
        &old_records.leases,
        &new_records.leases,
        |l| (l.sequence, l.first),
        |l| Change::Lease(l.clone()),
        |(sequence, first)| Change::LeaseGone { sequence, first },
        &mut changes,
    );
    diff_keyed(
        &old_records.pool,
        &new_records.pool,
        |r| (r.sequence, r.first),
        |r| Change::PooledRange(*r),
        |(sequence, first)| Change::PooledRangeGone { sequence, first },
        &mut changes,
    );
    if old_records.lease_counters != new_records.lease_counters {
        changes.push(Change::LeaseCounters(new_records.lease_counters));
    }
    diff_keyed(
        &old_records.streams,
        &new_records.streams,
        |s| s.client_id.clone(),
        |s| Change::Stream(s.clone()),
        |client_id| Change::StreamGone { client_id },
        &mut changes,
    );
    changes
}

/// The sequences of `new` whose record differs from `old`'s (new ones included). Sequences
/// are never removed, so `new` holds at least `old`'s.
pub fn diff_sequences(old: &[SequenceRecord], new: &[SequenceRecord]) -> Vec<Change> {
    new.iter()
        .enumerate()
        .filter(|&(index, sequence)| old.get(index) != Some(sequence))
        .map(|(_, sequence)| Change::Sequence(sequence.clone()))
        .collect()
}

/// Records of `new` that `old` lacks or holds differently, then keys of `old` that `new`
/// lacks.
fn diff_keyed<T: PartialEq, K: Ord + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
    put: impl Fn(&T) -> Change,
    gone: impl Fn(K) -> Change,
    changes: &mut Vec<Change>,
) {
    let old_by_key: BTreeMap<K, &T> = old.iter().map(|r| (key(r), r)).collect();
    let mut kept = 0;
    for record in new {
        match old_by_key.get(&key(record)) {
            Some(&before) => {
                kept += 1;
                if before != record {
                    changes.push(put(record));
                }
            }
            None => changes.push(put(record)),
        }
    }
    if kept < old_by_key.len() {
        let new_keys: std::collections::BTreeSet<K> = new.iter().map(&key).collect();
        changes.extend(
            old_by_key
                .into_keys()
                .filter(|k| !new_keys.contains(k))
                .map(gone),
        );
    }
}

/// What replaying a journal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The journal continues an older state file than the one there (a crash came between a
    /// compaction's state file and its new journal): everything in it is in the state file.
    Stale,
    /// This many entries were applied.
    Applied(usize),
}

/// Applies `journal`'s entries to `state`, the state file it continues. Leases, pooled
/// ranges and streams come out in key order, as the lease table and stream records give
/// them.
pub fn replay(state: &mut State, journal: &Journal) -> Result<Replay, JournalError> {
    if journal.base_generation < state.generation {
        return Ok(Replay::Stale);
    }
    if journal.base_generation > state.generation {
        return Err(JournalError::Ahead {
            base: journal.base_generation,
            state: state.generation,
        });
    }
    let records = std::mem::take(&mut state.leases_and_streams);
    let mut leases: BTreeMap<(u32, u64), LeaseRecord> = records
        .leases
        .into_iter()
        .map(|l| ((l.sequence, l.first), l))
        .collect();
    let mut pool: BTreeMap<(u32, u64), PooledRange> = records
        .pool
        .into_iter()
        .map(|r| ((r.sequence, r.first), r))
        .collect();
    let mut streams: BTreeMap<Vec<u8>, StreamRecord> = records
        .streams
        .into_iter()
        .map(|s| (s.client_id.clone(), s))
        .collect();
    let mut counters = records.lease_counters;
    let mut result = Ok(Replay::Applied(journal.entries.len()));
    for (index, entry) in journal.entries.iter().enumerate() {
        let inconsistent = |what| JournalError::Inconsistent { index, what };
        let Some(expected) = state.generation.checked_add(1) else {
            result = Err(inconsistent("it follows the last generation there can be"));
            break;
        };
        if entry.generation != expected {
            result = Err(JournalError::OutOfOrder {
                index,
                expected,
                found: entry.generation,
            });
            break;
        }
        let applied = entry.changes.iter().try_for_each(|change| match change {
            Change::Sequence(sequence) => {
                let at = sequence.id as usize;
                let len = state.sequences.len();
                match state.sequences.get_mut(at) {
                    Some(old) if old.name != sequence.name => {
                        Err(inconsistent("a sequence changes its name"))
                    }
                    Some(old) => {
                        *old = sequence.clone();
                        Ok(())
                    }
                    None if at == len => {
                        state.sequences.push(sequence.clone());
                        Ok(())
                    }
                    None => Err(inconsistent("a new sequence skips an id")),
                }
            }
            Change::Lease(lease) => {
                leases.insert((lease.sequence, lease.first), lease.clone());
                Ok(())
            }
            Change::LeaseGone { sequence, first } => leases
                .remove(&(*sequence, *first))
                .map(drop)
                .ok_or_else(|| inconsistent("it removes a lease the state does not hold")),
            Change::PooledRange(range) => {
                pool.insert((range.sequence, range.first), *range);
                Ok(())
            }
            Change::PooledRangeGone { sequence, first } => pool
                .remove(&(*sequence, *first))
                .map(drop)
                .ok_or_else(|| inconsistent("it removes a pooled range the state does not hold")),
            Change::LeaseCounters(c) => {
                counters = *c;
                Ok(())
            }
            Change::Stream(stream) => {
                streams.insert(stream.client_id.clone(), stream.clone());
                Ok(())
            }
            Change::StreamGone { client_id } => streams
                .remove(client_id)
                .map(drop)
                .ok_or_else(|| inconsistent("it removes a stream the state does not hold")),
        });
        if let Err(e) = applied {
            result = Err(e);
            break;
        }
        state.generation = entry.generation;
        state.written_at_ms = entry.written_at_ms;
        state.clean_shutdown = false;
    }
    state.leases_and_streams = crate::state::LeaseAndStreamRecords {
        leases: leases.into_values().collect(),
        pool: pool.into_values().collect(),
        lease_counters: counters,
        streams: streams.into_values().collect(),
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseStatus;
    use crate::state::LeaseAndStreamRecords;

    fn lease(first: u64, status: LeaseStatus, client: &str) -> LeaseRecord {
        LeaseRecord {
            sequence: 0,
            first,
            count: 10,
            status,
            time_ms: 1_700_000_030_000,
            client: client.into(),
            request: if client.is_empty() { "" } else { "r1" }.into(),
        }
    }

    fn stream(id: &[u8], acked: u32) -> StreamRecord {
        StreamRecord {
            client_id: id.to_vec(),
            sequence: 1,
            first: 5,
            count: 10,
            acked,
            last_active_ms: 1_700_000_000_000,
        }
    }

    fn sequence(id: u32, name: &str, next: u64, ceiling: u64) -> SequenceRecord {
        SequenceRecord {
            id,
            name: name.into(),
            next,
            ceiling,
        }
    }

    fn before() -> State {
        State {
            generation: 7,
            clean_shutdown: false,
            written_at_ms: 1_700_000_000_000,
            sequences: vec![
                sequence(0, "default", 1000, 3000),
                sequence(1, "orders", 1, 2000),
            ],
            leases_and_streams: LeaseAndStreamRecords {
                leases: vec![
                    lease(1000, LeaseStatus::Outstanding, "a"),
                    lease(1010, LeaseStatus::Outstanding, ""),
                    lease(1020, LeaseStatus::Acknowledged, "b"),
                ],
                pool: vec![PooledRange {
                    sequence: 0,
                    first: 900,
                    count: 10,
                }],
                lease_counters: LeaseCounters {
                    granted: 3,
                    ..LeaseCounters::default()
                },
                streams: vec![stream(b"s1", 0), stream(b"s2", 4)],
            },
        }
    }

    /// `before` with one change of every kind.
    fn after() -> State {
        let mut state = before();
        state.generation = 8;
        state.written_at_ms += 5;
        state.sequences[0].ceiling = 5000;
        state.sequences.push(sequence(2, "new", 1, 1));
        let records = &mut state.leases_and_streams;
        records.leases[0].status = LeaseStatus::Acknowledged;
        records.leases.remove(1);
        records
            .leases
            .push(lease(1030, LeaseStatus::Outstanding, "c"));
        records.pool.clear();
        records.lease_counters.granted = 4;
        records.streams[1].acked = 6;
        records.streams.remove(0);
        records.streams.push(stream(b"s3", 0));
        state
    }

    fn entry_between(old: &State, new: &State) -> Entry {
        Entry {
            generation: new.generation,
            written_at_ms: new.written_at_ms,
            changes: diff(old, new),
        }
    }

    fn journal_bytes(base: u64, entries: &[Entry]) -> Vec<u8> {
        let mut bytes = encode_header(base);
        for entry in entries {
            bytes.extend(encode_entry(entry));
        }
        bytes
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The example in docs/STATE.md ("The journal"), byte for byte.
    #[test]
    fn matches_the_documented_example() {
        let entry = Entry {
            generation: 8,
            written_at_ms: 1_700_000_001_000,
            changes: vec![
                Change::Sequence(sequence(0, "default", 2000, 3048)),
                Change::LeaseGone {
                    sequence: 0,
                    first: 1001,
                },
            ],
        };
        let expected = concat!(
            "534551444a524e4c", // magic "SEQDJRNL"
            "0001",             // version 1
            "0000000000000007", // continues state file generation 7
            "e0aa31b2",         // CRC-32 of the 18 bytes above
            "00000048",         // entry: 72 bytes
            "f2336c68",         // CRC-32 of the length and the 72 bytes
            "0000000000000008", // makes generation 8
            "0000018bcfe56be8", // written at 1700000001000 ms
            "00000002",         // 2 changes
            "0001",             // kind 1: sequence
            "0000001c",         // 28-byte payload
            "00000000",         // id 0
            "00000000000007d0", // next 2000
            "0000000000000be8", // ceiling 3048
            "07",               // name length 7
            "64656661756c74",   // "default"
            "0006",             // kind 6: lease gone
            "0000000c",         // 12-byte payload
            "00000000",         // sequence 0
            "00000000000003e9", // first 1001
        );
        let bytes = journal_bytes(7, std::slice::from_ref(&entry));
        assert_eq!(hex(&bytes), expected);
        assert_eq!(decode(&bytes).unwrap().entries, [entry]);
    }

    #[test]
    fn diff_holds_only_what_changed_and_replays_to_the_new_state() {
        let (old, new) = (before(), after());
        let changes = diff(&old, &new);
        assert_eq!(
            changes.len(),
            10,
            "2 sequences, 3 leases, a pooled range, counters, 3 streams: {changes:#?}"
        );
        assert!(diff(&new, &new).is_empty());
        let entry = entry_between(&old, &new);
        let journal = decode(&journal_bytes(7, std::slice::from_ref(&entry))).unwrap();
        assert_eq!(journal.entries, [entry]);
        assert_eq!(journal.torn_bytes, None);
        let mut replayed = old;
        assert_eq!(replay(&mut replayed, &journal), Ok(Replay::Applied(1)));
        assert_eq!(replayed, new);
    }

    #[test]
    fn an_entry_is_small_beside_the_state_file() {
        let mut old = before();
        old.leases_and_streams.leases = (0..10_000)
            .map(|i| lease(10_000 + 10 * i, LeaseStatus::Outstanding, "client-7"))
            .collect();
        let mut new = old.clone();
        new.generation += 1;
        new.leases_and_streams
            .leases
            .push(lease(500_000, LeaseStatus::Outstanding, "client-8"));
        new.leases_and_streams.lease_counters.granted += 1;
        let entry = encode_entry(&entry_between(&old, &new));
        let file = format::encode(&new);
        assert!(entry.len() < 150, "{} bytes", entry.len());
        assert!(file.len() > 400_000, "{} bytes", file.len());
    }

    #[test]
    fn a_torn_last_entry_is_dropped_never_misread() {
        let mid = {
            let mut state = before();
            state.generation = 8;
            state.sequences[1].ceiling = 2500;
            state
        };
        let mut last = after();
        last.generation = 9;
        let entries = [entry_between(&before(), &mid), entry_between(&mid, &last)];
        let bytes = journal_bytes(7, &entries);
        let first_end = HEADER_LEN + encode_entry(&entries[0]).len();
        for cut in HEADER_LEN..bytes.len() {
            let journal = decode(&bytes[..cut]).unwrap();
            let kept = if cut >= first_end { 1 } else { 0 };
            assert_eq!(journal.entries, entries[..kept], "cut at {cut}");
            assert_eq!(journal.valid_len + journal.torn_bytes.unwrap_or(0), cut);
        }
        // A write that reached the disk as zeros, or with a damaged last page.
        let mut zeros = bytes.clone();
        zeros.truncate(first_end);
        zeros.resize(bytes.len(), 0);
        assert_eq!(decode(&zeros).unwrap().entries, entries[..1]);
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        let journal = decode(&damaged).unwrap();
        assert_eq!(journal.entries, entries[..1]);
        assert_eq!(journal.torn_bytes, Some(bytes.len() - first_end));
    }

    /// Found by the journal_decoder fuzz target (an assumption of the target, not a decoder
    /// bug): an entry whose last bytes are zeros, cut there and zero-filled, is the entry
    /// itself, and decodes whole.
    #[test]
    fn a_cut_entry_whose_missing_bytes_were_zeros_is_whole() {
        let entry = Entry {
            generation: 8,
            written_at_ms: 1,
            changes: vec![],
        };
        let bytes = journal_bytes(7, std::slice::from_ref(&entry));
        assert_eq!(bytes.last(), Some(&0), "the change count's last byte");
        let mut zeroed = bytes[..bytes.len() - 1].to_vec();
        assert_eq!(decode(&zeroed).unwrap().entries, []);
        zeroed.push(0);
        assert_eq!(decode(&zeroed).unwrap().entries, [entry]);
    }

    #[test]
    fn a_damaged_entry_before_the_last_stops_the_start() {
        let entries = [entry_between(&before(), &after())];
        let mut bytes = journal_bytes(7, &entries);
        let second = Entry {
            generation: 9,
            written_at_ms: 0,
            changes: vec![],
        };
        bytes.extend(encode_entry(&second));
        for at in HEADER_LEN..HEADER_LEN + encode_entry(&entries[0]).len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            match decode(&damaged) {
                Err(JournalError::Damaged { index: 0, .. }) => {}
                // A flip in the length field can make the entry run past the end (torn)
                // or end elsewhere: either way the first entry is never read.
                Ok(journal) => assert!(journal.entries.is_empty(), "flip at {at}"),
                Err(other) => panic!("flip at {at}: {other}"),
            }
        }
        for at in 0..HEADER_LEN {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(decode(&damaged).is_err(), "header flip at {at}");
        }
    }

    #[test]
    fn replay_checks_generations_and_consistency() {
        let entry = entry_between(&before(), &after());
        let mut state = before();
        state.generation = 8;
        let stale = decode(&journal_bytes(7, std::slice::from_ref(&entry))).unwrap();
        assert_eq!(replay(&mut state, &stale), Ok(Replay::Stale));
        assert_eq!(state.generation, 8);
        let mut state = before();
        state.generation = 6;
        assert_eq!(
            replay(&mut state, &stale),
            Err(JournalError::Ahead { base: 7, state: 6 })
        );
        let gap = Entry {
            generation: 10,
            ..entry.clone()
        };
        let journal = decode(&journal_bytes(7, &[gap])).unwrap();
        let err = replay(&mut before(), &journal).unwrap_err();
        assert!(matches!(err, JournalError::OutOfOrder { expected: 8, .. }));
        let unknown = Entry {
            generation: 8,
            written_at_ms: 0,
            changes: vec![Change::StreamGone {
                client_id: b"nobody".to_vec(),
            }],
        };
        let journal = decode(&journal_bytes(7, &[unknown])).unwrap();
        let err = replay(&mut before(), &journal).unwrap_err().to_string();
        assert!(err.contains("a stream the state does not hold"), "{err}");
    }

    /// Found by the journal_decoder fuzz target: a journal continuing generation 2^64 - 1
    /// made `generation + 1` overflow (a panic with debug assertions, a wrap without).
    #[test]
    fn an_entry_after_the_last_generation_is_refused() {
        let mut state = before();
        state.generation = u64::MAX;
        let entry = Entry {
            generation: 0,
            written_at_ms: 0,
            changes: vec![],
        };
        let journal = decode(&journal_bytes(u64::MAX, &[entry])).unwrap();
        let err = replay(&mut state, &journal).unwrap_err().to_string();
        assert!(err.contains("the last generation there can be"), "{err}");
    }

    #[test]
    fn foreign_and_future_journals_are_named() {
        assert_eq!(decode(b"SEQDSTAT....."), Err(JournalError::Foreign));
        assert_eq!(decode(&MAGIC[..5]), Err(JournalError::TooShort { len: 5 }));
        let mut header = encode_header(3);
        header[9] = 2;
        let crc = crc32fast::hash(&header[..HEADER_LEN - 4]);
        header[HEADER_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            decode(&header),
            Err(JournalError::UnsupportedVersion { found: 2 })
        );
    }
}
