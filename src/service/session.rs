//! One connection's state machine: bytes in, replies out. It knows nothing of sockets or of
//! the I/O backend that drives it.
//!
//! Frames are decoded in place from the buffer the kernel filled; only a frame that straddles
//! two receives is copied (into `carry`). Consecutive number requests on the same sequence form
//! a *run* that is served with one reservation — one atomic operation however many requests
//! the run holds — and then answered in order.
//!
//! A lease request (seed 000) changes durable records: its reply waits, with everything the
//! client sent after it, until the change is on disk (the session pauses; the loop resumes it
//! when the persister wakes it).

mod redis;

use std::collections::HashMap;
use std::marker::PhantomData;

use crate::lease::GrantError;
use crate::protocol::{
    self, LeaseIds, ParseError, ParseOk, Problem, Reply, Request, Target, binary, text,
};
use crate::sequence::{DEFAULT_SEQUENCE, Refusal, Registry, Sequence, SequenceId};
use crate::store::records::Records;

/// Stop decoding new requests once this many reply bytes wait to be sent: the client is not
/// reading. Decoding resumes when the backlog has been sent.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;

/// Settings a session enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `GETSEQ_BATCH` count.
    pub max_batch: u64,
}

/// State shared by all sessions of one event loop (never across threads).
#[derive(Debug)]
pub struct LoopState {
    registry: std::sync::Arc<Registry>,
    records: std::sync::Arc<Records>,
    limits: Limits,
    /// Name → id, so text requests that name a sequence take no lock.
    names: HashMap<Box<[u8]>, SequenceId>,
    /// Scratch for the run being coalesced (reused; holds no data between calls).
    run: Vec<Segment>,
}

impl LoopState {
    /// A loop state whose leases live in memory only (benchmarks, tests).
    pub fn new(registry: std::sync::Arc<Registry>, limits: Limits) -> LoopState {
        let settings = crate::lease::LeaseSettings {
            max_size: limits.max_batch,
            ..Default::default()
        };
        let commits = crate::store::commits::Commits::memory_only();
        let records = std::sync::Arc::new(Records::empty(commits, settings));
        LoopState::with_records(registry, records, limits)
    }

    pub fn with_records(
        registry: std::sync::Arc<Registry>,
        records: std::sync::Arc<Records>,
        limits: Limits,
    ) -> LoopState {
        redis::mark_start();
        LoopState {
            registry,
            records,
            limits,
            names: HashMap::new(),
            run: Vec::with_capacity(1024),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn resolve<'r>(&'r mut self, target: Target<'_>) -> Result<&'r Sequence, Problem<'static>> {
        let registry = &*self.registry;
        match target {
            Target::Default => registry
                .get(DEFAULT_SEQUENCE)
                .ok_or(Problem::UnknownSequence(0)),
            Target::Id(id) => registry.get(id).ok_or(Problem::UnknownSequence(id)),
            Target::Name(name) => {
                if let Some(&id) = self.names.get(name) {
                    return registry.get(id).ok_or(Problem::UnknownSequence(id));
                }
                let sequence = registry.resolve(name).map_err(|e| match e {
                    crate::sequence::RegistryError::InvalidName(e) => Problem::InvalidName(e),
                    crate::sequence::RegistryError::TooManySequences { limit } => {
                        Problem::TooManySequences { limit }
                    }
                })?;
                self.names.insert(name.into(), sequence.id());
                Ok(sequence)
            }
        }
    }
}

/// What the driver should do with the connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep receiving.
    Open,
    /// Input is held back; call [`Session::resume`] when the reason has cleared.
    Paused(Pause),
    /// Send what is in the output buffer, then close. Further input is ignored.
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The output backlog is over [`OUTPUT_HIGH_WATER`]: resume once it has been sent.
    Backpressure,
    /// A request needs numbers above this sequence's durable ceiling: resume once it rises.
    AwaitingCeiling(SequenceId),
    /// A reply waits for this change to lease records to be durable (see
    /// [`Commits`](crate::store::commits::Commits)).
    AwaitingDurable(u64),
}

impl Pause {
    /// Whether the pause ends with a write of the persister (which wakes the loops).
    pub fn waits_for_persister(self) -> bool {
        matches!(self, Pause::AwaitingCeiling(_) | Pause::AwaitingDurable(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Binary,
    Text,
}

impl Codec {
    /// Chooses the protocol from the first byte a client sends.
    fn detect(first: u8) -> Option<Codec> {
        match first {
            binary::MAGIC => Some(Codec::Binary),
            b'\t'..=b'\r' | b' '..=b'~' => Some(Codec::Text),
            _ => None,
        }
    }
}

/// A protocol's codec. Sessions are generic over it so that each decoder inlines into its
/// own decode loop (the protocol is chosen once per connection, not once per frame).
trait Wire {
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>>;
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>);
    /// Replies to `count` consecutive `GETSEQ`s: the numbers `first..first + count`.
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64);
}

struct BinaryWire;
struct TextWire;

impl Wire for BinaryWire {
    #[inline(always)]
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
        binary::decode_request(buf)
    }

