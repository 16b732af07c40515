//! One connection's framing: bytes in, replies out. It knows nothing of sockets or of the I/O
//! backend that drives it, and nothing of what a request means (the
//! [`Executor`](super::executor) serves requests).
//!
//! Frames are decoded in place from the buffer the kernel filled; only a frame that straddles
//! two receives is copied (into `carry`). Byte-identical frames in a row are counted without
//! decoding. A session pauses when its client is not reading (backpressure), when a request
//! waits for a higher durable ceiling, or when a reply waits for a change to be durable; the
//! loop resumes it when the reason has cleared.

use super::executor::redis::RedisClient;
use super::executor::{Awaiting, BinaryWire, Executor, Flow, LoopState, Run, TextWire, Wire};
use super::lease_requests::answer_when_durable;
use crate::lease::Peer;
use crate::protocol::{self, ParseError, Problem, Reply, binary, text};
use crate::sequence::SequenceId;

/// Stop decoding new requests once this many reply bytes wait to be sent (at least; see
/// [`Limits::held_output`](super::Limits::held_output)): the client is not reading.
/// Decoding resumes when the backlog has been sent.
///
/// Replies pile up in seqd only once the kernel's socket buffers toward the client are full
/// (hundreds of KiB to MiBs on loopback), so a client this far behind still has a socket
/// buffer of replies to read while it is paused: pausing it costs a reader nothing. The
/// threshold need only clear what one call adds (a 16 KiB receive of pipelined GETSEQ is
/// ~25 KiB of replies; epoll's 64 KiB read ~100 KiB; a 4096-deep pipeline ~55 KiB), so
/// clients that read never trip it. Above that, smaller is better: what a paused client's
/// output buffers hold is about this much each (rounded up to a power of two), and it counts
/// against `--maxmemory-clients`.
pub const OUTPUT_HIGH_WATER: usize = 128 << 10;

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
    /// The output backlog is over `held_output`: resume once it has been sent.
    Backpressure,
    /// A request needs numbers above this sequence's durable ceiling: resume once it rises.
    AwaitingCeiling(SequenceId),
    /// A reply waits for this change to lease records to be durable (see
    /// [`Commits`](crate::commits::Commits)).
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

#[derive(Debug, Default)]
pub struct Session {
    codec: Option<Codec>,
    /// Received bytes not yet decoded: a frame split across receives, or input held back
    /// while paused.
    carry: Vec<u8>,
    /// A run refused for want of durable numbers, answered first on resume.
    run_awaiting_ceiling: Option<Run>,
    /// A reply waiting for its change to be durable, sent first on resume (boxed: rare, and
    /// every connection carries the field).
    awaiting: Option<Box<Awaiting>>,
    pause: Option<Pause>,
    closing: bool,
    /// How far the text request at the front of `carry` is decoded.
    progress: text::Progress,
    /// RESP version, name and transaction of a Redis client.
    redis: RedisClient,
    /// This connection's number, unique in the process (never 0): a lease granted with ids
    /// may be acknowledged without them by the connection that got it.
    connection: u64,
    /// The client's address, which the per-peer lease bound counts by.
    peer: Peer,
}

/// The last connection number handed out.
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Carry capacity kept between frames; larger buffers are released once empty.
const CARRY_RETAINED: usize = 256;

impl Session {
    /// A session whose peer's address is unknown.
    pub fn new() -> Session {
        Session::with_peer(None)
    }

    /// A session of a connection from `addr`.
    pub fn with_peer(addr: Option<std::net::IpAddr>) -> Session {
        let connection = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Session {
            connection,
            peer: Peer::of(addr),
            ..Session::default()
        }
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.carry.len()
    }

    /// The memory its received, undecoded bytes hold.
    pub fn held_input(&self) -> usize {
        self.carry.capacity()
    }

    /// Bytes the text decoder has examined on this connection (for tests of its cost).
    #[cfg(test)]
    pub(super) fn examined(&self) -> u64 {
        self.progress.examined()
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
        if out.len() >= state.limits.held_output {
            self.carry.extend_from_slice(data);
            return self.paused(Pause::Backpressure);
        }
        match codec {
            Codec::Binary => self.process::<BinaryWire>(data, state, out),
            Codec::Text => self.process::<TextWire>(data, state, out),
        }
    }

