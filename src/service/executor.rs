//! Serving decoded requests, in order. Consecutive number requests on the same sequence form
//! a *run* that is served with one reservation — one atomic operation however many requests
//! the run holds — and then answered in order; every other request is answered alone, after
//! the run before it. Lease requests are in [`lease_requests`](super::lease_requests).

use std::collections::HashMap;
use std::marker::PhantomData;

pub(super) mod redis;

use super::counters::{self, LoopCounters, Protocol};
use super::replies;
use crate::lease::Peer;
use crate::protocol::{ParseError, ParseOk, Problem, Reply, Request, Target, binary, text};
use crate::sequence::{BeyondDurable, DEFAULT_SEQUENCE, Refusal, Registry, Sequence, SequenceId};
use crate::state::LeasesAndStreams;

/// Settings a session enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `GETSEQ_BATCH` count.
    pub max_batch: u64,
    /// `--requirepass`: connections must `AUTH` first.
    pub password: Option<super::auth::Password>,
    /// Stop decoding a client's requests once this many reply bytes wait for it to read
    /// ([`OUTPUT_HIGH_WATER`](super::OUTPUT_HIGH_WATER); `usize::MAX` with a
    /// `--client-output-limit`, which the backend enforces by closing the client instead).
    pub held_output: usize,
}

/// State shared by all sessions of one event loop (never across threads).
#[derive(Debug)]
pub struct LoopState {
    pub(super) registry: std::sync::Arc<Registry>,
    pub(super) records: std::sync::Arc<LeasesAndStreams>,
    pub(super) limits: Limits,
    /// Name → id, so text requests that name a sequence take no lock.
    names: HashMap<Box<[u8]>, SequenceId>,
    /// Scratch for the run being coalesced (reused; holds no data between calls).
    pub(super) run: Vec<Segment>,
    /// The sequence the stream port draws from, when it is served: main-port requests may
    /// read it (`CURRENT`) but not take numbers from it, since the stream protocol's numbers
    /// must fit 32 bits and a main-port client could otherwise drain that range for good.
    reserved_for_streams: Option<&'static str>,
    /// This loop's request counts (the metrics endpoint and `INFO` sum every loop's).
    pub(super) counters: counters::Registered,
}

impl LoopState {
    /// A loop state whose leases live in memory only (benchmarks, tests).
    pub fn new(registry: std::sync::Arc<Registry>, limits: Limits) -> LoopState {
        let settings = crate::lease::LeaseSettings {
            max_size: limits.max_batch,
            ..Default::default()
        };
        let commits = crate::commits::Commits::memory_only();
        let records = std::sync::Arc::new(LeasesAndStreams::empty(commits, settings));
        LoopState::with_records(registry, records, limits)
    }

    pub fn with_records(
        registry: std::sync::Arc<Registry>,
        records: std::sync::Arc<LeasesAndStreams>,
        limits: Limits,
    ) -> LoopState {
        redis::mark_start();
        LoopState {
            registry,
            records,
            limits,
            names: HashMap::new(),
            run: Vec::with_capacity(1024),
            reserved_for_streams: None,
            counters: LoopCounters::register(),
        }
    }

    /// Refuses main-port requests that would take numbers from (or open) `name`, the
    /// stream protocol's sequence.
    pub fn reserve_for_streams(&mut self, name: &str) {
        // Once per event loop, for the life of the process.
        self.reserved_for_streams = Some(Box::leak(name.into()));
        self.names.retain(|cached, _| **cached != *name.as_bytes());
    }

