//! The state-file decoder, fed arbitrary bytes. The first byte chooses whether the input's
//! length field and CRC-32 are repaired first, so the fuzzer gets past the checksum to the
//! records. Invariants: a decoded state re-encodes to a file that decodes to the same state
//! and is no longer (the encoder writes records in one order and omits all-zero counters), and
//! no truncation of a valid file is valid (a torn write is never mistaken for state).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqd::store::format::{self, CHECKSUM_LEN, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 == 1 && file.len() >= HEADER_LEN + CHECKSUM_LEN {
        let records_len = (file.len() - HEADER_LEN - CHECKSUM_LEN) as u32;
        file[32..36].copy_from_slice(&records_len.to_be_bytes());
        let body = file.len() - CHECKSUM_LEN;
        let crc = crc32fast::hash(&file[..body]);
        file[body..].copy_from_slice(&crc.to_be_bytes());
    }
    let Ok(state) = format::decode(&file) else {
        return;
    };
    let encoded = format::encode(&state);
    assert!(encoded.len() <= file.len());
    assert_eq!(format::decode(&encoded).as_ref(), Ok(&state));
    for cut in [file.len() - 1, file.len() / 2, HEADER_LEN] {
        if cut < file.len() {
            assert!(
                format::decode(&file[..cut]).is_err(),
                "a {cut}-byte prefix decodes"
            );
        }
    }
});
