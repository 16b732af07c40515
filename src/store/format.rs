//! The state file's byte layout: encode and decode, no I/O. docs/STATE.md describes it with
//! a hex example (checked by a test below).
//!
//! A file is a fixed header, a list of typed records and a CRC-32 of everything before it.
//! Records are `kind | length | payload`, so kinds can be added (leases, stream state) without
//! changing how the file is framed. A reader refuses a kind it does not know rather than drop
//! state it cannot interpret (a lease it forgot could be handed out twice).

use crate::sequence::END_OF_SPACE;

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
}

/// Fixed part of a sequence record's payload: id (4), next (8), ceiling (8), name length (1).
const SEQUENCE_FIXED_LEN: usize = 21;

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
    for sequence in &state.sequences {
        let name = sequence.name.as_bytes();
        // Names are validated to at most 64 bytes long before they reach a record.
        let name_len = u8::try_from(name.len()).unwrap_or(u8::MAX);
        let name = &name[..usize::from(name_len)];
        records.extend_from_slice(&kind::SEQUENCE.to_be_bytes());
        records.extend_from_slice(&((SEQUENCE_FIXED_LEN + name.len()) as u32).to_be_bytes());
        records.extend_from_slice(&sequence.id.to_be_bytes());
        records.extend_from_slice(&sequence.next.to_be_bytes());
        records.extend_from_slice(&sequence.ceiling.to_be_bytes());
        records.push(name_len);
        records.extend_from_slice(name);
    }
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
    out.extend_from_slice(&(state.sequences.len() as u32).to_be_bytes());
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    out.extend_from_slice(&records);
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_be_bytes());
    out
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
        let mut payload = Reader::new(records.take(len));
        match kind {
            kind::SEQUENCE => {
                if len < SEQUENCE_FIXED_LEN {
                    return Err(bad("a sequence record is shorter than its fixed fields"));
                }
                let id = payload.u32();
                let next = payload.u64();
                let ceiling = payload.u64();
                let name_len = usize::from(payload.u8());
                if payload.remaining() != name_len {
                    return Err(bad("the name length does not match the record length"));
                }
                let name = std::str::from_utf8(payload.take(name_len))
                    .map_err(|_| bad("the name is not UTF-8"))?;
                if next > ceiling {
                    return Err(bad("next is above the ceiling"));
                }
                if ceiling > END_OF_SPACE {
                    return Err(bad("the ceiling is beyond the number space"));
                }
                sequences.push(SequenceRecord {
                    id,
                    name: name.to_owned(),
                    next,
                    ceiling,
                });
            }
            kind => return Err(FormatError::UnknownRecordKind { index, kind }),
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
    })
}

/// Reads big-endian integers from a slice whose length the caller has checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn remaining(&self) -> usize {
        self.0.len()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N));
        out
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
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
