//! The binary protocol: fixed 16-byte frames, big-endian, pipelined, answered in order.
//!
//! ```text
//! request                                  reply
//! 0  u8   magic 0x9E                       0  u8   magic 0x9E
//! 1  u8   version 1                        1  u8   version 1
//! 2  u8   opcode                           2  u8   opcode of the request answered
//! 3  u8   flags (0)                        3  u8   status: 0 ok, else an ErrorCode
//! 4  u32  sequence id (0 = default)        4  u32  ok: count of numbers; error: message length
//! 8  u64  argument                         8  u64  ok: value; error: detail
//! ```
//! `OPEN` is followed by `argument` bytes of sequence name; an error reply is followed by its
//! UTF-8 message. Everything is specified, with hex examples, in docs/PROTOCOL.md.

use super::{Need, ParseError, ParseOk, Problem, Reply, Request, Target};
use crate::sequence::{MAX_NAME_LEN, SequenceId};

/// First byte of every frame. A UTF-8 continuation byte, so it can never start a text command.
pub const MAGIC: u8 = 0x9E;
pub const VERSION: u8 = 1;
/// Size of every request and reply header.
pub const FRAME_LEN: usize = 16;

pub mod opcode {
    pub const GETSEQ: u8 = 0x01;
    pub const GETSEQ_BATCH: u8 = 0x02;
    pub const CURRENT: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const OPEN: u8 = 0x05;
}

/// Status byte of a successful reply.
pub const STATUS_OK: u8 = 0;

/// The fields of a 16-byte header, request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    opcode: u8,
    byte3: u8,
    word: u32,
    value: u64,
}

impl Header {
    #[inline]
    fn encode(self) -> [u8; FRAME_LEN] {
        let mut frame = [0u8; FRAME_LEN];
        frame[0] = MAGIC;
        frame[1] = VERSION;
        frame[2] = self.opcode;
        frame[3] = self.byte3;
        frame[4..8].copy_from_slice(&self.word.to_be_bytes());
        frame[8..16].copy_from_slice(&self.value.to_be_bytes());
        frame
    }

    /// Reads a header from a buffer holding at least `FRAME_LEN` bytes, checking magic and
    /// version.
    #[inline]
    fn decode(buf: &[u8]) -> Result<Header, Problem<'static>> {
        let frame: &[u8; FRAME_LEN] = buf[..FRAME_LEN]
            .try_into()
            .map_err(|_| Problem::Malformed("short frame"))?;
        if frame[0] != MAGIC {
            return Err(Problem::Malformed("bad magic byte (stream out of step?)"));
        }
        if frame[1] != VERSION {
            return Err(Problem::UnsupportedVersion(frame[1]));
        }
        let word = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let value = u64::from_be_bytes([
            frame[8], frame[9], frame[10], frame[11], frame[12], frame[13], frame[14], frame[15],
        ]);
        Ok(Header {
            opcode: frame[2],
            byte3: frame[3],
            word,
            value,
        })
    }
}

