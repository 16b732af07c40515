//! The client side of the binary protocol, shared by the blocking and the async client:
//! requests to frames, and the front of a reply buffer to a result.

use std::ops::Range;

use super::{ClientError, Request, Response};
use crate::protocol::binary::{self, opcode};
use crate::protocol::{ErrorCode, ParseError};

/// Appends the frame of `request` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, request: &Request) {
    let (op, sequence, argument) = match *request {
        Request::Get(s) => (opcode::GETSEQ, s, 0),
        Request::GetBatch(s, n) => (opcode::GETSEQ_BATCH, s, n),
        Request::Current(s) => (opcode::CURRENT, s, 0),
        Request::Ping => (opcode::PING, 0, 0),
    };
    binary::encode_request(out, op, sequence, argument);
}

/// The opcode the reply to `request` carries.
pub(crate) fn opcode_of(request: &Request) -> u8 {
    match request {
        Request::Get(_) => opcode::GETSEQ,
        Request::GetBatch(..) => opcode::GETSEQ_BATCH,
        Request::Current(_) => opcode::CURRENT,
        Request::Ping => opcode::PING,
    }
}

/// The reply's (count, value) as the [`Response`] to `request`.
pub(crate) fn response(request: &Request, (count, value): (u32, u64)) -> Response {
    match request {
        Request::Get(_) => Response::Number(value),
        Request::GetBatch(..) => Response::Range(range(count, value)),
        Request::Current(_) => Response::Current(value),
        Request::Ping => Response::Pong,
    }
}

/// The numbers of a reply carrying `count` numbers from `first`.
pub(crate) fn range(count: u32, first: u64) -> Range<u64> {
    first..first.saturating_add(u64::from(count))
}

/// One reply decoded from the front of `buffered`, where a reply to `expected` is due.
pub(crate) enum Decoded {
    /// More bytes are needed.
    Incomplete,
    /// `consumed` bytes made one reply: its (count, value), or the server's error.
    Reply {
        consumed: usize,
        result: Result<(u32, u64), ClientError>,
    },
}

/// Decodes the reply at the front of `buffered`. An error is for the whole connection: the
/// stream cannot be read on (a text refusal line, a malformed frame).
pub(crate) fn decode(buffered: &[u8], expected: u8) -> Result<Decoded, ClientError> {
    if buffered.first() == Some(&b'-') {
        // A text error line: the server refused us before knowing our protocol.
        return match memchr::memchr(b'\n', buffered) {
            Some(lf) => {
                let line = String::from_utf8_lossy(&buffered[1..lf]);
                Err(ClientError::Refused(line.trim_end().to_string()))
            }
            None => Ok(Decoded::Incomplete),
        };
    }
    match binary::decode_reply(buffered) {
        Ok(parsed) => {
            let reply = parsed.message;
            let result = if reply.status != binary::STATUS_OK {
                Err(ClientError::Server {
                    code: ErrorCode::from_u8(reply.status).unwrap_or(ErrorCode::BadRequest),
                    detail: reply.value,
                    message: String::from_utf8_lossy(reply.message).into_owned(),
                })
            } else if reply.opcode != expected {
                Err(ClientError::Protocol(format!(
                    "reply to opcode 0x{:02x} where 0x{expected:02x} was expected",
                    reply.opcode
                )))
            } else {
                Ok((reply.count, reply.value))
            };
            Ok(Decoded::Reply {
                consumed: parsed.consumed,
                result,
            })
        }
        Err(ParseError::Incomplete(_)) => Ok(Decoded::Incomplete),
        Err(ParseError::Fatal(problem)) => Err(ClientError::Protocol(problem.to_string())),
    }
}
