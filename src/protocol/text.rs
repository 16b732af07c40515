//! The text protocol: inline commands (`GETSEQ\r\n` → `:1\r\n`) and RESP arrays, so
//! that telnet, `nc`, `redis-cli` and `redis-benchmark` all work against the same port.
//!
//! Inline lines end in CRLF or a bare LF (CRs or telnet's CR NULs just before it are part of the
//! line end); arguments are separated by spaces or tabs; command names are case-insensitive. A
//! line starting with `*` is a RESP array of bulk strings.
//! Requests longer than [`MAX_REQUEST`] bytes are refused and the connection closed.
//!
//! A request that arrives in pieces is decoded resumably ([`Progress`]): each call continues
//! where the last stopped, so decoding is linear in the bytes received however they are split.
//!
//! (Over 600 lines: the last 615 are the codec's unit tests, kept beside it; the code is the
//! resumable request decoder, the reply encoder and the client's reply decoder.)

use super::{Framing, LeaseIds, Need, ParseError, ParseOk, Problem, Reply, Request, Target};

/// Longest accepted request line or RESP array, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most arguments a RESP array may carry.
pub const MAX_ARGS: usize = 1024;
/// Words kept for interpretation; any beyond are only counted (no command takes more:
/// `HELLO 3 AUTH user password SETNAME name` is the longest).
const KEPT_ARGS: usize = 7;

/// The words of one command, borrowed from the input.
struct Args<'a> {
    kept: [&'a [u8]; KEPT_ARGS],
    count: usize,
}

impl<'a> Args<'a> {
    fn new() -> Self {
        Args {
            kept: [&[]; KEPT_ARGS],
            count: 0,
        }
    }

    fn push(&mut self, arg: &'a [u8]) {
        if self.count < KEPT_ARGS {
            self.kept[self.count] = arg;
        }
        self.count += 1;
    }
}

/// Longest length line of a RESP array or bulk string up to its LF: the `*` or `$`, 20 digits
/// (`u64::MAX` has 20) and the CR. A longer one can never be valid: refused without waiting
/// for the rest.
const MAX_LENGTH_LINE: usize = 1 + 20 + 1;

/// Where the decoding of a request that has not fully arrived stopped, so that the next call,
/// given the same bytes and more, continues there instead of starting over. A request then
/// costs the same however the network splits it: re-parsing a 1024-element RESP array from
/// its start at every line received would cost time quadratic in its length. Small (the
/// partial request is boxed, and only once a request is left unfinished): every connection
/// has one.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    saved: Option<Box<Partial>>,
    examined: u64,
}

/// A decoding under way: what is known of the request and the bytes looked at for it.
struct Decoding {
    partial: Partial,
    examined: u64,
}

/// What is known of the request at the front of the buffer (offsets from its first byte).
#[derive(Debug, Default, Clone, Copy)]
struct Partial {
    /// The next line (inline: the line; RESP: the next length line or bulk string) starts here.
    pos: usize,
    /// No line feed in `pos..scanned`.
    scanned: usize,
    /// The element count of the RESP array, once its header is read.
    declared: Option<usize>,
    /// The length of the bulk string whose length line is read (its bytes start at `pos`).
    bulk: Option<usize>,
    /// Where the words kept so far lie: (start, length).
    kept: [(usize, usize); KEPT_ARGS],
    /// Words read so far.
    count: usize,
}

impl Partial {
    fn is_started(&self) -> bool {
        self.pos > 0 || self.scanned > 0
    }
}

impl Progress {
    /// Bytes the decoder has looked at through this `Progress`: a small multiple of the bytes
    /// it was given, however they were split (the unit tests hold it to that).
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Whether a request is partly decoded (false also after a request was decoded or refused).
    pub fn is_partial(&self) -> bool {
        self.saved.as_deref().is_some_and(Partial::is_started)
    }

    /// Forgets the partly decoded request (its bytes were discarded).
    pub fn clear(&mut self) {
        if let Some(saved) = self.saved.as_deref_mut() {
            *saved = Partial::default();
        }
    }
}

/// The request that dominates real traffic, as telnet/nc and redis-benchmark send it,
/// recognised by one comparison before the general parser.
#[inline(always)]
fn plain_getseq(buf: &[u8]) -> Option<ParseOk<Request<'static>>> {
    const GET: Request<'static> = Request::Get {
        target: Target::Default,
    };
    for frame in [&b"GETSEQ\r\n"[..], b"*1\r\n$6\r\nGETSEQ\r\n"] {
        if buf.starts_with(frame) {
            return Some(ParseOk {
                message: GET,
                consumed: frame.len(),
            });
        }
    }
    None
}

/// Decodes one request (inline or RESP) from the front of `buf`.
#[inline]
pub fn decode_request(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
    if let Some(get) = plain_getseq(buf) {
        return Ok(get);
    }
    decode(
        buf,
        &mut Decoding {
            partial: Partial::default(),
            examined: 0,
        },
    )
}

/// Decodes one request from the front of `buf`, continuing where the last call with `progress`
/// stopped ([`ParseError::Incomplete`]): `buf` must begin with the bytes that call was given.
/// After a decoded or refused request `progress` is ready for the next one.
pub fn decode_request_from<'a>(
    buf: &'a [u8],
    progress: &mut Progress,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    let mut decoding = Decoding {
        partial: progress.saved.as_deref().copied().unwrap_or_default(),
        examined: 0,
    };
    let result = decode(buf, &mut decoding);
    progress.examined += decoding.examined;
    match result {
        Err(ParseError::Incomplete(_)) => {
            **progress.saved.get_or_insert_with(Box::default) = decoding.partial;
        }
        _ => progress.clear(),
    }
    result
}

