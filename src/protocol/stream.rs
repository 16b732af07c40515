//! The stream protocol: a TLV stream the server pushes, acknowledged per message,
//! resumable by client id, closed by a checksum. Byte-compatible with the seed's Go client.
//!
//! Every message starts with a 3-byte ASCII tag; integers are big-endian `u32`.
//!
//! ```text
//! CON  n:u32  len:u32  client-id[len]     client → server: start or resume a stream of n numbers
//! NUM  seq:u32  number:u32                server → client: the number at position seq (0..n)
//! ACK  seq:u32                            client → server: position seq (or n, the checksum) arrived
//! CHK  seq:u32  len:u32  checksum[len]    server → client: end of stream; seq = n; SHA-1, 20 bytes
//! ```

use sha1::{Digest, Sha1};

use super::{Need, ParseError, ParseOk, Problem};

pub const TAG_CONNECT: &[u8; 3] = b"CON";
pub const TAG_NUMBER: &[u8; 3] = b"NUM";
pub const TAG_ACK: &[u8; 3] = b"ACK";
pub const TAG_CHECKSUM: &[u8; 3] = b"CHK";

/// Longest client id accepted in a `CON`.
pub const MAX_CLIENT_ID: usize = 256;
/// Length of the checksum a `CHK` carries (SHA-1).
pub const CHECKSUM_LEN: usize = 20;

/// A message of the stream protocol, borrowing variable-length fields from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Connect { count: u32, client_id: &'a [u8] },
    Number { sequence: u32, number: u32 },
    Ack { sequence: u32 },
    Checksum { sequence: u32, checksum: &'a [u8] },
}

impl Message<'_> {
    /// Appends the message's wire encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Message::Connect { count, client_id } => {
                out.extend_from_slice(TAG_CONNECT);
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&(client_id.len() as u32).to_be_bytes());
                out.extend_from_slice(client_id);
            }
            Message::Number { sequence, number } => {
                out.extend_from_slice(TAG_NUMBER);
                out.extend_from_slice(&sequence.to_be_bytes());
                out.extend_from_slice(&number.to_be_bytes());
            }
            Message::Ack { sequence } => {
                out.extend_from_slice(TAG_ACK);
                out.extend_from_slice(&sequence.to_be_bytes());
            }
            Message::Checksum { sequence, checksum } => {
                out.extend_from_slice(TAG_CHECKSUM);
                out.extend_from_slice(&sequence.to_be_bytes());
                out.extend_from_slice(&(checksum.len() as u32).to_be_bytes());
                out.extend_from_slice(checksum);
            }
        }
    }
}

/// Decodes one message (any of the four) from the front of `buf`. The server accepts only
/// `CON` and `ACK` from clients; the client only `NUM` and `CHK` (see the callers).
pub fn decode(buf: &[u8]) -> Result<ParseOk<Message<'_>>, ParseError<'_>> {
    let need = |total: usize| ParseError::Incomplete(Need::Bytes(total - buf.len()));
    if buf.len() < 3 {
        return Err(need(3));
    }
    let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let tag: &[u8] = &buf[..3];
    let (message, consumed) = match tag {
        t if t == TAG_ACK => {
            if buf.len() < 7 {
                return Err(need(7));
            }
            (Message::Ack { sequence: word(3) }, 7)
        }
        t if t == TAG_NUMBER => {
            if buf.len() < 11 {
                return Err(need(11));
            }
            (
                Message::Number {
                    sequence: word(3),
                    number: word(7),
                },
                11,
            )
        }
        t if t == TAG_CONNECT || t == TAG_CHECKSUM => {
            if buf.len() < 11 {
                return Err(need(11));
            }
            let len = word(7) as usize;
            let limit = if t == TAG_CONNECT {
                MAX_CLIENT_ID
            } else {
                CHECKSUM_LEN
            };
            if len > limit {
                return Err(ParseError::Fatal(Problem::Malformed(if t == TAG_CONNECT {
                    "CON client id longer than 256 bytes"
                } else {
                    "CHK checksum longer than 20 bytes"
                })));
            }
            if buf.len() < 11 + len {
                return Err(need(11 + len));
            }
            let body = &buf[11..11 + len];
            let message = if t == TAG_CONNECT {
                Message::Connect {
                    count: word(3),
                    client_id: body,
                }
            } else {
                Message::Checksum {
                    sequence: word(3),
                    checksum: body,
                }
            };
            (message, 11 + len)
        }
        _ => {
            return Err(ParseError::Fatal(Problem::Malformed(
                "unknown stream message tag",
            )));
        }
    };
    Ok(ParseOk { message, consumed })
}

