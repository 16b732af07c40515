//! The state file's byte layout: encode and decode, no I/O. docs/STATE.md describes it with
//! a hex example (checked by a test below).
//!
//! A file is a fixed header, a list of typed records and a CRC-32 of everything before it.
//! LeasesAndStreams are `kind | length | payload`, so kinds can be added (leases, stream state) without
//! changing how the file is framed. A reader refuses a kind it does not know rather than drop
//! state it cannot interpret (a lease it forgot could be handed out twice).
//!
//! (Over 600 lines: the last 300 are the format's unit tests, docs/STATE.md's hex example
//! among them.)

use crate::lease::{LeaseCounters, LeaseRecord, LeaseStatus, PooledRange};
use crate::sequence::END_OF_SPACE;
use crate::state::LeaseAndStreamRecords;
use crate::stream::StreamRecord;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"SEQDSTAT";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Header size: magic, version, flags, generation, written-at, record count, records length.
pub const HEADER_LEN: usize = 36;
/// Size of the trailing checksum.
pub const CHECKSUM_LEN: usize = 4;

/// Flag bit: the file was written by a clean shutdown, so every `next` is exact.
const FLAG_CLEAN_SHUTDOWN: u16 = 1;

/// Record kinds.
pub mod kind {
    /// One sequence: id, next, ceiling, name.
    pub const SEQUENCE: u16 = 1;
    /// One range lease (the lease protocol): its range, state, time, client and request ids.
    pub const LEASE: u16 = 2;
    /// A range in the lease reuse pool (`--lease-reuse`).
    pub const POOLED_RANGE: u16 = 3;
    /// The lease counters (at most one record).
    pub const LEASE_COUNTERS: u16 = 4;
    /// One resumable stream (the stream protocol): its client id, numbers and progress.
    pub const STREAM: u16 = 5;
}

/// Fixed part of a sequence record's payload: id (4), next (8), ceiling (8), name length (1).
const SEQUENCE_FIXED_LEN: usize = 21;
/// Fixed part of a lease record: sequence (4), first (8), count (8), state (1), time (8).
const LEASE_FIXED_LEN: usize = 29;
const POOLED_RANGE_LEN: usize = 20;
const LEASE_COUNTERS_LEN: usize = 40;
/// Fixed part of a stream record: sequence (4), first (8), count (4), acked (4), last active
/// (8), client id length (2).
const STREAM_FIXED_LEN: usize = 30;
/// Longest lease client or request id.
pub const MAX_LEASE_ID: usize = 64;
/// Longest stream client id a record may hold (the stream protocol's bound is checked
/// against it where both meet, in `service::stream_hub`).
pub const MAX_STREAM_CLIENT_ID: usize = 256;

/// The durable state of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// 1 for the first state written in a data directory, one more for each later write.
    pub generation: u64,
    /// Written by a clean shutdown: `next == ceiling` for every sequence.
    pub clean_shutdown: bool,
    /// When it was written, in milliseconds since the Unix epoch (for logs only).
    pub written_at_ms: u64,
    /// Every sequence, in id order.
    pub sequences: Vec<SequenceRecord>,
    /// Leases and streams.
    pub leases_and_streams: LeaseAndStreamRecords,
}

/// One sequence's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceRecord {
    pub id: u32,
    pub name: String,
    /// The next number to be issued when the state was written. Informational: numbers
    /// between it and `ceiling` may or may not have been issued since.
    pub next: u64,
    /// No number at or above this was issued (or will be, until a higher ceiling is on
    /// disk): where the sequence resumes after a restart.
    pub ceiling: u64,
}