fn decode<'a>(
    buf: &'a [u8],
    progress: &mut Decoding,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    if !progress.partial.is_started() {
        progress.examined += buf.len().min(16) as u64;
        if let Some(get) = plain_getseq(buf) {
            return Ok(get);
        }
    }
    match buf.first() {
        None => Err(ParseError::Incomplete(Need::Line)),
        Some(b'*') => decode_resp(buf, progress),
        Some(_) => decode_inline(buf, progress),
    }
}

/// The offset of the next line feed at or after `progress.partial.scanned`, remembering how
/// far it looked when there is none yet.
fn next_line_feed(buf: &[u8], progress: &mut Decoding) -> Option<usize> {
    let from = progress.partial.scanned.min(buf.len());
    match memchr::memchr(b'\n', &buf[from..]) {
        Some(i) => {
            progress.examined += i as u64 + 1;
            Some(from + i)
        }
        None => {
            progress.examined += (buf.len() - from) as u64;
            progress.partial.scanned = buf.len();
            None
        }
    }
}

fn decode_inline<'a>(
    buf: &'a [u8],
    progress: &mut Decoding,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    let Some(end) = next_line_feed(buf, progress) else {
        return Err(incomplete_or_too_long(buf.len()));
    };
    if end > MAX_REQUEST {
        return Err(too_long());
    }
    let line = without_line_end(&buf[..end]);
    progress.examined += line.len() as u64;
    let mut args = Args::new();
    let is_blank = |b: u8| b == b' ' || b == b'\t';
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && is_blank(line[i]) {
            i += 1;
        }
        let start = i;
        while i < line.len() && !is_blank(line[i]) {
            i += 1;
        }
        if i > start {
            args.push(&line[start..i]);
        }
    }
    Ok(ParseOk {
        message: interpret(&args, Framing::Inline),
        consumed: end + 1,
    })
}

/// `line` (up to its LF) without the CRs before the LF. Telnet (RFC 854) sends a CR that is not
/// part of CRLF as CR NUL, so text piped into it with CRLF line ends arrives as `\r\0\r\n`:
/// a NUL right after such a CR goes too.
fn without_line_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r'] | [rest @ .., b'\r', 0] = line {
        line = rest;
    }
    line
}

fn decode_resp<'a>(
    buf: &'a [u8],
    progress: &mut Decoding,
) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
    let declared = match progress.partial.declared {
        Some(declared) => declared,
        None => {
            let declared = read_length(buf, progress, b'*')?;
            if declared > MAX_ARGS as u64 {
                return Err(ParseError::Fatal(Problem::TooManyElements {
                    declared,
                    limit: MAX_ARGS,
                }));
            }
            *progress.partial.declared.insert(declared as usize)
        }
    };
    while progress.partial.count < declared {
        let len = match progress.partial.bulk {
            Some(len) => len,
            None => {
                let declared = read_length(buf, progress, b'$')?;
                // The string and its CRLF must fit in the request: refused before its bytes
                // arrive, and nothing is ever allocated for the length declared.
                let end = (progress.partial.pos as u64)
                    .saturating_add(declared)
                    .saturating_add(2);
                if declared > MAX_REQUEST as u64 {
                    return Err(ParseError::Fatal(Problem::BulkTooLong {
                        declared,
                        limit: MAX_REQUEST,
                    }));
                }
                if end > MAX_REQUEST as u64 {
                    return Err(too_long());
                }
                *progress.partial.bulk.insert(declared as usize)
            }
        };
        let partial = &mut progress.partial;
        let end = partial.pos + len;
        if buf.len() < end + 2 {
            return Err(ParseError::Incomplete(Need::Bytes(end + 2 - buf.len())));
        }
        progress.examined += 2;
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ParseError::Fatal(Problem::Malformed(
                "RESP bulk string not followed by CRLF",
            )));
        }
        if partial.count < KEPT_ARGS {
            partial.kept[partial.count] = (partial.pos, len);
        }
        partial.count += 1;
        partial.pos = end + 2;
        partial.scanned = partial.pos;
        partial.bulk = None;
    }
    let partial = &progress.partial;
    let mut args = Args::new();
    for &(start, len) in &partial.kept[..partial.count.min(KEPT_ARGS)] {
        args.push(&buf[start..start + len]);
    }
    args.count = partial.count;
    Ok(ParseOk {
        message: interpret(&args, Framing::Resp),
        consumed: partial.pos,
    })
}

/// Reads `<prefix><decimal>\r\n` at the current position and advances past it. A line that
/// cannot become one (another first byte, too long) is refused as soon as that shows.
fn read_length<'a>(buf: &[u8], progress: &mut Decoding, prefix: u8) -> Result<u64, ParseError<'a>> {
    let wrong_line = || {
        ParseError::Fatal(Problem::Malformed(if prefix == b'*' {
            "bad RESP array header"
        } else {
            "expected a RESP bulk string"
        }))
    };
    let pos = progress.partial.pos;
    if buf.get(pos).is_some_and(|&first| first != prefix) {
        return Err(wrong_line());
    }
    let Some(lf) = next_line_feed(buf, progress) else {
        if buf.len() - pos > MAX_LENGTH_LINE {
            return Err(ParseError::Fatal(Problem::Malformed("bad RESP length")));
        }
        return Err(ParseError::Incomplete(Need::Line));
    };
    if lf - pos > MAX_LENGTH_LINE {
        // The same error as before the line feed arrived: the reply never depends on how
        // the request was split.
        return Err(ParseError::Fatal(Problem::Malformed("bad RESP length")));
    }
    let digits = match &buf[pos..lf] {
        [_, digits @ .., b'\r'] => digits,
        _ => return Err(wrong_line()),
    };
    progress.examined += digits.len() as u64;
    let length =
        parse_u64(digits).ok_or(ParseError::Fatal(Problem::Malformed("bad RESP length")))?;
    progress.partial.pos = lf + 1;
    progress.partial.scanned = lf + 1;
    Ok(length)
}

