//! The stream protocol's decoder (seed 003's CON/NUM/ACK/CHK), fed arbitrary bytes.
//! Invariants: it never claims more bytes than it was given, every decoded message re-encodes
//! to exactly its bytes, and asking for n more bytes means no fewer can complete it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqd::protocol::stream;
use seqd::protocol::{Need, ParseError};

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match stream::decode(rest) {
            Ok(ok) => {
                assert!(ok.consumed > 0 && ok.consumed <= rest.len());
                let mut encoded = Vec::new();
                ok.message.encode(&mut encoded);
                assert_eq!(encoded, &rest[..ok.consumed], "{:?}", ok.message);
                pos += ok.consumed;
            }
            Err(ParseError::Incomplete(Need::Bytes(n))) => {
                assert!(n > 0);
                // `n` is a lower bound: with one byte fewer the message is still incomplete.
                let mut shorter = rest.to_vec();
                shorter.resize(rest.len() + n - 1, 0);
                assert!(
                    matches!(stream::decode(&shorter), Err(ParseError::Incomplete(_))),
                    "asked for {n} more bytes, but fewer finish the message"
                );
                break;
            }
            Err(ParseError::Incomplete(Need::Line)) => panic!("stream decoder asked for a line"),
            Err(ParseError::Fatal(problem)) => {
                assert!(!problem.to_string().is_empty());
                break;
            }
        }
    }
});
