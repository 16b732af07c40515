//! The Redis commands that Redis clients send on connect and in normal use (`HELLO`, `CLIENT`,
//! `SELECT`, `INFO`, `MULTI`/`EXEC`, ...) and Redis's `INCR`/`INCRBY`/`GET` on a key as a
//! named sequence, with Redis's reply shapes in RESP2 and RESP3.
//!
//! Pure codec: the session decides what a command does; this module only turns words into a
//! [`Command`] and a [`RedisReply`] into bytes. Reply shapes follow what `redis-server` 7
//! answers (a connection that sent `HELLO 3` gets RESP3 maps, nulls and verbatim strings).
//!
//! (Over 600 lines: the last 280 are the byte-exact RESP2/RESP3 reply tests, kept beside the codec.)

use std::fmt;

use super::text::{bulk, integer};
use super::{Reply, Request, Target};

/// The RESP version a connection chose with `HELLO` (RESP2 until then, as in Redis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RespVersion {
    #[default]
    Resp2,
    Resp3,
}

/// The version `HELLO` reports: the Redis release whose reply shapes seqd follows, so that
/// clients which gate features on it pick the modern ones.
pub const REDIS_COMPATIBLE_VERSION: &str = "7.2.0";

/// A Redis command other than seqd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        version: Option<RespVersion>,
        auth: Option<Auth<'a>>,
        name: Option<&'a [u8]>,
    },
    /// `AUTH [user] pass`.
    Auth(Auth<'a>),
    ClientSetName(&'a [u8]),
    ClientGetName,
    ClientId,
    ClientInfo,
    /// `CLIENT SETINFO`, `NO-EVICT`, `NO-TOUCH`: accepted and ignored (nothing is evicted).
    ClientAccepted,
    Select,
    Echo(&'a [u8]),
    /// `INFO [section]`; `None` is the default set of sections.
    Info(Option<&'a [u8]>),
    CommandCount,
    Reset,
    Time,
    DbSize,
    Multi,
    Exec,
    Discard,
    /// `INCRBY key n`: reserves `n` numbers, answers the last (Redis answers the new value).
    IncrBy {
        target: Target<'a>,
        count: u64,
    },
    /// `GET key`: the last number issued, without creating the sequence.
    Get(&'a [u8]),
}

/// Credentials in `HELLO ... AUTH` or `AUTH`; `user` is `None` for `AUTH pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    pub user: Option<&'a [u8]>,
    pub password: &'a [u8],
}

/// A Redis command refused with Redis's own error code word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisError<'a> {
    /// `HELLO` with a version other than 2 or 3.
    NoProto,
    VersionNotAnInteger,
    /// `HELLO`/`AUTH` with credentials the server does not accept.
    WrongPass,
    /// `AUTH pass` while no password is set.
    AuthWithoutPassword,
    /// A command before the connection authenticated (a password is set).
    NoAuth,
    /// `HELLO` without `AUTH` before the connection authenticated.
    HelloBeforeAuth,
    HelloSyntax(&'a [u8]),
    UnknownSubcommand {
        command: &'static str,
        subcommand: &'a [u8],
    },
    WrongArity(&'static str),
    NotAnInteger,
    /// `SELECT n` for n ≠ 0.
    DbOutOfRange,
    BadClientName,
    /// `SET`, `DEL`, `DECR`, ...: `command` as the client wrote it.
    SequencesNeverGoBack(&'a [u8]),
    /// `INCRBY key n` with n < 1.
    IncrementNotPositive,
    MultiNested,
    ExecWithoutMulti,
    DiscardWithoutMulti,
    ExecAbort,
    /// A command seqd does not run inside `MULTI`.
    NotInTransaction(&'a [u8]),
    TransactionTooLong {
        limit: usize,
    },
}

impl RedisError<'_> {
    /// The word that starts the error reply, as Redis writes it.
    pub fn prefix(&self) -> &'static str {
        match self {
            RedisError::NoProto => "NOPROTO",
            RedisError::WrongPass => "WRONGPASS",
            RedisError::NoAuth | RedisError::HelloBeforeAuth => "NOAUTH",
            RedisError::ExecAbort => "EXECABORT",
            _ => "ERR",
        }
    }
}

impl fmt::Display for RedisError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use super::Printable;
        match *self {
            RedisError::NoProto => write!(f, "unsupported protocol version"),
            RedisError::VersionNotAnInteger => {
                write!(f, "Protocol version is not an integer or out of range")
            }
            RedisError::WrongPass => {
                write!(f, "invalid username-password pair or user is disabled.")
            }
            RedisError::NoAuth => write!(f, "Authentication required."),
            RedisError::HelloBeforeAuth => write!(
                f,
                "HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client \
                 and select the RESP protocol version at the same time"
            ),
            RedisError::AuthWithoutPassword => write!(
                f,
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?"
            ),
            RedisError::HelloSyntax(option) => {
                write!(f, "Syntax error in HELLO option '{}'", Printable(option))
            }
            RedisError::UnknownSubcommand {
                command,
                subcommand,
            } => write!(
                f,
                "unknown subcommand '{}'. Try {command} HELP.",
                Printable(subcommand)
            ),
            RedisError::WrongArity(command) => {
                write!(f, "wrong number of arguments for '{command}' command")
            }
            RedisError::NotAnInteger => write!(f, "value is not an integer or out of range"),
            RedisError::DbOutOfRange => write!(
                f,
                "DB index is out of range: seqd has one database, SELECT 0"
            ),
            RedisError::BadClientName => write!(
                f,
                "Client names cannot contain spaces, newlines or special characters."
            ),
            RedisError::SequencesNeverGoBack(command) => write!(
                f,
                "'{}' is not supported: a key is a sequence, and a sequence never goes back \
                 (use INCR, INCRBY and GET)",
                Printable(command)
            ),
            RedisError::IncrementNotPositive => write!(
                f,
                "increment must be at least 1: a sequence never goes back"
            ),
            RedisError::MultiNested => write!(f, "MULTI calls can not be nested"),
            RedisError::ExecWithoutMulti => write!(f, "EXEC without MULTI"),
            RedisError::DiscardWithoutMulti => write!(f, "DISCARD without MULTI"),
            RedisError::ExecAbort => {
                write!(f, "Transaction discarded because of previous errors.")
            }
            RedisError::NotInTransaction(command) => write!(
                f,
                "'{}' is not allowed inside MULTI: seqd queues GETSEQ, GETSEQ_BATCH, CURRENT, \
                 INCR, INCRBY, GET, PING, ECHO and TIME",
                Printable(command)
            ),
            RedisError::TransactionTooLong { limit } => {
                write!(f, "a transaction holds at most {limit} commands")
            }
        }
    }
}

/// A reply to a Redis command, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisReply<'a> {
    /// The `HELLO` map (a flat array in RESP2).
    Hello {
        version: RespVersion,
        id: u64,
    },
    /// `+OK`, `+QUEUED`, `+RESET`.
    Status(&'static str),
    Bulk(&'a [u8]),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    Integer(u64),
    /// `TIME`: seconds and microseconds, as two bulk strings.
    Time {
        seconds: u64,
        micros: u32,
    },
    /// Text meant for people (`INFO`, `CLIENT INFO`): a bulk string in RESP2, a verbatim
    /// `txt` string in RESP3.
    Text(&'a [u8]),
    /// The header of `EXEC`'s reply: `count` replies follow.
    ArrayOf(usize),
    Error(RedisError<'a>),
}

/// Turns the words of a command seqd's own parser did not know into a request, or `None`
/// when Redis has no such command either. `words` holds the first words, `count` how many
/// there were in all.
pub(super) fn interpret<'a>(words: &[&'a [u8]], count: usize) -> Option<Request<'a>> {
    let name = words[0];
    let is = |command: &str| name.eq_ignore_ascii_case(command.as_bytes());
    let arg = |i: usize| words.get(i).copied().unwrap_or_default();
    let error = |e| Some(Request::RedisError(e));
    let command = |c| Some(Request::Redis(c));
    let exactly = |n: usize, command_name, ok: Command<'a>| {
        if count == n {
            Some(Request::Redis(ok))
        } else {
            Some(Request::RedisError(RedisError::WrongArity(command_name)))
        }
    };
    if is("HELLO") {
        Some(interpret_hello(&words[..count.min(words.len())], count))
    } else if is("AUTH") {
        match count {
            2 => command(Command::Auth(Auth {
                user: None,
                password: arg(1),
            })),
            3 => command(Command::Auth(Auth {
                user: Some(arg(1)),
                password: arg(2),
            })),
            _ => error(RedisError::WrongArity("auth")),
        }
    } else if is("CLIENT") {
        Some(interpret_client(words, count))
    } else if is("SELECT") {
        if count != 2 {
            return error(RedisError::WrongArity("select"));
        }
        match parse_i64(arg(1)) {
            Some(0) => command(Command::Select),
            Some(_) => error(RedisError::DbOutOfRange),
            None => error(RedisError::NotAnInteger),
        }
    } else if is("ECHO") {
        exactly(2, "echo", Command::Echo(arg(1)))
    } else if is("INFO") {
        command(Command::Info((count > 1).then(|| arg(1))))
    } else if is("RESET") {
        exactly(1, "reset", Command::Reset)
    } else if is("TIME") {
        exactly(1, "time", Command::Time)
    } else if is("DBSIZE") {
        exactly(1, "dbsize", Command::DbSize)
    } else if is("MULTI") {
        exactly(1, "multi", Command::Multi)
    } else if is("EXEC") {
        exactly(1, "exec", Command::Exec)
    } else if is("DISCARD") {
        exactly(1, "discard", Command::Discard)
    } else if is("INCR") {
        if count != 2 {
            return error(RedisError::WrongArity("incr"));
        }
        Some(Request::Get {
            target: Target::Name(arg(1)),
        })
    } else if is("INCRBY") {
        if count != 3 {
            return error(RedisError::WrongArity("incrby"));
        }
        match parse_i64(arg(2)) {
            Some(n) if n >= 1 => command(Command::IncrBy {
                target: Target::Name(arg(1)),
                count: n as u64,
            }),
            Some(_) => error(RedisError::IncrementNotPositive),
            None => error(RedisError::NotAnInteger),
        }
    } else if is("GET") {
        exactly(2, "get", Command::Get(arg(1)))
    } else if NEVER_BACK.iter().any(|c| is(c)) {
        error(RedisError::SequencesNeverGoBack(name))
    } else {
        None
    }
}

/// Commands that would set, lower or remove a key's value: refused, since a key is a
/// sequence.
const NEVER_BACK: [&str; 13] = [
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "DEL",
    "UNLINK",
    "DECR",
    "DECRBY",
    "INCRBYFLOAT",
    "FLUSHDB",
    "FLUSHALL",
];

fn interpret_hello<'a>(words: &[&'a [u8]], count: usize) -> Request<'a> {
    let mut version = None;
    let mut auth = None;
    let mut name = None;
    if count > words.len() {
        // More options than any valid HELLO has.
        return Request::RedisError(RedisError::HelloSyntax(words[words.len() - 1]));
    }
    if let Some(&v) = words.get(1) {
        version = match parse_i64(v) {
            Some(2) => Some(RespVersion::Resp2),
            Some(3) => Some(RespVersion::Resp3),
            Some(_) => return Request::RedisError(RedisError::NoProto),
            None => {
                return Request::RedisError(RedisError::VersionNotAnInteger);
            }
        };
    }
    let mut i = 2;
    while i < words.len() {
        let option = words[i];
        if option.eq_ignore_ascii_case(b"AUTH") && i + 2 < words.len() {
            auth = Some(Auth {
                user: Some(words[i + 1]),
                password: words[i + 2],
            });
            i += 3;
        } else if option.eq_ignore_ascii_case(b"SETNAME") && i + 1 < words.len() {
            name = Some(words[i + 1]);
            i += 2;
        } else {
            return Request::RedisError(RedisError::HelloSyntax(option));
        }
    }
    Request::Redis(Command::Hello {
        version,
        auth,
        name,
    })
}

