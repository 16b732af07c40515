//! The journal decoder, fed arbitrary bytes. The first byte chooses whether the rest is a
//! journal as it is, or a base generation (8 bytes) and entry payloads (each a 2-byte length
//! and that many bytes) framed first with correct lengths and checksums, so the fuzzer gets
//! past the checksums to the changes. Invariants: what decodes is the header and entries
//! plus a dropped tail, and re-encodes to exactly the bytes it kept; every cut of those
//! bytes decodes to the entries wholly before the cut (a torn last entry is dropped, never
//! misread), and so does it with the cut entry's missing bytes as zeros (a write whose
//! length reached the disk but not all its data);
//! a journal that replays onto a state makes a state whose file reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqd::state::LeaseAndStreamRecords;
use seqd::store::format::{self, State};
use seqd::store::journal::{self, FRAME_LEN, HEADER_LEN};

/// A journal around the fuzzer's payloads, each framed with its length and checksum.
fn framed(input: &[u8]) -> Vec<u8> {
    let (base, mut rest) = input.split_at(input.len().min(8));
    let mut generation = [0u8; 8];
    generation[..base.len()].copy_from_slice(base);
    let mut out = journal::encode_header(u64::from_be_bytes(generation));
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let len_bytes = (payload.len() as u32).to_be_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len_bytes);
        crc.update(payload);
        out.extend_from_slice(&len_bytes);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        framed(rest)
    } else {
        rest.to_vec()
    };
    let Ok(decoded) = journal::decode(&bytes) else {
        return;
    };
    assert_eq!(
        decoded.valid_len + decoded.torn_bytes.unwrap_or(0),
        bytes.len()
    );
    let mut encoded = journal::encode_header(decoded.base_generation);
    let mut ends = Vec::with_capacity(decoded.entries.len());
    for entry in &decoded.entries {
        encoded.extend(journal::encode_entry(entry));
        ends.push(encoded.len());
    }
    assert!(encoded == bytes[..decoded.valid_len], "re-encodes differently");

    let mut cuts = vec![HEADER_LEN, decoded.valid_len];
    for &end in ends.iter().take(8) {
        cuts.extend([end - 1, end - FRAME_LEN / 2, end]);
    }
    for cut in cuts {
        let cut = cut.clamp(HEADER_LEN, decoded.valid_len);
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        let prefix = journal::decode(&bytes[..cut]).expect("a prefix of a journal decodes");
        assert_eq!(prefix.entries, decoded.entries[..whole], "cut at {cut}");
        // The rest of the entry cut short reads as zeros (its length reached the disk, its
        // data did not), or zeros follow a whole entry.
        let zeros_to = ends.iter().copied().find(|&end| end > cut).unwrap_or(cut + 64);
        let mut zeros = bytes[..cut].to_vec();
        zeros.resize(zeros_to, 0);
        // Where the missing bytes were zeros anyway, the entry is whole again.
        let whole = match bytes.get(..zeros_to) {
            Some(original) if original == zeros.as_slice() => {
                ends.iter().filter(|&&end| end <= zeros_to).count()
            }
            _ => whole,
        };
        let zeroed = journal::decode(&zeros).expect("zeros after a journal decode");
        assert_eq!(zeroed.entries, decoded.entries[..whole], "zeros after {cut}");
    }

    let mut state = State {
        generation: decoded.base_generation,
        clean_shutdown: false,
        written_at_ms: 0,
        sequences: Vec::new(),
        leases_and_streams: LeaseAndStreamRecords::default(),
    };
    if journal::replay(&mut state, &decoded).is_ok() {
        let file = format::encode(&state);
        assert_eq!(format::decode(&file).as_ref(), Ok(&state));
    }
});
