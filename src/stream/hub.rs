//! The stream protocol's server side (seed 003) as a pure state machine: bytes in, clock
//! ticks in, bytes out. No sockets and no timers: the event loop that serves the stream
//! listener feeds it what arrives, asks it what to send, and closes what it says to close.
//!
//! A *stream* belongs to a client id and outlives connections. At `CON` it reserves `n`
//! consecutive numbers of a seqd sequence (position `i` carries `first + i`, so the numbers
//! are unique, fit 32 bits, and only `first` needs to be durable); its record is on disk
//! before the first `NUM` goes out, so a client that resumes after a server restart gets the
//! same numbers. The server pushes at its own pace: a first pass over every position, then
//! passes over the unacknowledged ones (at most every [`RESEND_AFTER`]) until all are
//! acknowledged, then `CHK` until that is acknowledged; then the stream is finished and
//! forgotten. Acknowledgements that repeat, come late or name no position change nothing.
//!
//! One writer per stream: a `CON` for a stream that has a connection takes the stream over
//! and the previous connection is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::stream::{self as wire, Message};
use crate::protocol::{ParseError, ParseOk};
use crate::sequence::{Refusal, Registry, SequenceId};
use crate::store::format::StreamRecord;
use crate::store::records::Records;

/// Key of a connection in the event loop that drives the hub.
pub type ConnKey = usize;

/// Least time between two passes over the unacknowledged positions of a stream, and between
/// two `CHK`s: an acknowledgement has had time to come back.
pub const RESEND_AFTER: Duration = Duration::from_millis(200);
/// How often abandoned streams are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the command line says about streams.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Time between two sends of a stream.
    pub interval: Duration,
    /// Messages a stream sends per send.
    pub burst: u32,
    /// A stream not heard from for this long is forgotten.
    pub ttl: Duration,
    /// Most streams at once.
    pub max_streams: usize,
    /// Largest `n` a `CON` may ask for.
    pub max_count: u32,
    /// The sequence the numbers come from.
    pub sequence: String,
}

/// The time, twice: monotonic for pacing, wall-clock for what is persisted.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: crate::lease::unix_ms(),
        }
    }
}

/// What to do with the connection that sent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Send what is queued, then close: a refused `CON`, a protocol violation, or a finished
    /// stream.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its numbers to be below the sequence's durable ceiling.
    Reserving,
    /// The first pass: `next` is the next position to send.
    First { next: u32 },
    /// A pass over unacknowledged positions, from `cursor`, not before `not_before`.
    Resend { cursor: u32, not_before: Instant },
    /// Every number is acknowledged: `CHK` until it is.
    Checksum { not_before: Instant },
}

#[derive(Debug)]
struct Stream {
    sequence: SequenceId,
    /// Position `i` carries `first + i`.
    first: u64,
    count: u32,
    acked: Vec<u64>,
    acked_count: u32,
    checksum: Option<[u8; wire::CHECKSUM_LEN]>,
    checksum_sent: bool,
    phase: Phase,
    /// Nothing is sent before this change (its record) is durable.
    change: u64,
    conn: Option<ConnKey>,
    last_heard_ms: u64,
}

impl Stream {
    fn new(sequence: SequenceId, count: u32, now: Now) -> Stream {
        Stream {
            sequence,
            first: 0,
            count,
            acked: vec![0; (count as usize).div_ceil(64)],
            acked_count: 0,
            checksum: None,
            checksum_sent: false,
            phase: Phase::Reserving,
            change: 0,
            conn: None,
            last_heard_ms: now.unix_ms,
        }
    }

    fn is_acked(&self, position: u32) -> bool {
        self.acked[position as usize / 64] & (1 << (position % 64)) != 0
    }

    fn ack(&mut self, position: u32) {
        if !self.is_acked(position) {
            self.acked[position as usize / 64] |= 1 << (position % 64);
            self.acked_count += 1;
        }
    }

