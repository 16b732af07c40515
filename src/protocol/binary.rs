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
//! `OPEN` is followed by `argument` bytes of sequence name; `LEASE` by the lengths of a client
//! id and a request id (one byte each) and their bytes; `ACK` by the count of the range
//! (u64). An error reply is followed by its UTF-8 message. Everything is specified, with hex examples, in docs/PROTOCOL.md.
//!
//! (Over 600 lines: half is the codec's unit tests and docs/PROTOCOL.md's examples, kept
//! beside the codec they check.)

use super::{Framing, LeaseIds, Need, ParseError, ParseOk, Problem, Reply, Request, Target};
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
    pub const LEASE: u8 = 0x06;
    pub const ACK: u8 = 0x07;
    pub const AUTH: u8 = 0x08;
}

/// Longest password an `AUTH` frame may carry (Redis has no limit; 512 bytes is more than any
/// generated secret and bounds what a stranger can make the server buffer).
pub const MAX_PASSWORD_LEN: usize = 512;

/// Bytes after a `LEASE` header before the ids: client id length, request id length.
pub const LEASE_TRAILER_LEN: usize = 2;
/// Bytes after an `ACK` header: the count of the range acknowledged.
pub const ACK_TRAILER_LEN: usize = 8;

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

/// The opcode of the frame at the front of `buf`, if its magic byte and version can be read
/// and are this protocol's (a frame of another version may keep its opcode elsewhere): what
/// the error reply to a frame that cannot be decoded carries.
pub fn opcode_of(buf: &[u8]) -> Option<u8> {
    match buf {
        [MAGIC, VERSION, opcode, ..] => Some(*opcode),
        _ => None,
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
    let refused = |problem| {
        fixed(Request::Refused {
            opcode: header.opcode,
            problem,
        })
    };
    if header.opcode == opcode::ACK {
        return decode_ack(buf, target, header.value, usize::from(header.byte3));
    }
    if header.byte3 != 0 {
        return refused(Problem::ReservedFieldSet);
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
            let name = payload(
                buf,
                header.value,
                MAX_NAME_LEN,
                "OPEN name longer than 64 bytes",
            )?;
            Ok(name.map(|name| Request::Open { name }))
        }
        opcode::AUTH if header.word == 0 => {
            let password = payload(
                buf,
                header.value,
                MAX_PASSWORD_LEN,
                "AUTH password longer than 512 bytes",
            )?;
            Ok(password.map(|password| Request::Auth { password }))
        }
        opcode::LEASE => decode_lease(buf, target, header.value),
        opcode::GETSEQ | opcode::CURRENT | opcode::PING | opcode::OPEN | opcode::AUTH => {
            refused(Problem::ReservedFieldSet)
        }
        other => fixed(Request::Invalid(Problem::UnknownOpcode(other))),
    }
}

/// `ACK`: the header (byte 3: the client id's length, 0 for none), the count, then the
/// client id's bytes.
fn decode_ack<'a>(
    buf: &'a [u8],
    target: Target<'a>,
    first: u64,
    client_len: usize,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    let client_at = FRAME_LEN + ACK_TRAILER_LEN;
    let len = client_at + client_len;
    if buf.len() < len {
        return Err(ParseError::Incomplete(Need::Bytes(len - buf.len())));
    }
    let count = u64::from_be_bytes([
        buf[16], buf[17], buf[18], buf[19], buf[20], buf[21], buf[22], buf[23],
    ]);
    let refused = |problem| Request::Refused {
        opcode: opcode::ACK,
        problem,
    };
    let message = match count.checked_sub(1).map(|n| first.checked_add(n)) {
        None => refused(Problem::EmptyAck),
        // Beyond the number space: no lease can hold it.
        Some(None) => refused(Problem::UnknownLease {
            first,
            last: u64::MAX,
        }),
        Some(Some(last)) if client_len == 0 => Request::Ack {
            target,
            first,
            last,
        },
        Some(Some(last)) => Request::AckAsClient {
            target,
            first,
            last,
            client: &buf[client_at..len],
        },
    };
    Ok(ParseOk {
        message,
        consumed: len,
    })
}

/// The `len` bytes after the header (`OPEN`'s name, `AUTH`'s password); longer than `max` is
/// fatal (the frame cannot be trusted).
fn payload<'a>(
    buf: &'a [u8],
    len: u64,
    max: usize,
    too_long: &'static str,
) -> Result<ParseOk<&'a [u8]>, ParseError<'a>> {
    if len > max as u64 {
        return Err(ParseError::Fatal(Problem::Malformed(too_long)));
    }
    let end = FRAME_LEN + len as usize;
    if buf.len() < end {
        return Err(ParseError::Incomplete(Need::Bytes(end - buf.len())));
    }
    Ok(ParseOk {
        message: &buf[FRAME_LEN..end],
        consumed: end,
    })
}

