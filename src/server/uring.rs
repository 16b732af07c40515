//! The io_uring event loop: one per core, single-threaded, sharing nothing but [`Shared`].
//!
//! Each turn: submit what is queued and wait for at least one completion → handle every
//! completion (new connections, received bytes fed to their sessions, finished sends) → queue
//! one send per connection holding replies → repeat. Receives are multishot into a provided
//! buffer ring; accepts are multishot; nothing is allocated per request.
//!
//! Every operation's completion is routed by its user_data, a [`Token`]: the operation kind,
//! the connection's slab key and the connection's generation. A connection's slot is only
//! freed once none of its operations can still complete, and a completion whose generation
//! is not its slot's current one is refused, so a token never reaches a stranger. Output
//! buffers are reused through an [`OutputPool`], which only ever hands out empty ones.
//!
//! Loop 0 may also serve the stream protocol (seed 003) on its own listener: those
//! connections are fed to a [`StreamHub`] instead of a session, and a timer paces what the
//! hub sends. All streams live in this one thread, so "one writer per client id" needs no
//! coordination; ordinary connections pay one flag test per receive.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use super::Shared;
use super::adapters::{Handler, Limits, Services, StreamSettings};
use super::bufring::BufRing;
use super::handler::{Kind, Next, Service, Until};
use super::pool::OutputPool;
use super::probe::{self, Features};

const SUBMISSION_ENTRIES: u32 = 4096;
const COMPLETION_ENTRIES: u32 = 16384;
const BUFFER_GROUP: u16 = 0;
/// Receive buffers: enough that every busy connection of a turn finds one (a connection
/// holds a buffer only while its completion is handled).
const RECV_BUFFERS: u16 = 1024;
const RECV_BUFFER_SIZE: u32 = 16 * 1024;
/// Output buffers kept for reuse, the largest one worth keeping, and a new one's size.
const SPARE_BUFFERS: usize = 256;
const SPARE_BUFFER_MAX: usize = 1 << 20;
const FRESH_BUFFER: usize = 4096;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a closing connection waits for the peer to close after our FIN.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// A cancellation request; its own completion carries nothing we need.
    Cancel = 4,
    Wake = 5,
    /// The refusal sent to a connection over the limit; the key is its descriptor.
    Refuse = 6,
    Timer = 7,
}

/// user_data of an operation: `generation << 40 | key << 8 | op`. Operations that belong to
/// no connection (accept, timers, the wake-up read) have generation 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token(u64);

/// Connection generations wrap within the token's 24 bits; 0 is never one.
const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Token {
    fn new(op: Op, key: usize) -> Token {
        Token::for_connection(op, key, 0)
    }

    fn for_connection(op: Op, key: usize, generation: u32) -> Token {
        debug_assert!(key <= u32::MAX as usize && generation <= GENERATION_MASK);
        Token(u64::from(generation) << 40 | (key as u64 & 0xffff_ffff) << 8 | op as u64)
    }

    fn generation(self) -> u32 {
        (self.0 >> 40) as u32
    }

    fn op(self) -> Option<Op> {
        Some(match self.0 as u8 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Wake,
            6 => Op::Refuse,
            7 => Op::Timer,
            _ => return None,
        })
    }

    fn key(self) -> usize {
        ((self.0 >> 8) & 0xffff_ffff) as usize
    }
}

const TIMER_SHUTDOWN: usize = 0;
const TIMER_ACCEPT_RETRY: usize = 1;
const TIMER_LINGER: usize = 2;
const TIMER_STREAM: usize = 3;

/// Accept tokens: which listener.
const LISTENER_MAIN: usize = 0;
const LISTENER_STREAM: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Send what is queued, then linger.
    AfterFlush,
    /// Everything is sent and our side shut down (FIN); reading and discarding until the peer
    /// closes or [`LINGER`] passes. Closing a socket with unread input makes the kernel
    /// reset the connection and throw away replies not yet delivered — often the very error
    /// reply that explains the close.
    Lingering,
    /// Close as soon as no operation is in flight; queued output is dropped.
    Now,
}

