//! The binary protocol's decoders (requests, as the server reads them; replies, as clients
//! read them), fed arbitrary bytes. Invariants: a decoder never claims more bytes than it was
//! given, asks for more only when more can help, and every request that decodes to a
//! well-formed message re-encodes to exactly the bytes it came from.
//! (`Incomplete(n)` is checked as a lower bound: fewer than `n` more bytes never finish a frame.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqd::protocol::binary::{self, opcode};
use seqd::protocol::{ErrorCode, Need, ParseError, Request, Target};

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match binary::decode_request(rest) {
            Ok(ok) => {
                assert!(ok.consumed > 0 && ok.consumed <= rest.len());
                let frame = &rest[..ok.consumed];
                if let Some(encoded) = reencode(&ok.message) {
                    assert_eq!(encoded, frame, "{:?} re-encodes differently", ok.message);
                }
                pos += ok.consumed;
            }
            Err(ParseError::Incomplete(Need::Bytes(n))) => {
                assert!(n > 0);
                // `n` is a lower bound: with one byte fewer the frame is still incomplete.
                // (It may take more: OPEN, LEASE and ACK learn their length from the header.)
                let mut shorter = rest.to_vec();
                shorter.resize(rest.len() + n - 1, 0);
                assert!(
                    matches!(
                        binary::decode_request(&shorter),
                        Err(ParseError::Incomplete(_))
                    ),
                    "asked for {n} more bytes, but fewer finish the frame"
                );
                break;
            }
            Err(ParseError::Incomplete(Need::Line)) => panic!("binary decoder asked for a line"),
            Err(ParseError::Fatal(problem)) => {
                assert!(!problem.to_string().is_empty());
                assert_eq!(problem.code(), ErrorCode::Fatal);
                break;
            }
        }
    }

    // Replies, as a client decodes them.
    let mut pos = 0;
    while pos < data.len() {
        match binary::decode_reply(&data[pos..]) {
            Ok(ok) => {
                assert!(ok.consumed >= binary::FRAME_LEN && ok.consumed <= data.len() - pos);
                pos += ok.consumed;
            }
            Err(ParseError::Incomplete(Need::Bytes(n))) => {
                assert!(n > 0);
                break;
            }
            Err(ParseError::Incomplete(Need::Line)) => panic!("binary decoder asked for a line"),
            Err(ParseError::Fatal(_)) => break,
        }
    }
});

fn sequence_id(target: Target<'_>) -> Option<u32> {
    match target {
        Target::Default => Some(0),
        Target::Id(id) => Some(id),
        Target::Name(_) => None,
    }
}

/// The client-side encoding of a decoded request, where the codec has one.
fn reencode(request: &Request<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match *request {
        Request::Get { target } => {
            binary::encode_request(&mut out, opcode::GETSEQ, sequence_id(target)?, 0)
        }
        Request::GetBatch { target, count } => {
            binary::encode_request(&mut out, opcode::GETSEQ_BATCH, sequence_id(target)?, count)
        }
        Request::Current { target } => {
            binary::encode_request(&mut out, opcode::CURRENT, sequence_id(target)?, 0)
        }
        Request::Ping { echo: None } => binary::encode_request(&mut out, opcode::PING, 0, 0),
        Request::Open { name } => binary::encode_open(&mut out, name),
        Request::Lease {
            target, count, ids, ..
        } => binary::encode_lease(&mut out, sequence_id(target)?, count, ids),
        Request::Ack {
            target,
            first,
            last,
        } => binary::encode_ack(&mut out, sequence_id(target)?, first, last - first + 1),
        _ => return None,
    }
    Some(out)
}