/// Decodes one request from the front of `buf`.
#[inline]
pub fn decode_request(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
    if buf.len() < FRAME_LEN {
        return Err(ParseError::Incomplete(Need::Bytes(FRAME_LEN - buf.len())));
    }
    let header = Header::decode(buf).map_err(ParseError::Fatal)?;
    let target = match header.word {
        0 => Target::Default,
        id => Target::Id(id),
    };
    let fixed = |request| {
        Ok(ParseOk {
            message: request,
            consumed: FRAME_LEN,
        })
    };
    if header.byte3 != 0 {
        return fixed(Request::Invalid(Problem::ReservedFieldSet));
    }
    match header.opcode {
        opcode::GETSEQ if header.value == 0 => fixed(Request::Get { target }),
        opcode::GETSEQ_BATCH => fixed(Request::GetBatch {
            target,
            count: header.value,
        }),
        opcode::CURRENT if header.value == 0 => fixed(Request::Current { target }),
        opcode::PING if header.value == 0 && header.word == 0 => {
            fixed(Request::Ping { echo: None })
        }
        opcode::OPEN if header.word == 0 => {
            if header.value > MAX_NAME_LEN as u64 {
                return Err(ParseError::Fatal(Problem::Malformed(
                    "OPEN name longer than 64 bytes",
                )));
            }
            let len = FRAME_LEN + header.value as usize;
            if buf.len() < len {
                return Err(ParseError::Incomplete(Need::Bytes(len - buf.len())));
            }
            Ok(ParseOk {
                message: Request::Open {
                    name: &buf[FRAME_LEN..len],
                },
                consumed: len,
            })
        }
        opcode::GETSEQ | opcode::CURRENT | opcode::PING | opcode::OPEN => {
            fixed(Request::Invalid(Problem::ReservedFieldSet))
        }
        other => fixed(Request::Invalid(Problem::UnknownOpcode(other))),
    }
}

/// Appends the binary encoding of `reply` to `out`.
#[inline]
pub fn encode_reply(out: &mut Vec<u8>, reply: &Reply<'_>) {
    let ok = |opcode, word, value| Header {
        opcode,
        byte3: STATUS_OK,
        word,
        value,
    };
    let header = match *reply {
        Reply::Number(n) => ok(opcode::GETSEQ, 1, n),
        Reply::Range { first, count } => {
            // The server caps batches at u32::MAX (see config), so this never saturates.
            ok(
                opcode::GETSEQ_BATCH,
                u32::try_from(count).unwrap_or(u32::MAX),
                first,
            )
        }
        Reply::Current(n) => ok(opcode::CURRENT, 0, n),
        Reply::Pong { .. } => ok(opcode::PING, 0, 0),
        Reply::Opened(id) => ok(opcode::OPEN, 0, u64::from(id)),
        Reply::Ok | Reply::EmptyArray | Reply::UnsetConfig(_) => ok(0, 0, 0),
        Reply::Error { opcode, problem } => {
            return encode_error(out, opcode, &problem);
        }
    };
    out.extend_from_slice(&header.encode());
}

/// Appends the replies to `count` consecutive `GETSEQ`s: the numbers `first..first + count`.
#[inline]
pub fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
    let mut frame = Header {
        opcode: opcode::GETSEQ,
        byte3: STATUS_OK,
        word: 1,
        value: 0,
    }
    .encode();
    out.reserve(count as usize * FRAME_LEN);
    for n in first..first + count {
        frame[8..16].copy_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&frame);
    }
}

fn encode_error(out: &mut Vec<u8>, opcode: u8, problem: &Problem<'_>) {
    use std::io::Write;
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{problem}");
    let message_len = (out.len() - start - FRAME_LEN) as u32;
    let header = Header {
        opcode,
        byte3: problem.code() as u8,
        word: message_len,
        value: problem.detail(),
    };
    out[start..start + FRAME_LEN].copy_from_slice(&header.encode());
}

/// Appends a request frame (client side). `argument` is the batch count for
/// `GETSEQ_BATCH`, 0 otherwise; use [`encode_open`] for `OPEN`.
#[inline]
pub fn encode_request(out: &mut Vec<u8>, opcode: u8, sequence: SequenceId, argument: u64) {
    let header = Header {
        opcode,
        byte3: 0,
        word: sequence,
        value: argument,
    };
    out.extend_from_slice(&header.encode());
}

/// Appends an `OPEN` request for `name` (client side).
pub fn encode_open(out: &mut Vec<u8>, name: &[u8]) {
    encode_request(out, opcode::OPEN, 0, name.len() as u64);
    out.extend_from_slice(name);
}