/// Why bytes are not a valid state file. Each message says what is wrong; the caller adds
/// which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty (0 bytes)")]
    Empty,
    #[error(
        "not a seqd state file: it does not begin with {:?}",
        String::from_utf8_lossy(&MAGIC)
    )]
    Foreign,
    #[error(
        "truncated: {len} bytes, shorter than the smallest state file ({} bytes)",
        HEADER_LEN + CHECKSUM_LEN
    )]
    TooShort { len: usize },
    #[error(
        "format version {found} is not supported: this seqd reads version {VERSION} \
         (written by another seqd release, or damaged)"
    )]
    UnsupportedVersion { found: u16 },
    #[error("truncated or extended: the header promises {expected} bytes but there are {actual}")]
    LengthMismatch { expected: u64, actual: usize },
    #[error(
        "checksum mismatch: stored {stored:08x}, computed {computed:08x} (the file is damaged)"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown header flags {flags:#06x}")]
    UnknownFlags { flags: u16 },
    #[error("record {index} has kind {kind}, unknown to this seqd (written by a newer release?)")]
    UnknownRecordKind { index: u32, kind: u16 },
    #[error("record {index} is malformed: {what}")]
    BadRecord { index: u32, what: &'static str },
    #[error("the header counts {expected} records but the records hold {actual}")]
    RecordCount { expected: u32, actual: u32 },
}

/// Encodes `state` as a complete file.
pub fn encode(state: &State) -> Vec<u8> {
    let mut records = Vec::with_capacity(state.sequences.len() * 48);
    let mut payload = Vec::with_capacity(SEQUENCE_FIXED_LEN + 64);
    for sequence in &state.sequences {
        sequence_payload(sequence, &mut payload);
        put_record(&mut records, kind::SEQUENCE, &payload);
    }
    let count =
        state.sequences.len() + encode_leases_and_streams(&state.leases_and_streams, &mut records);
    let flags = if state.clean_shutdown {
        FLAG_CLEAN_SHUTDOWN
    } else {
        0
    };
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&state.generation.to_be_bytes());
    out.extend_from_slice(&state.written_at_ms.to_be_bytes());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    out.extend_from_slice(&records);
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_be_bytes());
    out
}