/// The checksum of a stream: SHA-1 over its numbers, each as 4 big-endian bytes, in
/// sequence order.
pub fn checksum(numbers: impl IntoIterator<Item = u32>) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha1::new();
    for number in numbers {
        hasher.update(number.to_be_bytes());
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn encoded(message: Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(&mut out);
        out
    }

    // Hand-written from the stream protocol's message format; these are docs/PROTOCOL.md's examples.
    #[test]
    fn byte_exact_messages() {
        let cases: [(Message<'_>, &str); 4] = [
            (
                Message::Connect {
                    count: 10,
                    client_id: b"my-client-id-abc",
                },
                "43 4f 4e 00 00 00 0a 00 00 00 10 6d 79 2d 63 6c 69 65 6e 74 2d 69 64 2d 61 62 63",
            ),
            (
                Message::Number {
                    sequence: 4,
                    number: 1_899_243_751,
                },
                "4e 55 4d 00 00 00 04 71 34 28 e7",
            ),
            (Message::Ack { sequence: 4 }, "41 43 4b 00 00 00 04"),
            (
                Message::Checksum {
                    sequence: 10,
                    checksum: &[0xab; 20],
                },
                "43 48 4b 00 00 00 0a 00 00 00 14 ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab",
            ),
        ];
        for (message, bytes) in cases {
            let bytes = hex(bytes);
            assert_eq!(encoded(message), bytes, "{message:?}");
            assert_eq!(
                decode(&bytes),
                Ok(ParseOk {
                    message,
                    consumed: bytes.len()
                })
            );
        }
    }

    #[test]
    fn incomplete_messages_say_how_much_is_missing() {
        let con = encoded(Message::Connect {
            count: 3,
            client_id: b"abc",
        });
        for cut in 0..con.len() {
            assert!(
                matches!(decode(&con[..cut]), Err(ParseError::Incomplete(Need::Bytes(n))) if n > 0)
            );
        }
        assert_eq!(decode(b"AC"), Err(ParseError::Incomplete(Need::Bytes(1))));
        assert_eq!(
            decode(b"ACK\0"),
            Err(ParseError::Incomplete(Need::Bytes(3)))
        );
    }

    #[test]
    fn garbage_is_fatal() {
        assert!(matches!(decode(b"XYZ0000"), Err(ParseError::Fatal(_))));
        let mut huge = b"CON\0\0\0\x01".to_vec();
        huge.extend_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(decode(&huge), Err(ParseError::Fatal(_))));
    }

    #[test]
    fn checksum_is_sha1_of_big_endian_numbers() {
        // SHA-1 of the bytes 00 00 00 01 00 00 00 02, computed independently
        // (`printf '\0\0\0\1\0\0\0\2' | sha1sum`).
        let expected = hex("59 4b af a4 c0 ec 2e bd 0b 99 ac d9 83 3f 1b 59 66 fc ff f5");
        assert_eq!(checksum([1, 2]).to_vec(), expected);
        // Of nothing: SHA-1 of the empty string.
        assert_eq!(
            checksum([]).to_vec(),
            hex("da 39 a3 ee 5e 6b 4b 0d 32 55 bf ef 95 60 18 90 af d8 07 09")
        );
    }
}