/// `LEASE`: the header, two length bytes, then the client id and the request id. Both
/// lengths 0: a lease without ids. Ids are validated by the lease table, so a bad one is an
/// answered error, not a lost stream.
fn decode_lease<'a>(
    buf: &'a [u8],
    target: Target<'a>,
    count: u64,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    let ids_at = FRAME_LEN + LEASE_TRAILER_LEN;
    if buf.len() < ids_at {
        return Err(ParseError::Incomplete(Need::Bytes(ids_at - buf.len())));
    }
    let (client_len, request_len) = (usize::from(buf[16]), usize::from(buf[17]));
    let len = ids_at + client_len + request_len;
    if buf.len() < len {
        return Err(ParseError::Incomplete(Need::Bytes(len - buf.len())));
    }
    let ids = match (client_len, request_len) {
        (0, 0) => None,
        _ => Some(LeaseIds {
            client: &buf[ids_at..ids_at + client_len],
            request: &buf[ids_at + client_len..len],
        }),
    };
    Ok(ParseOk {
        message: Request::Lease {
            target,
            count,
            ids,
            framing: Framing::Inline,
        },
        consumed: len,
    })
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
        Reply::Authenticated => ok(opcode::AUTH, 0, 0),
        // Lease sizes are capped like batches (at most u32::MAX).
        Reply::Leased { first, count, .. } => ok(
            opcode::LEASE,
            u32::try_from(count).unwrap_or(u32::MAX),
            first,
        ),
        Reply::Acked { first } => ok(opcode::ACK, 0, first),
        Reply::Ok | Reply::EmptyArray | Reply::UnsetConfig(_) | Reply::LeaseStats(_) => ok(0, 0, 0),
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

/// Appends an `AUTH` request carrying `password` (client side); at most
/// [`MAX_PASSWORD_LEN`] bytes are accepted by the server.
pub fn encode_auth(out: &mut Vec<u8>, password: &[u8]) {
    encode_request(out, opcode::AUTH, 0, password.len() as u64);
    out.extend_from_slice(password);
}

/// Appends a `LEASE` request for `count` numbers of `sequence` (client side), with the
/// client's ids when a retry must return the same range. Ids longer than 255 bytes are cut
/// (the server refuses ids over 64 bytes anyway).
pub fn encode_lease(
    out: &mut Vec<u8>,
    sequence: SequenceId,
    count: u64,
    ids: Option<LeaseIds<'_>>,
) {
    encode_request(out, opcode::LEASE, sequence, count);
    let (client, request) = ids.map_or((&[][..], &[][..]), |ids| (ids.client, ids.request));
    let client = &client[..client.len().min(255)];
    let request = &request[..request.len().min(255)];
    out.push(client.len() as u8);
    out.push(request.len() as u8);
    out.extend_from_slice(client);
    out.extend_from_slice(request);
}

/// Appends an `ACK` of the lease `first..first + count` of `sequence` (client side).
pub fn encode_ack(out: &mut Vec<u8>, sequence: SequenceId, first: u64, count: u64) {
    encode_ack_as(out, sequence, first, count, b"");
}