/// Appends one record: `kind | payload length | payload`.
pub(super) fn put_record(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Replaces `payload` with a sequence record's payload.
pub(super) fn sequence_payload(sequence: &SequenceRecord, payload: &mut Vec<u8>) {
    payload.clear();
    let name = sequence.name.as_bytes();
    // Names are validated to at most 64 bytes long before they reach a record.
    let name_len = u8::try_from(name.len()).unwrap_or(u8::MAX);
    payload.extend_from_slice(&sequence.id.to_be_bytes());
    payload.extend_from_slice(&sequence.next.to_be_bytes());
    payload.extend_from_slice(&sequence.ceiling.to_be_bytes());
    payload.push(name_len);
    payload.extend_from_slice(&name[..usize::from(name_len)]);
}

/// Replaces `payload` with a lease record's payload.
pub(super) fn lease_payload(lease: &LeaseRecord, payload: &mut Vec<u8>) {
    payload.clear();
    payload.extend_from_slice(&lease.sequence.to_be_bytes());
    payload.extend_from_slice(&lease.first.to_be_bytes());
    payload.extend_from_slice(&lease.count.to_be_bytes());
    payload.push(lease.status as u8);
    payload.extend_from_slice(&lease.time_ms.to_be_bytes());
    for id in [&lease.client, &lease.request] {
        // Ids are validated to at most 64 bytes before they reach a record.
        let id = &id.as_bytes()[..id.len().min(MAX_LEASE_ID)];
        payload.push(id.len() as u8);
        payload.extend_from_slice(id);
    }
}

/// Replaces `payload` with a pooled range record's payload.
pub(super) fn pooled_range_payload(range: &PooledRange, payload: &mut Vec<u8>) {
    payload.clear();
    payload.extend_from_slice(&range.sequence.to_be_bytes());
    payload.extend_from_slice(&range.first.to_be_bytes());
    payload.extend_from_slice(&range.count.to_be_bytes());
}

/// Replaces `payload` with the lease counters record's payload.
pub(super) fn lease_counters_payload(counters: &LeaseCounters, payload: &mut Vec<u8>) {
    payload.clear();
    for value in [
        counters.granted,
        counters.acknowledged,
        counters.retired,
        counters.returned,
        counters.reused,
    ] {
        payload.extend_from_slice(&value.to_be_bytes());
    }
}

/// Replaces `payload` with a stream record's payload.
pub(super) fn stream_payload(stream: &StreamRecord, payload: &mut Vec<u8>) {
    payload.clear();
    payload.extend_from_slice(&stream.sequence.to_be_bytes());
    payload.extend_from_slice(&stream.first.to_be_bytes());
    payload.extend_from_slice(&stream.count.to_be_bytes());
    payload.extend_from_slice(&stream.acked.to_be_bytes());
    payload.extend_from_slice(&stream.last_active_ms.to_be_bytes());
    // The stream protocol bounds client ids to 256 bytes.
    let id = &stream.client_id[..stream.client_id.len().min(MAX_STREAM_CLIENT_ID)];
    payload.extend_from_slice(&(id.len() as u16).to_be_bytes());
    payload.extend_from_slice(id);
}

/// Appends the lease and stream records; returns how many.
fn encode_leases_and_streams(
    leases_and_streams: &LeaseAndStreamRecords,
    records: &mut Vec<u8>,
) -> usize {
    let mut count = 0;
    let mut payload = Vec::with_capacity(LEASE_FIXED_LEN + 2 + 2 * MAX_LEASE_ID);
    for lease in &leases_and_streams.leases {
        lease_payload(lease, &mut payload);
        put_record(records, kind::LEASE, &payload);
        count += 1;
    }
    for range in &leases_and_streams.pool {
        pooled_range_payload(range, &mut payload);
        put_record(records, kind::POOLED_RANGE, &payload);
        count += 1;
    }
    let counters = &leases_and_streams.lease_counters;
    if *counters != LeaseCounters::default() {
        lease_counters_payload(counters, &mut payload);
        put_record(records, kind::LEASE_COUNTERS, &payload);
        count += 1;
    }
    for stream in &leases_and_streams.streams {
        stream_payload(stream, &mut payload);
        put_record(records, kind::STREAM, &payload);
        count += 1;
    }
    count
}

/// Decodes a complete file. Checks, in order: magic, version, length, checksum, then each
/// record; anything unexpected is an error, never a guess.
pub fn decode(bytes: &[u8]) -> Result<State, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty);
    }
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::Foreign);
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(FormatError::TooShort { len: bytes.len() });
    }
    let mut header = Reader::new(&bytes[MAGIC.len()..HEADER_LEN]);
    let version = header.u16();
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let flags = header.u16();
    let generation = header.u64();
    let written_at_ms = header.u64();
    let record_count = header.u32();
    let records_len = header.u32();
    let expected = (HEADER_LEN + CHECKSUM_LEN) as u64 + u64::from(records_len);
    if expected != bytes.len() as u64 {
        return Err(FormatError::LengthMismatch {
            expected,
            actual: bytes.len(),
        });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let stored = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    if flags & !FLAG_CLEAN_SHUTDOWN != 0 {
        return Err(FormatError::UnknownFlags { flags });
    }

    let mut records = Reader::new(&body[HEADER_LEN..]);
    let mut sequences = Vec::new();
    let mut leases_and_streams = LeaseAndStreamRecords::default();
    let mut counters_seen = false;
    let mut index = 0u32;
    while !records.is_empty() {
        let bad = |what| FormatError::BadRecord { index, what };
        if records.remaining() < 6 {
            return Err(bad("its header is cut short"));
        }
        let kind = records.u16();
        let len = records.u32() as usize;
        if records.remaining() < len {
            return Err(bad("its payload runs past the end of the records"));
        }
        match decode_record(kind, records.take(len)).map_err(bad)? {
            Some(Record::Sequence(sequence)) => sequences.push(sequence),
            Some(Record::Lease(lease)) => leases_and_streams.leases.push(lease),
            Some(Record::PooledRange(range)) => leases_and_streams.pool.push(range),
            Some(Record::LeaseCounters(counters)) => {
                if std::mem::replace(&mut counters_seen, true) {
                    return Err(bad("a second lease counters record"));
                }
                leases_and_streams.lease_counters = counters;
            }
            Some(Record::Stream(stream)) => leases_and_streams.streams.push(stream),
            None => return Err(FormatError::UnknownRecordKind { index, kind }),
        }
        index += 1;
    }
    if index != record_count {
        return Err(FormatError::RecordCount {
            expected: record_count,
            actual: index,
        });
    }
    Ok(State {
        generation,
        clean_shutdown: flags & FLAG_CLEAN_SHUTDOWN != 0,
        written_at_ms,
        sequences,
        leases_and_streams,
    })
}

/// One record of the state file (or of a journal entry), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    Sequence(SequenceRecord),
    Lease(LeaseRecord),
    PooledRange(PooledRange),
    LeaseCounters(LeaseCounters),
    Stream(StreamRecord),
}