fn incomplete_or_too_long<'a>(buffered: usize) -> ParseError<'a> {
    if buffered > MAX_REQUEST {
        too_long()
    } else {
        ParseError::Incomplete(Need::Line)
    }
}

fn too_long<'a>() -> ParseError<'a> {
    ParseError::Fatal(Problem::LineTooLong { limit: MAX_REQUEST })
}

/// Parses a plain decimal `u64` (no sign, no spaces). `None` on anything else or overflow.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

const USAGE_GETSEQ: &str = "GETSEQ [sequence]";
const USAGE_BATCH: &str = "GETSEQ_BATCH count [sequence]";
const USAGE_CURRENT: &str = "CURRENT [sequence]";
const USAGE_PING: &str = "PING [message]";
const USAGE_QUIT: &str = "QUIT";
const USAGE_LEASE: &str = "GET_SEQUENCE_RANGE count [client-id request-id] [sequence]";
const USAGE_ACK: &str = "ACK start,end [sequence]";
const USAGE_LEASES: &str = "LEASES";

/// A count, also written RESP-style (`:100`), as the text protocol's first clients do.
fn count_argument(arg: &[u8]) -> Result<u64, Problem<'_>> {
    parse_u64(arg.strip_prefix(b":").unwrap_or(arg)).ok_or(Problem::NotAnInteger(arg))
}

/// The lease protocol's `start,end` (inclusive).
fn range_argument(arg: &[u8]) -> Result<(u64, u64), Problem<'_>> {
    let comma = memchr::memchr(b',', arg).ok_or(Problem::BadRange(arg))?;
    match (parse_u64(&arg[..comma]), parse_u64(&arg[comma + 1..])) {
        (Some(first), Some(last)) if first <= last => Ok((first, last)),
        _ => Err(Problem::BadRange(arg)),
    }
}

/// `GET_SEQUENCE_RANGE count [client-id request-id] [sequence]`: the number of words tells
/// which optional parts are there (the sequence is always last, as in `GETSEQ_BATCH`).
fn interpret_lease<'a>(args: &Args<'a>, framing: Framing) -> Request<'a> {
    let count = match count_argument(args.kept[1]) {
        Ok(count) => count,
        Err(problem) => return Request::Invalid(problem),
    };
    let words = &args.kept[..args.count.min(KEPT_ARGS)];
    let (ids, target) = match words {
        [_, _] => (None, Target::Default),
        [_, _, sequence] => (None, Target::Name(sequence)),
        [_, _, client, request] => (Some(LeaseIds { client, request }), Target::Default),
        [_, _, client, request, sequence] => {
            (Some(LeaseIds { client, request }), Target::Name(sequence))
        }
        _ => return Request::Invalid(Problem::WrongArity(USAGE_LEASE)),
    };
    Request::Lease {
        target,
        count,
        ids,
        framing,
    }
}

/// Turns the words of a command into a request.
fn interpret<'a>(args: &Args<'a>, framing: Framing) -> Request<'a> {
    if args.count == 0 {
        return Request::Nothing;
    }
    let name = args.kept[0];
    let is = |command: &str| name.eq_ignore_ascii_case(command.as_bytes());
    let target = |i: usize| match args.count > i {
        true => Target::Name(args.kept[i]),
        false => Target::Default,
    };
    let arity = |min: usize, max: usize, usage| {
        if args.count < min || args.count > max {
            Some(Request::Invalid(Problem::WrongArity(usage)))
        } else {
            None
        }
    };
    if is("GETSEQ") {
        arity(1, 2, USAGE_GETSEQ).unwrap_or(Request::Get { target: target(1) })
    } else if is("GETSEQ_BATCH") {
        if let Some(wrong) = arity(2, 3, USAGE_BATCH) {
            return wrong;
        }
        match count_argument(args.kept[1]) {
            Ok(count) => Request::GetBatch {
                target: target(2),
                count,
            },
            Err(problem) => Request::Invalid(problem),
        }
    } else if is("CURRENT") {
        arity(1, 2, USAGE_CURRENT).unwrap_or(Request::Current { target: target(1) })
    } else if is("PING") {
        let echo = (args.count == 2).then_some(args.kept[1]);
        arity(1, 2, USAGE_PING).unwrap_or(Request::Ping { echo })
    } else if is("GET_SEQUENCE_RANGE") {
        arity(2, 5, USAGE_LEASE).unwrap_or_else(|| interpret_lease(args, framing))
    } else if is("ACK") {
        if let Some(wrong) = arity(2, 3, USAGE_ACK) {
            return wrong;
        }
        match range_argument(args.kept[1]) {
            Ok((first, last)) => Request::Ack {
                target: target(2),
                first,
                last,
            },
            Err(problem) => Request::Invalid(problem),
        }
    } else if is("LEASES") {
        arity(1, 1, USAGE_LEASES).unwrap_or(Request::LeaseStats)
    } else if is("QUIT") {
        arity(1, 1, USAGE_QUIT).unwrap_or(Request::Quit)
    } else if is("CONFIG") {
        let get = args.count == 3 && args.kept[1].eq_ignore_ascii_case(b"GET");
        Request::RedisHandshake {
            config_get: get.then_some(args.kept[2]),
        }
    } else if is("COMMAND") {
        match args.count == 2 && args.kept[1].eq_ignore_ascii_case(b"COUNT") {
            true => Request::Redis(super::redis::Command::CommandCount),
            false => Request::RedisHandshake { config_get: None },
        }
    } else {
        super::redis::interpret(&args.kept[..args.count.min(KEPT_ARGS)], args.count)
            .unwrap_or(Request::Invalid(Problem::UnknownCommand(name)))
    }
}