/// A reply as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame<'a> {
    pub opcode: u8,
    /// 0 for success, else an [`ErrorCode`](super::ErrorCode).
    pub status: u8,
    /// Success: how many numbers the reply carries. Error: unused (the message length).
    pub count: u32,
    /// Success: the number, first number of a range, current value or sequence id.
    /// Error: a detail such as the limit that was exceeded.
    pub value: u64,
    /// Error: the server's message. Empty on success.
    pub message: &'a [u8],
}

/// Decodes one reply from the front of `buf` (client side).
#[inline]
pub fn decode_reply(buf: &[u8]) -> Result<ParseOk<ReplyFrame<'_>>, ParseError<'_>> {
    if buf.len() < FRAME_LEN {
        return Err(ParseError::Incomplete(Need::Bytes(FRAME_LEN - buf.len())));
    }
    let header = Header::decode(buf).map_err(ParseError::Fatal)?;
    let (count, message_len) = match header.byte3 {
        STATUS_OK => (header.word, 0),
        _ => (0, header.word as usize),
    };
    let len = FRAME_LEN + message_len;
    if buf.len() < len {
        return Err(ParseError::Incomplete(Need::Bytes(len - buf.len())));
    }
    Ok(ParseOk {
        message: ReplyFrame {
            opcode: header.opcode,
            status: header.byte3,
            count,
            value: header.value,
            message: &buf[FRAME_LEN..len],
        },
        consumed: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    // These byte strings are the hex examples of docs/PROTOCOL.md.
    #[test]
    fn documented_request_examples() {
        let get = hex("9e 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&get),
            Ok(ParseOk {
                message: Request::Get {
                    target: Target::Default
                },
                consumed: 16
            })
        );
        let batch = hex("9e 01 02 00 00 00 00 03 00 00 00 00 00 00 00 64");
        assert_eq!(
            decode_request(&batch).unwrap().message,
            Request::GetBatch {
                target: Target::Id(3),
                count: 100
            }
        );
        let current = hex("9e 01 03 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&current).unwrap().message,
            Request::Current {
                target: Target::Default
            }
        );
        let ping = hex("9e 01 04 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&ping).unwrap().message,
            Request::Ping { echo: None }
        );
        let open = hex("9e 01 05 00 00 00 00 00 00 00 00 00 00 00 00 06 6f 72 64 65 72 73");
        assert_eq!(
            decode_request(&open),
            Ok(ParseOk {
                message: Request::Open { name: b"orders" },
                consumed: 22
            })
        );
        let mut out = Vec::new();
        encode_request(&mut out, opcode::GETSEQ_BATCH, 3, 100);
        assert_eq!(out, batch);
        out.clear();
        encode_open(&mut out, b"orders");
        assert_eq!(out, open);
    }

    #[test]
    fn documented_reply_examples() {
        let mut out = Vec::new();
        encode_reply(&mut out, &Reply::Number(1));
        assert_eq!(out, hex("9e 01 01 00 00 00 00 01 00 00 00 00 00 00 00 01"));
        out.clear();
        encode_reply(
            &mut out,
            &Reply::Range {
                first: 1001,
                count: 20,
            },
        );
        assert_eq!(out, hex("9e 01 02 00 00 00 00 14 00 00 00 00 00 00 03 e9"));
        out.clear();
        encode_reply(&mut out, &Reply::Current(4));
        assert_eq!(out, hex("9e 01 03 00 00 00 00 00 00 00 00 00 00 00 00 04"));
        out.clear();
        encode_reply(&mut out, &Reply::Pong { echo: None });
        assert_eq!(out, hex("9e 01 04 00 00 00 00 00 00 00 00 00 00 00 00 00"));
        out.clear();
        encode_reply(&mut out, &Reply::Opened(3));
        assert_eq!(out, hex("9e 01 05 00 00 00 00 00 00 00 00 00 00 00 00 03"));
        out.clear();
        let problem = Problem::BatchOutOfRange { max: 1_000_000 };
        encode_reply(
            &mut out,
            &Reply::Error {
                opcode: opcode::GETSEQ_BATCH,
                problem,
            },
        );
        assert_eq!(
            &out[..16],
            hex("9e 01 02 02 00 00 00 36 00 00 00 00 00 0f 42 40")
        );
        assert_eq!(
            &out[16..],
            b"batch size must be between 1 and 1000000 (--max-batch)"
        );
    }

    #[test]
    fn error_reply_carries_code_detail_and_message() {
        let mut out = Vec::new();
        let problem = Problem::BatchOutOfRange { max: 1_000_000 };
        encode_reply(
            &mut out,
            &Reply::Error {
                opcode: opcode::GETSEQ_BATCH,
                problem,
            },
        );
        let text = problem.to_string();
        assert_eq!(out.len(), FRAME_LEN + text.len());
        assert_eq!(&out[..8], &[0x9e, 1, 2, 2, 0, 0, 0, text.len() as u8]);
        assert_eq!(&out[8..16], &1_000_000u64.to_be_bytes());
        let reply = decode_reply(&out).unwrap();
        assert_eq!(reply.consumed, out.len());
        assert_eq!(reply.message.status, ErrorCode::OutOfRange as u8);
        assert_eq!(reply.message.value, 1_000_000);
        assert_eq!(reply.message.message, text.as_bytes());
    }

    #[test]
    fn consecutive_numbers_encode_like_single_replies() {
        let (mut batch, mut single) = (Vec::new(), Vec::new());
        encode_numbers(&mut batch, 41, 3);
        for n in 41..44 {
            encode_reply(&mut single, &Reply::Number(n));
        }
        assert_eq!(batch, single);
    }

    #[test]
    fn replies_round_trip() {
        let mut out = Vec::new();
        encode_reply(
            &mut out,
            &Reply::Range {
                first: u64::MAX - 5,
                count: 5,
            },
        );
        let reply = decode_reply(&out).unwrap().message;
        assert_eq!(
            (reply.status, reply.count, reply.value),
            (0, 5, u64::MAX - 5)
        );
    }

    #[test]
    fn incomplete_frames_say_how_much_is_missing() {
        let get = hex("9e 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00");
        for cut in 0..16 {
            assert_eq!(
                decode_request(&get[..cut]),
                Err(ParseError::Incomplete(Need::Bytes(16 - cut)))
            );
        }
        let open = hex("9e 01 05 00 00 00 00 00 00 00 00 00 00 00 00 06 6f 72");
        assert_eq!(
            decode_request(&open),
            Err(ParseError::Incomplete(Need::Bytes(4)))
        );
    }

    #[test]
    fn unrecoverable_frames_are_fatal() {
        let bad_magic = hex("9f 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert!(matches!(
            decode_request(&bad_magic),
            Err(ParseError::Fatal(Problem::Malformed(_)))
        ));
        let v2 = hex("9e 02 01 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&v2),
            Err(ParseError::Fatal(Problem::UnsupportedVersion(2)))
        );
        let huge_open = hex("9e 01 05 00 00 00 00 00 ff ff ff ff ff ff ff ff");
        assert!(matches!(
            decode_request(&huge_open),
            Err(ParseError::Fatal(_))
        ));
    }

    #[test]
    fn recoverable_frames_are_invalid_requests() {
        let unknown = hex("9e 01 7f 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&unknown),
            Ok(ParseOk {
                message: Request::Invalid(Problem::UnknownOpcode(0x7f)),
                consumed: 16
            })
        );
        let flags = hex("9e 01 01 01 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&flags).unwrap().message,
            Request::Invalid(Problem::ReservedFieldSet)
        );
        let get_with_arg = hex("9e 01 01 00 00 00 00 00 00 00 00 00 00 00 00 01");
        assert_eq!(
            decode_request(&get_with_arg).unwrap().message,
            Request::Invalid(Problem::ReservedFieldSet)
        );
    }
}