    /// The refusal of a request that names the stream protocol's sequence.
    fn refuse_reserved(&self, sequence: &Sequence) -> Result<(), Problem<'static>> {
        match self.reserved_for_streams {
            Some(name) if sequence.name() == name => Err(Problem::ReservedForStreams(name)),
            _ => Ok(()),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What `CURRENT` answers: the next number of the sequence, or for a name that does
    /// not exist yet the number it would start at (`--initial`), without creating it. A read,
    /// so the stream protocol's sequence may be read too.
    pub(super) fn current(&mut self, target: Target<'_>) -> Result<u64, Problem<'static>> {
        let Target::Name(name) = target else {
            let registry = &*self.registry;
            let id = match target {
                Target::Id(id) => id,
                _ => DEFAULT_SEQUENCE,
            };
            return registry
                .get(id)
                .map(Sequence::current)
                .ok_or(Problem::UnknownSequence(id));
        };
        if self.names.contains_key(name) {
            return self.resolve(target).map(Sequence::current);
        }
        let registry = &*self.registry;
        match registry.find(name).map_err(replies::registry_refused)? {
            Some(sequence) => Ok(sequence.current()),
            None => Ok(registry.initial()),
        }
    }

    pub(super) fn resolve<'r>(
        &'r mut self,
        target: Target<'_>,
    ) -> Result<&'r Sequence, Problem<'static>> {
        let registry = &*self.registry;
        match target {
            Target::Default => registry
                .get(DEFAULT_SEQUENCE)
                .ok_or(Problem::UnknownSequence(0)),
            Target::Id(id) => {
                let sequence = registry.get(id).ok_or(Problem::UnknownSequence(id))?;
                self.refuse_reserved(sequence)?;
                Ok(sequence)
            }
            Target::Name(name) => {
                if let Some(&id) = self.names.get(name) {
                    return registry.get(id).ok_or(Problem::UnknownSequence(id));
                }
                if let Some(reserved) = self.reserved_for_streams
                    && reserved.as_bytes() == name
                {
                    return Err(Problem::ReservedForStreams(reserved));
                }
                let sequence = registry.resolve(name).map_err(replies::registry_refused)?;
                self.names.insert(name.into(), sequence.id());
                Ok(sequence)
            }
        }
    }
}

/// A protocol's codec. Sessions are generic over it so that each decoder inlines into its
/// own decode loop (the protocol is chosen once per connection, not once per frame).
pub(super) trait Wire {
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>>;
    /// [`Wire::decode`] of a frame that arrives in pieces, continuing where the last call with
    /// `progress` stopped (binary frames are short: decoded anew).
    fn decode_from<'a>(
        buf: &'a [u8],
        progress: &mut text::Progress,
    ) -> Result<ParseOk<Request<'a>>, ParseError<'a>>;
    /// The opcode of the frame at the front of `buf`, for a fatal error's reply (0 when the
    /// frame cannot be read, and in text, which has none).
    fn opcode_of(buf: &[u8]) -> u8;
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>);
    /// Replies to `count` consecutive `GETSEQ`s: the numbers `first..first + count`.
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64);
    /// The protocol a frame of this wire is in (`frame` is not empty).
    fn protocol(frame: &[u8]) -> Protocol;
}

/// Counts an error reply by its kind, for the metrics and `INFO errorstats`.
#[inline(always)]
fn count_error(reply: &Reply<'_>) {
    if let Reply::Error { problem, .. } = reply {
        counters::error_reply(problem.code().text_prefix());
    }
}

pub(super) struct BinaryWire;
pub(super) struct TextWire;

impl Wire for BinaryWire {
    #[inline(always)]
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
        binary::decode_request(buf)
    }

    #[inline(always)]
    fn decode_from<'a>(
        buf: &'a [u8],
        _progress: &mut text::Progress,
    ) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
        binary::decode_request(buf)
    }

    fn opcode_of(buf: &[u8]) -> u8 {
        binary::opcode_of(buf).unwrap_or(0)
    }

    #[inline(always)]
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>) {
        count_error(reply);
        binary::encode_reply(out, reply)
    }

    #[inline(always)]
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
        binary::encode_numbers(out, first, count)
    }

    #[inline(always)]
    fn protocol(_frame: &[u8]) -> Protocol {
        Protocol::Binary
    }
}

impl Wire for TextWire {
    #[inline(always)]
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
        text::decode_request(buf)
    }

    #[inline(always)]
    fn decode_from<'a>(
        buf: &'a [u8],
        progress: &mut text::Progress,
    ) -> Result<ParseOk<Request<'a>>, ParseError<'a>> {
        text::decode_request_from(buf, progress)
    }

    fn opcode_of(_buf: &[u8]) -> u8 {
        0
    }

    #[inline(always)]
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>) {
        count_error(reply);
        text::encode_reply(out, reply)
    }

    #[inline(always)]
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
        text::encode_numbers(out, first, count)
    }

    #[inline(always)]
    fn protocol(frame: &[u8]) -> Protocol {
        if frame.first() == Some(&b'*') {
            Protocol::Resp
        } else {
            Protocol::Inline
        }
    }
}

/// The same request, `repeats` times in a row: `count` 0 is a `GETSEQ` (one number, answered
/// as a number), n ≥ 1 a `GETSEQ_BATCH n` (answered as a range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    count: u64,
    repeats: u64,
}

impl Segment {
    /// Numbers the segment takes.
    fn numbers(&self) -> u64 {
        self.count.max(1).saturating_mul(self.repeats)
    }
}

/// Requests coalesced into one reservation, in arrival order.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub(super) sequence: Option<SequenceId>,
    pub(super) segments: Vec<Segment>,
}