/// Appends the text encoding of `reply` to `out`.
#[inline]
pub fn encode_reply(out: &mut Vec<u8>, reply: &Reply<'_>) {
    match *reply {
        Reply::Number(n) | Reply::Current(n) => integer(out, n),
        Reply::Range { first, count } => {
            // Inclusive bounds, as the lease protocol's `start,end`.
            out.extend_from_slice(b"*2\r\n");
            integer(out, first);
            integer(out, first + count - 1);
        }
        Reply::Pong { echo: None } => out.extend_from_slice(b"+PONG\r\n"),
        Reply::Pong {
            echo: Some(message),
        } => bulk(out, message),
        Reply::UnsetConfig(parameter) => {
            out.extend_from_slice(b"*2\r\n");
            bulk(out, parameter);
            bulk(out, b"");
        }
        Reply::Opened(id) => integer(out, u64::from(id)),
        Reply::Leased {
            first,
            count,
            framing,
        } => {
            // The lease protocol's reply is a bare `start,end` line; a RESP client gets it as a status.
            if framing == Framing::Resp {
                out.push(b'+');
            }
            out.extend_from_slice(itoa::Buffer::new().format(first).as_bytes());
            out.push(b',');
            out.extend_from_slice(itoa::Buffer::new().format(first + count - 1).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Acked { .. } | Reply::Ok | Reply::Authenticated => out.extend_from_slice(b"+OK\r\n"),
        Reply::LeaseStats(stats) => {
            use std::io::Write;
            let t = stats;
            // Writing to a Vec cannot fail.
            let _ = write!(
                out,
                "+outstanding={} granted={} acknowledged={} retired={} returned={} reused={}\r\n",
                stats.outstanding, t.granted, t.acknowledged, t.retired, t.returned, t.reused
            );
        }
        Reply::EmptyArray => out.extend_from_slice(b"*0\r\n"),
        Reply::Error { problem, .. } => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "-{} {problem}\r\n", problem.code().text_prefix());
        }
    }
}

/// Appends the replies to `count` consecutive `GETSEQ`s: `:first\r\n` ... `:first+count-1\r\n`.
#[inline]
pub fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
    if count == 0 {
        return;
    }
    // Consecutive numbers: format the first, then count upwards in the decimal text itself
    // (one digit changes most of the time) instead of formatting each number anew.
    const LEN: usize = 24; // ':' + up to 20 digits + CRLF
    let mut reply = [0u8; LEN];
    reply[LEN - 2..].copy_from_slice(b"\r\n");
    let digits = itoa::Buffer::new().format(first).len();
    let mut start = LEN - 2 - digits - 1;
    reply[start] = b':';
    reply[start + 1..LEN - 2].copy_from_slice(itoa::Buffer::new().format(first).as_bytes());
    out.reserve(count as usize * (LEN - start));
    out.extend_from_slice(&reply[start..]);
    for _ in 1..count {
        let mut i = LEN - 3;
        loop {
            if reply[i] == b'9' {
                reply[i] = b'0';
                i -= 1;
                if i == start {
                    // 99 → 100: one more digit, the ':' moves left.
                    reply[i] = b'1';
                    start -= 1;
                    reply[start] = b':';
                    break;
                }
            } else {
                reply[i] += 1;
                break;
            }
        }
        out.extend_from_slice(&reply[start..]);
    }
}

pub(super) fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