    #[inline(always)]
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>) {
        binary::encode_reply(out, reply)
    }

    #[inline(always)]
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
        binary::encode_numbers(out, first, count)
    }
}

impl Wire for TextWire {
    #[inline(always)]
    fn decode(buf: &[u8]) -> Result<ParseOk<Request<'_>>, ParseError<'_>> {
        text::decode_request(buf)
    }

    #[inline(always)]
    fn encode(out: &mut Vec<u8>, reply: &Reply<'_>) {
        text::encode_reply(out, reply)
    }

    #[inline(always)]
    fn encode_numbers(out: &mut Vec<u8>, first: u64, count: u64) {
        text::encode_numbers(out, first, count)
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
struct Run {
    sequence: Option<SequenceId>,
    segments: Vec<Segment>,
}

impl Run {
    #[inline]
    fn push(&mut self, count: u64, repeats: u64) {
        match self.segments.last_mut() {
            Some(last) if last.count == count => last.repeats += repeats,
            _ => self.segments.push(Segment { count, repeats }),
        }
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// How handling a request went.
enum Flow {
    Continue,
    /// Continue; the request joined the run as this count (see [`Segment`]).
    Joined(u64),
    /// Stop decoding; the request just decoded was *not* handled and must be decoded again.
    Park(SequenceId),
    /// Stop decoding; the request was handled, its reply waits until a change is durable.
    Wait(Awaiting),
    Close,
}

/// A reply held until the change it reports is on disk.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    reply: Reply<'static>,
    change: u64,
    opcode: u8,
}

#[derive(Debug, Default)]
pub struct Session {
    codec: Option<Codec>,
    /// Received bytes not yet decoded: a frame split across receives, or input held back
    /// while paused.
    carry: Vec<u8>,
    /// A run refused for want of durable numbers, answered first on resume.
    parked: Option<Run>,
    /// A reply waiting for its change to be durable, sent first on resume (boxed: rare, and
    /// every connection carries the field).
    awaiting: Option<Box<Awaiting>>,
    pause: Option<Pause>,
    closing: bool,
    /// The client sent its last byte: a final text line needs no line ending.
    input_ended: bool,
    /// RESP version, name and transaction of a Redis client.
    redis: redis::RedisClient,
}

/// Carry capacity kept between frames; larger buffers are released once empty.
const CARRY_RETAINED: usize = 256;

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.carry.len()
    }

    /// Feeds bytes received from the client; replies are appended to `out`.
    pub fn receive(&mut self, data: &[u8], state: &mut LoopState, out: &mut Vec<u8>) -> Status {
        if self.closing {
            return Status::Closing;
        }
        let codec = match self.codec {
            Some(codec) => codec,
            None => match data.first() {
                None => return Status::Open,
                Some(&first) => match Codec::detect(first) {
                    Some(codec) => *self.codec.insert(codec),
                    None => {
                        // Unknown protocol: answer in text, the only thing a stranger may read.
                        let problem = Problem::UnknownProtocol(first);
                        text::encode_reply(out, &Reply::Error { opcode: 0, problem });
                        self.closing = true;
                        return Status::Closing;
                    }
                },
            },
        };
        if let Some(pause) = self.pause {
            self.carry.extend_from_slice(data);
            return Status::Paused(pause);
        }
        if out.len() >= OUTPUT_HIGH_WATER {
            self.carry.extend_from_slice(data);
            return self.paused(Pause::Backpressure);
        }
        match codec {
            Codec::Binary => self.process::<BinaryWire>(data, state, out),
            Codec::Text => self.process::<TextWire>(data, state, out),
        }
    }

    /// The client will send nothing more. A last inline line without a line ending is taken as
    /// complete (`printf 'GET_SEQUENCE_RANGE 20' | nc -N`, or seed 000's client, which sends
    /// `ACK start,end` without one and closes); an unfinished RESP command is discarded.
    pub fn end_of_input(&mut self, state: &mut LoopState, out: &mut Vec<u8>) -> Status {
        self.input_ended = true;
        if self.closing {
            return Status::Closing;
        }
        if let Some(pause) = self.pause {
            return Status::Paused(pause);
        }
        match self.codec {
            Some(Codec::Text) if !self.carry.is_empty() => {
                self.process::<TextWire>(&[], state, out)
            }
            _ => Status::Open,
        }
    }

    /// Continues after a pause: answers a parked run, then decodes held-back input.
    pub fn resume(&mut self, state: &mut LoopState, out: &mut Vec<u8>) -> Status {
        if self.closing {
            return Status::Closing;
        }
        self.pause = None;
        let Some(codec) = self.codec else {
            return Status::Open;
        };
        if out.len() >= OUTPUT_HIGH_WATER {
            return self.paused(Pause::Backpressure);
        }
        match codec {
            Codec::Binary => self.resume_with::<BinaryWire>(state, out),
            Codec::Text => self.resume_with::<TextWire>(state, out),
        }
    }

    fn resume_with<W: Wire>(&mut self, state: &mut LoopState, out: &mut Vec<u8>) -> Status {
        if let Some(awaiting) = self.awaiting.as_deref().copied() {
            match answer_when_durable::<W>(awaiting, state, out) {
                Some(Flow::Wait(awaiting)) => {
                    return self.paused(Pause::AwaitingDurable(awaiting.change));
                }
                _ => self.awaiting = None,
            }
        }
        if let Some(run) = self.parked.take() {
            let mut executor = Executor::<W>::new(state, out, &mut self.redis, run);
            if let Err(sequence) = executor.flush() {
                self.parked = Some(executor.run);
                return self.paused(Pause::AwaitingCeiling(sequence));
            }
        }
        self.process::<W>(&[], state, out)
    }

    fn paused(&mut self, pause: Pause) -> Status {
        self.pause = Some(pause);
        Status::Paused(pause)
    }

    fn process<W: Wire>(
        &mut self,
        mut data: &[u8],
        state: &mut LoopState,
        out: &mut Vec<u8>,
    ) -> Status {
        let run = Run {
            sequence: None,
            segments: std::mem::take(&mut state.run),
        };
        let mut executor = Executor::<W>::new(state, out, &mut self.redis, run);
        let mut flow = Flow::Continue;

        // 1. Frames that begin in the carry, completed with as few bytes of `data` as needed.
        let mut start = 0;
        while start < self.carry.len() && flow.proceeds() {
            let rest = &self.carry[start..];
            match W::decode(rest) {
                Ok(parsed) => {
                    flow = executor.handle(parsed.message, rest, parsed.consumed);
                    if flow.consumed() {
                        start += parsed.consumed;
                    }
                }
                Err(ParseError::Incomplete(need)) => {
                    if data.is_empty() {
                        if self.input_ended
                            && self.codec == Some(Codec::Text)
                            && !self.carry.ends_with(b"\n")
                            && self.carry.get(start) != Some(&b'*')
                        {
                            // Nothing more will come: the last inline line is complete as it
                            // is. An unfinished RESP array is dropped, as Redis drops it: its
                            // sender died mid-command.
                            self.carry.push(b'\n');
                            continue;
                        }
                        break;
                    }
                    let take = match need {
                        protocol::Need::Bytes(n) => n.min(data.len()),
                        protocol::Need::Line => {
                            memchr::memchr(b'\n', data).map_or(data.len(), |lf| lf + 1)
                        }
                    };
                    self.carry.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                Err(ParseError::Fatal(problem)) => {
                    flow = executor.fatal(problem);
                }
            }
        }
        self.carry.drain(..start);

        // 2. Whole frames in the received buffer, decoded where they lie.
        if self.carry.is_empty() {
            let mut pos = 0;
            while flow.proceeds() {
                let rest = &data[pos..];
                match W::decode(rest) {
                    Ok(parsed) => {
                        flow = executor.handle(parsed.message, rest, parsed.consumed);
                        if flow.consumed() {
                            pos += parsed.consumed;
                        }
                        if let Flow::Joined(count) = flow {
                            // Byte-identical frames right after one that joined the run are
                            // the same request: count them without decoding (pipelines
                            // are mostly one request repeated).
                            let frame = &data[pos - parsed.consumed..pos];
                            let repeats = count_repeats(&data[pos..], frame);
                            executor.run.push(count, repeats as u64);
                            pos += repeats * frame.len();
                        }
                    }
                    Err(ParseError::Incomplete(_)) => break,
                    Err(ParseError::Fatal(problem)) => flow = executor.fatal(problem),
                }
            }
            data = &data[pos..];
        }

        // 3. Answer the run still open, then keep what was not decoded.
        if flow.proceeds()
            && let Err(sequence) = executor.flush()
        {
            flow = Flow::Park(sequence);
        }
        let Executor { state, run, .. } = executor;
        let status = match flow {
            Flow::Close => {
                self.closing = true;
                self.carry = Vec::new();
                Status::Closing
            }
            Flow::Wait(awaiting) => {
                self.carry.extend_from_slice(data);
                self.awaiting = Some(Box::new(awaiting));
                self.pause = Some(Pause::AwaitingDurable(awaiting.change));
                Status::Paused(Pause::AwaitingDurable(awaiting.change))
            }
            Flow::Park(sequence) => {
                self.carry.extend_from_slice(data);
                if !run.is_empty() {
                    // The run keeps its buffer; the loop gets a fresh one (a rare path).
                    self.parked = Some(run);
                    return self.paused(Pause::AwaitingCeiling(sequence));
                }
                self.pause = Some(Pause::AwaitingCeiling(sequence));
                Status::Paused(Pause::AwaitingCeiling(sequence))
            }
            Flow::Continue | Flow::Joined(_) => {
                self.carry.extend_from_slice(data);
                Status::Open
            }
        };
        let mut segments = run.segments;
        segments.clear();
        state.run = segments;
        if self.carry.is_empty() && self.carry.capacity() > CARRY_RETAINED {
            self.carry = Vec::new();
        }
        status
    }
}

/// Serves decoded requests in order, coalescing runs of number requests.
struct Executor<'s, 'o, 'c, W> {
    state: &'s mut LoopState,
    out: &'o mut Vec<u8>,
    client: &'c mut redis::RedisClient,
    run: Run,
    wire: PhantomData<W>,
}

impl<'s, 'o, 'c, W: Wire> Executor<'s, 'o, 'c, W> {
    fn new(
        state: &'s mut LoopState,
        out: &'o mut Vec<u8>,
        client: &'c mut redis::RedisClient,
        run: Run,
    ) -> Self {
        Executor {
            state,
            out,
            client,
            run,
            wire: PhantomData,
        }
    }