/// Appends an `ACK` naming the client id the lease was granted to (client side), so that
/// another connection than the one granted it may acknowledge it (empty: no client id).
/// Ids longer than 255 bytes are cut (the server refuses ids over 64 bytes anyway).
pub fn encode_ack_as(
    out: &mut Vec<u8>,
    sequence: SequenceId,
    first: u64,
    count: u64,
    client: &[u8],
) {
    let client = &client[..client.len().min(255)];
    out.extend_from_slice(
        &Header {
            opcode: opcode::ACK,
            byte3: client.len() as u8,
            word: sequence,
            value: first,
        }
        .encode(),
    );
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(client);
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

    // docs/PROTOCOL.md's lease examples.
    #[test]
    fn documented_lease_examples() {
        let lease = hex("9e 01 06 00 00 00 00 00 00 00 00 00 00 00 00 14 02 02 63 31 72 31");
        let request = Request::Lease {
            target: Target::Default,
            count: 20,
            ids: Some(LeaseIds {
                client: b"c1",
                request: b"r1",
            }),
            framing: Framing::Inline,
        };
        assert_eq!(
            decode_request(&lease),
            Ok(ParseOk {
                message: request,
                consumed: 22
            })
        );
        let mut out = Vec::new();
        encode_lease(
            &mut out,
            0,
            20,
            Some(LeaseIds {
                client: b"c1",
                request: b"r1",
            }),
        );
        assert_eq!(out, lease);
        let anonymous = hex("9e 01 06 00 00 00 00 03 00 00 00 00 00 00 00 14 00 00");
        out.clear();
        encode_lease(&mut out, 3, 20, None);
        assert_eq!(out, anonymous);
        assert_eq!(
            decode_request(&anonymous).unwrap().message,
            Request::Lease {
                target: Target::Id(3),
                count: 20,
                ids: None,
                framing: Framing::Inline
            }
        );
        let ack = hex("9e 01 07 00 00 00 00 00 00 00 00 00 00 00 03 e9 00 00 00 00 00 00 00 14");
        assert_eq!(
            decode_request(&ack),
            Ok(ParseOk {
                message: Request::Ack {
                    target: Target::Default,
                    first: 1001,
                    last: 1020
                },
                consumed: 24
            })
        );
        out.clear();
        encode_ack(&mut out, 0, 1001, 20);
        assert_eq!(out, ack);
        out.clear();
        encode_ack_as(&mut out, 0, 1001, 20, b"c1");
        assert_eq!(
            out,
            hex("9e 01 07 02 00 00 00 00 00 00 00 00 00 00 03 e9 00 00 00 00 00 00 00 14 63 31")
        );

        out.clear();
        encode_reply(
            &mut out,
            &Reply::Leased {
                first: 1001,
                count: 20,
                framing: Framing::Inline,
            },
        );
        assert_eq!(out, hex("9e 01 06 00 00 00 00 14 00 00 00 00 00 00 03 e9"));
        out.clear();
        encode_reply(&mut out, &Reply::Acked { first: 1001 });
        assert_eq!(out, hex("9e 01 07 00 00 00 00 00 00 00 00 00 00 00 03 e9"));
        out.clear();
        let problem = Problem::UnknownLease { first: 5, last: 6 };
        encode_reply(
            &mut out,
            &Reply::Error {
                opcode: opcode::ACK,
                problem,
            },
        );
        let text = problem.to_string();
        assert_eq!(
            &out[..16],
            hex(&format!(
                "9e 01 07 08 00 00 00 {:02x} 00 00 00 00 00 00 00 05",
                text.len()
            ))
        );
    }

    #[test]
    fn lease_frames_wait_for_their_ids_and_bad_ones_are_answered() {
        let lease = hex("9e 01 06 00 00 00 00 00 00 00 00 00 00 00 00 14 02 02 63 31 72 31");
        for cut in 0..lease.len() {
            let missing = match cut {
                0..16 => 16 - cut,
                16..18 => 18 - cut,
                _ => lease.len() - cut,
            };
            assert_eq!(
                decode_request(&lease[..cut]),
                Err(ParseError::Incomplete(Need::Bytes(missing)))
            );
        }
        // An ACK of zero numbers is refused, and the frame is still consumed.
        let empty_ack =
            hex("9e 01 07 00 00 00 00 00 00 00 00 00 00 00 03 e9 00 00 00 00 00 00 00 00");
        assert_eq!(
            decode_request(&empty_ack),
            Ok(ParseOk {
                message: Request::Refused {
                    opcode: opcode::ACK,
                    problem: Problem::EmptyAck
                },
                consumed: 24
            })
        );
        // An ACK naming its client id: byte 3 is the id's length, the id follows the count.
        let named_ack =
            hex("9e 01 07 02 00 00 00 00 00 00 00 00 00 00 03 e9 00 00 00 00 00 00 00 14 63 31");
        for cut in 16..named_ack.len() {
            assert_eq!(
                decode_request(&named_ack[..cut]),
                Err(ParseError::Incomplete(Need::Bytes(named_ack.len() - cut)))
            );
        }
        assert_eq!(
            decode_request(&named_ack),
            Ok(ParseOk {
                message: Request::AckAsClient {
                    target: Target::Default,
                    first: 1001,
                    last: 1020,
                    client: b"c1"
                },
                consumed: 26
            })
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
        // A known opcode's error carries that opcode.
        let refused = Request::Refused {
            opcode: opcode::GETSEQ,
            problem: Problem::ReservedFieldSet,
        };
        let flags = hex("9e 01 01 01 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(decode_request(&flags).unwrap().message, refused);
        let get_with_arg = hex("9e 01 01 00 00 00 00 00 00 00 00 00 00 00 00 01");
        assert_eq!(decode_request(&get_with_arg).unwrap().message, refused);
    }
}