/// Decodes the payload of a record of kind `kind`, checking every field; `None` for a kind
/// the state file does not have.
pub(super) fn decode_record(kind: u16, payload: &[u8]) -> Result<Option<Record>, &'static str> {
    let len = payload.len();
    let mut payload = Reader::new(payload);
    let record = match kind {
        kind::SEQUENCE => {
            if len < SEQUENCE_FIXED_LEN {
                return Err("a sequence record is shorter than its fixed fields");
            }
            let id = payload.u32();
            let next = payload.u64();
            let ceiling = payload.u64();
            let name_len = usize::from(payload.u8());
            if payload.remaining() != name_len {
                return Err("the name length does not match the record length");
            }
            let name =
                std::str::from_utf8(payload.take(name_len)).map_err(|_| "the name is not UTF-8")?;
            if next > ceiling {
                return Err("next is above the ceiling");
            }
            if ceiling > END_OF_SPACE {
                return Err("the ceiling is beyond the number space");
            }
            Record::Sequence(SequenceRecord {
                id,
                name: name.to_owned(),
                next,
                ceiling,
            })
        }
        kind::LEASE => Record::Lease(decode_lease(&mut payload)?),
        kind::POOLED_RANGE => {
            if len != POOLED_RANGE_LEN {
                return Err("a pooled range record has the wrong length");
            }
            let range = PooledRange {
                sequence: payload.u32(),
                first: payload.u64(),
                count: payload.u64(),
            };
            check_range(range.first, range.count)?;
            Record::PooledRange(range)
        }
        kind::LEASE_COUNTERS => {
            if len != LEASE_COUNTERS_LEN {
                return Err("a malformed lease counters record");
            }
            Record::LeaseCounters(LeaseCounters {
                granted: payload.u64(),
                acknowledged: payload.u64(),
                retired: payload.u64(),
                returned: payload.u64(),
                reused: payload.u64(),
            })
        }
        kind::STREAM => Record::Stream(decode_stream(&mut payload)?),
        _ => return Ok(None),
    };
    Ok(Some(record))
}

/// A lease's or pooled range's numbers: at least one, all inside the number space.
fn check_range(first: u64, count: u64) -> Result<(), &'static str> {
    match first.checked_add(count) {
        _ if count == 0 => Err("an empty range"),
        Some(end) if end <= END_OF_SPACE => Ok(()),
        _ => Err("a range beyond the number space"),
    }
}

fn decode_lease(payload: &mut Reader<'_>) -> Result<LeaseRecord, &'static str> {
    if payload.remaining() < LEASE_FIXED_LEN + 2 {
        return Err("a lease record is shorter than its fixed fields");
    }
    let sequence = payload.u32();
    let first = payload.u64();
    let count = payload.u64();
    check_range(first, count)?;
    let status = match payload.u8() {
        1 => LeaseStatus::Outstanding,
        2 => LeaseStatus::Acknowledged,
        3 => LeaseStatus::Expired,
        _ => return Err("a lease record has an unknown status"),
    };
    let time_ms = payload.u64();
    let mut id = || -> Result<String, &'static str> {
        if payload.remaining() < 1 {
            return Err("a lease id is cut short");
        }
        let len = usize::from(payload.u8());
        if len > MAX_LEASE_ID || payload.remaining() < len {
            return Err("a lease id is too long or cut short");
        }
        let bytes = payload.take(len);
        match len {
            0 => Ok(String::new()),
            _ => crate::sequence::validate_name(bytes)
                .map(str::to_owned)
                .map_err(|_| "a lease id has characters ids may not have"),
        }
    };
    let client = id()?;
    let request = id()?;
    if payload.remaining() != 0 {
        return Err("a lease record is longer than its fields");
    }
    if client.is_empty() != request.is_empty() {
        return Err("a lease has a client id without a request id, or the reverse");
    }
    Ok(LeaseRecord {
        sequence,
        first,
        count,
        status,
        time_ms,
        client,
        request,
    })
}