fn interpret_client<'a>(words: &[&'a [u8]], count: usize) -> Request<'a> {
    let Some(&sub) = words.get(1) else {
        return Request::RedisError(RedisError::WrongArity("client"));
    };
    let is = |s: &str| sub.eq_ignore_ascii_case(s.as_bytes());
    let with = |n: usize, name, command| match count == n {
        true => Request::Redis(command),
        false => Request::RedisError(RedisError::WrongArity(name)),
    };
    if is("SETNAME") {
        let name = words.get(2).copied().unwrap_or_default();
        if count == 3 && !valid_client_name(name) {
            return Request::RedisError(RedisError::BadClientName);
        }
        with(3, "client|setname", Command::ClientSetName(name))
    } else if is("GETNAME") {
        with(2, "client|getname", Command::ClientGetName)
    } else if is("ID") {
        with(2, "client|id", Command::ClientId)
    } else if is("INFO") {
        with(2, "client|info", Command::ClientInfo)
    } else if is("SETINFO") {
        with(4, "client|setinfo", Command::ClientAccepted)
    } else if is("NO-EVICT") || is("NO-TOUCH") {
        with(3, "client|no-evict", Command::ClientAccepted)
    } else {
        Request::RedisError(RedisError::UnknownSubcommand {
            command: "CLIENT",
            subcommand: sub,
        })
    }
}