    /// The first unacknowledged position at or after `from`, if any.
    fn next_unacked(&self, from: u32) -> Option<u32> {
        let mut word = from as usize / 64;
        let mut bits = !self.acked.get(word)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let position = (word * 64) as u32 + bits.trailing_zeros();
                return (position < self.count).then_some(position);
            }
            word += 1;
            bits = !*self.acked.get(word)?;
        }
    }

    fn all_acked(&self) -> bool {
        self.acked_count == self.count
    }

    /// Every position below this one is acknowledged.
    fn acked_prefix(&self) -> u32 {
        self.next_unacked(0).unwrap_or(self.count)
    }

    fn record(&self, client_id: &[u8]) -> StreamRecord {
        StreamRecord {
            client_id: client_id.to_vec(),
            sequence: self.sequence,
            first: self.first,
            count: self.count,
            acked: self.acked_prefix(),
            last_active_ms: self.last_heard_ms,
        }
    }

    /// When this stream next has something to send (None: waiting for the client).
    fn due(&self, now: Now) -> Option<Instant> {
        match self.phase {
            Phase::Reserving | Phase::First { .. } => Some(now.at),
            Phase::Resend { not_before, .. } | Phase::Checksum { not_before } => Some(not_before),
        }
    }
}

/// One connection of the stream listener.
#[derive(Debug, Default)]
struct Conn {
    /// A message split across receives.
    carry: Vec<u8>,
    /// The stream it writes, once its `CON` was accepted.
    stream: Option<Box<[u8]>>,
}

pub struct StreamHub {
    settings: StreamSettings,
    registry: Arc<Registry>,
    records: Arc<Records>,
    streams: HashMap<Box<[u8]>, Stream>,
    conns: HashMap<ConnKey, Conn>,
    /// Connections the loop must close at once (taken over by a newer `CON`, or expired).
    to_close: Vec<ConnKey>,
    next_expiry_check: Instant,
}

impl StreamHub {
    /// A hub serving the streams recovered from the data directory (each resumes with a pass
    /// over what it had not seen acknowledged).
    pub fn new(
        settings: StreamSettings,
        registry: Arc<Registry>,
        records: Arc<Records>,
        now: Now,
    ) -> StreamHub {
        let mut streams = HashMap::new();
        for record in records.streams.records() {
            let mut stream = Stream::new(record.sequence, record.count, now);
            stream.first = record.first;
            stream.last_heard_ms = record.last_active_ms;
            for position in 0..record.acked {
                stream.ack(position);
            }
            stream.phase = Phase::Resend {
                cursor: 0,
                not_before: now.at,
            };
            streams.insert(record.client_id.into_boxed_slice(), stream);
        }
        StreamHub {
            settings,
            registry,
            records,
            streams,
            conns: HashMap::new(),
            to_close: Vec::new(),
            next_expiry_check: now.at,
        }
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// A new connection of the stream listener.
    pub fn open(&mut self, key: ConnKey) {
        self.conns.insert(key, Conn::default());
    }

    /// The connection is gone (closed by either side): its stream waits for a resume.
    pub fn close(&mut self, key: ConnKey, now: Now) {
        // The key may be handed to a new connection next: nothing queued for this one may
        // reach it.
        self.to_close.retain(|&k| k != key);
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let Some(id) = conn.stream else {
            return;
        };
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.conn == Some(key)
        {
            stream.conn = None;
            stream.last_heard_ms = now.unix_ms;
            if stream.phase != Phase::Reserving {
                // Progress so far, for a resume after a restart (written with the next state).
                self.records
                    .streams
                    .put(stream.record(&id), &self.records.commits);
            }
            tracing::debug!(
                client_id = %Id(&id),
                acked = stream.acked_count,
                count = stream.count,
                "stream connection closed; the stream waits for a resume"
            );
        }
    }

    /// Connections to close at once: taken over by a newer `CON` for their stream, or whose
    /// stream expired.
    pub fn take_to_close(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.to_close)
    }