    /// Serves `request`, the first `len` bytes of `input` (sliced only if a transaction
    /// queues them, so the number path pays nothing for it).
    #[inline]
    fn handle(&mut self, request: Request<'_>, input: &[u8], len: usize) -> Flow {
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
                    return Flow::Park(sequence);
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
                    if let Err(parked) = self.flush() {
                        return Flow::Park(parked);
                    }
                    W::encode(self.out, &Reply::Error { opcode, problem });
                    return Flow::Continue;
                }
            },
        };
        if self.run.sequence != Some(sequence) {
            if let Err(parked) = self.flush() {
                return Flow::Park(parked);
            }
            self.run.sequence = Some(sequence);
        }
        self.run.push(count, 1);
        Flow::Joined(count)
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
                self.state
                    .resolve(target)
                    .map(|s| Reply::Current(s.current())),
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
            } => return self.acknowledge(target, first, last),
            Request::LeaseStats => (0, Ok(Reply::LeaseStats(self.state.records.leases.stats()))),
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
            Request::Invalid(problem) => (0, Err(problem)),
            Request::Get { .. } | Request::Nothing => unreachable!("handled by handle()"),
        };
        let reply = reply.unwrap_or_else(|problem| Reply::Error { opcode, problem });
        W::encode(self.out, &reply);
        Flow::Continue
    }

    /// `GET_SEQUENCE_RANGE`: grants (or finds again) a lease; the reply waits until the lease
    /// is durable.
    fn lease(
        &mut self,
        target: Target<'_>,
        count: u64,
        ids: Option<LeaseIds<'_>>,
        framing: protocol::Framing,
    ) -> Flow {
        let opcode = binary::opcode::LEASE;
        let id = match self.state.resolve(target) {
            Ok(sequence) => sequence.id(),
            Err(problem) => return self.reply(opcode, Err(problem)),
        };
        let state = &*self.state;
        // Resolved just above; sequences are never removed.
        let Some(sequence) = state.registry.get(id) else {
            return self.reply(opcode, Err(Problem::UnknownSequence(id)));
        };
        let records = &state.records;
        match records.leases.grant(sequence, count, ids, &records.commits) {
            Ok(granted) => self.after_change(Awaiting {
                reply: Reply::Leased {
                    first: granted.first,
                    count: granted.count,
                    framing,
                },
                change: granted.change,
                opcode,
            }),
            Err(GrantError::Refused(problem)) => self.reply(opcode, Err(problem)),
            Err(GrantError::AwaitingCeiling) => {
                let signals = state.registry.ceiling_signals();
                if signals.unavailable() {
                    signals.count_refusal();
                    return self.reply(opcode, Err(Problem::Unavailable));
                }
                signals.request_raise();
                Flow::Park(id)
            }
        }
    }

    /// `ACK start,end`: the reply waits until the acknowledgement is durable.
    fn acknowledge(&mut self, target: Target<'_>, first: u64, last: u64) -> Flow {
        let opcode = binary::opcode::ACK;
        let sequence = match self.state.resolve(target) {
            Ok(sequence) => sequence.id(),
            Err(problem) => return self.reply(opcode, Err(problem)),
        };
        let records = &self.state.records;
        match records
            .leases
            .acknowledge(sequence, first, last, &records.commits)
        {
            Ok(change) => self.after_change(Awaiting {
                reply: Reply::Acked { first },
                change,
                opcode,
            }),
            Err(problem) => self.reply(opcode, Err(problem)),
        }
    }

    /// Answers now if the change is already durable (or cannot become so), else waits.
    fn after_change(&mut self, awaiting: Awaiting) -> Flow {
        answer_when_durable::<W>(awaiting, self.state, self.out).unwrap_or(Flow::Continue)
    }

    fn reply(&mut self, opcode: u8, reply: Result<Reply<'_>, Problem<'_>>) -> Flow {
        let reply = reply.unwrap_or_else(|problem| Reply::Error { opcode, problem });
        W::encode(self.out, &reply);
        Flow::Continue
    }

    fn fatal(&mut self, problem: Problem<'_>) -> Flow {
        // Answer what came before the bad frame, then the error.
        let _ = self.flush();
        W::encode(self.out, &Reply::Error { opcode: 0, problem });
        Flow::Close
    }

    /// Serves the run with one reservation and encodes its replies. On
    /// `Err(sequence)` the unserved part of the run stays in `self.run`, waiting for that
    /// sequence's ceiling to rise.
    fn flush(&mut self) -> Result<(), SequenceId> {
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
                let signals = state.registry.ceiling_signals();
                if !signals.unavailable() {
                    signals.request_raise();
                    return Err(id);
                }
                // Fail closed: what the durable ceiling still covers is served, the rest is
                // refused rather than left waiting for a disk that fails.
                serve_one_by_one::<W>(sequence, &state.registry, out, run)?;
            }
        }
        run.sequence = None;
        Ok(())
    }
}