impl Run {
    #[inline]
    pub(super) fn push(&mut self, count: u64, repeats: u64) {
        match self.segments.last_mut() {
            Some(last) if last.count == count => last.repeats += repeats,
            _ => self.segments.push(Segment { count, repeats }),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// How handling a request went.
pub(super) enum Flow {
    Continue,
    /// Continue; the request joined the run as this count (see [`Segment`]).
    Joined(u64),
    /// Stop decoding until this sequence's durable ceiling rises; the request just decoded
    /// was *not* handled and must be decoded again.
    AwaitCeiling(SequenceId),
    /// Stop decoding; the request was handled, its reply waits until a change is durable.
    AwaitDurable(Awaiting),
    Close,
}

/// A reply held until the change it reports is on disk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Awaiting {
    pub(super) reply: Reply<'static>,
    pub(super) change: u64,
    pub(super) opcode: u8,
}

/// Serves decoded requests in order, coalescing runs of number requests.
pub(super) struct Executor<'s, 'o, 'c, W> {
    pub(super) state: &'s mut LoopState,
    pub(super) out: &'o mut Vec<u8>,
    /// RESP version, name and transaction of a Redis client.
    client: &'c mut redis::RedisClient,
    pub(super) run: Run,
    /// The session's connection, which the lease table knows its leases by.
    pub(super) connection: u64,
    /// The session's peer, which the per-peer lease bound counts by.
    pub(super) peer: Peer,
    wire: PhantomData<W>,
}

impl<'s, 'o, 'c, W: Wire> Executor<'s, 'o, 'c, W> {
    pub(super) fn new(
        state: &'s mut LoopState,
        out: &'o mut Vec<u8>,
        client: &'c mut redis::RedisClient,
        run: Run,
        connection: u64,
        peer: Peer,
    ) -> Self {
        Executor {
            state,
            out,
            client,
            run,
            connection,
            peer,
            wire: PhantomData,
        }
    }

    /// Counts `n` requests like `frame` as received.
    #[inline(always)]
    pub(super) fn count(&self, frame: &[u8], n: u64) {
        self.state.counters.count(W::protocol(frame), n);
    }

    /// Serves `request`, the first `len` bytes of `input` (sliced only if a transaction
    /// queues them, so the number path pays nothing for it).
    #[inline]
    pub(super) fn handle(&mut self, request: Request<'_>, input: &[u8], len: usize) -> Flow {
        if !self.client.auth.authenticated
            && let Some(refused) = self.before_auth(&request)
        {
            return refused;
        }
        if self.client.transaction.is_some() {
            // Between MULTI and EXEC nothing runs or joins a run: it is queued.
            return self.queue(request, &input[..len]);
        }
        let (target, count, opcode) = match request {
            Request::Get { target } => (target, 0, binary::opcode::GETSEQ),
            Request::GetBatch { target, count }
                if count > 0 && count <= self.state.limits.max_batch =>
            {
                (target, count, binary::opcode::GETSEQ_BATCH)
            }
            Request::Nothing => return Flow::Continue,
            other => {
                // Everything else is answered alone, after the run before it.
                if let Err(sequence) = self.flush() {
                    return Flow::AwaitCeiling(sequence);
                }
                return self.handle_alone(other);
            }
        };
        let sequence = match target {
            // Already resolved for the run in progress, or always present: no lookup.
            Target::Id(id) if self.run.sequence == Some(id) => id,
            Target::Default => DEFAULT_SEQUENCE,
            Target::Name(name) if self.run_is_named(name) => self.run.sequence.unwrap_or_default(),
            _ => match self.state.resolve(target) {
                Ok(sequence) => sequence.id(),
                Err(problem) => {
                    if let Err(waiting) = self.flush() {
                        return Flow::AwaitCeiling(waiting);
                    }
                    W::encode(self.out, &Reply::Error { opcode, problem });
                    return Flow::Continue;
                }
            },
        };
        if self.run.sequence != Some(sequence) {
            if let Err(waiting) = self.flush() {
                return Flow::AwaitCeiling(waiting);
            }
            self.run.sequence = Some(sequence);
        }
        self.run.push(count, 1);
        Flow::Joined(count)
    }

