//! What the load generator sends and how it reads the replies, per target: seqd's binary
//! protocol, seqd's text protocol (RESP arrays or inline lines) and Redis `INCR`/`INCRBY`.
//! Encoding and decoding use seqd's own codecs (`seqd::protocol`).

use anyhow::{Result, bail};
use clap::ValueEnum;
use seqd::protocol::binary::{self, opcode};
use seqd::protocol::text::{self, ClientReply};
use seqd::protocol::{ErrorCode, ParseError, ParseOk};
use seqd::sequence::{DEFAULT_SEQUENCE, SequenceId, validate_name};
use serde::Serialize;

/// Which server and protocol to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// seqd's binary protocol: GETSEQ (or GETSEQ_BATCH with --batch), 16-byte frames.
    Binary,
    /// seqd's text protocol as RESP arrays: *1\r\n$6\r\nGETSEQ\r\n (what redis-benchmark sends).
    Resp,
    /// seqd's text protocol as inline lines: GETSEQ\r\n (seed 001's telnet form).
    Inline,
    /// Redis: INCR key (INCRBY key n with --batch), as RESP arrays.
    Redis,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Binary => "seqd binary",
            Kind::Resp => "seqd text (RESP)",
            Kind::Inline => "seqd text (inline)",
            Kind::Redis => "Redis INCR",
        }
    }
}

/// The Redis key used when `--sequence` is not given.
pub const DEFAULT_REDIS_KEY: &str = "loadgen:seq";

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// `count` numbers starting at `first`.
    Numbers { first: u64, count: u64 },
    /// The server refused the request; its message.
    ServerError(&'a [u8]),
    /// A seqd cluster node that does not issue numbers now (docs/HA.md): a standby
    /// (`NOTLEADER host:port`, `leader` is the address; `NOTLEADER unknown` during an
    /// election) or a node that cannot reach etcd (`UNAVAILABLE`); `leader` is `None` when the
    /// refusal names no leader. `message` is the whole refusal.
    NotServing {
        leader: Option<&'a [u8]>,
        message: &'a [u8],
    },
}

/// The refusal `message` (text, without the `-`) as an [`Outcome`]: `NotServing` for the
/// two refusals a cluster node gives instead of numbers.
fn text_refusal(message: &[u8]) -> Outcome<'_> {
    let name = |code: ErrorCode| code.text_prefix().as_bytes();
    let word_end = message
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(message.len());
    let (word, rest) = message.split_at(word_end);
    if word == name(ErrorCode::NotLeader) {
        let address = rest.trim_ascii();
        let leader = (!address.is_empty() && address != b"unknown").then_some(address);
        Outcome::NotServing { leader, message }
    } else if word == name(ErrorCode::Unavailable) {
        Outcome::NotServing {
            leader: None,
            message,
        }
    } else {
        Outcome::ServerError(message)
    }
}

/// The result of looking at the front of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    Reply {
        outcome: Outcome<'a>,
        consumed: usize,
    },
    Incomplete,
    /// The stream cannot be read any further.
    Malformed(String),
}

/// A prepared request and the matching reply decoder.
#[derive(Debug, Clone)]
pub struct Protocol {
    pub kind: Kind,
    pub batch: u64,
    request: Vec<u8>,
}