impl Flow {
    /// Whether decoding goes on after this.
    fn proceeds(&self) -> bool {
        matches!(self, Flow::Continue | Flow::Joined(_))
    }

    /// Whether the request was handled (its bytes are used up).
    // (A `Wait`'s request was handled: only its reply is held.)
    fn consumed(&self) -> bool {
        !matches!(self, Flow::Park(_))
    }
}

/// Encodes `awaiting`'s reply if its change is durable, or refuses it if the durable state
/// cannot be written now (the change stays in memory: a retry with the same ids finds it);
/// otherwise returns it as a [`Flow::Wait`].
fn answer_when_durable<W: Wire>(
    awaiting: Awaiting,
    state: &LoopState,
    out: &mut Vec<u8>,
) -> Option<Flow> {
    if state.records.commits.is_durable(awaiting.change) {
        W::encode(out, &awaiting.reply);
        return None;
    }
    if state.registry.ceiling_signals().unavailable() {
        let problem = Problem::LeaseNotDurable;
        W::encode(
            out,
            &Reply::Error {
                opcode: awaiting.opcode,
                problem,
            },
        );
        return None;
    }
    state.registry.ceiling_signals().request_raise();
    Some(Flow::Wait(awaiting))
}

/// How many copies of `frame` start `rest`, back to back.
#[inline]
fn count_repeats(rest: &[u8], frame: &[u8]) -> usize {
    rest.chunks_exact(frame.len())
        .take_while(|chunk| same_bytes(chunk, frame))
        .count()
}