    /// A request before the connection authenticated: `Some` refusal unless it is one a
    /// client may send first (AUTH, HELLO with AUTH, PING, QUIT). Without a password every
    /// connection is authenticated at its first request.
    #[cold]
    fn before_auth(&mut self, request: &Request<'_>) -> Option<Flow> {
        use crate::protocol::redis::{Command, RedisError};
        if self.state.limits.password.is_none() {
            self.client.auth.authenticated = true;
            return None;
        }
        let opcode = match request {
            Request::Redis(Command::Auth(_) | Command::Hello { auth: Some(_), .. })
            | Request::Auth { .. }
            | Request::Ping { .. }
            | Request::Quit
            | Request::Nothing
            | Request::Invalid(_)
            | Request::Refused { .. }
            | Request::RedisError(_) => return None,
            Request::Redis(Command::Hello { auth: None, .. }) => {
                return Some(self.redis_error(RedisError::HelloBeforeAuth));
            }
            Request::Redis(_) | Request::RedisHandshake { .. } => {
                return Some(self.redis_error(RedisError::NoAuth));
            }
            Request::Get { .. } => binary::opcode::GETSEQ,
            Request::GetBatch { .. } => binary::opcode::GETSEQ_BATCH,
            Request::Current { .. } => binary::opcode::CURRENT,
            Request::Open { .. } => binary::opcode::OPEN,
            Request::Lease { .. } => binary::opcode::LEASE,
            Request::Ack { .. } | Request::AckAsClient { .. } => binary::opcode::ACK,
            Request::LeaseStats => 0,
        };
        let problem = Problem::NoAuth;
        W::encode(self.out, &Reply::Error { opcode, problem });
        Some(Flow::Continue)
    }

    /// The binary `AUTH` (accepted as is when no password is set).
    fn binary_auth(&mut self, given: &[u8]) -> Flow {
        let opcode = binary::opcode::AUTH;
        let Some(password) = &self.state.limits.password else {
            return self.reply(opcode, Ok(Reply::Authenticated));
        };
        if password.accepts(None, given) {
            self.client.auth.authenticated = true;
            return self.reply(opcode, Ok(Reply::Authenticated));
        }
        let closing = self.client.auth.failed();
        self.reply(opcode, Err(Problem::WrongPass));
        if closing { Flow::Close } else { Flow::Continue }
    }

    /// Whether the run in progress is on the sequence called `name` (cheaper than a lookup).
    #[inline]
    fn run_is_named(&self, name: &[u8]) -> bool {
        self.run
            .sequence
            .and_then(|id| self.state.registry.get(id))
            .is_some_and(|sequence| sequence.name().as_bytes() == name)
    }

    /// Answers a request that does not join a run. The run before it has been flushed.
    fn handle_alone(&mut self, request: Request<'_>) -> Flow {
        let (opcode, reply) = match request {
            Request::GetBatch { .. } => {
                let max = self.state.limits.max_batch;
                (
                    binary::opcode::GETSEQ_BATCH,
                    Err(Problem::BatchOutOfRange { max }),
                )
            }
            Request::Current { target } => (
                binary::opcode::CURRENT,
                self.state.current(target).map(Reply::Current),
            ),
            Request::Ping { echo } => (binary::opcode::PING, Ok(Reply::Pong { echo })),
            Request::Open { name } => (
                binary::opcode::OPEN,
                self.state
                    .resolve(Target::Name(name))
                    .map(|s| Reply::Opened(s.id())),
            ),
            Request::Quit => {
                W::encode(self.out, &Reply::Ok);
                return Flow::Close;
            }
            Request::Auth { password } => return self.binary_auth(password),
            Request::Lease {
                target,
                count,
                ids,
                framing,
            } => return self.lease(target, count, ids, framing),
            Request::Ack {
                target,
                first,
                last,
            } => return self.acknowledge(target, first, last, None),
            Request::AckAsClient {
                target,
                first,
                last,
                client,
            } => return self.acknowledge(target, first, last, Some(client)),
            Request::LeaseStats => {
                let stats = self.state.records.leases.stats();
                (0, Ok(Reply::LeaseStats(replies::lease_stats(stats))))
            }
            Request::RedisHandshake {
                config_get: Some(parameter),
            } => {
                let reply = Reply::UnsetConfig(parameter);
                crate::protocol::redis::encode_reply(self.out, &reply, self.client.version());
                return Flow::Continue;
            }
            Request::Redis(command) => return self.redis(command),
            Request::RedisError(error) => return self.redis_error(error),
            Request::RedisHandshake { config_get: None } => (0, Ok(Reply::EmptyArray)),
            Request::Refused { opcode, problem } => (opcode, Err(problem)),
            Request::Invalid(problem) => (0, Err(problem)),
            Request::Get { .. } | Request::Nothing => unreachable!("handled by handle()"),
        };
        let reply = reply.unwrap_or_else(|problem| Reply::Error { opcode, problem });
        W::encode(self.out, &reply);
        Flow::Continue
    }

