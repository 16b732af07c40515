//! The stream protocol's server side, for the event loop that serves the stream listener:
//! bytes in, clock ticks in, bytes out. No sockets and no timers: the loop feeds the hub what
//! arrives, asks it what to send, and closes what it says to close. Each stream's progress is
//! the pure [`StreamProgress`]; the hub is its driver: it decodes and encodes the wire,
//! tracks connections, reserves numbers from the registry, keeps the durable records, and
//! logs.
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
//!
//! One peer (client address) holds at most `--max-streams-per-peer` streams: a new stream is
//! counted against the address of the connection that created it until it finishes or
//! expires, wherever it is resumed from; streams recovered at start-up count against none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::counters;
pub use crate::clock::Now;
use crate::lease::{Peer, PeerHoldings};
use crate::protocol::stream::{self as wire, Message};
use crate::protocol::{ParseError, ParseOk};
use crate::sequence::{BeyondDurable, Refusal, Registry, SequenceId};
use crate::state::LeasesAndStreams;
use crate::stream::progress::{Acked, Send, StreamProgress, fits_32_bits};

// A client id the stream protocol accepts must fit the state file's stream record.
const _: () = assert!(wire::MAX_CLIENT_ID <= crate::store::format::MAX_STREAM_CLIENT_ID);

/// Key of a connection in the event loop that drives the hub.
pub type ConnKey = usize;

pub use crate::stream::progress::RESEND_AFTER;
/// How often abandoned streams are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Most expired streams logged one line each per check; more are summed up in one line.
const EXPIRIES_LOGGED_ONE_BY_ONE: usize = 10;

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
    /// Most streams one peer (client address) may hold at once; 0: no bound.
    pub max_per_peer: usize,
    /// Largest `n` a `CON` may ask for.
    pub max_count: u32,
    /// The sequence the numbers come from.
    pub sequence: String,
}

/// What to do with the connection that sent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Send what is queued, then close: a refused `CON`, a protocol violation, or a finished
    /// stream.
    Close,
}

/// A stream as the hub serves it.
#[derive(Debug)]
struct Stream {
    progress: StreamProgress,
    /// The connection writing it (one writer per stream).
    conn: Option<ConnKey>,
    /// Computed when first sent.
    checksum: Option<[u8; wire::CHECKSUM_LEN]>,
    /// The peer whose per-peer count holds it (None: not counted, such as a stream recovered
    /// at start-up).
    holder: Option<Peer>,
}

/// Why a refusal for want of 32-bit numbers is lasting: sequences never go back down.
const OUT_OF_32_BITS: &str = "; the stream protocol's 32-bit numbers of this sequence are \
     used up, so every new stream is refused from now on (numbers are never issued twice)";

