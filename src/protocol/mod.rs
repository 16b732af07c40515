//! Wire protocols: pure codecs, bytes in and bytes out, no I/O.
//!
//! Every codec decodes *in place*: a [`Request`] borrows from the caller's buffer. Decoders
//! follow one contract (after tokio mini-redis and pelikan): given the bytes received so far
//! they return either a complete message and how many bytes it used ([`ParseOk`]), or
//! [`ParseError::Incomplete`] saying what more is needed, or [`ParseError::Fatal`] when the
//! stream cannot be resynchronised and the connection must be closed after the error reply.
//!
//! (Over 600 lines: the request, reply and problem types every codec shares, each problem's
//! wording beside it: one vocabulary in one place.)

pub mod binary;
pub mod redis;
pub mod stream;
pub mod text;

use std::fmt;

use crate::sequence::{NameError, SequenceId};

/// How a text request was framed, so a reply that has no RESP type of its own (the lease
/// protocol's `start,end` line) is written the way that client can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An inline line (telnet, nc, the lease protocol's client), or a binary frame.
    Inline,
    /// A RESP array (redis-cli).
    Resp,
}

/// The names a client gives a lease request so that a retry is recognised as the same
/// request: its own id and an id for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseIds<'a> {
    pub client: &'a [u8],
    pub request: &'a [u8],
}

/// What the `LEASES` command reports (the wire's copy of the lease table's figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases granted and not yet acknowledged or expired.
    pub outstanding: u64,
    /// Leases granted since the data directory was created (retries not counted).
    pub granted: u64,
    pub acknowledged: u64,
    /// Expired unacknowledged; their numbers are never issued again.
    pub retired: u64,
    /// Expired unacknowledged and returned to the reuse pool.
    pub returned: u64,
    /// Served from the reuse pool.
    pub reused: u64,
}

/// A decoded message and the number of bytes it occupied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOk<T> {
    pub message: T,
    pub consumed: usize,
}

impl<T> ParseOk<T> {
    /// The same bytes consumed, decoded into something else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> ParseOk<U> {
        ParseOk {
            message: f(self.message),
            consumed: self.consumed,
        }
    }
}

/// Why no message could be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// The buffer holds the start of a message; feed more bytes and try again.
    Incomplete(Need),
    /// The bytes can never become a valid message: answer with this problem, then close.
    Fatal(Problem<'a>),
}

/// How many more bytes an incomplete message needs, at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Exactly this many more bytes complete the message.
    Bytes(usize),
    /// Bytes up to and including the next line feed may complete it.
    Line,
}

/// Which sequence a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// None named: the default sequence.
    Default,
    /// By id, as the binary protocol names them (see `OPEN`).
    Id(SequenceId),
    /// By name, as the text protocol names them.
    Name(&'a [u8]),
}