    /// Feeds bytes a connection sent.
    pub fn receive(&mut self, key: ConnKey, data: &[u8], now: Now) -> Verdict {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Verdict::Close;
        };
        let mut carry = std::mem::take(&mut conn.carry);
        carry.extend_from_slice(data);
        let mut pos = 0;
        let verdict = loop {
            match wire::decode(&carry[pos..]) {
                Ok(ParseOk { message, consumed }) => {
                    pos += consumed;
                    if self.handle(key, message, now) == Verdict::Close {
                        break Verdict::Close;
                    }
                }
                Err(ParseError::Incomplete(_)) => break Verdict::Open,
                Err(ParseError::Fatal(problem)) => {
                    tracing::debug!(key, "stream connection closed: {problem}");
                    break Verdict::Close;
                }
            }
        };
        if verdict == Verdict::Close {
            self.detach(key);
        } else if let Some(conn) = self.conns.get_mut(&key) {
            carry.drain(..pos);
            conn.carry = carry;
        }
        verdict
    }

    fn handle(&mut self, key: ConnKey, message: Message<'_>, now: Now) -> Verdict {
        let attached = self.conns.get(&key).and_then(|c| c.stream.clone());
        match (message, attached) {
            (Message::Connect { count, client_id }, None) => {
                self.connect(key, client_id, count, now)
            }
            (Message::Ack { sequence }, Some(id)) => self.acknowledged(&id, key, sequence, now),
            (Message::Connect { .. }, Some(_)) => {
                tracing::debug!(key, "a second CON on one stream connection; closing it");
                Verdict::Close
            }
            (Message::Ack { .. }, None) => {
                tracing::debug!(key, "ACK before CON on a stream connection; closing it");
                Verdict::Close
            }
            (Message::Number { .. } | Message::Checksum { .. }, _) => {
                tracing::debug!(key, "a client sent NUM or CHK; closing its connection");
                Verdict::Close
            }
        }
    }

    fn connect(&mut self, key: ConnKey, client_id: &[u8], count: u32, now: Now) -> Verdict {
        let id = Id(client_id);
        if client_id.is_empty() || count == 0 || count > self.settings.max_count {
            tracing::warn!(
                client_id = %id,
                count,
                "stream CON refused: the client id must not be empty and n must be between 1 \
                 and {} (--max-stream-numbers)",
                self.settings.max_count
            );
            return Verdict::Close;
        }
        if let Some(stream) = self.streams.get_mut(client_id) {
            if stream.count != count {
                tracing::warn!(
                    client_id = %id,
                    count,
                    "stream CON refused: this client id's stream has {} numbers, not {count}; \
                     resume with the same n, or use another client id",
                    stream.count
                );
                return Verdict::Close;
            }
            if let Some(previous) = stream.conn.replace(key) {
                // Never two writers: the newer connection takes the stream over.
                self.to_close.push(previous);
                if let Some(conn) = self.conns.get_mut(&previous) {
                    conn.stream = None;
                }
            }
            stream.last_heard_ms = now.unix_ms;
            if stream.phase != Phase::Reserving {
                stream.phase = Phase::Resend {
                    cursor: 0,
                    not_before: now.at,
                };
            }
            tracing::info!(
                client_id = %id,
                acked = stream.acked_count,
                count,
                "stream resumed"
            );
        } else {
            if self.streams.len() >= self.settings.max_streams {
                self.expire(now);
            }
            if self.streams.len() >= self.settings.max_streams {
                tracing::warn!(
                    client_id = %id,
                    "stream CON refused: {} streams are open (--max-streams)",
                    self.streams.len()
                );
                return Verdict::Close;
            }
            let Some(sequence) = self.sequence() else {
                return Verdict::Close;
            };
            let mut stream = Stream::new(sequence, count, now);
            stream.conn = Some(key);
            self.streams.insert(client_id.into(), stream);
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.stream = Some(client_id.into());
        }
        self.reserve(client_id)
    }

    /// The id of the sequence streams draw from (created on first use).
    fn sequence(&self) -> Option<SequenceId> {
        match self.registry.resolve(self.settings.sequence.as_bytes()) {
            Ok(sequence) => Some(sequence.id()),
            Err(e) => {
                tracing::warn!(
                    "stream CON refused: the stream sequence {:?} is unusable: {e}",
                    self.settings.sequence
                );
                None
            }
        }
    }

    /// Reserves a new stream's numbers, if it still waits for them. Close: refused.
    fn reserve(&mut self, client_id: &[u8]) -> Verdict {
        let Some(stream) = self.streams.get_mut(client_id) else {
            return Verdict::Close;
        };
        if stream.phase != Phase::Reserving {
            return Verdict::Open;
        }
        let Some(sequence) = self.registry.get(stream.sequence) else {
            return Verdict::Close;
        };
        let count = u64::from(stream.count);
        let fits = |first: u64| first + count - 1 <= u64::from(u32::MAX);
        // Checked before reserving too, so a refused CON usually consumes nothing.
        let refusal = match sequence.current() {
            next if !fits(next) => Some(format!(
                "its numbers would not fit 32 bits: sequence {:?} is at {next}",
                sequence.name()
            )),
            _ => match sequence.reserve(count) {
                Ok(first) if fits(first) => {
                    stream.first = first;
                    stream.phase = Phase::First { next: 0 };
                    stream.change = self
                        .records
                        .streams
                        .put(stream.record(client_id), &self.records.commits);
                    // Nothing is sent before the record is on disk: ask for the write now.
                    self.registry.ceiling_signals().request_raise();
                    tracing::info!(
                        client_id = %Id(client_id),
                        count,
                        first,
                        "stream started"
                    );
                    return Verdict::Open;
                }
                Ok(first) => Some(format!(
                    "its numbers would not fit 32 bits: {first}..{} were reserved and are \
                     skipped",
                    first + count
                )),
                Err(Refusal::AwaitingCeiling) => {
                    let signals = self.registry.ceiling_signals();
                    if !signals.unavailable() {
                        signals.request_raise();
                        return Verdict::Open;
                    }
                    Some("the durable state cannot be written (see above)".to_string())
                }
                Err(Refusal::Exhausted { remaining }) => Some(format!(
                    "sequence {:?} has only {remaining} numbers left",
                    sequence.name()
                )),
            },
        };
        tracing::warn!(
            client_id = %Id(client_id),
            count,
            "stream CON refused: {}",
            refusal.unwrap_or_default()
        );
        self.streams.remove(client_id);
        Verdict::Close
    }

    fn acknowledged(&mut self, id: &[u8], key: ConnKey, position: u32, now: Now) -> Verdict {
        let Some(stream) = self.streams.get_mut(id) else {
            return Verdict::Close;
        };
        if stream.conn != Some(key) {
            return Verdict::Close;
        }
        stream.last_heard_ms = now.unix_ms;
        if position < stream.count {
            stream.ack(position);
            if stream.all_acked() && matches!(stream.phase, Phase::Resend { .. }) {
                // The last one: the checksum goes out at once.
                stream.phase = Phase::Checksum { not_before: now.at };
            }
            return Verdict::Open;
        }
        if position > stream.count || !stream.checksum_sent || !stream.all_acked() {
            // Out of range, or the checksum acknowledged before it was sent: harmless.
            tracing::trace!(client_id = %Id(id), position, "ACK ignored");
            return Verdict::Open;
        }
        tracing::info!(
            client_id = %Id(id),
            count = stream.count,
            "stream finished: checksum acknowledged"
        );
        self.streams.remove(id);
        self.records.streams.remove(id, &self.records.commits);
        Verdict::Close
    }

    /// Detaches a connection the hub is done with (it will be closed).
    fn detach(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key)
            && let Some(id) = conn.stream.take()
            && let Some(stream) = self.streams.get_mut(&id)
            && stream.conn == Some(key)
        {
            stream.conn = None;
        }
    }

    /// Housekeeping due now: numbers for streams that wait for them, abandoned streams.
    /// Returns the connections that may have something to send.
    pub fn tick(&mut self, now: Now) -> Vec<ConnKey> {
        let waiting: Vec<Box<[u8]>> = self
            .streams
            .iter()
            .filter(|(_, s)| s.phase == Phase::Reserving)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            if self.reserve(&id) == Verdict::Close {
                // Refused: reserve() forgot the stream; close its connection.
                let holders: Vec<ConnKey> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.stream.as_deref() == Some(&id))
                    .map(|(&key, _)| key)
                    .collect();
                for key in holders {
                    self.detach(key);
                    self.to_close.push(key);
                }
            }
        }
        if now.at >= self.next_expiry_check {
            self.expire(now);
            self.next_expiry_check = now.at + EXPIRY_CHECK;
        }
        self.streams
            .values()
            .filter(|s| s.due(now).is_some_and(|due| due <= now.at))
            .filter_map(|s| s.conn)
            .collect()
    }

    /// Forgets streams not heard from for `--stream-ttl`; their numbers are never reissued.
    fn expire(&mut self, now: Now) {
        let ttl = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<Box<[u8]>> = self
            .streams
            .iter()
            .filter(|(_, s)| now.unix_ms.saturating_sub(s.last_heard_ms) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(stream) = self.streams.remove(&id) {
                tracing::info!(
                    client_id = %Id(&id),
                    acked = stream.acked_count,
                    count = stream.count,
                    "stream expired: not heard from for {:?} (--stream-ttl)",
                    self.settings.ttl
                );
                if let Some(key) = stream.conn {
                    self.detach(key);
                    self.to_close.push(key);
                }
                self.records.streams.remove(&id, &self.records.commits);
            }
        }
    }

    /// Appends what the connection's stream has due now, at most `--stream-burst` messages.
    pub fn fill(&mut self, key: ConnKey, out: &mut Vec<u8>, now: Now) {
        let Some(id) = self.conns.get(&key).and_then(|c| c.stream.as_deref()) else {
            return;
        };
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        if stream.conn != Some(key) || !self.records.commits.is_durable(stream.change) {
            return;
        }
        let mut budget = self.settings.burst;
        while budget > 0 {
            match stream.phase {
                Phase::Reserving => return,
                Phase::First { next } => match stream.next_unacked(next) {
                    Some(position) => {
                        send_number(stream, position, out);
                        stream.phase = Phase::First { next: position + 1 };
                        budget -= 1;
                    }
                    None => {
                        stream.phase = Phase::Resend {
                            cursor: 0,
                            not_before: now.at + RESEND_AFTER,
                        }
                    }
                },
                Phase::Resend { .. } if stream.all_acked() => {
                    stream.phase = Phase::Checksum { not_before: now.at };
                }
                Phase::Resend { cursor, not_before } => {
                    if now.at < not_before {
                        return;
                    }
                    match stream.next_unacked(cursor) {
                        Some(position) => {
                            send_number(stream, position, out);
                            stream.phase = Phase::Resend {
                                cursor: position + 1,
                                not_before,
                            };
                            budget -= 1;
                        }
                        None => {
                            stream.phase = Phase::Resend {
                                cursor: 0,
                                not_before: now.at + RESEND_AFTER,
                            }
                        }
                    }
                }
                Phase::Checksum { not_before } => {
                    if now.at >= not_before {
                        let (first, count) = (stream.first, stream.count);
                        let checksum = *stream.checksum.get_or_insert_with(|| {
                            // Positions carry `first + i`, all within 32 bits (checked at CON).
                            wire::checksum((0..count).map(|i| (first + u64::from(i)) as u32))
                        });
                        Message::Checksum {
                            sequence: count,
                            checksum: &checksum,
                        }
                        .encode(out);
                        stream.checksum_sent = true;
                        stream.phase = Phase::Checksum {
                            not_before: now.at + RESEND_AFTER,
                        };
                    }
                    return;
                }
            }
        }
    }

    /// How long until something is due (None: nothing will be until a client sends).
    pub fn next_tick(&self, now: Now) -> Option<Duration> {
        let sending = self
            .streams
            .values()
            .filter(|s| s.conn.is_some() || s.phase == Phase::Reserving)
            .filter_map(|s| s.due(now))
            .min()
            .map(|due| {
                due.saturating_duration_since(now.at)
                    .max(self.settings.interval)
            });
        let expiry = (!self.streams.is_empty()).then(|| {
            self.next_expiry_check
                .saturating_duration_since(now.at)
                .max(self.settings.interval)
        });
        sending.into_iter().chain(expiry).min()
    }
}

