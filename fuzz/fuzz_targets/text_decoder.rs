//! The text protocol's decoders (inline lines and RESP arrays, as the server reads them;
//! replies, as clients read them), fed arbitrary bytes. Invariants: a decoder never claims
//! more bytes than it was given; a decoded request depends only on its own bytes (the same
//! bytes alone decode to the same request), and every shorter prefix of it is incomplete,
//! never an error or another request, which is what lets a session decode a stream split
//! anywhere by the network; decoding that resumes where it stopped (`decode_request_from`,
//! as a session decodes a request arriving in pieces) gives the same result as decoding it
//! whole, at a cost linear in its length; an invalid request names its problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqd::protocol::text::{self, MAX_REQUEST, Progress};
use seqd::protocol::{ParseError, Request};

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match text::decode_request(rest) {
            Ok(ok) => {
                assert!(ok.consumed > 0 && ok.consumed <= rest.len());
                let frame = &rest[..ok.consumed];
                assert_eq!(
                    text::decode_request(frame),
                    Ok(ok.clone()),
                    "the request depends on bytes after it"
                );
                // A few prefixes (all of them would make the target quadratic).
                for cut in [1, ok.consumed / 2, ok.consumed - 1] {
                    if cut == 0 || cut >= ok.consumed {
                        continue;
                    }
                    match text::decode_request(&frame[..cut]) {
                        Err(ParseError::Incomplete(_)) => {}
                        other => {
                            panic!("prefix {cut} of a {}-byte request: {other:?}", ok.consumed)
                        }
                    }
                }
                // Fed in pieces to one Progress, as a session feeds it.
                let mut progress = Progress::default();
                let step = 1 + frame.len() / 7;
                let mut end = 0;
                let resumed = loop {
                    end = (end + step).min(frame.len());
                    match text::decode_request_from(&frame[..end], &mut progress) {
                        Err(ParseError::Incomplete(_)) if end < frame.len() => continue,
                        other => break other,
                    }
                };
                assert_eq!(resumed, Ok(ok.clone()), "resumed decoding differs");
                assert!(!progress.is_partial());
                assert!(
                    progress.examined() <= 16 * 8 + 3 * frame.len() as u64,
                    "{} bytes examined for a {}-byte request",
                    progress.examined(),
                    frame.len()
                );
                if let Request::Invalid(problem) = ok.message {
                    assert!(!problem.to_string().is_empty());
                }
                pos += ok.consumed;
            }
            Err(ParseError::Incomplete(_)) => {
                // Only a request that could still fit is waited for.
                assert!(
                    rest.len() <= MAX_REQUEST + 2,
                    "{} bytes waited for",
                    rest.len()
                );
                break;
            }
            Err(ParseError::Fatal(problem)) => {
                assert!(!problem.to_string().is_empty());
                // Resumed decoding refuses it too, at the latest once all of it is there.
                let mut progress = Progress::default();
                let step = 1 + rest.len().min(4 * MAX_REQUEST) / 7;
                let mut end = 0;
                loop {
                    end = (end + step).min(rest.len());
                    match text::decode_request_from(&rest[..end], &mut progress) {
                        Err(ParseError::Incomplete(_)) if end < rest.len() => continue,
                        Err(ParseError::Fatal(_)) => break,
                        other => panic!("refused whole, resumed: {other:?}"),
                    }
                }
                break;
            }
        }
    }

    // Replies, as a client decodes them.
    let mut pos = 0;
    while pos < data.len() {
        match text::decode_reply(&data[pos..]) {
            Ok(ok) => {
                assert!(ok.consumed > 0 && ok.consumed <= data.len() - pos);
                pos += ok.consumed;
            }
            Err(_) => break,
        }
    }
});