/// A request decoded from either protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// The next number.
    Get { target: Target<'a> },
    /// `count` consecutive numbers as one range.
    GetBatch { target: Target<'a>, count: u64 },
    /// The next number to be issued, without consuming it.
    Current { target: Target<'a> },
    /// Liveness check; the text protocol may echo a message.
    Ping { echo: Option<&'a [u8]> },
    /// Resolve (creating if needed) a sequence name to the id binary requests carry.
    Open { name: &'a [u8] },
    /// The binary protocol's `AUTH`: the password (text clients use Redis's `AUTH`).
    Auth { password: &'a [u8] },
    /// The lease protocol's `GET_SEQUENCE_RANGE n`: `count` consecutive numbers held as a lease until
    /// acknowledged; with `ids`, a retry returns the same range.
    Lease {
        target: Target<'a>,
        count: u64,
        ids: Option<LeaseIds<'a>>,
        framing: Framing,
    },
    /// The lease protocol's `ACK start,end`: the lease of exactly this inclusive range arrived.
    Ack {
        target: Target<'a>,
        first: u64,
        last: u64,
    },
    /// An `ACK` naming the client id the lease was granted to (binary: an optional trailer),
    /// needed when it does not come from the connection that got the lease.
    AckAsClient {
        target: Target<'a>,
        first: u64,
        last: u64,
        client: &'a [u8],
    },
    /// The lease table's counters.
    LeaseStats,
    /// Close the connection after replying.
    Quit,
    /// A Redis tool's handshake: `CONFIG GET parameter` (answered with the parameter and an
    /// empty value, as Redis answers a parameter that is not set) or `COMMAND ...` (answered
    /// with an empty array), so `redis-cli` and `redis-benchmark` start without complaint.
    RedisHandshake { config_get: Option<&'a [u8]> },
    /// A Redis command other than seqd's own (see [`redis`]).
    Redis(redis::Command<'a>),
    /// A Redis command refused with Redis's error wording.
    RedisError(redis::RedisError<'a>),
    /// An empty text line: no reply.
    Nothing,
    /// A well-framed binary request of a known opcode that cannot be served: answered with
    /// this error, carrying that opcode; the connection stays usable.
    Refused { opcode: u8, problem: Problem<'a> },
    /// A well-framed request that cannot be served: answered with this error; the
    /// connection stays usable.
    Invalid(Problem<'a>),
}

/// A reply, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The number a `GET` reserved.
    Number(u64),
    /// The `count` numbers starting at `first` that a `GET_BATCH` reserved.
    Range {
        first: u64,
        count: u64,
    },
    /// The next number to be issued.
    Current(u64),
    Pong {
        echo: Option<&'a [u8]>,
    },
    Opened(SequenceId),
    /// The binary `AUTH` succeeded.
    Authenticated,
    /// A lease of `count` numbers from `first`: `first,last` in text (the lease protocol).
    Leased {
        first: u64,
        count: u64,
        framing: Framing,
    },
    /// The lease starting at `first` is acknowledged: `+OK` in text.
    Acked {
        first: u64,
    },
    LeaseStats(LeaseStats),
    Ok,
    EmptyArray,
    /// `CONFIG GET` of a parameter seqd does not have: `[parameter, ""]`.
    UnsetConfig(&'a [u8]),
    /// `opcode` is the binary opcode of the request being answered (0 when unknown).
    Error {
        opcode: u8,
        problem: Problem<'a>,
    },
}

/// Error codes, shared by both protocols. The binary protocol carries the number; the text
/// protocol prefixes the message with the name (`-ERR`, `-EXHAUSTED`, ...).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or unsupported request; unknown command or opcode; wrong arguments.
    BadRequest = 1,
    /// A count or other argument outside its allowed range.
    OutOfRange = 2,
    /// The sequence has fewer numbers left than requested.
    Exhausted = 3,
    /// The sequence id is not open on this server.
    UnknownSequence = 4,
    /// A bound on the server's resources was hit (sequences, connections).
    Limit = 5,
    /// The server cannot issue numbers right now (durable state could not be written).
    Unavailable = 6,
    /// The stream is unusable: the connection is closed after this reply.
    Fatal = 7,
    /// No lease has this range (unknown, or a lease starts there but ends elsewhere).
    NoLease = 8,
    /// The lease expired before it was acknowledged.
    Expired = 9,
    /// A password is set and the connection has not authenticated (`AUTH` first).
    NoAuth = 10,
    /// The password given to `AUTH` is wrong.
    WrongPass = 11,
    /// Protected mode refused a client from another host (sent in text, then closed).
    Denied = 12,
    /// This node is a standby: the message is the leader's `host:port` (or `unknown`).
    NotLeader = 13,
}

impl ErrorCode {
    /// The word that starts a text-protocol error reply.
    pub fn text_prefix(self) -> &'static str {
        match self {
            ErrorCode::BadRequest | ErrorCode::OutOfRange | ErrorCode::Fatal => "ERR",
            ErrorCode::Exhausted => "EXHAUSTED",
            ErrorCode::UnknownSequence => "NOSEQUENCE",
            ErrorCode::Limit => "LIMIT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NoLease => "NOLEASE",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::WrongPass => "WRONGPASS",
            ErrorCode::Denied => "DENIED",
            ErrorCode::NotLeader => "NOTLEADER",
        }
    }

    pub fn from_u8(code: u8) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::OutOfRange,
            3 => ErrorCode::Exhausted,
            4 => ErrorCode::UnknownSequence,
            5 => ErrorCode::Limit,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::Fatal,
            8 => ErrorCode::NoLease,
            9 => ErrorCode::Expired,
            10 => ErrorCode::NoAuth,
            11 => ErrorCode::WrongPass,
            12 => ErrorCode::Denied,
            13 => ErrorCode::NotLeader,
            _ => return None,
        })
    }
}

/// Every way a request can be refused, with what the message needs to say. Formatting is
/// done straight into the output buffer (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem<'a> {
    UnknownCommand(&'a [u8]),
    WrongArity(&'static str),
    NotAnInteger(&'a [u8]),
    UnknownOpcode(u8),
    ReservedFieldSet,
    BatchOutOfRange {
        max: u64,
    },
    Exhausted {
        remaining: u64,
    },
    InvalidName(NameError),
    TooManySequences {
        limit: u32,
    },
    UnknownSequence(SequenceId),
    Unavailable,
    /// A standby: where the leader is (None: unknown, an election runs).
    NotLeader {
        leader: Option<&'static str>,
    },
    LeaseSizeOutOfRange {
        max: u64,
    },
    /// `which` is "client id" or "request id".
    BadLeaseId {
        which: &'static str,
        error: NameError,
    },
    BadRange(&'a [u8]),
    /// The client used this request id before for a lease of another size or sequence.
    RequestIdReused {
        count: u64,
    },
    TooManyClientLeases {
        limit: u32,
    },
    TooManyLeases {
        limit: usize,
    },
    /// The client's address holds `--max-leases-per-peer` unacknowledged leases.
    TooManyPeerLeases {
        limit: usize,
    },
    UnknownLease {
        first: u64,
        last: u64,
    },
    /// The lease was granted with a client id this `ACK` neither carries nor comes from the
    /// connection of.
    LeaseNotYours {
        first: u64,
        last: u64,
    },
    /// A binary `ACK` of 0 numbers.
    EmptyAck,
    /// A main-port request for numbers of the stream protocol's sequence (named here).
    ReservedForStreams(&'static str),
    /// The range asked about is inside the lease `lease_first..=lease_last`, but is not it.
    LeaseMismatch {
        first: u64,
        last: u64,
        lease_first: u64,
        lease_last: u64,
    },
    /// `returned`: to the reuse pool (unsafe to use) rather than retired (never reissued).
    LeaseExpired {
        first: u64,
        last: u64,
        returned: bool,
    },
    /// The lease (or its acknowledgement) is in memory but could not be made durable.
    LeaseNotDurable,
    // Fatal ones: the connection closes after the reply.
    LineTooLong {
        limit: usize,
    },
    Malformed(&'static str),
    /// A RESP array declaring more elements than a request may have.
    TooManyElements {
        declared: u64,
        limit: usize,
    },
    /// A RESP bulk string declaring more bytes than a request may have.
    BulkTooLong {
        declared: u64,
        limit: usize,
    },
    UnsupportedVersion(u8),
    UnknownProtocol(u8),
    TooManyConnections {
        limit: usize,
    },
    /// A request other than AUTH/HELLO/PING/QUIT before the connection authenticated.
    NoAuth,
    /// The password given does not match `--requirepass`.
    WrongPass,
    /// Protected mode: a client from another host while no password is set.
    ProtectedMode,
}

/// Commands the text protocol understands, for the unknown-command reply.
pub const TEXT_COMMANDS: &str = "GETSEQ, GETSEQ_BATCH, CURRENT, GET_SEQUENCE_RANGE, ACK, LEASES, \
     PING, QUIT, INCR, INCRBY, GET, MULTI, EXEC, DISCARD, HELLO, AUTH, CLIENT, SELECT, ECHO, \
     INFO, COMMAND, CONFIG GET, TIME, DBSIZE, RESET";

impl Problem<'_> {
    pub fn code(&self) -> ErrorCode {
        match self {
            Problem::UnknownCommand(_)
            | Problem::WrongArity(_)
            | Problem::NotAnInteger(_)
            | Problem::UnknownOpcode(_)
            | Problem::ReservedFieldSet
            | Problem::InvalidName(_)
            | Problem::BadLeaseId { .. }
            | Problem::BadRange(_)
            | Problem::EmptyAck
            | Problem::ReservedForStreams(_)
            | Problem::RequestIdReused { .. } => ErrorCode::BadRequest,
            Problem::BatchOutOfRange { .. } | Problem::LeaseSizeOutOfRange { .. } => {
                ErrorCode::OutOfRange
            }
            Problem::Exhausted { .. } => ErrorCode::Exhausted,
            Problem::UnknownSequence(_) => ErrorCode::UnknownSequence,
            Problem::TooManySequences { .. }
            | Problem::TooManyConnections { .. }
            | Problem::TooManyClientLeases { .. }
            | Problem::TooManyLeases { .. }
            | Problem::TooManyPeerLeases { .. } => ErrorCode::Limit,
            Problem::Unavailable | Problem::LeaseNotDurable => ErrorCode::Unavailable,
            Problem::NotLeader { .. } => ErrorCode::NotLeader,
            Problem::UnknownLease { .. }
            | Problem::LeaseNotYours { .. }
            | Problem::LeaseMismatch { .. } => ErrorCode::NoLease,
            Problem::LeaseExpired { .. } => ErrorCode::Expired,
            Problem::NoAuth => ErrorCode::NoAuth,
            Problem::WrongPass => ErrorCode::WrongPass,
            Problem::ProtectedMode => ErrorCode::Denied,
            Problem::LineTooLong { .. }
            | Problem::Malformed(_)
            | Problem::TooManyElements { .. }
            | Problem::BulkTooLong { .. }
            | Problem::UnsupportedVersion(_)
            | Problem::UnknownProtocol(_) => ErrorCode::Fatal,
        }
    }

    /// A machine-readable number that goes with the code (a limit, a count), or 0.
    pub fn detail(&self) -> u64 {
        match *self {
            Problem::BatchOutOfRange { max } | Problem::LeaseSizeOutOfRange { max } => max,
            Problem::TooManyClientLeases { limit } => u64::from(limit),
            Problem::TooManyLeases { limit } | Problem::TooManyPeerLeases { limit } => limit as u64,
            Problem::RequestIdReused { count } => count,
            Problem::LeaseMismatch { lease_first, .. } => lease_first,
            Problem::UnknownLease { first, .. }
            | Problem::LeaseNotYours { first, .. }
            | Problem::LeaseExpired { first, .. } => first,
            Problem::Exhausted { remaining } => remaining,
            Problem::TooManySequences { limit } => u64::from(limit),
            Problem::UnknownSequence(id) => u64::from(id),
            Problem::LineTooLong { limit }
            | Problem::TooManyElements { limit, .. }
            | Problem::BulkTooLong { limit, .. } => limit as u64,
            Problem::TooManyConnections { limit } => limit as u64,
            Problem::UnknownOpcode(op) | Problem::UnsupportedVersion(op) => u64::from(op),
            _ => 0,
        }
    }

    /// Whether the connection must be closed after this reply.
    pub fn is_fatal(&self) -> bool {
        self.code() == ErrorCode::Fatal || matches!(self, Problem::TooManyConnections { .. })
    }
}

impl fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            // The text protocol's documented wording, kept byte for byte.
            Problem::UnknownCommand(name) => write!(
                f,
                "Unknown command '{}'. Supported: {TEXT_COMMANDS}",
                Printable(name)
            ),
            Problem::WrongArity(usage) => write!(f, "wrong number of arguments: usage: {usage}"),
            Problem::NotAnInteger(arg) => {
                write!(f, "'{}' is not a non-negative integer", Printable(arg))
            }
            Problem::UnknownOpcode(op) => write!(f, "unknown opcode 0x{op:02x}"),
            Problem::ReservedFieldSet => write!(f, "reserved fields must be zero"),
            Problem::BatchOutOfRange { max } => {
                write!(f, "batch size must be between 1 and {max} (--max-batch)")
            }
            Problem::Exhausted { remaining } => write!(
                f,
                "sequence exhausted: only {remaining} numbers are left before the maximum \
                 {}",
                crate::sequence::MAX_VALUE
            ),
            Problem::InvalidName(e) => write!(f, "{e}"),
            Problem::TooManySequences { limit } => write!(
                f,
                "too many sequences: the limit is {limit} (--max-sequences)"
            ),
            Problem::UnknownSequence(id) => {
                write!(
                    f,
                    "no sequence has id {id}: OPEN the sequence by name first"
                )
            }
            Problem::Unavailable => write!(
                f,
                "cannot issue numbers: the durable state could not be written (see server log); \
                 retry later"
            ),
            // The whole message is the address: clients parse it.
            Problem::NotLeader { leader } => write!(f, "{}", leader.unwrap_or("unknown")),
            Problem::LeaseSizeOutOfRange { max } => {
                write!(f, "lease size must be between 1 and {max} (--max-batch)")
            }
            Problem::BadLeaseId { which, error } => {
                write!(f, "bad {which}: {}", LeaseIdError(error))
            }
            Problem::BadRange(arg) => write!(
                f,
                "'{}' is not a range: expected start,end (inclusive, start <= end)",
                Printable(arg)
            ),
            Problem::RequestIdReused { count } => write!(
                f,
                "this client already used this request id for a different lease ({count} \
                 numbers, or another sequence); use a new request id for a new request"
            ),
            Problem::TooManyClientLeases { limit } => write!(
                f,
                "this client already holds {limit} unacknowledged leases \
                 (--max-leases-per-client); acknowledge some first"
            ),
            Problem::TooManyLeases { limit } => write!(
                f,
                "too many unacknowledged leases: the server tracks at most {limit} \
                 (--max-leases); retry later"
            ),
            Problem::TooManyPeerLeases { limit } => write!(
                f,
                "this address already holds {limit} unacknowledged leases, the most one peer \
                 may hold (--max-leases-per-peer; clients behind one address share it); \
                 acknowledge some first"
            ),
            Problem::LeaseNotYours { first, last } => write!(
                f,
                "the lease {first},{last} was granted to another client: acknowledge it with \
                 the client id it was requested with, or from the connection that got it \
                 (a retry of the request with the same ids on this connection also does)"
            ),
            Problem::ReservedForStreams(name) => write!(
                f,
                "sequence '{name}' is reserved for the stream protocol (--stream-sequence)"
            ),
            Problem::EmptyAck => write!(
                f,
                "ACK count must be at least 1: name the lease's first number and its count"
            ),
            Problem::UnknownLease { first, last } => write!(
                f,
                "no lease has the range {first},{last} (never granted, already forgotten, or \
                 of another sequence)"
            ),
            Problem::LeaseMismatch {
                first,
                last,
                lease_first,
                lease_last,
            } => write!(
                f,
                "no lease has the range {first},{last}: the lease holding {first} is \
                 {lease_first},{lease_last}"
            ),
            Problem::LeaseExpired {
                first,
                last,
                returned: false,
            } => write!(
                f,
                "lease {first},{last} expired before it was acknowledged (--lease-timeout); it \
                 was retired: its numbers will never be issued again"
            ),
            Problem::LeaseExpired {
                first,
                last,
                returned: true,
            } => write!(
                f,
                "lease {first},{last} expired before it was acknowledged (--lease-timeout) and \
                 was returned to the reuse pool (--lease-reuse): do not use its numbers"
            ),
            Problem::LeaseNotDurable => write!(
                f,
                "the lease could not be recorded durably (see server log); retry later with \
                 the same client and request id"
            ),
            Problem::LineTooLong { limit } => {
                write!(f, "request longer than {limit} bytes; closing connection")
            }
            Problem::Malformed(what) => write!(f, "malformed request: {what}; closing connection"),
            Problem::TooManyElements { declared, limit } => write!(
                f,
                "malformed request: RESP array declares {declared} elements, more than the \
                 {limit} a request may have; closing connection"
            ),
            Problem::BulkTooLong { declared, limit } => write!(
                f,
                "malformed request: RESP bulk string declares {declared} bytes, more than the \
                 {limit} a request may have; closing connection"
            ),
            Problem::UnsupportedVersion(v) => write!(
                f,
                "unsupported binary protocol version {v}; this server speaks version {}; \
                 closing connection",
                binary::VERSION
            ),
            Problem::UnknownProtocol(byte) => write!(
                f,
                "unknown protocol: first byte 0x{byte:02x} is neither a binary frame (0x{:02x}) \
                 nor a text command; closing connection",
                binary::MAGIC
            ),
            Problem::TooManyConnections { limit } => write!(
                f,
                "max number of connections ({limit}) reached (--max-connections); \
                 closing connection"
            ),
            // Redis's wording, byte for byte: clients match on it.
            Problem::NoAuth => write!(f, "Authentication required."),
            Problem::WrongPass => write!(f, "invalid username-password pair or user is disabled."),
            // Redis's protected-mode reply, with seqd's flags.
            Problem::ProtectedMode => write!(
                f,
                "seqd is running in protected mode because protected mode is enabled and no \
                 password is set for the default user. In this mode connections are only \
                 accepted from the loopback interface. If you want to connect from external \
                 computers to seqd you may adopt one of the following solutions: 1) Set a \
                 password: restart seqd with --requirepass or --password-file (recommended). \
                 2) Bind to a loopback address only: --host 127.0.0.1, and reach it through a \
                 tunnel. 3) Disable protected mode with --protected-mode no, only if the network \
                 in front of seqd is trusted (a firewall lets only your clients reach the port)."
            ),
        }
    }
}

/// A [`NameError`] worded for a lease id rather than a sequence name.
struct LeaseIdError(NameError);

impl fmt::Display for LeaseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = crate::sequence::MAX_NAME_LEN;
        match self.0 {
            NameError::Empty => write!(f, "it is empty"),
            NameError::TooLong => write!(f, "it is longer than {max} bytes"),
            NameError::BadCharacter => {
                write!(f, "it may contain only letters, digits and _ . : -")
            }
        }
    }
}

/// Shows client bytes safely inside an error message: printable ASCII as is, the rest escaped,
/// at most 64 bytes.
pub(crate) struct Printable<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        for &b in self.0.iter().take(SHOWN) {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.0.len() > SHOWN {
            write!(f, "...")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_wording_matches_seed() {
        let msg = Problem::UnknownCommand(b"FOOBAR").to_string();
        assert!(msg.starts_with("Unknown command 'FOOBAR'. Supported: GETSEQ, "));
    }

    #[test]
    fn client_bytes_are_escaped_and_truncated() {
        let msg = Problem::UnknownCommand(b"a\r\x1b").to_string();
        assert!(msg.starts_with("Unknown command 'a\\x0d\\x1b'"));
        let long = [b'x'; 100];
        assert!(
            Problem::UnknownCommand(&long)
                .to_string()
                .contains("xxx...'")
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in 1..=13 {
            assert_eq!(ErrorCode::from_u8(code).unwrap() as u8, code);
        }
        assert_eq!(ErrorCode::from_u8(0), None);
        assert_eq!(ErrorCode::from_u8(14), None);
    }
}