fn send_number(stream: &Stream, position: u32, out: &mut Vec<u8>) {
    Message::Number {
        sequence: position,
        // Within 32 bits: checked when the numbers were reserved.
        number: (stream.first + u64::from(position)) as u32,
    }
    .encode(out);
}

/// A client id in a log line: printable ASCII as is, other bytes escaped.
struct Id<'a>(&'a [u8]);

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseSettings;
    use crate::store::commits::Commits;

    const A: ConnKey = 1;
    const B: ConnKey = 2;

    fn settings() -> StreamSettings {
        StreamSettings {
            interval: Duration::from_millis(1),
            burst: 64,
            ttl: Duration::from_secs(60),
            max_streams: 2,
            max_count: 1000,
            sequence: "stream".into(),
        }
    }

    struct Fixture {
        hub: StreamHub,
        registry: Arc<Registry>,
        records: Arc<Records>,
        now: Now,
    }

    fn fixture_with(registry: Registry, commits: Commits) -> Fixture {
        let registry = Arc::new(registry);
        let records = Arc::new(Records::empty(commits, LeaseSettings::default()));
        let now = Now {
            at: Instant::now(),
            unix_ms: 1_700_000_000_000,
        };
        let hub = StreamHub::new(settings(), registry.clone(), records.clone(), now);
        Fixture {
            hub,
            registry,
            records,
            now,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(Registry::new(8, 100), Commits::memory_only())
    }

    fn con(count: u32, id: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Message::Connect {
            count,
            client_id: id,
        }
        .encode(&mut out);
        out
    }

    fn ack(sequence: u32) -> Vec<u8> {
        let mut out = Vec::new();
        Message::Ack { sequence }.encode(&mut out);
        out
    }

    /// What the server sent: (position, number) per NUM, and CHK as (n, u32::MAX).
    fn sent(mut bytes: &[u8]) -> Vec<(u32, u32)> {
        let mut messages = Vec::new();
        while !bytes.is_empty() {
            let ParseOk { message, consumed } = wire::decode(bytes).unwrap();
            messages.push(match message {
                Message::Number { sequence, number } => (sequence, number),
                Message::Checksum { sequence, .. } => (sequence, u32::MAX),
                other => panic!("the server sent {other:?}"),
            });
            bytes = &bytes[consumed..];
        }
        messages
    }

    impl Fixture {
        fn advance(&mut self, by: Duration) {
            self.now.at += by;
            self.now.unix_ms += by.as_millis() as u64;
        }

        /// One tick; what `key` is sent.
        fn tick(&mut self, key: ConnKey) -> Vec<(u32, u32)> {
            let mut out = Vec::new();
            for due in self.hub.tick(self.now) {
                if due == key {
                    self.hub.fill(key, &mut out, self.now);
                }
            }
            sent(&out)
        }

        fn send(&mut self, key: ConnKey, bytes: &[u8]) -> Verdict {
            self.hub.receive(key, bytes, self.now)
        }
    }

    fn numbers(first: u32, positions: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
        positions.into_iter().map(|p| (p, first + p)).collect()
    }

    #[test]
    fn a_whole_stream_then_its_checksum() {
        let mut f = fixture();
        f.hub.open(A);
        assert_eq!(f.send(A, &con(5, b"abc")), Verdict::Open);
        assert_eq!(
            f.tick(A),
            numbers(100, 0..5),
            "pushed without waiting for acks"
        );
        assert_eq!(f.tick(A), vec![], "nothing until acks or the resend delay");
        for position in 0..5 {
            assert_eq!(f.send(A, &ack(position)), Verdict::Open);
        }
        assert_eq!(
            f.tick(A),
            vec![(5, u32::MAX)],
            "all acknowledged: the checksum"
        );
        let mut out = Vec::new();
        f.advance(RESEND_AFTER);
        f.hub.fill(A, &mut out, f.now);
        let ParseOk { message, .. } = wire::decode(&out).unwrap();
        assert_eq!(
            message,
            Message::Checksum {
                sequence: 5,
                checksum: &wire::checksum(100..105),
            },
            "resent until acknowledged"
        );
        assert_eq!(f.records.streams.records().len(), 1);
        assert_eq!(f.send(A, &ack(5)), Verdict::Close, "finished");
        assert_eq!(f.hub.streams(), 0);
        assert!(f.records.streams.records().is_empty(), "cleaned up");
        assert_eq!(f.registry.get(1).unwrap().name(), "stream");
        assert_eq!(
            f.registry.get(1).unwrap().current(),
            105,
            "reserved from a sequence"
        );
    }

    #[test]
    fn duplicate_reordered_and_out_of_range_acks_are_harmless() {
        let mut f = fixture();
        f.hub.open(A);
        f.send(A, &con(6, b"abc"));
        assert_eq!(f.tick(A).len(), 6);
        let mut acks = Vec::new();
        for position in [4, 1, 4, 1, 99, 6, u32::MAX, 3] {
            acks.extend(ack(position));
        }
        assert_eq!(f.send(A, &acks), Verdict::Open);
        f.advance(RESEND_AFTER);
        assert_eq!(
            f.tick(A),
            numbers(100, [0, 2, 5]),
            "the unacknowledged, in order"
        );
        for position in [0, 2, 5] {
            f.send(A, &ack(position));
        }
        assert_eq!(f.tick(A), vec![(6, u32::MAX)]);
    }

    #[test]
    fn bytes_split_anywhere_mean_the_same() {
        let mut input = con(3, b"split");
        input.extend(ack(0));
        input.extend(ack(2));
        for cut in 0..input.len() {
            let mut f = fixture();
            f.hub.open(A);
            assert_eq!(f.send(A, &input[..cut]), Verdict::Open);
            assert_eq!(f.send(A, &input[cut..]), Verdict::Open);
            assert_eq!(
                f.tick(A),
                numbers(100, [1]),
                "split at {cut}: acknowledged skipped"
            );
            f.send(A, &ack(1));
            assert_eq!(f.tick(A), vec![(3, u32::MAX)]);
        }
    }

    #[test]
    fn a_connection_closed_before_its_release_was_taken_is_not_released_again() {
        let mut f = fixture();
        f.hub.open(A);
        f.send(A, &con(4, b"id"));
        f.hub.open(B);
        f.send(B, &con(4, b"id"));
        // A closes on its own before the loop took the release; its key is then reused.
        f.hub.close(A, Now::current());
        f.hub.open(A);
        assert_eq!(
            f.hub.take_to_close(),
            Vec::<ConnKey>::new(),
            "the new connection in A's slot must not be closed"
        );
    }

    #[test]
    fn a_resume_takes_the_stream_over_and_resends_what_was_not_acknowledged() {
        let mut f = fixture();
        f.hub.open(A);
        f.send(A, &con(4, b"id"));
        assert_eq!(f.tick(A).len(), 4);
        f.send(A, &ack(1));
        f.hub.open(B);
        assert_eq!(f.send(B, &con(4, b"id")), Verdict::Open);
        assert_eq!(f.hub.take_to_close(), vec![A], "never two writers");
        assert_eq!(
            f.tick(B),
            numbers(100, [0, 2, 3]),
            "the resend pass starts at once"
        );
        assert_eq!(
            f.send(A, &ack(0)),
            Verdict::Close,
            "the old connection is not heard"
        );
        f.hub.close(A, f.now);
        f.hub.close(B, f.now);
        // The progress is recorded when the connection goes.
        assert_eq!(f.records.streams.records()[0].acked, 0);
        f.hub.open(A);
        f.send(A, &con(4, b"id"));
        for position in 0..4 {
            f.send(A, &ack(position));
        }
        assert_eq!(f.tick(A), vec![(4, u32::MAX)]);
    }

    #[test]
    fn nothing_is_sent_before_the_stream_is_durable() {
        let mut f = fixture_with(Registry::new(8, 100), Commits::persisted());
        f.hub.open(A);
        f.send(A, &con(2, b"id"));
        assert_eq!(f.tick(A), vec![]);
        assert!(f.records.commits.pending(), "its record waits for a write");
        f.records.commits.mark_durable(f.records.commits.last());
        assert_eq!(f.tick(A), numbers(100, 0..2));
    }

    #[test]
    fn numbers_wait_for_a_durable_ceiling() {
        let registry = Registry::durable(8, 100);
        let mut f = fixture_with(registry, Commits::memory_only());
        f.hub.open(A);
        assert_eq!(f.send(A, &con(2, b"id")), Verdict::Open);
        assert_eq!(f.tick(A), vec![]);
        f.registry.get(1).unwrap().raise_ceiling(1000);
        assert_eq!(f.tick(A), numbers(100, 0..2));
    }

    #[test]
    fn refused_cons_close_the_connection() {
        let mut f = fixture();
        for (count, id) in [(0, &b"a"[..]), (1001, b"a"), (1, b"")] {
            f.hub.open(A);
            assert_eq!(f.send(A, &con(count, id)), Verdict::Close, "n {count}");
        }
        f.hub.open(A);
        f.send(A, &con(3, b"a"));
        f.hub.open(B);
        assert_eq!(
            f.send(B, &con(4, b"a")),
            Verdict::Close,
            "n differs from the stream's"
        );
        f.send(B, &con(3, b"b"));
        f.hub.open(3);
        assert_eq!(f.send(3, &con(3, b"c")), Verdict::Close, "--max-streams");
        assert_eq!(f.hub.streams(), 2);
    }

    #[test]
    fn numbers_that_would_not_fit_32_bits_are_refused() {
        let mut f = fixture_with(
            Registry::new(8, u64::from(u32::MAX) - 2),
            Commits::memory_only(),
        );
        f.hub.open(A);
        assert_eq!(f.send(A, &con(3, b"fits")), Verdict::Open);
        f.hub.open(B);
        assert_eq!(f.send(B, &con(1, b"too-far")), Verdict::Close);
        assert_eq!(f.hub.streams(), 1);
        assert_eq!(
            f.tick(A),
            vec![(0, u32::MAX - 2), (1, u32::MAX - 1), (2, u32::MAX)]
        );
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        let mut f = fixture();
        let mut number = Vec::new();
        Message::Number {
            sequence: 0,
            number: 1,
        }
        .encode(&mut number);
        let mut con_twice = con(1, b"x");
        con_twice.extend(con(1, b"x"));
        for input in [ack(0), number, b"GET".to_vec(), con_twice] {
            f.hub.open(A);
            assert_eq!(f.send(A, &input), Verdict::Close, "{input:?}");
            f.hub.close(A, f.now);
        }
    }

    #[test]
    fn abandoned_streams_expire() {
        let mut f = fixture();
        f.hub.open(A);
        f.send(A, &con(2, b"gone"));
        f.hub.open(B);
        f.send(B, &con(2, b"here"));
        f.hub.close(A, f.now);
        f.advance(Duration::from_secs(30));
        f.send(B, &ack(0));
        f.advance(Duration::from_secs(31));
        f.tick(B);
        assert_eq!(
            f.hub.streams(),
            1,
            "only the one heard from within the TTL is left"
        );
        assert_eq!(f.records.streams.records()[0].client_id, b"here");
        f.advance(Duration::from_secs(60));
        f.tick(B);
        assert_eq!(f.hub.streams(), 0);
        assert_eq!(
            f.hub.take_to_close(),
            vec![B],
            "an expired stream's connection closes"
        );
    }

    #[test]
    fn recovered_streams_resume_with_the_same_numbers() {
        let mut f = fixture();
        f.hub.open(A);
        f.send(A, &con(4, b"id"));
        f.tick(A);
        f.send(A, &ack(0));
        f.send(A, &ack(2));
        f.hub.close(A, f.now);
        // A restart: a new hub from the records.
        let mut hub = StreamHub::new(settings(), f.registry.clone(), f.records.clone(), f.now);
        hub.open(B);
        assert_eq!(hub.receive(B, &con(4, b"id"), f.now), Verdict::Open);
        let mut out = Vec::new();
        for key in hub.tick(f.now) {
            hub.fill(key, &mut out, f.now);
        }
        assert_eq!(
            sent(&out),
            numbers(100, [1, 2, 3]),
            "only the acked prefix survives"
        );
    }

    #[test]
    fn ticks_are_asked_for_only_while_something_is_due() {
        let mut f = fixture();
        assert_eq!(f.hub.next_tick(f.now), None);
        f.hub.open(A);
        f.send(A, &con(2, b"id"));
        assert_eq!(f.hub.next_tick(f.now), Some(Duration::from_millis(1)));
        f.tick(A);
        assert_eq!(
            f.hub.next_tick(f.now),
            Some(RESEND_AFTER),
            "waiting for acks"
        );
        f.hub.close(A, f.now);
        assert_eq!(
            f.hub.next_tick(f.now),
            Some(EXPIRY_CHECK),
            "only expiry is left"
        );
    }
}