/// Redis's rule: a client name is printable ASCII without spaces (empty clears the name).
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| b > b' ' && b <= b'~')
}

fn parse_i64(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Appends the encoding of `reply` in the connection's RESP version.
pub fn encode(out: &mut Vec<u8>, reply: &RedisReply<'_>, version: RespVersion) {
    let v3 = version == RespVersion::Resp3;
    match *reply {
        RedisReply::Hello { version: proto, id } => {
            out.extend_from_slice(if v3 { b"%7\r\n" } else { b"*14\r\n" });
            bulk(out, b"server");
            bulk(out, b"seqd");
            bulk(out, b"version");
            bulk(out, REDIS_COMPATIBLE_VERSION.as_bytes());
            bulk(out, b"proto");
            integer(out, if proto == RespVersion::Resp3 { 3 } else { 2 });
            bulk(out, b"id");
            integer(out, id);
            bulk(out, b"mode");
            bulk(out, b"standalone");
            bulk(out, b"role");
            bulk(out, b"master");
            bulk(out, b"modules");
            out.extend_from_slice(b"*0\r\n");
        }
        RedisReply::Status(status) => {
            out.push(b'+');
            out.extend_from_slice(status.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RedisReply::Bulk(bytes) => bulk(out, bytes),
        RedisReply::Null if v3 => out.extend_from_slice(b"_\r\n"),
        RedisReply::Null => out.extend_from_slice(b"$-1\r\n"),
        RedisReply::Integer(n) => integer(out, n),
        RedisReply::Time { seconds, micros } => {
            out.extend_from_slice(b"*2\r\n");
            bulk(out, itoa::Buffer::new().format(seconds).as_bytes());
            bulk(out, itoa::Buffer::new().format(micros).as_bytes());
        }
        RedisReply::Text(text) if v3 => {
            out.push(b'=');
            out.extend_from_slice(itoa::Buffer::new().format(text.len() + 4).as_bytes());
            out.extend_from_slice(b"\r\ntxt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        RedisReply::Text(text) => bulk(out, text),
        RedisReply::ArrayOf(count) => {
            out.push(b'*');
            out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RedisReply::Error(error) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "-{} {error}\r\n", error.prefix());
        }
    }
}

/// Appends a reply of seqd's own commands in the connection's RESP version: the same bytes as
/// [`super::text::encode_reply`], except where RESP3 has a type of its own (`CONFIG GET`'s
/// answer is a map).
pub fn encode_reply(out: &mut Vec<u8>, reply: &Reply<'_>, version: RespVersion) {
    match *reply {
        Reply::UnsetConfig(parameter) if version == RespVersion::Resp3 => {
            out.extend_from_slice(b"%1\r\n");
            bulk(out, parameter);
            bulk(out, b"");
        }
        _ => super::text::encode_reply(out, reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::text::decode_request;
    use RespVersion::{Resp2, Resp3};

    fn request(input: &[u8]) -> Request<'_> {
        decode_request(input).unwrap().message
    }

    fn both(reply: RedisReply<'_>) -> (String, String) {
        let encoded = |version| {
            let mut out = Vec::new();
            encode(&mut out, &reply, version);
            String::from_utf8(out).unwrap()
        };
        (encoded(Resp2), encoded(Resp3))
    }

    #[test]
    fn handshake_commands_parse() {
        let hello = |version, auth, name| {
            Request::Redis(Command::Hello {
                version,
                auth,
                name,
            })
        };
        assert_eq!(request(b"HELLO\r\n"), hello(None, None, None));
        assert_eq!(request(b"hello 3\r\n"), hello(Some(Resp3), None, None));
        assert_eq!(
            request(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n"),
            hello(Some(Resp2), None, None)
        );
        let auth = Some(Auth {
            user: Some(b"default"),
            password: b"pw",
        });
        assert_eq!(
            request(b"HELLO 3 AUTH default pw SETNAME app\r\n"),
            hello(Some(Resp3), auth, Some(b"app"))
        );
        assert_eq!(
            request(b"HELLO 3 SETNAME app AUTH default pw\r\n"),
            hello(Some(Resp3), auth, Some(b"app"))
        );
        assert_eq!(
            request(b"HELLO 4\r\n"),
            Request::RedisError(RedisError::NoProto)
        );
        assert_eq!(
            request(b"HELLO x\r\n"),
            Request::RedisError(RedisError::VersionNotAnInteger)
        );
        assert_eq!(
            request(b"HELLO 3 AUTH default\r\n"),
            Request::RedisError(RedisError::HelloSyntax(b"AUTH"))
        );
        assert_eq!(
            request(b"HELLO 3 SETNAME a SETNAME b SETNAME c\r\n"),
            Request::RedisError(RedisError::HelloSyntax(b"SETNAME"))
        );
        assert_eq!(
            request(b"AUTH pw\r\n"),
            Request::Redis(Command::Auth(Auth {
                user: None,
                password: b"pw"
            }))
        );
    }

    #[test]
    fn client_select_and_housekeeping_parse() {
        let redis = Request::Redis;
        let cases: [(&[u8], Request<'_>); 16] = [
            (
                b"CLIENT SETNAME app-1\r\n",
                redis(Command::ClientSetName(b"app-1")),
            ),
            (b"client getname\r\n", redis(Command::ClientGetName)),
            (b"CLIENT ID\r\n", redis(Command::ClientId)),
            (b"CLIENT INFO\r\n", redis(Command::ClientInfo)),
            (
                b"CLIENT SETINFO lib-name redis-py\r\n",
                redis(Command::ClientAccepted),
            ),
            (b"CLIENT NO-EVICT on\r\n", redis(Command::ClientAccepted)),
            (b"CLIENT NO-TOUCH on\r\n", redis(Command::ClientAccepted)),
            (b"SELECT 0\r\n", redis(Command::Select)),
            (b"ECHO hi\r\n", redis(Command::Echo(b"hi"))),
            (b"INFO\r\n", redis(Command::Info(None))),
            (b"INFO seqd\r\n", redis(Command::Info(Some(b"seqd")))),
            (b"COMMAND COUNT\r\n", redis(Command::CommandCount)),
            (b"RESET\r\n", redis(Command::Reset)),
            (b"TIME\r\n", redis(Command::Time)),
            (b"DBSIZE\r\n", redis(Command::DbSize)),
            (b"MULTI\r\n", redis(Command::Multi)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                request(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(request(b"EXEC\r\n"), redis(Command::Exec));
        assert_eq!(request(b"DISCARD\r\n"), redis(Command::Discard));
        let error = Request::RedisError;
        assert_eq!(
            request(b"CLIENT SETNAME a\x01b\r\n"),
            error(RedisError::BadClientName)
        );
        assert_eq!(
            request(b"CLIENT KILL x\r\n"),
            error(RedisError::UnknownSubcommand {
                command: "CLIENT",
                subcommand: b"KILL"
            })
        );
        assert_eq!(
            request(b"CLIENT SETNAME a b\r\n"),
            error(RedisError::WrongArity("client|setname"))
        );
        assert_eq!(request(b"SELECT 1\r\n"), error(RedisError::DbOutOfRange));
        assert_eq!(request(b"SELECT x\r\n"), error(RedisError::NotAnInteger));
        assert_eq!(request(b"ECHO\r\n"), error(RedisError::WrongArity("echo")));
        assert_eq!(
            request(b"MULTI now\r\n"),
            error(RedisError::WrongArity("multi"))
        );
    }

    #[test]
    fn incr_family_maps_to_sequences() {
        assert_eq!(
            request(b"*2\r\n$4\r\nINCR\r\n$6\r\norders\r\n"),
            Request::Get {
                target: Target::Name(b"orders")
            }
        );
        assert_eq!(
            request(b"INCRBY orders 10\r\n"),
            Request::Redis(Command::IncrBy {
                target: Target::Name(b"orders"),
                count: 10
            })
        );
        assert_eq!(
            request(b"GET orders\r\n"),
            Request::Redis(Command::Get(b"orders"))
        );
        let error = Request::RedisError;
        assert_eq!(
            request(b"INCRBY orders 0\r\n"),
            error(RedisError::IncrementNotPositive)
        );
        assert_eq!(
            request(b"INCRBY orders -5\r\n"),
            error(RedisError::IncrementNotPositive)
        );
        assert_eq!(
            request(b"INCRBY orders ten\r\n"),
            error(RedisError::NotAnInteger)
        );
        assert_eq!(request(b"INCR\r\n"), error(RedisError::WrongArity("incr")));
        for refused in ["SET", "set", "DEL", "DECR", "DECRBY", "GETSET", "FLUSHALL"] {
            let line = format!("{refused} orders 1\r\n");
            assert_eq!(
                request(line.as_bytes()),
                error(RedisError::SequencesNeverGoBack(refused.as_bytes()))
            );
        }
        let mut out = Vec::new();
        encode(
            &mut out,
            &RedisReply::Error(RedisError::SequencesNeverGoBack(b"SET")),
            Resp2,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR 'SET' is not supported: a key is a sequence, and a sequence never goes back \
             (use INCR, INCRBY and GET)\r\n"
        );
    }

    #[test]
    fn hello_reply_is_a_flat_array_in_resp2_and_a_map_in_resp3() {
        let fields = "$6\r\nserver\r\n$4\r\nseqd\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
                      $5\r\nproto\r\n:P\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                      $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        let (v2, _) = both(RedisReply::Hello {
            version: Resp2,
            id: 7,
        });
        assert_eq!(v2, format!("*14\r\n{}", fields.replace('P', "2")));
        let (_, v3) = both(RedisReply::Hello {
            version: Resp3,
            id: 7,
        });
        assert_eq!(v3, format!("%7\r\n{}", fields.replace('P', "3")));
    }

    #[test]
    fn replies_in_resp2_and_resp3() {
        let same = |reply, expected: &str| {
            assert_eq!(both(reply), (expected.to_string(), expected.to_string()));
        };
        same(RedisReply::Status("OK"), "+OK\r\n");
        same(RedisReply::Status("QUEUED"), "+QUEUED\r\n");
        same(RedisReply::Status("RESET"), "+RESET\r\n");
        same(RedisReply::Bulk(b"app"), "$3\r\napp\r\n");
        same(RedisReply::Integer(42), ":42\r\n");
        same(RedisReply::ArrayOf(3), "*3\r\n");
        same(
            RedisReply::Time {
                seconds: 1796163521,
                micros: 600855,
            },
            "*2\r\n$10\r\n1796163521\r\n$6\r\n600855\r\n",
        );
        same(
            RedisReply::Error(RedisError::ExecAbort),
            "-EXECABORT Transaction discarded because of previous errors.\r\n",
        );
        same(
            RedisReply::Error(RedisError::NoProto),
            "-NOPROTO unsupported protocol version\r\n",
        );
        same(
            RedisReply::Error(RedisError::MultiNested),
            "-ERR MULTI calls can not be nested\r\n",
        );
        same(
            RedisReply::Error(RedisError::ExecWithoutMulti),
            "-ERR EXEC without MULTI\r\n",
        );
        same(
            RedisReply::Error(RedisError::UnknownSubcommand {
                command: "CLIENT",
                subcommand: b"KILL",
            }),
            "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n",
        );
        assert_eq!(
            both(RedisReply::Null),
            ("$-1\r\n".to_string(), "_\r\n".to_string())
        );
        assert_eq!(
            both(RedisReply::Text(b"# Server\r\nredis_version:7.2.0\r\n")),
            (
                "$31\r\n# Server\r\nredis_version:7.2.0\r\n\r\n".to_string(),
                "=35\r\ntxt:# Server\r\nredis_version:7.2.0\r\n\r\n".to_string()
            )
        );
    }

    #[test]
    fn seqd_replies_change_only_where_resp3_has_a_type() {
        let encoded = |reply: Reply<'_>, version| {
            let mut out = Vec::new();
            encode_reply(&mut out, &reply, version);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            encoded(Reply::UnsetConfig(b"save"), Resp2),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            encoded(Reply::UnsetConfig(b"save"), Resp3),
            "%1\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        for reply in [
            Reply::Number(5),
            Reply::Range { first: 1, count: 3 },
            Reply::Pong { echo: None },
            Reply::Pong { echo: Some(b"x") },
            Reply::Ok,
            Reply::EmptyArray,
        ] {
            assert_eq!(encoded(reply, Resp3), encoded(reply, Resp2), "{reply:?}");
        }
    }
}