impl Protocol {
    /// `sequence_id` is the binary protocol's id for the sequence (from `OPEN`); other targets
    /// name the sequence (or Redis key) in the request text.
    pub fn new(
        kind: Kind,
        batch: u64,
        sequence: Option<&str>,
        sequence_id: SequenceId,
    ) -> Result<Protocol> {
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        if let Some(name) = sequence
            && kind != Kind::Redis
            && let Err(e) = validate_name(name.as_bytes())
        {
            bail!("--sequence {name:?}: {e}");
        }
        let count = batch.to_string();
        let mut request = Vec::new();
        match kind {
            Kind::Binary => {
                let id = if sequence.is_some() {
                    sequence_id
                } else {
                    DEFAULT_SEQUENCE
                };
                if batch == 1 {
                    binary::encode_request(&mut request, opcode::GETSEQ, id, 0);
                } else {
                    binary::encode_request(&mut request, opcode::GETSEQ_BATCH, id, batch);
                }
            }
            Kind::Resp | Kind::Redis => {
                let mut words: Vec<&str> = Vec::new();
                match (kind, batch) {
                    (Kind::Resp, 1) => words.push("GETSEQ"),
                    (Kind::Resp, _) => words.extend(["GETSEQ_BATCH", &count]),
                    (_, 1) => words.extend(["INCR", sequence.unwrap_or(DEFAULT_REDIS_KEY)]),
                    (_, _) => {
                        words.extend(["INCRBY", sequence.unwrap_or(DEFAULT_REDIS_KEY), &count])
                    }
                }
                if kind == Kind::Resp
                    && let Some(name) = sequence
                {
                    words.push(name);
                }
                request.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
                for word in words {
                    request.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
                }
            }
            Kind::Inline => {
                let mut line = if batch == 1 {
                    "GETSEQ".to_string()
                } else {
                    format!("GETSEQ_BATCH {batch}")
                };
                if let Some(name) = sequence {
                    line.push(' ');
                    line.push_str(name);
                }
                line.push_str("\r\n");
                request.extend_from_slice(line.as_bytes());
            }
        }
        Ok(Protocol {
            kind,
            batch,
            request,
        })
    }