#[inline]
pub(super) fn integer(out: &mut Vec<u8>, n: u64) {
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A reply as a text-protocol client sees it (seqd's replies, and Redis's to `INCR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientReply<'a> {
    /// `:N\r\n`: a number (`GETSEQ`, `CURRENT`, Redis `INCR`).
    Integer(i64),
    /// `*2\r\n:first\r\n:last\r\n`: an inclusive range (`GETSEQ_BATCH`).
    Pair(i64, i64),
    /// `+OK\r\n`, `+PONG\r\n`: the text after the `+`.
    Status(&'a [u8]),
    /// `-ERR message\r\n`: the text after the `-` (code word and message).
    Error(&'a [u8]),
}

/// Decodes one reply from the front of `buf` (client side). Anything that is not one of the
/// [`ClientReply`] shapes is [`ParseError::Fatal`]: the client can no longer tell where the
/// next reply starts.
#[inline]
pub fn decode_reply(buf: &[u8]) -> Result<ParseOk<ClientReply<'_>>, ParseError<'_>> {
    let (line, mut consumed) = reply_line(buf, 0)?;
    let message = match line.split_first() {
        Some((b':', digits)) => ClientReply::Integer(reply_integer(digits)?),
        Some((b'+', text)) => ClientReply::Status(text),
        Some((b'-', text)) => ClientReply::Error(text),
        Some((b'*', b"2")) => {
            let mut pair = [0i64; 2];
            for value in &mut pair {
                let (line, end) = reply_line(buf, consumed)?;
                consumed = end;
                match line.split_first() {
                    Some((b':', digits)) => *value = reply_integer(digits)?,
                    _ => return Err(malformed_reply("array element is not an integer")),
                }
            }
            ClientReply::Pair(pair[0], pair[1])
        }
        _ => return Err(malformed_reply("unexpected reply type")),
    };
    Ok(ParseOk { message, consumed })
}

/// The CRLF-terminated line starting at `start` (without the CRLF) and the offset after it.
#[inline]
fn reply_line<'a>(buf: &'a [u8], start: usize) -> Result<(&'a [u8], usize), ParseError<'a>> {
    let rest = &buf[start.min(buf.len())..];
    match memchr::memchr(b'\n', rest) {
        Some(lf) if lf > 0 && rest[lf - 1] == b'\r' => Ok((&rest[..lf - 1], start + lf + 1)),
        Some(_) => Err(malformed_reply("reply line not terminated by CRLF")),
        None if rest.len() > MAX_REQUEST => Err(malformed_reply("reply line too long")),
        None => Err(ParseError::Incomplete(Need::Line)),
    }
}

#[inline]
fn reply_integer<'a>(digits: &[u8]) -> Result<i64, ParseError<'a>> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let magnitude = parse_u64(digits)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| malformed_reply("bad integer"))?;
    Ok(if negative { -magnitude } else { magnitude })
}

fn malformed_reply<'a>(what: &'static str) -> ParseError<'a> {
    ParseError::Fatal(Problem::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: &[u8]) -> (Request<'_>, usize) {
        let ok = decode_request(input).unwrap();
        (ok.message, ok.consumed)
    }

    fn encoded(reply: Reply<'_>) -> String {
        let mut out = Vec::new();
        encode_reply(&mut out, &reply);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn inline_commands_crlf_or_lf_any_case() {
        assert_eq!(
            request(b"GETSEQ\r\n"),
            (
                Request::Get {
                    target: Target::Default
                },
                8
            )
        );
        assert_eq!(
            request(b"getseq\n"),
            (
                Request::Get {
                    target: Target::Default
                },
                7
            )
        );
        assert_eq!(
            request(b"CuRrEnT\r\nGETSEQ\r\n"),
            (
                Request::Current {
                    target: Target::Default
                },
                9
            )
        );
        assert_eq!(
            request(b"GETSEQ orders\r\n").0,
            Request::Get {
                target: Target::Name(b"orders")
            }
        );
        assert_eq!(
            request(b"  GETSEQ_BATCH\t100  orders \r\n").0,
            Request::GetBatch {
                target: Target::Name(b"orders"),
                count: 100
            }
        );
        assert_eq!(
            request(b"GETSEQ_BATCH :100\r\n").0,
            Request::GetBatch {
                target: Target::Default,
                count: 100
            }
        );
        assert_eq!(request(b"\r\n"), (Request::Nothing, 2));
        assert_eq!(request(b"PING\r\n").0, Request::Ping { echo: None });
        assert_eq!(request(b"ping hi\n").0, Request::Ping { echo: Some(b"hi") });
        assert_eq!(request(b"QUIT\r\n").0, Request::Quit);
    }

    #[test]
    fn telnet_cr_nul_and_extra_crs_are_part_of_the_line_end() {
        // What telnet sends for text piped into it with CRLF line ends: CR NUL CR LF.
        let get = Request::Get {
            target: Target::Default,
        };
        let current = Request::Current {
            target: Target::Default,
        };
        assert_eq!(request(b"GETSEQ\r\0\r\n"), (get, 10));
        assert_eq!(request(b"GETSEQ\r\r\n"), (get, 9));
        assert_eq!(request(b"GETSEQ\r\0\n"), (get, 9));
        assert_eq!(request(b"CURRENT\r\0\r\0\r\n"), (current, 13));
        assert_eq!(
            request(b"GETSEQ orders\r\0\r\n").0,
            Request::Get {
                target: Target::Name(b"orders")
            }
        );
        assert_eq!(request(b"\r\0\r\n"), (Request::Nothing, 4));
        // The next command follows the line end directly.
        let input = b"GETSEQ\r\0\r\nCURRENT\r\0\r\n";
        let (first, consumed) = request(input);
        assert_eq!((first, consumed), (get, 10));
        assert_eq!(request(&input[consumed..]), (current, 11));
        // Only at the end of a line: a CR NUL inside one is part of the word.
        assert_eq!(
            request(b"GET\r\0SEQ\r\n").0,
            Request::Invalid(Problem::UnknownCommand(b"GET\r\0SEQ"))
        );
        // A line is still complete only at its LF.
        assert_eq!(
            decode_request(b"GETSEQ\r\0"),
            Err(ParseError::Incomplete(Need::Line))
        );
    }

    #[test]
    fn resp_arrays() {
        assert_eq!(
            request(b"*1\r\n$6\r\nGETSEQ\r\n"),
            (
                Request::Get {
                    target: Target::Default
                },
                16
            )
        );
        assert_eq!(
            request(b"*3\r\n$12\r\nGETSEQ_BATCH\r\n$2\r\n20\r\n$1\r\nx\r\nrest").0,
            Request::GetBatch {
                target: Target::Name(b"x"),
                count: 20
            }
        );
        assert_eq!(
            request(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n").0,
            Request::RedisHandshake {
                config_get: Some(b"save")
            }
        );
        assert_eq!(
            request(b"COMMAND DOCS\r\n").0,
            Request::RedisHandshake { config_get: None }
        );
        // Binary-safe: a bulk string may hold a line feed.
        assert_eq!(
            request(b"*2\r\n$4\r\nPING\r\n$3\r\na\nb\r\n").0,
            Request::Ping {
                echo: Some(b"a\nb")
            }
        );
        assert_eq!(request(b"*0\r\n"), (Request::Nothing, 4));
    }

    #[test]
    fn lease_protocol_commands() {
        let lease = |target, count, ids, framing| Request::Lease {
            target,
            count,
            ids,
            framing,
        };
        let ids = Some(LeaseIds {
            client: b"scanner-7",
            request: b"42",
        });
        let cases: [(&[u8], Request<'_>); 6] = [
            (
                b"GET_SEQUENCE_RANGE 20\r\n",
                lease(Target::Default, 20, None, Framing::Inline),
            ),
            (
                b"get_sequence_range 20 orders\n",
                lease(Target::Name(b"orders"), 20, None, Framing::Inline),
            ),
            (
                b"GET_SEQUENCE_RANGE 20 scanner-7 42\r\n",
                lease(Target::Default, 20, ids, Framing::Inline),
            ),
            (
                b"GET_SEQUENCE_RANGE :20 scanner-7 42 orders\r\n",
                lease(Target::Name(b"orders"), 20, ids, Framing::Inline),
            ),
            (
                b"*2\r\n$18\r\nGET_SEQUENCE_RANGE\r\n$2\r\n20\r\n",
                lease(Target::Default, 20, None, Framing::Resp),
            ),
            (
                b"ACK 1001,1020\r\n",
                Request::Ack {
                    target: Target::Default,
                    first: 1001,
                    last: 1020,
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                request(input).0,
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            request(b"ack 7,7 orders\n").0,
            Request::Ack {
                target: Target::Name(b"orders"),
                first: 7,
                last: 7
            }
        );
        assert_eq!(request(b"LEASES\r\n").0, Request::LeaseStats);
        for bad in [
            &b"ACK 1001\r\n"[..],
            b"ACK 1020,1001\r\n",
            b"ACK a,b\r\n",
            b"ACK 1,\r\n",
        ] {
            assert!(
                matches!(request(bad).0, Request::Invalid(Problem::BadRange(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            request(b"GET_SEQUENCE_RANGE\r\n").0,
            Request::Invalid(Problem::WrongArity(USAGE_LEASE))
        );
        assert_eq!(
            request(b"GET_SEQUENCE_RANGE 1 a b c d\r\n").0,
            Request::Invalid(Problem::WrongArity(USAGE_LEASE))
        );
        assert_eq!(
            request(b"GET_SEQUENCE_RANGE x\r\n").0,
            Request::Invalid(Problem::NotAnInteger(b"x"))
        );
    }

    #[test]
    fn lease_protocol_replies() {
        let leased = |framing| Reply::Leased {
            first: 1001,
            count: 20,
            framing,
        };
        assert_eq!(encoded(leased(Framing::Inline)), "1001,1020\r\n");
        assert_eq!(encoded(leased(Framing::Resp)), "+1001,1020\r\n");
        assert_eq!(encoded(Reply::Acked { first: 1001 }), "+OK\r\n");
        let problem = Problem::LeaseExpired {
            first: 1,
            last: 2,
            returned: false,
        };
        assert!(
            encoded(Reply::Error { opcode: 0, problem })
                .starts_with("-EXPIRED lease 1,2 expired before it was acknowledged")
        );
    }

    #[test]
    fn incomplete_input_asks_for_a_line_or_the_rest_of_a_string() {
        for input in [&b"GETS"[..], b"*1\r\n$6", b"*1"] {
            assert_eq!(
                decode_request(input),
                Err(ParseError::Incomplete(Need::Line)),
                "{input:?}"
            );
        }
        assert_eq!(
            decode_request(b"*1\r\n$6\r\nGET"),
            Err(ParseError::Incomplete(Need::Bytes(5)))
        );
        assert_eq!(
            decode_request(b"*1\r\n$6\r\nGETSEQ\r"),
            Err(ParseError::Incomplete(Need::Bytes(1)))
        );
    }

    /// Decodes the whole requests of `input`, given to one [`Progress`] `step` bytes at a time
    /// as a session gives them (the buffer of an unfinished request only grows); returns how
    /// many were decoded and the bytes examined.
    fn fed_in_pieces(input: &[u8], step: usize) -> (usize, u64) {
        let mut progress = Progress::default();
        let (mut start, mut end, mut decoded) = (0, 0, 0);
        while start < input.len() {
            assert!(
                end < input.len(),
                "unfinished request at the end of the input"
            );
            end = (end + step).min(input.len());
            while start < end {
                match decode_request_from(&input[start..end], &mut progress) {
                    Ok(ok) => {
                        decoded += 1;
                        start += ok.consumed;
                    }
                    Err(ParseError::Incomplete(_)) => break,
                    Err(ParseError::Fatal(problem)) => panic!("{problem}"),
                }
            }
        }
        (decoded, progress.examined())
    }

    /// A RESP array of `elements` bulk strings (`PING` then `x`s).
    fn array(elements: usize) -> Vec<u8> {
        let mut out = format!("*{elements}\r\n").into_bytes();
        bulk(&mut out, b"PING");
        for _ in 1..elements {
            bulk(&mut out, b"xxxxxxxx");
        }
        out
    }

    #[test]
    fn a_large_array_costs_the_same_however_it_is_split() {
        let input = array(MAX_ARGS);
        let len = input.len() as u64;
        let (decoded, whole) = fed_in_pieces(&input, input.len());
        assert_eq!(decoded, 1);
        for step in [1, 2, 7, 100, input.len() / 2] {
            let (decoded, split) = fed_in_pieces(&input, step);
            assert_eq!(decoded, 1);
            // Re-parsing from the start at every line would examine ~len * 1024 / 2 bytes.
            assert!(
                split <= 2 * len && split <= whole + len,
                "{step}-byte pieces: {split} bytes examined for a {len}-byte array ({whole} whole)"
            );
        }
        assert_eq!(
            decode_request(&input).unwrap().message,
            Request::Invalid(Problem::WrongArity(USAGE_PING))
        );
    }

    #[test]
    fn a_long_pipeline_and_a_long_line_cost_linear_work_byte_by_byte() {
        // 100,000 requests of every shape, one byte at a time.
        let mut input = Vec::new();
        for i in 0..100_000 {
            match i % 4 {
                0 => input.extend_from_slice(b"*2\r\n$6\r\nGETSEQ\r\n$6\r\norders\r\n"),
                1 => input.extend_from_slice(b"GETSEQ_BATCH 10 orders\r\n"),
                2 => input.extend_from_slice(b"*1\r\n$6\r\nGETSEQ\r\n"),
                _ => input.extend_from_slice(b"PING\n"),
            }
        }
        let (decoded, examined) = fed_in_pieces(&input, 1);
        assert_eq!(decoded, 100_000);
        let len = input.len() as u64;
        assert!(examined <= 3 * len, "{examined} bytes examined for {len}");
        // An inline line just under the limit, one byte at a time.
        let mut line = b"PING ".to_vec();
        line.resize(MAX_REQUEST - 2, b'x');
        line.extend_from_slice(b"\r\n");
        let (decoded, examined) = fed_in_pieces(&line, 1);
        assert_eq!(decoded, 1);
        assert!(examined <= 3 * line.len() as u64, "{examined}");
    }

    #[test]
    fn huge_declared_lengths_are_refused_at_once_by_name() {
        // Nothing is allocated for what is declared, and no byte of it is waited for.
        for (input, expected) in [
            (
                &b"*2147483647\r\n"[..],
                Problem::TooManyElements {
                    declared: 2_147_483_647,
                    limit: MAX_ARGS,
                },
            ),
            (
                b"*100000\r\n$4\r\nPING\r\n",
                Problem::TooManyElements {
                    declared: 100_000,
                    limit: MAX_ARGS,
                },
            ),
            (
                b"*1\r\n$999999999\r\n",
                Problem::BulkTooLong {
                    declared: 999_999_999,
                    limit: MAX_REQUEST,
                },
            ),
            (
                b"*2\r\n$4\r\nPING\r\n$18446744073709551615\r\n",
                Problem::BulkTooLong {
                    declared: u64::MAX,
                    limit: MAX_REQUEST,
                },
            ),
            (
                b"*1\r\n$65530\r\n",
                Problem::LineTooLong { limit: MAX_REQUEST },
            ),
            (
                b"*1\r\n$1234567890123456789012",
                Problem::Malformed("bad RESP length"),
            ),
            (
                b"*1\r\nPING\r\n",
                Problem::Malformed("expected a RESP bulk string"),
            ),
        ] {
            let mut progress = Progress::default();
            assert_eq!(
                decode_request_from(input, &mut progress),
                Err(ParseError::Fatal(expected)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(progress.examined() <= 16 + 2 * input.len() as u64);
            assert!(
                !progress.is_partial(),
                "ready for another connection's request"
            );
        }
        // Found by the session fuzz target: a long length line is refused with the same
        // error whether its line feed came with it or later.
        let mut header = b"*1\r".to_vec();
        header.resize(40, 0);
        header.extend_from_slice(b"\n");
        let whole = decode_request(&header);
        assert_eq!(
            whole,
            Err(ParseError::Fatal(Problem::Malformed("bad RESP length")))
        );
        let mut progress = Progress::default();
        assert_eq!(
            decode_request_from(&header[..10], &mut progress),
            Err(ParseError::Incomplete(Need::Line))
        );
        assert_eq!(decode_request_from(&header[..30], &mut progress), whole);
        let message = Problem::TooManyElements {
            declared: 2_147_483_647,
            limit: MAX_ARGS,
        }
        .to_string();
        assert_eq!(
            message,
            "malformed request: RESP array declares 2147483647 elements, more than the 1024 a \
             request may have; closing connection"
        );
        assert!(
            Problem::BulkTooLong {
                declared: 999_999_999,
                limit: MAX_REQUEST
            }
            .to_string()
            .contains("RESP bulk string declares 999999999 bytes, more than the 65536")
        );
    }

    #[test]
    fn bad_requests_are_answered_not_fatal() {
        assert_eq!(
            request(b"FOOBAR\r\n").0,
            Request::Invalid(Problem::UnknownCommand(b"FOOBAR"))
        );
        assert_eq!(
            request(b"GETSEQ a b\r\n").0,
            Request::Invalid(Problem::WrongArity(USAGE_GETSEQ))
        );
        assert_eq!(
            request(b"GETSEQ_BATCH\r\n").0,
            Request::Invalid(Problem::WrongArity(USAGE_BATCH))
        );
        assert_eq!(
            request(b"GETSEQ_BATCH -1\r\n").0,
            Request::Invalid(Problem::NotAnInteger(b"-1"))
        );
        assert_eq!(
            request(b"GETSEQ_BATCH 99999999999999999999\r\n").0,
            Request::Invalid(Problem::NotAnInteger(b"99999999999999999999"))
        );
    }

    #[test]
    fn unrecoverable_input_is_fatal() {
        let long = vec![b'a'; MAX_REQUEST + 1];
        assert_eq!(decode_request(&long), Err(too_long()));
        let mut long_line = vec![b'a'; MAX_REQUEST + 1];
        long_line.push(b'\n');
        assert_eq!(decode_request(&long_line), Err(too_long()));
        assert!(matches!(
            decode_request(b"*x\r\n"),
            Err(ParseError::Fatal(_))
        ));
        assert!(matches!(
            decode_request(b"*1\r\n:5\r\n"),
            Err(ParseError::Fatal(_))
        ));
        assert!(matches!(
            decode_request(b"*1\r\n$2\r\nabcd\r\n"),
            Err(ParseError::Fatal(_))
        ));
        assert!(matches!(
            decode_request(b"*99999\r\n"),
            Err(ParseError::Fatal(_))
        ));
        assert!(matches!(
            decode_request(b"*1\r\n$99999999\r\n"),
            Err(ParseError::Fatal(_))
        ));
    }

    #[test]
    fn consecutive_numbers_encode_like_single_replies() {
        let mut batch = Vec::new();
        encode_numbers(&mut batch, 99, 3);
        assert_eq!(batch, b":99\r\n:100\r\n:101\r\n");
        for (first, count) in [
            (0, 1200),
            (1, 0),
            (8, 5),
            (999_990, 20),
            (u64::MAX - 10, 11),
        ] {
            let (mut batch, mut single) = (Vec::new(), Vec::new());
            encode_numbers(&mut batch, first, count);
            for n in 0..count {
                encode_reply(&mut single, &Reply::Number(first + n));
            }
            assert_eq!(batch, single, "first {first}, count {count}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(encoded(Reply::Number(1234567890)), ":1234567890\r\n");
        assert_eq!(encoded(Reply::Current(4)), ":4\r\n");
        assert_eq!(
            encoded(Reply::Range {
                first: 1001,
                count: 20
            }),
            "*2\r\n:1001\r\n:1020\r\n"
        );
        assert_eq!(encoded(Reply::Pong { echo: None }), "+PONG\r\n");
        assert_eq!(encoded(Reply::Pong { echo: Some(b"hi") }), "$2\r\nhi\r\n");
        assert_eq!(encoded(Reply::Ok), "+OK\r\n");
        assert_eq!(encoded(Reply::EmptyArray), "*0\r\n");
        assert_eq!(
            encoded(Reply::UnsetConfig(b"save")),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            encoded(Reply::Error {
                opcode: 0,
                problem: Problem::UnknownCommand(b"FOOBAR")
            }),
            format!(
                "-ERR Unknown command 'FOOBAR'. Supported: {}\r\n",
                super::super::TEXT_COMMANDS
            )
        );
        assert_eq!(
            encoded(Reply::Error {
                opcode: 0,
                problem: Problem::Exhausted { remaining: 0 }
            }),
            format!(
                "-EXHAUSTED sequence exhausted: only 0 numbers are left before the maximum {}\r\n",
                crate::sequence::MAX_VALUE
            )
        );
    }

    #[test]
    fn client_decodes_every_reply_it_can_get() {
        let reply = |input: &'static [u8]| decode_reply(input).map(|ok| (ok.message, ok.consumed));
        assert_eq!(reply(b":42\r\n:1"), Ok((ClientReply::Integer(42), 5)));
        assert_eq!(reply(b":-3\r\n"), Ok((ClientReply::Integer(-3), 5)));
        assert_eq!(
            reply(b"*2\r\n:1001\r\n:1020\r\n"),
            Ok((ClientReply::Pair(1001, 1020), 18))
        );
        assert_eq!(reply(b"+PONG\r\n"), Ok((ClientReply::Status(b"PONG"), 7)));
        assert_eq!(
            reply(b"-ERR no\r\n"),
            Ok((ClientReply::Error(b"ERR no"), 9))
        );
        // Every reply our encoder writes decodes to what was encoded.
        let mut out = Vec::new();
        encode_reply(&mut out, &Reply::Range { first: 5, count: 3 });
        assert_eq!(reply_of(&out), Ok(ClientReply::Pair(5, 7)));
        out.clear();
        encode_reply(&mut out, &Reply::Number(9));
        assert_eq!(reply_of(&out), Ok(ClientReply::Integer(9)));
    }

    fn reply_of(input: &[u8]) -> Result<ClientReply<'_>, ParseError<'_>> {
        decode_reply(input).map(|ok| ok.message)
    }

    #[test]
    fn client_waits_for_whole_replies_and_rejects_garbage() {
        for partial in [
            &b""[..],
            b":4",
            b":42\r",
            b"*2\r\n:1\r\n",
            b"*2\r\n:1\r\n:2",
        ] {
            assert_eq!(
                reply_of(partial),
                Err(ParseError::Incomplete(Need::Line)),
                "{partial:?}"
            );
        }
        for garbage in [
            &b":x\r\n"[..],
            b":\r\n",
            b"$3\r\nabc\r\n",
            b"*3\r\n",
            b"*2\r\n+OK\r\n",
            b":1\n",
            b":99999999999999999999\r\n",
        ] {
            assert!(
                matches!(reply_of(garbage), Err(ParseError::Fatal(_))),
                "{garbage:?}"
            );
        }
    }
}
