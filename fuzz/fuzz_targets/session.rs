//! A session fed arbitrary bytes, as a connection's driver feeds it: whole, and split at
//! points the fuzzer chooses (its first bytes pick them). Invariants:
//! - the replies are byte-identical however the input is split;
//! - every complete request gets exactly one reply, in order (binary: request frames in, reply
//!   headers out, each reply carrying its request's opcode; text: one RESP value or seed-000
//!   line per request that asks for one);
//! - the numbers one session receives strictly increase, per sequence (a lease retried with
//!   the same ids gets the range it was first granted);
//! - an error reply is specific: a known code and a non-empty message.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use seqd::protocol::binary;
use seqd::protocol::{ErrorCode, ParseError, Request, Target, text};
use seqd::sequence::Registry;
use seqd::service::{Limits, LoopState, Session, Status};

fuzz_target!(|data: &[u8]| {
    // Control: the first byte says how many split points follow (0..=7), two bytes each.
    let Some((&splits, rest)) = data.split_first() else {
        return;
    };
    let control_len = (usize::from(splits % 8) * 2).min(rest.len());
    let (control, input) = rest.split_at(control_len);
    let mut cuts: Vec<usize> = control
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .map(|c| {
            if input.is_empty() {
                0
            } else {
                c % (input.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();

    let whole = feed(&[input]);
    let mut pieces = Vec::new();
    let mut start = 0;
    for &cut in &cuts {
        pieces.push(&input[start..cut]);
        start = cut;
    }
    pieces.push(&input[start..]);
    let split = feed(&pieces);
    if !asks_for_connection_or_clock(input) {
        assert_eq!(
            whole, split,
            "replies differ when the input is split at {cuts:?}"
        );
    }

    match input.first() {
        Some(&binary::MAGIC) => check_binary(input, &whole),
        Some(b'\t'..=b'\r' | b' '..=b'~') => check_text(input, &whole),
        // Another protocol: one text error, then the session closes.
        Some(_) => {
            let (reply, end) = value(&whole, 0);
            assert!(
                matches!(reply, Value::Error(_)) && end == whole.len(),
                "{whole:?}"
            );
        }
        None => assert!(whole.is_empty()),
    }
});

/// Whether the input may hold a command whose reply names the connection or the time
/// (`HELLO` and `CLIENT` carry the connection's id, `TIME` and `INFO` the clock): two sessions
/// fed the same bytes answer those differently, so their replies are not compared.
fn asks_for_connection_or_clock(input: &[u8]) -> bool {
    let upper = input.to_ascii_uppercase();
    [&b"HELLO"[..], b"CLIENT", b"TIME", b"INFO"]
        .iter()
        .any(|word| upper.windows(word.len()).any(|w| w == *word))
}

/// Feeds the pieces to a fresh session with a fresh in-memory sequence registry (numbers from
/// 1), then ends the input; returns every byte the session wrote.
fn feed(pieces: &[&[u8]]) -> Vec<u8> {
    let registry = Arc::new(Registry::new(8, 1));
    let mut state = LoopState::new(
        registry,
        Limits {
            max_batch: 1_000_000,
            password: None,
            held_output: seqd::service::OUTPUT_HIGH_WATER,
        },
    );
    let mut session = Session::new();
    let mut sent = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        let status = session.receive(piece, &mut state, &mut out);
        if settle(status, &mut session, &mut state, &mut out, &mut sent) == Status::Closing {
            return sent;
        }
    }
    let status = session.end_of_input();
    settle(status, &mut session, &mut state, &mut out, &mut sent);
    sent
}

/// Sends the output, then resumes a paused session, as the driver does (in memory nothing
/// waits for the disk, so every pause clears at once).
fn settle(
    mut status: Status,
    session: &mut Session,
    state: &mut LoopState,
    out: &mut Vec<u8>,
    sent: &mut Vec<u8>,
) -> Status {
    for _ in 0..1000 {
        sent.append(out);
        match status {
            Status::Paused(_) => status = session.resume(state, out),
            _ => break,
        }
    }
    sent.append(out);
    status
}

/// Numbers issued so far per sequence, and lease ranges by ids, for the increase check.
#[derive(Default)]
struct Issued {
    highest: HashMap<Vec<u8>, u64>,
    leases: HashMap<(Vec<u8>, Vec<u8>), (u64, u64)>,
}

impl Issued {
    fn numbers(&mut self, sequence: Vec<u8>, first: u64, count: u64) {
        assert!(count > 0, "an empty range was issued");
        if let Some(&highest) = self.highest.get(&sequence) {
            assert!(
                first > highest,
                "{first} issued after {highest} on {sequence:?}"
            );
        }
        self.highest.insert(sequence, first + (count - 1));
    }

    /// A lease: with ids already granted, the same range; otherwise new numbers.
    fn lease(
        &mut self,
        sequence: Vec<u8>,
        ids: Option<(Vec<u8>, Vec<u8>)>,
        first: u64,
        count: u64,
    ) {
        if let Some(ids) = ids {
            if let Some(&granted) = self.leases.get(&ids) {
                assert_eq!(
                    granted,
                    (first, count),
                    "a retry of {ids:?} got another range"
                );
                return;
            }
            self.leases.insert(ids, (first, count));
        }
        self.numbers(sequence, first, count);
    }
}

fn binary_sequence(target: Target<'_>) -> Vec<u8> {
    match target {
        Target::Default => 0u32.to_be_bytes().to_vec(),
        Target::Id(id) => id.to_be_bytes().to_vec(),
        Target::Name(name) => name.to_vec(),
    }
}

fn check_binary(input: &[u8], output: &[u8]) {
    let mut requests = Vec::new();
    let mut fatal = false;
    let mut pos = 0;
    loop {
        match binary::decode_request(&input[pos..]) {
            Ok(ok) => {
                requests.push((input[pos + 2], ok.message));
                pos += ok.consumed;
            }
            Err(ParseError::Incomplete(_)) => break,
            Err(ParseError::Fatal(_)) => {
                fatal = true;
                break;
            }
        }
    }
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < output.len() {
        match binary::decode_reply(&output[pos..]) {
            Ok(ok) => {
                replies.push(ok.message);
                pos += ok.consumed;
            }
            Err(e) => panic!("the session wrote an undecodable reply at byte {pos}: {e:?}"),
        }
    }
    assert_eq!(
        replies.len(),
        requests.len() + usize::from(fatal),
        "{} complete requests{} got {} replies",
        requests.len(),
        if fatal { " and a fatal frame" } else { "" },
        replies.len()
    );
    let mut issued = Issued::default();
    for (i, reply) in replies.iter().enumerate() {
        if reply.status != 0 {
            assert!(
                ErrorCode::from_u8(reply.status).is_some(),
                "error status {} is not a known code",
                reply.status
            );
            assert!(
                !reply.message.is_empty(),
                "an error reply without a message"
            );
        }
        let Some(&(op, request)) = requests.get(i) else {
            continue; // the fatal frame's error
        };
        // An invalid frame's error may carry opcode 0 (docs/PROTOCOL.md: "0 when it could not
        // be known"); the detail names a bad opcode.
        let invalid = matches!(request, Request::Invalid(_));
        assert!(
            reply.opcode == op || (invalid && reply.opcode == 0),
            "reply {i} answers opcode {}, not {op}",
            reply.opcode
        );
        if reply.status != 0 {
            continue;
        }
        match request {
            Request::Get { target } => issued.numbers(binary_sequence(target), reply.value, 1),
            Request::GetBatch { target, .. } => {
                issued.numbers(binary_sequence(target), reply.value, u64::from(reply.count))
            }
            Request::Lease { target, ids, .. } => issued.lease(
                binary_sequence(target),
                ids.map(|ids| (ids.client.to_vec(), ids.request.to_vec())),
                reply.value,
                u64::from(reply.count),
            ),
            _ => {}
        }
    }
}

/// One reply as the text protocol writes them: a RESP value, or seed 000's bare line.
#[derive(Debug)]
enum Value<'a> {
    Status(&'a [u8]),
    Error(&'a [u8]),
    Integer(&'a [u8]),
    Bulk,
    Array(Vec<Value<'a>>),
    Bare(&'a [u8]),
}

fn line(buf: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &buf[pos..];
    let lf = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("a reply line without CRLF at byte {pos}"));
    (&rest[..lf], pos + lf + 2)
}

fn value(buf: &[u8], pos: usize) -> (Value<'_>, usize) {
    let (head, next) = line(buf, pos);
    let number = |digits: &[u8]| -> i64 {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad length {digits:?}"))
    };
    match head.split_first() {
        Some((b'+', text)) => (Value::Status(text), next),
        Some((b'-', text)) => (Value::Error(text), next),
        Some((b':', digits)) => (Value::Integer(digits), next),
        // RESP3 (after `HELLO 3`): a null, and a verbatim string framed like a bulk one.
        Some((b'_', _)) => (Value::Bulk, next),
        Some((b'$' | b'=', len)) => match number(len) {
            -1 => (Value::Bulk, next),
            n => {
                let end = next + n as usize;
                assert_eq!(
                    &buf[end..end + 2],
                    b"\r\n",
                    "a bulk string not ended by CRLF"
                );
                (Value::Bulk, end + 2)
            }
        },
        // An array, and RESP3's map (two values per entry), set and push.
        Some((kind @ (b'*' | b'%' | b'~' | b'>'), len)) => {
            let per_entry = if *kind == b'%' { 2 } else { 1 };
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..number(len).max(0) * per_entry {
                let (item, after) = value(buf, at);
                items.push(item);
                at = after;
            }
            (Value::Array(items), at)
        }
        _ => (Value::Bare(head), next),
    }
}

fn integer(digits: &[u8]) -> u64 {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {digits:?}"))
}

fn text_sequence(target: Target<'_>) -> Vec<u8> {
    match target {
        Target::Default => b"default".to_vec(),
        Target::Id(id) => id.to_be_bytes().to_vec(),
        Target::Name(name) => name.to_vec(),
    }
}

fn check_text(input: &[u8], output: &[u8]) {
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < output.len() {
        let (reply, next) = value(output, pos);
        if let Value::Error(text) = reply {
            // `-CODE message`: a code word and something that says what went wrong.
            let message = text.splitn(2, |&b| b == b' ').nth(1).unwrap_or(b"");
            assert!(
                !text.is_empty() && !message.is_empty(),
                "an unspecific error reply"
            );
        }
        replies.push(reply);
        pos = next;
    }

    // The requests the session must have answered: up to a fatal one or QUIT (both answered,
    // then the connection closes); a final incomplete request may be answered at end of input.
    let mut requests = Vec::new();
    let mut pos = 0;
    let mut closed = false;
    while pos < input.len() {
        match text::decode_request(&input[pos..]) {
            Ok(ok) => {
                pos += ok.consumed;
                match ok.message {
                    Request::Nothing => {}
                    Request::Quit => {
                        requests.push(Some(ok.message));
                        closed = true;
                        break;
                    }
                    message => requests.push(Some(message)),
                }
            }
            Err(ParseError::Incomplete(_)) => break,
            Err(ParseError::Fatal(_)) => {
                requests.push(None);
                closed = true;
                break;
            }
        }
    }
    let leftover = !closed && pos < input.len();
    assert!(
        replies.len() == requests.len() || (leftover && replies.len() == requests.len() + 1),
        "{} complete requests got {} replies",
        requests.len(),
        replies.len()
    );

    let mut issued = Issued::default();
    for (request, reply) in requests.iter().zip(&replies) {
        let Some(request) = request else { continue };
        match (request, reply) {
            (_, Value::Error(_)) => {}
            (Request::Get { target }, Value::Integer(n)) => {
                issued.numbers(text_sequence(*target), integer(n), 1)
            }
            (Request::GetBatch { target, .. }, Value::Array(pair)) => {
                let [Value::Integer(first), Value::Integer(last)] = pair.as_slice() else {
                    panic!("a batch answered {pair:?}");
                };
                let (first, last) = (integer(first), integer(last));
                assert!(last >= first);
                issued.numbers(text_sequence(*target), first, last - first + 1);
            }
            (Request::Lease { target, ids, .. }, Value::Bare(range) | Value::Status(range)) => {
                let text = std::str::from_utf8(range).expect("a lease reply is ASCII");
                let (first, last) = text.split_once(',').expect("a lease reply is first,last");
                let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
                issued.lease(
                    text_sequence(*target),
                    ids.map(|ids| (ids.client.to_vec(), ids.request.to_vec())),
                    first,
                    last - first + 1,
                );
            }
            (Request::Get { .. } | Request::GetBatch { .. } | Request::Lease { .. }, other) => {
                panic!("{request:?} answered {other:?}")
            }
            _ => {}
        }
    }
}