struct Connection {
    fd: OwnedFd,
    /// Tells this connection's completions from those of an earlier one in the same slot.
    generation: u32,
    handler: Handler,
    /// Replies not yet handed to the kernel.
    pending: Vec<u8>,
    /// Replies handed to the kernel: must not move or change until the send completes.
    sending: Vec<u8>,
    /// Bytes of `sending` the kernel has accepted.
    sent: usize,
    recv_armed: bool,
    recv_cancelled: bool,
    send_inflight: bool,
    /// Reading stopped because the session holds too much input.
    reading_stopped: bool,
    /// The peer shut down its side (we received EOF).
    peer_closed: bool,
    /// When a lingering close gives up waiting for the peer.
    linger_deadline: Option<std::time::Instant>,
    /// What a held connection waits for.
    held: Option<Until>,
    closing: Closing,
}

impl Connection {
    fn has_output(&self) -> bool {
        !self.pending.is_empty() || self.send_inflight
    }

    /// Whether the multishot receive should be running.
    fn wants_reading(&self) -> bool {
        !self.peer_closed
            && !self.recv_cancelled
            && match self.closing {
                Closing::No => !self.reading_stopped,
                Closing::AfterFlush | Closing::Lingering => true,
                Closing::Now => false,
            }
    }
}

pub(super) struct LoopSettings {
    pub index: usize,
    pub listener: std::net::TcpListener,
    pub wake_fd: RawFd,
    pub limits: Limits,
    /// The stream listener and its settings: loop 0 only.
    pub stream: Option<(std::net::TcpListener, StreamSettings)>,
    pub busy_poll: Duration,
}

/// The stream protocol's side of loop 0.
struct StreamService {
    listener: std::net::TcpListener,
    accept_armed: bool,
    /// When the stream timer fires, if it is armed.
    timer_due: Option<std::time::Instant>,
}

pub(super) struct EventLoop {
    // Field order is drop order: the ring goes first, so the kernel is done with every
    // buffer below before they are freed.
    ring: IoUring,
    buffers: BufRing,
    features: Features,
    busy_poll: Duration,
    index: usize,
    listener: Option<std::net::TcpListener>,
    accept_armed: bool,
    wake_fd: RawFd,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    timer: Box<types::Timespec>,
    refusal: Box<[u8]>,
    refusals_inflight: usize,
    connections: Slab<Connection>,
    service: Services,
    shared: Arc<Shared>,
    /// Connections lingering after close, with their deadlines.
    lingering: Vec<(usize, std::time::Instant)>,
    linger_timer_armed: bool,
    /// Connections that may have replies to send this turn.
    dirty: Vec<usize>,
    /// Sessions waiting for a durable ceiling; retried when the loop is woken.
    parked: Vec<Token>,
    spare: OutputPool,
    /// The generation the next connection gets.
    next_generation: u32,
    draining: bool,
    streams: Option<StreamService>,
}