/// `a == b` for two short slices of equal length, compared a word at a time: frames are a
/// few words long, and a `memcmp` call per frame costs more than the comparison.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    if a_words.len() != b_words.len() || a_tail.len() != b_tail.len() {
        return false;
    }
    for i in 0..a_words.len() {
        if a_words[i] != b_words[i] {
            return false;
        }
    }
    for i in 0..a_tail.len() {
        if a_tail[i] != b_tail[i] {
            return false;
        }
    }
    true
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
    let signals = registry.ceiling_signals();
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
                Err(Refusal::AwaitingCeiling) if signals.unavailable() => {
                    signals.count_refusal();
                    Reply::Error {
                        opcode,
                        problem: Problem::Unavailable,
                    }
                }
                Err(Refusal::AwaitingCeiling) => {
                    signals.request_raise();
                    run.segments.drain(..index);
                    return Err(sequence.id());
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::{decode_reply, encode_open, encode_request, opcode};
    use std::sync::Arc;

    fn records(commits: crate::store::commits::Commits) -> Arc<Records> {
        Arc::new(Records::empty(
            commits,
            crate::lease::LeaseSettings {
                timeout: std::time::Duration::from_secs(30),
                max_size: 1000,
                max_per_client: 4,
                max_tracked: 100,
                reuse: false,
            },
        ))
    }

    fn loop_state(registry: Arc<Registry>, max_batch: u64) -> LoopState {
        let commits = match registry.is_durable() {
            true => crate::store::commits::Commits::persisted(),
            false => crate::store::commits::Commits::memory_only(),
        };
        LoopState::with_records(registry, records(commits), Limits { max_batch })
    }

    fn state(initial: u64) -> LoopState {
        loop_state(Arc::new(Registry::new(8, initial)), 1_000_000)
    }

    fn text_exchange(
        session: &mut Session,
        state: &mut LoopState,
        input: &[u8],
    ) -> (String, Status) {
        let mut out = Vec::new();
        let status = session.receive(input, state, &mut out);
        (String::from_utf8(out).unwrap(), status)
    }

    fn binary_replies(out: &[u8]) -> Vec<(u8, u8, u32, u64)> {
        let mut replies = Vec::new();
        let mut pos = 0;
        while pos < out.len() {
            let ok = decode_reply(&out[pos..]).unwrap();
            let r = ok.message;
            replies.push((r.opcode, r.status, r.count, r.value));
            pos += ok.consumed;
        }
        replies
    }

    #[test]
    fn seed_001_transcript() {
        let mut st = state(1);
        let mut s = Session::new();
        let input = b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\nCURRENT\r\nGETSEQ\r\n";
        let (out, status) = text_exchange(&mut s, &mut st, input);
        assert_eq!(out, ":1\r\n:2\r\n:3\r\n:4\r\n:4\r\n:4\r\n");
        assert_eq!(status, Status::Open);
    }

    #[test]
    fn text_split_at_every_byte_gives_the_same_replies() {
        let input = b"GETSEQ\r\n*1\r\n$6\r\nGETSEQ\r\nGETSEQ_BATCH 3 x\nCURRENT x\r\nPING\r\n*2\r\n$7\r\nCURRENT\r\n$1\r\nx\r\n";
        let expected = ":1\r\n:2\r\n*2\r\n:1\r\n:3\r\n:4\r\n+PONG\r\n:4\r\n";
        for cut in 0..input.len() {
            let mut st = state(1);
            let mut s = Session::new();
            let mut out = Vec::new();
            s.receive(&input[..cut], &mut st, &mut out);
            s.receive(&input[cut..], &mut st, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {cut}");
            assert_eq!(s.buffered(), 0);
        }
    }

    #[test]
    fn binary_split_at_every_byte_gives_the_same_replies() {
        let mut input = Vec::new();
        encode_request(&mut input, opcode::GETSEQ, 0, 0);
        encode_open(&mut input, b"orders");
        encode_request(&mut input, opcode::GETSEQ_BATCH, 1, 10);
        encode_request(&mut input, opcode::GETSEQ, 0, 0);
        encode_request(&mut input, opcode::CURRENT, 1, 0);
        let expected = vec![
            (opcode::GETSEQ, 0, 1, 5),
            (opcode::OPEN, 0, 0, 1),
            (opcode::GETSEQ_BATCH, 0, 10, 5),
            (opcode::GETSEQ, 0, 1, 6),
            (opcode::CURRENT, 0, 0, 15),
        ];
        for cut in 0..input.len() {
            let mut st = state(5);
            let mut s = Session::new();
            let mut out = Vec::new();
            s.receive(&input[..cut], &mut st, &mut out);
            s.receive(&input[cut..], &mut st, &mut out);
            assert_eq!(binary_replies(&out), expected, "split at {cut}");
        }
    }

    #[test]
    fn repeated_frames_are_counted_without_changing_replies() {
        // Runs of identical frames (the fast path), broken by different ones, split anywhere.
        let mut input = b"GETSEQ\r\n".repeat(5);
        input.extend_from_slice(&b"GETSEQ_BATCH 2\r\n".repeat(3));
        input.extend_from_slice(&b"GETSEQ x\r\n".repeat(4));
        input.extend_from_slice(b"CURRENT\r\n");
        input.extend_from_slice(&b"GETSEQ\r\n".repeat(3));
        // Telnet's line end for piped CRLF text (CR NUL CR LF): the same request, another frame.
        input.extend_from_slice(&b"GETSEQ\r\0\r\n".repeat(3));
        input.extend_from_slice(b"CURRENT\r\0\r\n");
        let mut expected = String::new();
        for n in 1..=5 {
            expected += &format!(":{n}\r\n");
        }
        for first in [6, 8, 10] {
            expected += &format!("*2\r\n:{first}\r\n:{}\r\n", first + 1);
        }
        for n in 1..=4 {
            expected += &format!(":{n}\r\n");
        }
        expected += ":12\r\n:12\r\n:13\r\n:14\r\n:15\r\n:16\r\n:17\r\n:18\r\n";
        for cut in 0..input.len() {
            let mut st = state(1);
            let mut s = Session::new();
            let mut out = Vec::new();
            s.receive(&input[..cut], &mut st, &mut out);
            s.receive(&input[cut..], &mut st, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {cut}");
        }
    }

    #[test]
    fn a_run_is_served_by_one_reservation_in_order() {
        let mut st = state(1);
        let mut s = Session::new();
        let (out, _) = text_exchange(
            &mut s,
            &mut st,
            b"GETSEQ\nGETSEQ_BATCH 5\nGETSEQ\nCURRENT\nGETSEQ\n",
        );
        assert_eq!(out, ":1\r\n*2\r\n:2\r\n:6\r\n:7\r\n:8\r\n:8\r\n");
    }

    #[test]
    fn errors_do_not_close_and_consume_nothing() {
        let mut st = state(1);
        let mut s = Session::new();
        let (out, status) = text_exchange(
            &mut s,
            &mut st,
            b"FOOBAR\r\nGETSEQ_BATCH 0\r\nGETSEQ_BATCH 1000001\r\nGETSEQ\r\n",
        );
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(
            lines[0],
            format!(
                "-ERR Unknown command 'FOOBAR'. Supported: {}",
                protocol::TEXT_COMMANDS
            )
        );
        assert_eq!(
            lines[1],
            "-ERR batch size must be between 1 and 1000000 (--max-batch)"
        );
        assert_eq!(lines[2], lines[1]);
        assert_eq!(lines[3], ":1");
        assert_eq!(status, Status::Open);
    }

    #[test]
    fn unknown_protocol_byte_is_refused_and_closed() {
        let mut st = state(1);
        let mut s = Session::new();
        let (out, status) = text_exchange(&mut s, &mut st, b"\x16\x03\x01");
        assert!(
            out.starts_with("-ERR unknown protocol: first byte 0x16"),
            "{out}"
        );
        assert_eq!(status, Status::Closing);
        assert_eq!(
            text_exchange(&mut s, &mut st, b"GETSEQ\r\n"),
            (String::new(), Status::Closing)
        );
    }

    #[test]
    fn fatal_frame_answers_what_came_before_then_closes() {
        let mut st = state(1);
        let mut s = Session::new();
        let mut input = Vec::new();
        encode_request(&mut input, opcode::GETSEQ, 0, 0);
        input.extend_from_slice(&[0x9e, 0x07, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        encode_request(&mut input, opcode::GETSEQ, 0, 0);
        let mut out = Vec::new();
        assert_eq!(s.receive(&input, &mut st, &mut out), Status::Closing);
        let replies = binary_replies(&out);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0], (opcode::GETSEQ, 0, 1, 1));
        assert_eq!(replies[1].1, protocol::ErrorCode::Fatal as u8);
        assert_eq!(
            st.registry().get(0).unwrap().current(),
            2,
            "nothing after the bad frame ran"
        );
    }

    #[test]
    fn overlong_text_line_is_fatal() {
        let mut st = state(1);
        let mut s = Session::new();
        let chunk = vec![b'a'; 16 * 1024];
        let mut out = Vec::new();
        let mut status = Status::Open;
        for _ in 0..5 {
            status = s.receive(&chunk, &mut st, &mut out);
        }
        assert_eq!(status, Status::Closing);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("-ERR request longer than 65536 bytes")
        );
    }

    #[test]
    fn quit_answers_ok_and_closes() {
        let mut st = state(1);
        let mut s = Session::new();
        let (out, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\nQUIT\r\nGETSEQ\r\n");
        assert_eq!(out, ":1\r\n+OK\r\n");
        assert_eq!(status, Status::Closing);
    }

    #[test]
    fn exhaustion_serves_what_is_left_then_refuses() {
        let mut st = state(crate::sequence::MAX_VALUE - 1);
        let mut s = Session::new();
        let (out, _) = text_exchange(
            &mut s,
            &mut st,
            b"GETSEQ\r\nGETSEQ_BATCH 5\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\n",
        );
        let max = crate::sequence::MAX_VALUE;
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[0], format!(":{}", max - 1));
        assert!(
            lines[1].starts_with("-EXHAUSTED sequence exhausted: only 1 numbers are left"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], format!(":{max}"));
        assert!(lines[3].starts_with("-EXHAUSTED"));
        assert_eq!(lines[4], format!(":{}", max + 1));
    }

    #[test]
    fn binary_unknown_sequence_id_is_an_error() {
        let mut st = state(1);
        let mut s = Session::new();
        let mut input = Vec::new();
        encode_request(&mut input, opcode::GETSEQ, 7, 0);
        let mut out = Vec::new();
        assert_eq!(s.receive(&input, &mut st, &mut out), Status::Open);
        let replies = binary_replies(&out);
        assert_eq!(
            replies,
            vec![(
                opcode::GETSEQ,
                protocol::ErrorCode::UnknownSequence as u8,
                0,
                7
            )]
        );
    }

    #[test]
    fn ceiling_parks_the_run_and_later_input_until_resumed() {
        let registry = Arc::new(Registry::durable(8, 1));
        registry.get(0).unwrap().raise_ceiling(3); // 1 and 2 may be issued
        let mut st = loop_state(registry.clone(), 10);
        let mut s = Session::new();
        let (out, status) = text_exchange(
            &mut s,
            &mut st,
            b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\nGET",
        );
        assert_eq!(out, "", "the whole run waits: replies stay in order");
        assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(0)));
        assert_eq!(
            registry.get(0).unwrap().demand(),
            4,
            "the server learns what is wanted"
        );
        // Input that arrives while paused is held, not decoded.
        let (out, status) = text_exchange(&mut s, &mut st, b"SEQ\r\n");
        assert_eq!(
            (out.as_str(), status),
            ("", Status::Paused(Pause::AwaitingCeiling(0)))
        );
        // Still not enough: stays parked.
        let mut out = Vec::new();
        assert_eq!(
            s.resume(&mut st, &mut out),
            Status::Paused(Pause::AwaitingCeiling(0))
        );
        assert!(out.is_empty());
        registry.get(0).unwrap().raise_ceiling(100);
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            ":1\r\n:2\r\n:3\r\n:4\r\n:4\r\n"
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_waiting_run_asks_for_a_raise() {
        let registry = Arc::new(Registry::durable(8, 1));
        let mut st = loop_state(registry.clone(), 10);
        let mut s = Session::new();
        let (_, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\n");
        assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(0)));
        assert!(
            registry
                .ceiling_signals()
                .wait_for_raise_request(std::time::Duration::ZERO),
            "the persister was asked for a raise"
        );
    }

    #[test]
    fn unavailable_ceilings_refuse_what_they_do_not_cover_and_keep_serving() {
        let registry = Arc::new(Registry::durable(8, 1));
        registry.get(0).unwrap().raise_ceiling(3); // 1 and 2 are durable
        registry.ceiling_signals().set_unavailable(true);
        let mut st = loop_state(registry.clone(), 10);
        let mut s = Session::new();
        let (out, status) = text_exchange(
            &mut s,
            &mut st,
            b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nGETSEQ_BATCH 2\r\nCURRENT\r\nPING\r\n",
        );
        let refused = format!("-UNAVAILABLE {}", Problem::Unavailable);
        assert_eq!(
            out,
            format!(":1\r\n:2\r\n{refused}\r\n{refused}\r\n:3\r\n+PONG\r\n")
        );
        assert_eq!(status, Status::Open);
        assert_eq!(registry.ceiling_signals().take_refusals(), 2);
        // The disk works again: the next request is served from the raised ceiling.
        registry.get(0).unwrap().raise_ceiling(100);
        registry.ceiling_signals().set_unavailable(false);
        let (out, _) = text_exchange(&mut s, &mut st, b"GETSEQ\r\n");
        assert_eq!(out, ":3\r\n");
    }

    #[test]
    fn a_parked_run_is_refused_when_ceilings_become_unavailable() {
        let registry = Arc::new(Registry::durable(8, 1));
        let mut st = loop_state(registry.clone(), 10);
        let mut s = Session::new();
        let (out, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\nGETSEQ\r\nPING\r\n");
        assert_eq!(
            (out.as_str(), status),
            ("", Status::Paused(Pause::AwaitingCeiling(0)))
        );
        registry.ceiling_signals().set_unavailable(true);
        let mut out = Vec::new();
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        let refused = format!("-UNAVAILABLE {}", Problem::Unavailable);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{refused}\r\n{refused}\r\n+PONG\r\n")
        );
        assert_eq!(registry.get(0).unwrap().current(), 1, "nothing consumed");
    }

    #[test]
    fn seed_000_lease_and_ack() {
        let mut st = state(1001);
        let mut s = Session::new();
        let (out, status) = text_exchange(
            &mut s,
            &mut st,
            b"GET_SEQUENCE_RANGE 20\r\nACK 1001,1020\r\nGETSEQ\r\nLEASES\r\n",
        );
        assert_eq!(
            out,
            "1001,1020\r\n+OK\r\n:1021\r\n+outstanding=0 granted=1 acknowledged=1 \
             retired=0 returned=0 reused=0\r\n"
        );
        assert_eq!(status, Status::Open);
        let (out, _) = text_exchange(&mut s, &mut st, b"ACK 1001,1019\r\nACK 5,6\r\n");
        assert!(
            out.starts_with("-NOLEASE no lease has the range 1001,1019"),
            "{out}"
        );
        assert!(
            out.contains("\r\n-NOLEASE no lease has the range 5,6"),
            "{out}"
        );
    }

    #[test]
    fn a_lease_reply_and_later_requests_wait_until_the_lease_is_durable() {
        let registry = Arc::new(Registry::durable(8, 1));
        registry.get(0).unwrap().raise_ceiling(1000);
        let mut st = loop_state(registry.clone(), 100);
        let mut s = Session::new();
        let (out, status) = text_exchange(
            &mut s,
            &mut st,
            b"GETSEQ\r\nGET_SEQUENCE_RANGE 5 c r\r\nGETSEQ\r\n",
        );
        assert_eq!(out, ":1\r\n", "the reply before the lease goes out at once");
        let Status::Paused(Pause::AwaitingDurable(change)) = status else {
            panic!("{status:?}");
        };
        assert!(
            registry
                .ceiling_signals()
                .wait_for_raise_request(std::time::Duration::ZERO),
            "the persister was asked for a write"
        );
        let mut out = Vec::new();
        assert_eq!(s.resume(&mut st, &mut out), status, "not durable yet");
        assert!(out.is_empty());
        st.records.commits.mark_durable(change);
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        assert_eq!(String::from_utf8(out).unwrap(), "2,6\r\n:7\r\n");
        // A retry is answered with the same range, at once now that it is durable.
        let (out, _) = text_exchange(&mut s, &mut st, b"GET_SEQUENCE_RANGE 5 c r\r\n");
        assert_eq!(out, "2,6\r\n");
        // The disk fails: the acknowledgement is refused rather than left waiting.
        registry.ceiling_signals().set_unavailable(true);
        let (out, status) = text_exchange(&mut s, &mut st, b"ACK 2,6\r\nPING\r\n");
        assert!(
            out.starts_with("-UNAVAILABLE the lease could not be recorded"),
            "{out}"
        );
        assert!(out.ends_with("+PONG\r\n"));
        assert_eq!(status, Status::Open);
    }

    #[test]
    fn a_last_line_without_line_ending_is_served_at_end_of_input() {
        let mut st = state(1001);
        let mut s = Session::new();
        let (out, status) = text_exchange(&mut s, &mut st, b"GET_SEQUENCE_RANGE 20");
        assert_eq!((out.as_str(), status), ("", Status::Open));
        let mut out = Vec::new();
        assert_eq!(s.end_of_input(&mut st, &mut out), Status::Open);
        assert_eq!(out, b"1001,1020\r\n");
        // A binary session's partial frame is just dropped.
        let mut s = Session::new();
        let mut out = Vec::new();
        s.receive(&[binary::MAGIC, 1, 1], &mut st, &mut out);
        assert_eq!(s.end_of_input(&mut st, &mut out), Status::Open);
        assert!(out.is_empty());
    }

    #[test]
    fn backpressure_holds_input_until_output_drains() {
        let mut st = state(1);
        let mut s = Session::new();
        let mut out = vec![0u8; OUTPUT_HIGH_WATER];
        assert_eq!(
            s.receive(b"GETSEQ\r\n", &mut st, &mut out),
            Status::Paused(Pause::Backpressure)
        );
        assert_eq!(out.len(), OUTPUT_HIGH_WATER);
        assert_eq!(s.buffered(), 8);
        out.clear();
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        assert_eq!(out, b":1\r\n");
    }
}