impl Stream {
    fn new(progress: StreamProgress) -> Stream {
        Stream {
            progress,
            conn: None,
            checksum: None,
            holder: None,
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
    /// The client's address.
    peer: Peer,
}

pub struct StreamHub {
    settings: StreamSettings,
    registry: Arc<Registry>,
    records: Arc<LeasesAndStreams>,
    streams: HashMap<Box<[u8]>, Stream>,
    conns: HashMap<ConnKey, Conn>,
    /// Connections the loop must close at once (taken over by a newer `CON`, or expired).
    to_close: Vec<ConnKey>,
    next_expiry_check: Instant,
    /// Streams by the peer that created them.
    by_peer: PeerHoldings,
    /// Peers refused by `--max-streams-per-peer` since they last held fewer: each is warned
    /// of once, not at every refused CON.
    warned_peers: HashSet<Peer>,
}

impl StreamHub {
    /// A hub serving the streams recovered from the data directory (each resumes with a pass
    /// over what it had not seen acknowledged).
    pub fn new(
        settings: StreamSettings,
        registry: Arc<Registry>,
        records: Arc<LeasesAndStreams>,
        now: Now,
    ) -> StreamHub {
        let mut streams = HashMap::new();
        for record in records.streams.records() {
            let stream = Stream::new(StreamProgress::restored(&record, now));
            streams.insert(record.client_id.into_boxed_slice(), stream);
        }
        StreamHub {
            by_peer: PeerHoldings::new(settings.max_per_peer),
            warned_peers: HashSet::new(),
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

    /// A new connection of the stream listener, from `addr`.
    pub fn open(&mut self, key: ConnKey, addr: Option<std::net::IpAddr>) {
        let conn = Conn {
            peer: Peer::of(addr),
            ..Conn::default()
        };
        self.conns.insert(key, conn);
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
            let progress = &mut stream.progress;
            progress.last_heard_ms = now.unix_ms;
            if !progress.is_reserving() {
                // Progress so far, for a resume after a restart (written with the next state).
                self.records
                    .streams
                    .put(progress.record(&id), &self.records.commits);
            }
            tracing::debug!(
                client_id = %Id(&id),
                acked = progress.acked_count,
                count = progress.count,
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
            if stream.progress.count != count {
                tracing::warn!(
                    client_id = %id,
                    count,
                    "stream CON refused: this client id's stream has {} numbers, not {count}; \
                     resume with the same n, or use another client id",
                    stream.progress.count
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
            stream.progress.resumed(now);
            tracing::info!(
                client_id = %id,
                acked = stream.progress.acked_count,
                count,
                "stream resumed"
            );
        } else {
            let peer = self.conns.get(&key).map(|c| c.peer).unwrap_or_default();
            if !self.by_peer.may_take(peer) {
                self.expire(now);
            }
            if !self.by_peer.may_take(peer) {
                self.refuse_for_peer(peer, client_id);
                return Verdict::Close;
            }
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
            let mut stream = Stream::new(StreamProgress::new(sequence, count, now));
            stream.conn = Some(key);
            stream.holder = self.by_peer.take(peer);
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
    /// A refusal for want of 32-bit numbers lasts until the operator acts, so it says how.
    fn reserve(&mut self, client_id: &[u8]) -> Verdict {
        let Some(stream) = self.streams.get_mut(client_id) else {
            return Verdict::Close;
        };
        let progress = &mut stream.progress;
        if !progress.is_reserving() {
            return Verdict::Open;
        }
        let Some(sequence) = self.registry.get(progress.sequence) else {
            return Verdict::Close;
        };
        let count = u64::from(progress.count);
        let fits = |first: u64| fits_32_bits(first, progress.count);
        // Checked before reserving too, so a refused CON usually consumes nothing.
        let refusal = match sequence.current() {
            next if !fits(next) => Some(format!(
                "its numbers would not fit 32 bits: sequence {:?} is at {next}{OUT_OF_32_BITS}",
                sequence.name()
            )),
            _ => match sequence.reserve(count) {
                Ok(first) if fits(first) => {
                    progress.reserved(first);
                    progress.change = self
                        .records
                        .streams
                        .put(progress.record(client_id), &self.records.commits);
                    // Nothing is sent before the record is on disk: ask for the write now.
                    self.registry.persister_signals().request_write();
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
                     skipped{OUT_OF_32_BITS}",
                    first + count
                )),
                Err(Refusal::AwaitingCeiling) => {
                    match self.registry.persister_signals().beyond_durable() {
                        BeyondDurable::Wait => return Verdict::Open,
                        BeyondDurable::Refuse => {
                            Some("the durable state cannot be written (see above)".to_string())
                        }
                    }
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
        self.forget(client_id);
        Verdict::Close
    }

    fn acknowledged(&mut self, id: &[u8], key: ConnKey, position: u32, now: Now) -> Verdict {
        let Some(stream) = self.streams.get_mut(id) else {
            return Verdict::Close;
        };
        if stream.conn != Some(key) {
            return Verdict::Close;
        }
        match stream.progress.acknowledge(position, now) {
            Acked::Position => return Verdict::Open,
            Acked::Ignored => {
                tracing::trace!(client_id = %Id(id), position, "ACK ignored");
                return Verdict::Open;
            }
            Acked::Finished => {}
        }
        tracing::info!(
            client_id = %Id(id),
            count = stream.progress.count,
            "stream finished: checksum acknowledged"
        );
        self.forget(id);
        self.records.streams.remove(id, &self.records.commits);
        Verdict::Close
    }

    /// Removes a stream, giving its place back to the peer that held it.
    fn forget(&mut self, id: &[u8]) -> Option<Stream> {
        let stream = self.streams.remove(id)?;
        if let Some(peer) = stream.holder {
            self.by_peer.give_back(Some(peer));
            if self.by_peer.may_take(peer) {
                self.warned_peers.remove(&peer);
            }
        }
        Some(stream)
    }

    /// A `CON` for a new stream from a peer that holds `--max-streams-per-peer`: refused
    /// before anything is reserved. Warned of once per peer until it holds fewer again (one
    /// host opening thousands would otherwise log thousands of lines); counted every time.
    fn refuse_for_peer(&mut self, peer: Peer, client_id: &[u8]) {
        counters::STREAMS_REFUSED_PER_PEER.fetch_add(1, Ordering::Relaxed);
        let limit = self.by_peer.limit();
        if self.warned_peers.insert(peer) {
            tracing::warn!(
                client_id = %Id(client_id),
                %peer,
                "stream CON refused: this address already holds {limit} streams, the most one \
                 peer may hold (--max-streams-per-peer; clients behind one address share it); \
                 further refusals of this address are counted (streams_refused_per_peer in \
                 INFO and /metrics) and logged at debug until it holds fewer"
            );
        } else {
            tracing::debug!(
                client_id = %Id(client_id),
                %peer,
                "stream CON refused: this address already holds {limit} streams \
                 (--max-streams-per-peer)"
            );
        }
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
            .filter(|(_, s)| s.progress.is_reserving())
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
            .filter(|s| s.progress.due(now).is_some_and(|due| due <= now.at))
            .filter_map(|s| s.conn)
            .collect()
    }

    /// Forgets streams not heard from for `--stream-ttl`; their numbers are never reissued.
    /// A few are logged one line each, a wave (thousands of streams opened together) in one.
    fn expire(&mut self, now: Now) {
        let ttl = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<Box<[u8]>> = self
            .streams
            .iter()
            .filter(|(_, s)| now.unix_ms.saturating_sub(s.progress.last_heard_ms) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        let one_by_one = expired.len() <= EXPIRIES_LOGGED_ONE_BY_ONE;
        if !one_by_one {
            tracing::info!(
                first_client_id = %Id(&expired[0]),
                "{} streams expired: not heard from for {:?} (--stream-ttl)",
                expired.len(),
                self.settings.ttl
            );
        }
        for id in expired {
            if let Some(stream) = self.forget(&id) {
                if one_by_one {
                    tracing::info!(
                        client_id = %Id(&id),
                        acked = stream.progress.acked_count,
                        count = stream.progress.count,
                        "stream expired: not heard from for {:?} (--stream-ttl)",
                        self.settings.ttl
                    );
                }
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
        if stream.conn != Some(key) || !self.records.commits.is_durable(stream.progress.change) {
            return;
        }
        for _ in 0..self.settings.burst {
            match stream.progress.next_send(now) {
                Some(Send::Number { position, number }) => Message::Number {
                    sequence: position,
                    number,
                }
                .encode(out),
                Some(Send::Checksum { count }) => {
                    let progress = &stream.progress;
                    let checksum = *stream
                        .checksum
                        .get_or_insert_with(|| wire::checksum(progress.numbers()));
                    Message::Checksum {
                        sequence: count,
                        checksum: &checksum,
                    }
                    .encode(out);
                    return;
                }
                None => return,
            }
        }
    }

    /// How long until something is due (None: nothing will be until a client sends).
    pub fn next_tick(&self, now: Now) -> Option<Duration> {
        let sending = self
            .streams
            .values()
            .filter(|s| s.conn.is_some() || s.progress.is_reserving())
            .filter_map(|s| s.progress.due(now))
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

/// A client id in a log line: printable ASCII as is, other bytes escaped.
struct Id<'a>(&'a [u8]);

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
#[path = "stream_hub_tests.rs"]
mod tests;