impl EventLoop {
    pub fn new(settings: LoopSettings, shared: Arc<Shared>) -> io::Result<EventLoop> {
        let (ring, features) = probe::create_ring(SUBMISSION_ENTRIES, COMPLETION_ENTRIES)?;
        let buffers = BufRing::new(BUFFER_GROUP, RECV_BUFFERS, RECV_BUFFER_SIZE)?;
        buffers.register(&ring.submitter()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot register a provided buffer ring ({e}); seqd needs Linux 6.0 or newer"
                ),
            )
        })?;
        let (stream_listener, stream_settings) = settings.stream.unzip();
        let service = Services::new(
            shared.registry.clone(),
            shared.records.clone(),
            settings.limits,
            shared.max_connections,
            stream_settings,
        );
        let refusal = service.refusal(Kind::Session).unwrap_or_default().into();
        let streams = stream_listener.map(|listener| StreamService {
            listener,
            accept_armed: false,
            timer_due: None,
        });
        Ok(EventLoop {
            ring,
            buffers,
            features,
            busy_poll: settings.busy_poll,
            index: settings.index,
            listener: Some(settings.listener),
            accept_armed: false,
            wake_fd: settings.wake_fd,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            timer: Box::new(types::Timespec::new()),
            refusal,
            refusals_inflight: 0,
            connections: Slab::with_capacity(1024),
            service,
            shared,
            lingering: Vec::new(),
            linger_timer_armed: false,
            dirty: Vec::with_capacity(1024),
            parked: Vec::new(),
            spare: OutputPool::new(SPARE_BUFFERS, SPARE_BUFFER_MAX, FRESH_BUFFER),
            next_generation: 1,
            draining: false,
            streams,
        })
    }

    pub fn features(&self) -> Features {
        self.features
    }

    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept()?;
        self.arm_stream_accept()?;
        self.schedule_stream_tick()?;
        self.arm_wake()?;
        // The shutdown may have been requested before the wake read was armed.
        if self.shared.shutdown.load(Ordering::Acquire) {
            self.begin_drain()?;
        }
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(COMPLETION_ENTRIES as usize);
        loop {
            self.send_replies()?;
            if self.finished() {
                tracing::debug!(loop_index = self.index, "event loop stopped");
                return Ok(());
            }
            self.wait_for_completions()?;
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(token, result, flags) in &completions {
                self.complete(Token(token), result, flags)?;
            }
        }
    }

    /// Submits what is queued and returns once completions are ready. With `--busy-poll`, it
    /// first watches the kernel's "work pending" flag in shared memory for a while (no system
    /// calls, no sleep), so a request arriving soon after the last one is picked up without
    /// the wake-up a sleeping thread needs; then it blocks.
    fn wait_for_completions(&mut self) -> io::Result<()> {
        if self.busy_poll.is_zero() || !self.features.work_pending_flag || self.draining {
            return self.enter(1);
        }
        // Submit, which also runs work that is already pending. With nothing queued and
        // nothing pending the call would do nothing: skipping it saves one of the three
        // system calls a request otherwise costs when clients send one at a time.
        let nothing_to_do = {
            let queue = self.ring.submission();
            queue.is_empty() && !queue.taskrun() && !queue.cq_overflow()
        };
        if !nothing_to_do {
            self.enter(0)?;
            if !self.ring.completion().is_empty() {
                return Ok(());
            }
        }
        let deadline = std::time::Instant::now() + self.busy_poll;
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(());
            }
            if self.ring.submission().taskrun() {
                return self.enter(0);
            }
            if std::time::Instant::now() >= deadline {
                return self.enter(1);
            }
            std::hint::spin_loop();
        }
    }

    /// One io_uring_enter: submits queued entries and waits for `want` completions (running
    /// deferred work when there is some, even with `want` 0).
    fn enter(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            // Interrupted, or completions must be reaped before more can be submitted.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("io_uring_enter failed: {e}"),
            )),
        }
    }

    /// Whether the loop may stop. Pending timers do not hold it: the kernel copied their
    /// timespecs, and dropping the ring cancels them.
    fn finished(&self) -> bool {
        self.draining
            && self.connections.is_empty()
            && !self.accept_armed
            && !self.streams.as_ref().is_some_and(|s| s.accept_armed)
            && !self.wake_armed
            && self.refusals_inflight == 0
    }

    /// Queues a submission, flushing the queue to the kernel first if it is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer a queued entry points to (wake_buf, refusal, a connection's
            // `sending`, the timer) stays valid and unmoved until that entry's completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn complete(&mut self, token: Token, result: i32, flags: u32) -> io::Result<()> {
        match token.op() {
            Some(Op::Accept) => self.on_accept(token.key(), result, flags),
            Some(Op::Recv | Op::Send) if !self.is_current(token) => {
                // Cannot happen (slots outlive their operations); refuse rather than hand
                // another connection's completion to this slot's connection.
                tracing::error!(
                    user_data = token.0,
                    "completion for a connection that no longer exists; ignored"
                );
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.buffers.recycle(bid);
                }
                Ok(())
            }
            Some(Op::Recv) => self.on_recv(token.key(), result, flags),
            Some(Op::Send) => self.on_send(token.key(), result),
            Some(Op::Cancel) => Ok(()),
            Some(Op::Wake) => self.on_wake(result),
            Some(Op::Refuse) => {
                self.refusals_inflight -= 1;
                // SAFETY: the key of a Refuse token is the descriptor we accepted and have not
                // closed; closing it here is its only close.
                drop(unsafe { OwnedFd::from_raw_fd(token.key() as RawFd) });
                Ok(())
            }
            Some(Op::Timer) => self.on_timer(token.key()),
            None => {
                tracing::error!(
                    user_data = token.0,
                    "completion with an unknown token; ignored"
                );
                Ok(())
            }
        }
    }

    /// Whether `token` belongs to the connection now in its slot.
    fn is_current(&self, token: Token) -> bool {
        self.connections
            .get(token.key())
            .is_some_and(|c| c.generation == token.generation())
    }

    /// The token of connection `key`'s operation `op`.
    fn connection_token(&self, op: Op, key: usize) -> Token {
        Token::for_connection(op, key, self.connections[key].generation)
    }

    // ---- accepting ----

    fn arm_accept(&mut self) -> io::Result<()> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(Op::Accept, LISTENER_MAIN).0);
        self.push(entry)?;
        self.accept_armed = true;
        Ok(())
    }

    fn on_accept(&mut self, listener: usize, result: i32, flags: u32) -> io::Result<()> {
        if listener == LISTENER_STREAM {
            return self.on_stream_accept(result, flags);
        }
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.admit(fd, Kind::Session)?;
        } else if -result != libc::ECANCELED {
            let error = io::Error::from_raw_os_error(-result);
            match -result {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    tracing::warn!(
                        loop_index = self.index,
                        "cannot accept connections: {error}; retrying in {ACCEPT_RETRY:?} \
                         (raise `ulimit -n` or lower --max-connections)"
                    );
                    if !self.accept_armed {
                        return self.arm_timer(TIMER_ACCEPT_RETRY, ACCEPT_RETRY);
                    }
                }
                // The peer gave up while queued; nothing to do.
                libc::ECONNABORTED | libc::EPERM | libc::EPROTO => {}
                _ => tracing::warn!(loop_index = self.index, "accept failed: {error}"),
            }
        }
        if !self.accept_armed && !self.draining {
            self.arm_accept()?;
        }
        Ok(())
    }

    fn admit(&mut self, fd: OwnedFd, kind: Kind) -> io::Result<()> {
        if self.draining {
            return Ok(()); // dropping the descriptor closes it
        }
        let count = self.shared.connections.fetch_add(1, Ordering::AcqRel);
        if count >= self.shared.max_connections {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                limit = self.shared.max_connections,
                ?kind,
                "connection refused: --max-connections reached"
            );
            if self.service.refusal(kind).is_none() {
                return Ok(());
            }
            let raw = fd.as_raw_fd();
            let entry = opcode::Send::new(
                types::Fd(raw),
                self.refusal.as_ptr(),
                self.refusal.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Token::new(Op::Refuse, raw as usize).0);
            std::mem::forget(fd); // closed when the refusal completes
            self.refusals_inflight += 1;
            return self.push(entry);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let peer = socket2::SockRef::from(&fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket());
            tracing::debug!(
                loop_index = self.index,
                ?peer,
                fd = fd.as_raw_fd(),
                "connection accepted"
            );
        }
        let generation = self.next_generation;
        self.next_generation = (generation % GENERATION_MASK) + 1;
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        entry.insert(Connection {
            fd,
            generation,
            handler: self.service.open(kind, key),
            pending: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            recv_armed: false,
            recv_cancelled: false,
            send_inflight: false,
            reading_stopped: false,
            peer_closed: false,
            linger_deadline: None,
            held: None,
            closing: Closing::No,
        });
        self.arm_recv(key)
    }

    // ---- receiving ----

    fn arm_recv(&mut self, key: usize) -> io::Result<()> {
        let token = self.connection_token(Op::Recv, key);
        let conn = &mut self.connections[key];
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd.as_raw_fd()), self.buffers.group())
            .build()
            .user_data(token.0);
        conn.recv_armed = true;
        conn.recv_cancelled = false;
        self.push(entry)
    }

    /// Stops the connection's multishot receive (its final completion follows).
    fn stop_reading(&mut self, key: usize) -> io::Result<()> {
        let token = self.connection_token(Op::Recv, key);
        let conn = &mut self.connections[key];
        if !conn.recv_armed || conn.recv_cancelled {
            return Ok(());
        }
        conn.recv_cancelled = true;
        let entry = opcode::AsyncCancel::new(token.0)
            .build()
            .user_data(Token::new(Op::Cancel, key).0);
        self.push(entry)
    }

    fn on_recv(&mut self, key: usize, result: i32, flags: u32) -> io::Result<()> {
        let bid = cqueue::buffer_select(flags);
        let Some(conn) = self.connections.get_mut(key) else {
            // Cannot happen (slots outlive their operations); keep the buffer in circulation.
            tracing::error!(key, "receive completion for a closed connection");
            if let Some(bid) = bid {
                self.buffers.recycle(bid);
            }
            return Ok(());
        };
        if !cqueue::more(flags) {
            // This receive is over, and with it any cancellation we asked for.
            conn.recv_armed = false;
            conn.recv_cancelled = false;
        }
        if result > 0 {
            let Some(bid) = bid else {
                tracing::error!(
                    key,
                    "receive completed without a buffer; closing connection"
                );
                return self.close_now(key);
            };
            if conn.closing == Closing::No {
                if conn.pending.capacity() == 0 {
                    conn.pending = self.spare.take();
                }
                // SAFETY: `bid` was just handed to us by the kernel and is recycled below,
                // after its bytes have been decoded.
                let data = unsafe { self.buffers.filled(bid, result as usize) };
                let next = self
                    .service
                    .receive(&mut conn.handler, key, data, &mut conn.pending);
                self.buffers.recycle(bid);
                self.after_service(key, next)?;
                if self.service.take_housekeeping() {
                    self.housekeeping()?;
                }
            } else {
                self.buffers.recycle(bid); // closing: input is discarded
            }
        } else if result == 0 {
            conn.peer_closed = true;
            if conn.closing == Closing::No {
                tracing::debug!(key, "peer closed its side");
                // A last line without a line ending is complete now. A held session still
                // holds requests (`echo GETSEQ new | nc -N` waits for the new sequence's first
                // durable ceiling): it answers them first; the close follows when the session
                // is done (see `after_service`).
                let next = self
                    .service
                    .end_of_input(&mut conn.handler, key, &mut conn.pending);
                if conn.held.is_none() {
                    return self.after_service(key, next);
                }
            }
        } else {
            match -result {
                // Our cancellation, or the buffer ring ran dry for a moment (buffers are back
                // by now): re-armed below if still wanted.
                libc::ECANCELED | libc::ENOBUFS => {}
                errno => {
                    let error = io::Error::from_raw_os_error(errno);
                    tracing::debug!(key, "receive failed: {error}; closing connection");
                    conn.peer_closed = true;
                    return self.close_now(key);
                }
            }
        }
        if let Some(conn) = self.connections.get(key)
            && !conn.recv_armed
            && conn.wants_reading()
        {
            self.arm_recv(key)?;
        }
        self.maybe_release(key)
    }

    /// Acts on what the service asked for after a call.
    fn after_service(&mut self, key: usize, next: Next) -> io::Result<()> {
        let conn = &mut self.connections[key];
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        }
        conn.held = match next {
            Next::Hold { until, .. } => Some(until),
            _ => None,
        };
        match next {
            Next::Read if conn.peer_closed => self.close_after_flush(key),
            Next::Read => {
                if conn.reading_stopped {
                    tracing::debug!(key, "resuming reads");
                    conn.reading_stopped = false;
                    if !conn.recv_armed {
                        self.arm_recv(key)?;
                    }
                }
                Ok(())
            }
            Next::Hold {
                until,
                keep_reading,
            } => {
                if until == Until::Woken {
                    let token = Token::for_connection(Op::Recv, key, conn.generation);
                    self.parked.push(token);
                }
                if !keep_reading && !conn.reading_stopped {
                    tracing::debug!(key, ?until, "pausing reads until the connection catches up");
                    conn.reading_stopped = true;
                    self.stop_reading(key)?;
                }
                Ok(())
            }
            Next::Close => self.close_after_flush(key),
        }
    }

    // ---- sending ----

    /// Hands every connection's queued replies to the kernel: one send per connection.
    fn send_replies(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            self.start_send(key)?;
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        Ok(())
    }

    fn start_send(&mut self, key: usize) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if conn.send_inflight || conn.pending.is_empty() || conn.closing == Closing::Now {
            return Ok(());
        }
        debug_assert!(conn.sending.is_empty());
        std::mem::swap(&mut conn.pending, &mut conn.sending);
        conn.sent = 0;
        self.submit_send(key)
    }

    fn submit_send(&mut self, key: usize) -> io::Result<()> {
        let token = self.connection_token(Op::Send, key);
        let conn = &mut self.connections[key];
        let unsent = &conn.sending[conn.sent..];
        let len = u32::try_from(unsent.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(conn.fd.as_raw_fd()), unsent.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token.0);
        conn.send_inflight = true;
        self.push(entry)
    }

    fn on_send(&mut self, key: usize, result: i32) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            tracing::error!(key, "send completion for a closed connection");
            return Ok(());
        };
        conn.send_inflight = false;
        if result < 0 {
            if -result != libc::ECANCELED {
                let error = io::Error::from_raw_os_error(-result);
                tracing::debug!(key, "send failed: {error}; closing connection");
            }
            return self.close_now(key);
        }
        conn.sent += result as usize;
        if conn.sent < conn.sending.len() {
            if conn.closing == Closing::Now {
                return self.maybe_release(key);
            }
            return self.submit_send(key); // partial send: the rest, in order
        }
        conn.sending.clear();
        conn.sent = 0;
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        } else if conn.held == Some(Until::Drained) && conn.closing == Closing::No {
            let next = self
                .service
                .resume(&mut conn.handler, key, &mut conn.pending);
            self.after_service(key, next)?;
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if !conn.has_output() {
            // Idle: give the buffers back so an idle connection holds none.
            let sending = std::mem::take(&mut conn.sending);
            let pending = std::mem::take(&mut conn.pending);
            self.spare.give(sending);
            self.spare.give(pending);
        }
        self.maybe_release(key)
    }

    // ---- closing ----

    fn close_after_flush(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.connections[key];
        if conn.closing == Closing::No {
            conn.closing = Closing::AfterFlush;
        }
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        }
        self.maybe_release(key)
    }

    fn close_now(&mut self, key: usize) -> io::Result<()> {
        let send = self.connection_token(Op::Send, key);
        let conn = &mut self.connections[key];
        conn.closing = Closing::Now;
        let send_inflight = conn.send_inflight;
        self.stop_reading(key)?;
        if send_inflight {
            let entry = opcode::AsyncCancel::new(send.0)
                .build()
                .user_data(Token::new(Op::Cancel, key).0);
            self.push(entry)?;
        }
        self.maybe_release(key)
    }

    /// Moves a closing connection along: once its replies are sent it shuts down its side and
    /// lingers; once nothing of it is in flight its slot is freed and the socket closed.
    fn maybe_release(&mut self, key: usize) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if conn.closing == Closing::AfterFlush && !conn.has_output() {
            if conn.peer_closed {
                conn.closing = Closing::Now;
            } else if socket_is_quiet(conn.fd.as_raw_fd()) {
                // Every reply delivered and acknowledged, no unread input: a close now cannot
                // make the kernel throw a reply away, so there is nothing to linger for (an
                // idle client at shutdown is closed at once).
                conn.closing = Closing::Now;
                self.stop_reading(key)?;
            } else {
                // FIN after the last reply; then wait for the peer's.
                // SAFETY: shutting down a socket we own; failure only means it is already dead.
                unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR) };
                conn.closing = Closing::Lingering;
                let deadline = std::time::Instant::now() + LINGER;
                conn.linger_deadline = Some(deadline);
                let arm = !conn.recv_armed;
                self.lingering.push((key, deadline));
                if arm {
                    self.arm_recv(key)?;
                }
                if !self.linger_timer_armed {
                    self.linger_timer_armed = true;
                    self.arm_timer(TIMER_LINGER, LINGER)?;
                }
                return Ok(());
            }
        }
        let conn = &self.connections[key];
        let done = match conn.closing {
            Closing::No | Closing::AfterFlush => false,
            Closing::Lingering | Closing::Now => !conn.send_inflight && !conn.recv_armed,
        };
        if done {
            let mut conn = self.connections.remove(key);
            tracing::debug!(key, fd = conn.fd.as_raw_fd(), "connection closed");
            self.service.close(&mut conn.handler, key);
            // Queued output is dropped with the connection: the pool empties the buffers.
            self.spare.give(conn.pending);
            self.spare.give(conn.sending);
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            // Dropping `conn.fd` closes the socket.
        }
        Ok(())
    }

    /// Closes lingering connections whose peers did not close in time.
    fn expire_lingering(&mut self) -> io::Result<()> {
        let now = std::time::Instant::now();
        let lingering = std::mem::take(&mut self.lingering);
        let mut next = None::<std::time::Instant>;
        for (key, deadline) in lingering {
            // The slot may have been freed and reused since: match the deadline too.
            let still = self
                .connections
                .get(key)
                .is_some_and(|c| c.linger_deadline == Some(deadline));
            if !still {
                continue;
            }
            if deadline <= now {
                self.close_now(key)?;
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                self.lingering.push((key, deadline));
            }
        }
        self.linger_timer_armed = false;
        if let Some(next) = next {
            self.linger_timer_armed = true;
            self.arm_timer(TIMER_LINGER, next.saturating_duration_since(now))?;
        }
        Ok(())
    }

    // ---- waking, timers, shutdown ----

    fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(Token::new(Op::Wake, 0).0);
        self.wake_armed = true;
        self.push(entry)
    }

    fn on_wake(&mut self, result: i32) -> io::Result<()> {
        self.wake_armed = false;
        if result < 0 && -result != libc::ECANCELED {
            let error = io::Error::from_raw_os_error(-result);
            return Err(io::Error::new(
                error.kind(),
                format!("reading the wake-up eventfd failed: {error}"),
            ));
        }
        // Requests waiting for a durable ceiling or a durable lease get another try.
        let parked = std::mem::take(&mut self.parked);
        for token in parked {
            if !self.is_current(token) {
                continue;
            }
            let key = token.key();
            let conn = &mut self.connections[key];
            if conn.held != Some(Until::Woken) || conn.closing != Closing::No {
                continue;
            }
            if conn.pending.capacity() == 0 {
                conn.pending = self.spare.take();
            }
            let next = self
                .service
                .resume(&mut conn.handler, key, &mut conn.pending);
            self.after_service(key, next)?;
        }
        if self.shared.shutdown.load(Ordering::Acquire) {
            self.begin_drain()?;
        }
        if !self.draining {
            self.arm_wake()?;
        }
        Ok(())
    }

    fn begin_drain(&mut self) -> io::Result<()> {
        if self.draining {
            return Ok(());
        }
        self.draining = true;
        tracing::debug!(
            loop_index = self.index,
            connections = self.connections.len(),
            "shutting down: no new connections; answering what was received"
        );
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(Token::new(Op::Accept, LISTENER_MAIN).0)
                .build()
                .user_data(Token::new(Op::Cancel, 0).0);
            self.push(entry)?;
        }
        let (stream_accept, stream_timer) = self
            .streams
            .as_ref()
            .map_or((false, false), |s| (s.accept_armed, s.timer_due.is_some()));
        if stream_accept {
            let entry = opcode::AsyncCancel::new(Token::new(Op::Accept, LISTENER_STREAM).0)
                .build()
                .user_data(Token::new(Op::Cancel, 0).0);
            self.push(entry)?;
        }
        if stream_timer {
            let entry = opcode::TimeoutRemove::new(Token::new(Op::Timer, TIMER_STREAM).0)
                .build()
                .user_data(Token::new(Op::Cancel, 0).0);
            self.push(entry)?;
        }
        if self.wake_armed {
            let entry = opcode::AsyncCancel::new(Token::new(Op::Wake, 0).0)
                .build()
                .user_data(Token::new(Op::Cancel, 0).0);
            self.push(entry)?;
        }
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close_after_flush(key)?;
        }
        if !self.connections.is_empty() {
            self.arm_timer(TIMER_SHUTDOWN, SHUTDOWN_GRACE)?;
        }
        Ok(())
    }

    fn arm_timer(&mut self, which: usize, after: Duration) -> io::Result<()> {
        *self.timer = types::Timespec::from(after);
        // The kernel copies the timespec when it takes the submission.
        let entry = opcode::Timeout::new(&*self.timer)
            .build()
            .user_data(Token::new(Op::Timer, which).0);
        self.push(entry)?;
        self.ring.submit()?;
        Ok(())
    }

    fn on_timer(&mut self, which: usize) -> io::Result<()> {
        match which {
            TIMER_SHUTDOWN => {
                if !self.connections.is_empty() {
                    tracing::warn!(
                        loop_index = self.index,
                        connections = self.connections.len(),
                        "shutdown grace period over; closing connections that still have unsent replies"
                    );
                    let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
                    for key in keys {
                        self.close_now(key)?;
                    }
                }
                Ok(())
            }
            TIMER_LINGER => self.expire_lingering(),
            TIMER_STREAM => {
                if let Some(streams) = &mut self.streams {
                    streams.timer_due = None;
                }
                self.stream_tick()
            }
            _ => {
                if !self.accept_armed && !self.draining {
                    self.arm_accept()?;
                }
                Ok(())
            }
        }
    }
}