    /// The bytes of one request.
    #[inline]
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Decodes the reply at the front of `buf`.
    #[inline]
    pub fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        match self.kind {
            Kind::Binary => self.parse_binary(buf),
            Kind::Resp | Kind::Inline | Kind::Redis => self.parse_text(buf),
        }
    }

    #[inline]
    fn parse_binary<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        if buf.first() == Some(&b'-') {
            // seqd refuses a connection over --max-connections with a text line, whatever
            // protocol the client meant to speak.
            return match memchr_lf(buf) {
                Some(lf) => Parsed::Reply {
                    outcome: Outcome::ServerError(trim_crlf(&buf[1..=lf])),
                    consumed: lf + 1,
                },
                None => Parsed::Incomplete,
            };
        }
        if buf.first().is_some_and(|&b| b != binary::MAGIC) {
            // Not a frame: fail now rather than wait for 16 bytes that may never come.
            return Parsed::Malformed(format!(
                "binary reply starting with byte 0x{:02x}, not the frame magic 0x{:02x} \
                 (is --target right for this server?)",
                buf[0],
                binary::MAGIC
            ));
        }
        match binary::decode_reply(buf) {
            Ok(ParseOk { message, consumed }) => {
                let outcome = if message.status == ErrorCode::NotLeader as u8 {
                    let address = message.message;
                    let leader = (!address.is_empty() && address != b"unknown").then_some(address);
                    Outcome::NotServing {
                        leader,
                        message: address,
                    }
                } else if message.status == ErrorCode::Unavailable as u8 {
                    Outcome::NotServing {
                        leader: None,
                        message: message.message,
                    }
                } else if message.status != binary::STATUS_OK {
                    Outcome::ServerError(message.message)
                } else {
                    let expected = if self.batch == 1 {
                        opcode::GETSEQ
                    } else {
                        opcode::GETSEQ_BATCH
                    };
                    if message.opcode != expected || u64::from(message.count) != self.batch {
                        return Parsed::Malformed(format!(
                            "binary reply to opcode 0x{:02x} carrying {} numbers, where \
                             opcode 0x{expected:02x} with {} was expected",
                            message.opcode, message.count, self.batch
                        ));
                    }
                    Outcome::Numbers {
                        first: message.value,
                        count: self.batch,
                    }
                };
                Parsed::Reply { outcome, consumed }
            }
            Err(ParseError::Incomplete(_)) => Parsed::Incomplete,
            Err(ParseError::Fatal(problem)) => {
                Parsed::Malformed(format!("binary reply: {problem}"))
            }
        }
    }

    #[inline]
    fn parse_text<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        let (reply, consumed) = match text::decode_reply(buf) {
            Ok(ParseOk { message, consumed }) => (message, consumed),
            Err(ParseError::Incomplete(_)) => return Parsed::Incomplete,
            Err(ParseError::Fatal(problem)) => {
                return Parsed::Malformed(format!("text reply: {problem}"));
            }
        };
        let numbers = match (reply, self.kind, self.batch) {
            (ClientReply::Error(message), ..) => {
                return Parsed::Reply {
                    outcome: text_refusal(message),
                    consumed,
                };
            }
            (ClientReply::Integer(n), Kind::Resp | Kind::Inline, 1) => {
                u64::try_from(n).ok().map(|first| (first, 1))
            }
            // INCRBY answers the last number of the range it added.
            (ClientReply::Integer(last), Kind::Redis, n) => u64::try_from(last)
                .ok()
                .and_then(|last| last.checked_sub(n - 1))
                .map(|first| (first, n)),
            (ClientReply::Pair(first, last), Kind::Resp | Kind::Inline, n) if n > 1 => {
                match (u64::try_from(first), u64::try_from(last)) {
                    (Ok(first), Ok(last)) if last >= first && last - first + 1 == n => {
                        Some((first, n))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match numbers {
            Some((first, count)) => Parsed::Reply {
                outcome: Outcome::Numbers { first, count },
                consumed,
            },
            None => Parsed::Malformed(format!(
                "unexpected reply {:?} to {}",
                String::from_utf8_lossy(&buf[..consumed]),
                String::from_utf8_lossy(&self.request).trim_end()
            )),
        }
    }
}

fn memchr_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqd::protocol::Reply;

    fn numbers(p: &Protocol, reply: &[u8]) -> (u64, u64, usize) {
        match p.parse(reply) {
            Parsed::Reply {
                outcome: Outcome::Numbers { first, count },
                consumed,
            } => (first, count, consumed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_on_the_wire() {
        let p = |kind, batch, seq| Protocol::new(kind, batch, seq, 7).unwrap();
        assert_eq!(p(Kind::Resp, 1, None).request(), b"*1\r\n$6\r\nGETSEQ\r\n");
        assert_eq!(
            p(Kind::Resp, 10, Some("orders")).request(),
            b"*3\r\n$12\r\nGETSEQ_BATCH\r\n$2\r\n10\r\n$6\r\norders\r\n"
        );
        assert_eq!(p(Kind::Inline, 1, None).request(), b"GETSEQ\r\n");
        assert_eq!(
            p(Kind::Inline, 5, Some("x")).request(),
            b"GETSEQ_BATCH 5 x\r\n"
        );
        assert_eq!(
            p(Kind::Redis, 1, None).request(),
            b"*2\r\n$4\r\nINCR\r\n$11\r\nloadgen:seq\r\n"
        );
        assert_eq!(
            p(Kind::Redis, 3, Some("k")).request(),
            b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$1\r\n3\r\n"
        );
        let mut frame = Vec::new();
        binary::encode_request(&mut frame, opcode::GETSEQ, 0, 0);
        assert_eq!(p(Kind::Binary, 1, None).request(), frame);
        frame.clear();
        binary::encode_request(&mut frame, opcode::GETSEQ_BATCH, 7, 100);
        assert_eq!(p(Kind::Binary, 100, Some("orders")).request(), frame);
        assert!(Protocol::new(Kind::Binary, 0, None, 0).is_err());
        assert!(Protocol::new(Kind::Resp, 1, Some("bad name"), 0).is_err());
    }

    #[test]
    fn replies_decode_to_number_ranges() {
        let bin = Protocol::new(Kind::Binary, 1, None, 0).unwrap();
        let mut reply = Vec::new();
        binary::encode_reply(&mut reply, &Reply::Number(42));
        assert_eq!(numbers(&bin, &reply), (42, 1, 16));
        assert_eq!(bin.parse(&reply[..10]), Parsed::Incomplete);

        let batch = Protocol::new(Kind::Binary, 20, None, 0).unwrap();
        reply.clear();
        binary::encode_reply(
            &mut reply,
            &Reply::Range {
                first: 1001,
                count: 20,
            },
        );
        assert_eq!(numbers(&batch, &reply), (1001, 20, 16));
        // A reply to a different request is malformed.
        assert!(matches!(bin.parse(&reply), Parsed::Malformed(_)));

        let resp = Protocol::new(Kind::Resp, 1, None, 0).unwrap();
        assert_eq!(numbers(&resp, b":7\r\n"), (7, 1, 4));
        let text_batch = Protocol::new(Kind::Inline, 20, None, 0).unwrap();
        assert_eq!(
            numbers(&text_batch, b"*2\r\n:1001\r\n:1020\r\n"),
            (1001, 20, 18)
        );
        assert!(matches!(
            text_batch.parse(b"*2\r\n:1001\r\n:1019\r\n"),
            Parsed::Malformed(_)
        ));
        let redis = Protocol::new(Kind::Redis, 1, None, 0).unwrap();
        assert_eq!(numbers(&redis, b":1\r\n"), (1, 1, 4));
        let redis_batch = Protocol::new(Kind::Redis, 10, None, 0).unwrap();
        assert_eq!(numbers(&redis_batch, b":30\r\n"), (21, 10, 5));
        assert!(matches!(redis.parse(b":-5\r\n"), Parsed::Malformed(_)));
        assert!(matches!(
            redis.parse(b"$3\r\nabc\r\n"),
            Parsed::Malformed(_)
        ));
    }

    #[test]
    fn server_errors_are_reported_with_their_message() {
        let resp = Protocol::new(Kind::Resp, 1, None, 0).unwrap();
        assert_eq!(
            resp.parse(b"-ERR nope\r\n"),
            Parsed::Reply {
                outcome: Outcome::ServerError(b"ERR nope"),
                consumed: 11
            }
        );
        let bin = Protocol::new(Kind::Binary, 1, None, 0).unwrap();
        assert_eq!(
            bin.parse(b"-LIMIT max number of connections (1) reached\r\n"),
            Parsed::Reply {
                outcome: Outcome::ServerError(b"LIMIT max number of connections (1) reached"),
                consumed: 46
            }
        );
        assert!(matches!(
            bin.parse(b"\x9f\x01\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"),
            Parsed::Malformed(_)
        ));
    }

    #[test]
    fn a_cluster_node_that_does_not_serve_says_where_the_leader_is() {
        let resp = Protocol::new(Kind::Resp, 1, None, 0).unwrap();
        let standby = |reply: &'static [u8]| match resp.parse(reply) {
            Parsed::Reply {
                outcome: Outcome::NotServing { leader, .. },
                ..
            } => leader,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            standby(b"-NOTLEADER 10.0.0.1:10001\r\n"),
            Some(&b"10.0.0.1:10001"[..])
        );
        assert_eq!(standby(b"-NOTLEADER unknown\r\n"), None);
        assert_eq!(standby(b"-UNAVAILABLE lease lost\r\n"), None);
        assert!(matches!(
            resp.parse(b"-NOTLEADERS x\r\n"),
            Parsed::Reply {
                outcome: Outcome::ServerError(_),
                ..
            }
        ));

        let bin = Protocol::new(Kind::Binary, 1, None, 0).unwrap();
        for (leader, expected) in [
            (Some("10.0.0.2:10001"), Some(&b"10.0.0.2:10001"[..])),
            (None, None),
        ] {
            let mut reply = Vec::new();
            binary::encode_reply(
                &mut reply,
                &Reply::Error {
                    opcode: opcode::GETSEQ,
                    problem: seqd::protocol::Problem::NotLeader { leader },
                },
            );
            match bin.parse(&reply) {
                Parsed::Reply {
                    outcome: Outcome::NotServing { leader, .. },
                    consumed,
                } => {
                    assert_eq!(leader, expected);
                    assert_eq!(consumed, reply.len());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