    pub(super) fn reply(&mut self, opcode: u8, reply: Result<Reply<'_>, Problem<'_>>) -> Flow {
        let reply = reply.unwrap_or_else(|problem| Reply::Error { opcode, problem });
        W::encode(self.out, &reply);
        Flow::Continue
    }

    /// Answers an unrecoverable frame of `opcode` (0: unknown) and closes.
    pub(super) fn fatal(&mut self, problem: Problem<'_>, opcode: u8) -> Flow {
        // Answer what came before the bad frame, then the error.
        let _ = self.flush();
        W::encode(self.out, &Reply::Error { opcode, problem });
        Flow::Close
    }

    /// Serves the run with one reservation and encodes its replies. On
    /// `Err(sequence)` the unserved part of the run stays in `self.run`, waiting for that
    /// sequence's ceiling to rise.
    pub(super) fn flush(&mut self) -> Result<(), SequenceId> {
        let Executor {
            state, out, run, ..
        } = self;
        let Some(id) = run.sequence else {
            return Ok(());
        };
        // Sequences are never removed, and this id was resolved when the run began.
        let Some(sequence) = state.registry.get(id) else {
            unreachable!("sequence {id} vanished from the registry");
        };
        let total = run
            .segments
            .iter()
            .fold(0u64, |sum, s| sum.saturating_add(s.numbers()));
        match sequence.reserve(total) {
            Ok(first) => {
                let mut next = first;
                for segment in &run.segments {
                    if segment.count == 0 {
                        W::encode_numbers(out, next, segment.repeats);
                    } else {
                        for i in 0..segment.repeats {
                            let first = next + i * segment.count;
                            W::encode(
                                out,
                                &Reply::Range {
                                    first,
                                    count: segment.count,
                                },
                            );
                        }
                    }
                    next += segment.numbers();
                }
                run.segments.clear();
            }
            // Not enough for everyone: serve one by one, so each request gets its own answer.
            Err(Refusal::Exhausted { .. }) => {
                serve_one_by_one::<W>(sequence, &state.registry, out, run)?
            }
            Err(Refusal::AwaitingCeiling) => {
                match state.registry.persister_signals().beyond_durable() {
                    BeyondDurable::Wait => return Err(id),
                    // Fail closed: what the durable ceiling still covers is served, the rest is
                    // refused rather than left waiting for a disk that fails.
                    BeyondDurable::Refuse => {
                        serve_one_by_one::<W>(sequence, &state.registry, out, run)?
                    }
                }
            }
        }
        run.sequence = None;
        Ok(())
    }
}

impl Flow {
    /// Whether decoding goes on after this.
    pub(super) fn proceeds(&self) -> bool {
        matches!(self, Flow::Continue | Flow::Joined(_))
    }

    /// Whether the request was handled (its bytes are used up).
    // (An `AwaitDurable`'s request was handled: only its reply is held.)
    pub(super) fn consumed(&self) -> bool {
        !matches!(self, Flow::AwaitCeiling(_))
    }
}

/// Serves the run's requests with one reservation each, refusing those that no longer fit.
/// A request beyond the durable ceiling is refused while ceilings are unavailable; otherwise
/// serving stops there, leaving it and the rest in `run` to wait for a raise.
fn serve_one_by_one<W: Wire>(
    sequence: &Sequence,
    registry: &Registry,
    out: &mut Vec<u8>,
    run: &mut Run,
) -> Result<(), SequenceId> {
    let signals = registry.persister_signals();
    for index in 0..run.segments.len() {
        let segment = &mut run.segments[index];
        let opcode = match segment.count {
            0 => binary::opcode::GETSEQ,
            _ => binary::opcode::GETSEQ_BATCH,
        };
        while segment.repeats > 0 {
            let reply = match sequence.reserve(segment.count.max(1)) {
                Ok(n) if segment.count == 0 => Reply::Number(n),
                Ok(first) => Reply::Range {
                    first,
                    count: segment.count,
                },
                Err(Refusal::AwaitingCeiling) => match signals.beyond_durable() {
                    BeyondDurable::Refuse => {
                        signals.count_refusal();
                        Reply::Error {
                            opcode,
                            problem: replies::unissuable(signals),
                        }
                    }
                    BeyondDurable::Wait => {
                        run.segments.drain(..index);
                        return Err(sequence.id());
                    }
                },
                Err(Refusal::Exhausted { remaining }) => Reply::Error {
                    opcode,
                    problem: Problem::Exhausted { remaining },
                },
            };
            W::encode(out, &reply);
            segment.repeats -= 1;
        }
    }
    run.segments.clear();
    Ok(())
}