// ---- the stream protocol (loop 0) ----

impl EventLoop {
    fn arm_stream_accept(&mut self) -> io::Result<()> {
        let Some(streams) = &mut self.streams else {
            return Ok(());
        };
        let entry = opcode::AcceptMulti::new(types::Fd(streams.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(Op::Accept, LISTENER_STREAM).0);
        streams.accept_armed = true;
        self.push(entry)
    }

    fn on_stream_accept(&mut self, result: i32, flags: u32) -> io::Result<()> {
        let Some(streams) = &mut self.streams else {
            return Ok(());
        };
        if !cqueue::more(flags) {
            streams.accept_armed = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.admit(fd, Kind::Stream)?;
        } else if -result != libc::ECANCELED {
            let error = io::Error::from_raw_os_error(-result);
            tracing::warn!("accepting a stream connection failed: {error}");
            if matches!(
                -result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                // Re-armed by the next stream tick rather than spinning on the error now.
                return self.schedule_stream_tick();
            }
        }
        if self.streams.as_ref().is_some_and(|s| !s.accept_armed) && !self.draining {
            self.arm_stream_accept()?;
        }
        Ok(())
    }

    /// After input the service flagged: close the connections it let go, and make sure a
    /// tick comes.
    fn housekeeping(&mut self) -> io::Result<()> {
        self.close_released()?;
        self.schedule_stream_tick()
    }

    /// Appends what the service has due for connection `key` after a tick.
    fn fill(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.closing != Closing::No {
            return;
        }
        let before = conn.pending.len();
        self.service.fill(&mut conn.handler, key, &mut conn.pending);
        if conn.pending.len() > before {
            self.dirty.push(key);
        }
    }

    /// Closes the connections the service no longer serves (a stream taken over by a newer
    /// `CON`, or expired).
    fn close_released(&mut self) -> io::Result<()> {
        for key in self.service.released() {
            if self.connections.contains(key) {
                tracing::debug!(key, "stream connection released by the hub; closing it");
                self.close_now(key)?;
            }
        }
        Ok(())
    }

    /// The stream timer: numbers for streams waiting for them, expiry, and the next sends.
    fn stream_tick(&mut self) -> io::Result<()> {
        if self.streams.is_none() || self.draining {
            return Ok(());
        }
        for key in self.service.tick() {
            self.fill(key);
        }
        self.close_released()?;
        if self.streams.as_ref().is_some_and(|s| !s.accept_armed) && !self.draining {
            self.arm_stream_accept()?;
        }
        self.schedule_stream_tick()
    }

    /// Arms the stream timer for when the hub next has something due, or brings an armed
    /// one forward.
    fn schedule_stream_tick(&mut self) -> io::Result<()> {
        if self.streams.is_none() || self.draining {
            return Ok(());
        }
        let Some(after) = self.service.next_tick() else {
            return Ok(());
        };
        let due = std::time::Instant::now() + after;
        let Some(streams) = &mut self.streams else {
            return Ok(());
        };
        match streams.timer_due {
            Some(armed) if armed <= due => Ok(()),
            Some(_) => {
                streams.timer_due = Some(due);
                *self.timer = types::Timespec::from(after);
                let entry =
                    opcode::TimeoutUpdate::new(Token::new(Op::Timer, TIMER_STREAM).0, &*self.timer)
                        .build()
                        .user_data(Token::new(Op::Cancel, 0).0);
                self.push(entry)?;
                // The kernel reads the timespec when it takes the submission.
                self.ring.submit()?;
                Ok(())
            }
            None => {
                streams.timer_due = Some(due);
                self.arm_timer(TIMER_STREAM, after)
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        // Closing the listener lets queued, unaccepted connections be reset promptly.
        self.listener.take();
    }
}

/// Whether a TCP socket has nothing in flight: every byte sent has been acknowledged and
/// nothing received waits to be read.
fn socket_is_quiet(fd: RawFd) -> bool {
    let (mut unacknowledged, mut unread): (libc::c_int, libc::c_int) = (0, 0);
    // SAFETY: both ioctls write one int into the variable we pass.
    let ok = unsafe {
        libc::ioctl(fd, libc::TIOCOUTQ, &mut unacknowledged) == 0
            && libc::ioctl(fd, libc::FIONREAD, &mut unread) == 0
    };
    ok && unacknowledged == 0 && unread == 0
}