fn decode_stream(payload: &mut Reader<'_>) -> Result<StreamRecord, &'static str> {
    if payload.remaining() < STREAM_FIXED_LEN {
        return Err("a stream record is shorter than its fixed fields");
    }
    let sequence = payload.u32();
    let first = payload.u64();
    let count = payload.u32();
    let acked = payload.u32();
    let last_active_ms = payload.u64();
    let id_len = usize::from(payload.u16());
    if payload.remaining() != id_len {
        return Err("the client id length does not match the record length");
    }
    if id_len == 0 || id_len > MAX_STREAM_CLIENT_ID {
        return Err("a stream client id is empty or longer than 256 bytes");
    }
    let client_id = payload.take(id_len).to_vec();
    if count == 0 || acked > count {
        return Err("a stream has no numbers, or more acknowledged than it has");
    }
    let last = first.checked_add(u64::from(count) - 1);
    if last.is_none_or(|last| last > u64::from(u32::MAX)) {
        return Err("a stream's numbers do not fit 32 bits");
    }
    Ok(StreamRecord {
        client_id,
        sequence,
        first,
        count,
        acked,
        last_active_ms,
    })
}

/// Reads big-endian integers from a slice whose length the caller has checked.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.0.len()
    }

    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N));
        out
    }

    pub(super) fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub(super) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub(super) fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> State {
        State {
            generation: 7,
            clean_shutdown: false,
            written_at_ms: 1_700_000_000_000,
            sequences: vec![
                SequenceRecord {
                    id: 0,
                    name: "default".into(),
                    next: 1000,
                    ceiling: 2024,
                },
                SequenceRecord {
                    id: 1,
                    name: "orders".into(),
                    next: 5,
                    ceiling: 1029,
                },
            ],
            leases_and_streams: LeaseAndStreamRecords::default(),
        }
    }

    /// One of each leases_and_streams record, as in docs/STATE.md's second example.
    fn ledger_example() -> LeaseAndStreamRecords {
        LeaseAndStreamRecords {
            leases: vec![LeaseRecord {
                sequence: 0,
                first: 1001,
                count: 20,
                status: LeaseStatus::Outstanding,
                time_ms: 1_700_000_030_000,
                client: "scanner-7".into(),
                request: "42".into(),
            }],
            pool: vec![PooledRange {
                sequence: 0,
                first: 900,
                count: 10,
            }],
            lease_counters: LeaseCounters {
                granted: 3,
                acknowledged: 1,
                retired: 1,
                returned: 0,
                reused: 0,
            },
            streams: vec![StreamRecord {
                client_id: b"abc".to_vec(),
                sequence: 1,
                first: 5,
                count: 10,
                acked: 4,
                last_active_ms: 1_700_000_000_000,
            }],
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trip() {
        let state = example();
        assert_eq!(decode(&encode(&state)), Ok(state.clone()));
        let clean = State {
            clean_shutdown: true,
            sequences: vec![],
            ..state
        };
        assert_eq!(decode(&encode(&clean)), Ok(clean));
    }

    /// The example in docs/STATE.md, byte for byte.
    #[test]
    fn matches_the_documented_example() {
        let expected = concat!(
            "5345514453544154", // magic "SEQDSTAT"
            "0001",             // version 1
            "0000",             // flags: not a clean shutdown
            "0000000000000007", // generation 7
            "0000018bcfe56800", // written at 1700000000000 ms
            "00000002",         // 2 records
            "00000043",         // 67 bytes of records
            "0001",             // kind 1: sequence
            "0000001c",         // 28-byte payload
            "00000000",         // id 0
            "00000000000003e8", // next 1000
            "00000000000007e8", // ceiling 2024
            "07",               // name length 7
            "64656661756c74",   // "default"
            "0001",             // kind 1: sequence
            "0000001b",         // 27-byte payload
            "00000001",         // id 1
            "0000000000000005", // next 5
            "0000000000000405", // ceiling 1029
            "06",               // name length 6
            "6f7264657273",     // "orders"
        );
        let encoded = encode(&example());
        let (body, crc) = encoded.split_at(encoded.len() - 4);
        assert_eq!(hex(body), expected);
        assert_eq!(hex(crc), "e8bed58d", "CRC-32 of the bytes above");
    }

    /// The leases_and_streams example in docs/STATE.md, byte for byte (records after the header).
    #[test]
    fn ledger_records_match_the_documented_example() {
        let mut records = Vec::new();
        assert_eq!(
            encode_leases_and_streams(&ledger_example(), &mut records),
            4
        );
        let expected = concat!(
            "0002",               // kind 2: lease
            "0000002a",           // 42-byte payload
            "00000000",           // sequence 0
            "00000000000003e9",   // first 1001
            "0000000000000014",   // count 20
            "01",                 // outstanding
            "0000018bcfe5dd30",   // expires at 1700000030000 ms
            "09",                 // client id: 9 bytes
            "7363616e6e65722d37", // "scanner-7"
            "02",                 // request id: 2 bytes
            "3432",               // "42"
            "0003",               // kind 3: pooled range
            "00000014",           // 20-byte payload
            "00000000",           // sequence 0
            "0000000000000384",   // first 900
            "000000000000000a",   // count 10
            "0004",               // kind 4: lease counters
            "00000028",           // 40-byte payload
            "0000000000000003",   // granted 3
            "0000000000000001",   // acknowledged 1
            "0000000000000001",   // retired 1
            "0000000000000000",   // returned 0
            "0000000000000000",   // reused 0
            "0005",               // kind 5: stream
            "00000021",           // 33-byte payload
            "00000001",           // sequence 1
            "0000000000000005",   // first 5
            "0000000a",           // count 10
            "00000004",           // acknowledged below position 4
            "0000018bcfe56800",   // last active at 1700000000000 ms
            "0003",               // client id: 3 bytes
            "616263",             // "abc"
        );
        assert_eq!(hex(&records), expected);
        let state = State {
            leases_and_streams: ledger_example(),
            ..example()
        };
        assert_eq!(decode(&encode(&state)), Ok(state));
    }

    #[test]
    fn ledger_records_are_checked() {
        let with = |edit: &dyn Fn(&mut LeaseAndStreamRecords)| {
            let mut leases_and_streams = ledger_example();
            edit(&mut leases_and_streams);
            let state = State {
                leases_and_streams,
                ..example()
            };
            decode(&encode(&state)).map(drop)
        };
        assert_eq!(with(&|_| {}), Ok(()));
        type Edit = dyn Fn(&mut LeaseAndStreamRecords);
        let cases: [(&Edit, &str); 6] = [
            (&|l| l.leases[0].count = 0, "empty range"),
            (
                &|l| l.leases[0].first = END_OF_SPACE,
                "beyond the number space",
            ),
            (
                &|l| l.leases[0].request.clear(),
                "client id without a request id",
            ),
            (&|l| l.leases[0].client = "a b".into(), "characters"),
            (&|l| l.streams[0].acked = 11, "more acknowledged"),
            (&|l| l.streams[0].first = u64::from(u32::MAX), "fit 32 bits"),
        ];
        for (edit, expected) in cases {
            let err = with(edit).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let encoded = encode(&example());
        for len in 1..encoded.len() {
            let err = decode(&encoded[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::TooShort { .. } | FormatError::LengthMismatch { .. }
                ),
                "truncated to {len} bytes: {err}"
            );
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(FormatError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let encoded = encode(&example());
        for at in 0..encoded.len() {
            for bit in 0..8 {
                let mut damaged = encoded.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "bit {bit} of byte {at}");
            }
        }
    }

    #[test]
    fn wrong_version_and_foreign_files_are_named() {
        let mut encoded = encode(&example());
        encoded[9] = 2;
        assert_eq!(
            decode(&encoded),
            Err(FormatError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(decode(b"{\"next\": 5}"), Err(FormatError::Foreign));
        assert_eq!(decode(b""), Err(FormatError::Empty));
    }

    /// Builds a file around hand-made records, with a correct checksum.
    fn file_with_records(count: u32, records: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&(records.len() as u32).to_be_bytes());
        out.extend_from_slice(records);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn sequence_record(next: u64, ceiling: u64, name: &[u8], name_len: u8) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&kind::SEQUENCE.to_be_bytes());
        r.extend_from_slice(&((SEQUENCE_FIXED_LEN + name.len()) as u32).to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&next.to_be_bytes());
        r.extend_from_slice(&ceiling.to_be_bytes());
        r.push(name_len);
        r.extend_from_slice(name);
        r
    }

    #[test]
    fn records_are_checked_even_with_a_valid_checksum() {
        let ok = sequence_record(1, 2, b"default", 7);
        assert!(decode(&file_with_records(1, &ok)).is_ok());
        let cases: [(Vec<u8>, u32, &str); 5] = [
            (sequence_record(3, 2, b"default", 7), 1, "next is above"),
            (
                sequence_record(1, u64::MAX, b"default", 7),
                1,
                "beyond the number space",
            ),
            (sequence_record(1, 2, b"default", 6), 1, "name length"),
            (ok.clone(), 2, "counts 2 records"),
            (
                [&99u16.to_be_bytes()[..], &0u32.to_be_bytes()].concat(),
                1,
                "kind 99",
            ),
        ];
        for (records, count, expected) in cases {
            let err = decode(&file_with_records(count, &records))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