    /// The client will send nothing more. An unfinished request (a RESP array or an inline
    /// line without its line ending) is discarded, as Redis discards it: its sender died or
    /// gave up mid-command, and a truncated line may be another command (`GETSEQ ord` of
    /// `GETSEQ orders`).
    pub fn end_of_input(&mut self) -> Status {
        if self.closing {
            return Status::Closing;
        }
        match self.pause {
            Some(pause) => Status::Paused(pause),
            None => Status::Open,
        }
    }

    /// Continues after a pause: answers a run that waited for the ceiling, then decodes held-back input.
    pub fn resume(&mut self, state: &mut LoopState, out: &mut Vec<u8>) -> Status {
        if self.closing {
            return Status::Closing;
        }
        self.pause = None;
        let Some(codec) = self.codec else {
            return Status::Open;
        };
        if out.len() >= state.limits.held_output {
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
                Some(Flow::AwaitDurable(awaiting)) => {
                    return self.paused(Pause::AwaitingDurable(awaiting.change));
                }
                _ => self.awaiting = None,
            }
        }
        if let Some(run) = self.run_awaiting_ceiling.take() {
            let mut executor =
                Executor::<W>::new(state, out, &mut self.redis, run, self.connection, self.peer);
            if let Err(sequence) = executor.flush() {
                self.run_awaiting_ceiling = Some(executor.run);
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
        let mut executor =
            Executor::<W>::new(state, out, &mut self.redis, run, self.connection, self.peer);
        let mut flow = Flow::Continue;

        // 1. Frames that begin in the carry, completed with as few bytes of `data` as needed.
        let mut start = 0;
        while start < self.carry.len() && flow.proceeds() {
            let rest = &self.carry[start..];
            // Continues where the last call stopped: the frame's bytes are only ever added to.
            match W::decode_from(rest, &mut self.progress) {
                Ok(parsed) => {
                    flow = executor.handle(parsed.message, rest, parsed.consumed);
                    if flow.consumed() {
                        executor.count(rest, 1);
                        start += parsed.consumed;
                    }
                }
                Err(ParseError::Incomplete(need)) => {
                    if data.is_empty() {
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
                    flow = executor.fatal(problem, W::opcode_of(rest));
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
                            executor.count(rest, 1);
                            pos += parsed.consumed;
                        }
                        if let Flow::Joined(count) = flow {
                            // Byte-identical frames right after one that joined the run are
                            // the same request: count them without decoding (pipelines
                            // are mostly one request repeated).
                            let frame = &data[pos - parsed.consumed..pos];
                            let repeats = count_repeats(&data[pos..], frame);
                            executor.run.push(count, repeats as u64);
                            executor.count(frame, repeats as u64);
                            pos += repeats * frame.len();
                        }
                    }
                    Err(ParseError::Incomplete(_)) => break,
                    Err(ParseError::Fatal(problem)) => {
                        flow = executor.fatal(problem, W::opcode_of(rest));
                    }
                }
            }
            data = &data[pos..];
        }

        // 3. Answer the run still open, then keep what was not decoded.
        if flow.proceeds()
            && let Err(sequence) = executor.flush()
        {
            flow = Flow::AwaitCeiling(sequence);
        }
        let Executor { state, run, .. } = executor;
        let status = match flow {
            Flow::Close => {
                self.closing = true;
                self.carry = Vec::new();
                self.progress.clear();
                Status::Closing
            }
            Flow::AwaitDurable(awaiting) => {
                self.carry.extend_from_slice(data);
                self.awaiting = Some(Box::new(awaiting));
                self.pause = Some(Pause::AwaitingDurable(awaiting.change));
                Status::Paused(Pause::AwaitingDurable(awaiting.change))
            }
            Flow::AwaitCeiling(sequence) => {
                self.carry.extend_from_slice(data);
                if !run.is_empty() {
                    // The run keeps its buffer; the loop gets a fresh one (a rare path).
                    self.run_awaiting_ceiling = Some(run);
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
