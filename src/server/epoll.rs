//! The epoll event loop, for hosts where io_uring is blocked (container seccomp profiles,
//! `kernel.io_uring_disabled`, gVisor, old kernels): one per core like the io_uring loop,
//! driving the same [`Service`] through the same contract (see `handler.rs`), with readiness
//! instead of completions.
//!
//! Each turn: wait for readiness (`epoll_wait` through mio, edge-triggered) → accept, note
//! which connections became readable or writable → read every readable connection until the
//! kernel has no more (or its share of the turn is used up), feeding each read to the service
//! → run due timers → one write per connection holding replies → repeat.
//!
//! What this costs compared with io_uring: a system call per read and per write (io_uring
//! batches a whole turn into one `io_uring_enter`), plus the readiness wait itself.
//!
//! Reads go into one loop-wide buffer: the service keeps whatever part of a request it has
//! not answered (a session's held input), so a per-connection input buffer would only copy
//! the same bytes twice. Edge-triggered readiness means a connection whose reading stops
//! (the service holds too much) remembers that the kernel may still have input for it, and
//! is read again as soon as the service lets it.
//!
//! (Over 600 lines: one event loop whose turn, connection states and shutdown only hold
//! together; it is tested by running the whole integration suite on it, `SEQD_TEST_IO=epoll`.)

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::Shared;
use super::accept::{ACCEPT_RETRY, AcceptPolicy, AcceptStep, EPISODE_QUIET};
use super::failure::Failure;
use super::handler::{Kind, Next, Service, Until};
use super::linger::{LINGER, SHUTDOWN_GRACE, socket_is_quiet};
use super::output::{OutputAccount, Verdict, largest_offenders};
use super::pool::OutputPool;
use super::timers::{Timer, TimerTable};
use super::uring::LoopSettings;
use crate::service::counters;

/// What the start-up log says of this backend.
pub(super) const DESCRIPTION: &str =
    "edge-triggered readiness, one read and one write system call per connection per turn";

/// Readiness events taken per wait.
const EVENTS: usize = 1024;
/// The loop-wide read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Reads one connection gets per turn before the others have their turn.
const READS_PER_TURN: usize = 4;

/// Tokens that belong to no connection (connections use their slab key, far below): the
/// wake-up eventfd, and listener `i` at `FIRST_LISTENER + i`.
const WAKE: Token = Token(usize::MAX);
const FIRST_LISTENER: usize = usize::MAX - 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Send what is queued, then linger.
    AfterFlush,
    /// Everything is sent and our side shut down (FIN); reading and discarding until the peer
    /// closes or the deadline passes. Closing a socket with unread input makes the kernel
    /// reset the connection and throw away replies not yet delivered — often the very error
    /// reply that explains the close.
    Lingering(Instant),
}

struct Connection<C> {
    stream: TcpStream,
    /// The port it came in on: the budget it counts against.
    kind: Kind,
    handler: C,
    /// Replies not yet written; the first `written` bytes of it already are.
    pending: Vec<u8>,
    written: usize,
    /// The kernel may have input we have not read (edge-triggered: no new event comes for it).
    readable: bool,
    /// Queued in the loop's `to_read` list.
    queued_read: bool,
    /// The last write did not fill the socket's buffer.
    writable: bool,
    /// Reading stopped because the service holds too much input.
    reading_stopped: bool,
    /// The peer shut down its side (we read EOF).
    peer_closed: bool,
    /// What a held connection waits for.
    held: Option<Until>,
    closing: Closing,
    peer: Option<std::net::SocketAddr>,
    /// Its held bytes as last reported to the loop's output account.
    accounted: usize,
}

impl<C> Connection<C> {
    fn has_output(&self) -> bool {
        self.written < self.pending.len()
    }

    /// Reply bytes held for it that the kernel has not taken.
    fn queued(&self) -> usize {
        self.pending.len() - self.written
    }

    /// The memory its output holds: the whole buffer, written prefix included (see
    /// `server/output.rs`).
    fn output_held(&self) -> usize {
        self.pending.capacity()
    }

    fn wants_reading(&self) -> bool {
        !self.peer_closed
            && match self.closing {
                Closing::No => !self.reading_stopped,
                Closing::AfterFlush | Closing::Lingering(_) => true,
            }
    }
}

struct Listener {
    socket: TcpListener,
    kind: Kind,
    /// What a connection refused over the limit is sent.
    refusal: Option<Box<[u8]>>,
}

pub(super) struct EventLoop<S: Service> {
    poll: Poll,
    events: Events,
    index: usize,
    /// Indexed by their token's offset from `FIRST_LISTENER`.
    listeners: Vec<Listener>,
    accept: AcceptPolicy,
    wake_fd: RawFd,
    connections: Slab<Connection<S::Conn>>,
    service: S,
    shared: Arc<Shared>,
    read_buffer: Box<[u8]>,
    /// Connections with input to read this turn.
    to_read: Vec<usize>,
    /// Connections that may have replies to write this turn.
    dirty: Vec<usize>,
    /// Sessions waiting for a durable ceiling; retried when the loop is woken.
    parked: Vec<usize>,
    /// Connections lingering after close, with their deadlines.
    lingering: Vec<(usize, Instant)>,
    spare: OutputPool,
    /// Its connections' unsent replies, against the output limits.
    output: OutputAccount,
    timers: TimerTable,
    draining: bool,
    busy_poll: Duration,
}

impl<S: Service> EventLoop<S> {
    pub fn new(settings: LoopSettings, service: S, shared: Arc<Shared>) -> io::Result<Self> {
        let poll = Poll::new().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create an epoll instance: {e}"))
        })?;
        let mut listeners = Vec::with_capacity(settings.listeners.len());
        for (index, (socket, kind)) in settings.listeners.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let mut socket = TcpListener::from_std(socket);
            poll.registry().register(
                &mut socket,
                Token(FIRST_LISTENER + index),
                Interest::READABLE,
            )?;
            listeners.push(Listener {
                socket,
                kind,
                refusal: service.refusal(kind).map(Box::from),
            });
        }
        // The eventfd is this loop's alone; a non-blocking one cannot stall the loop on a
        // spurious readiness.
        set_nonblocking(settings.wake_fd)?;
        poll.registry()
            .register(&mut SourceFd(&settings.wake_fd), WAKE, Interest::READABLE)?;
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(EVENTS),
            index: settings.index,
            listeners,
            accept: AcceptPolicy::default(),
            wake_fd: settings.wake_fd,
            connections: Slab::with_capacity(1024),
            service,
            shared,
            read_buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            to_read: Vec::with_capacity(1024),
            dirty: Vec::with_capacity(1024),
            parked: Vec::new(),
            lingering: Vec::new(),
            spare: OutputPool::for_event_loop(),
            output: OutputAccount::new(settings.output, settings.loops),
            timers: TimerTable::default(),
            draining: false,
            busy_poll: settings.busy_poll,
        })
    }

    pub fn run(mut self) -> io::Result<()> {
        self.schedule_service_tick();
        // The shutdown may have been requested before the eventfd was registered.
        if self.shared.shutdown.load(Ordering::Acquire) {
            self.begin_drain()?;
        }
        // Until then, an idle loop polls without sleeping (`--busy-poll`).
        let mut spin_until: Option<Instant> = None;
        loop {
            self.send_replies()?;
            if self.draining && self.connections.is_empty() {
                tracing::debug!(loop_index = self.index, "event loop stopped");
                return Ok(());
            }
            let timeout = self.timeout(spin_until);
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("epoll_wait failed: {e}")));
                }
            }
            let had_events = !self.events.is_empty() || !self.to_read.is_empty();
            self.dispatch_events()?;
            self.read_ready()?;
            self.run_timers()?;
            self.enforce_output_cap();
            if had_events
                && !self.busy_poll.is_zero()
                && !self.draining
                && !self.shared.busy_poll_off.load(Ordering::Relaxed)
            {
                spin_until = Some(Instant::now() + self.busy_poll);
            }
        }
    }

    /// How long the next wait may sleep: not at all while work is queued or the loop spins,
    /// otherwise until the next timer.
    fn timeout(&self, spin_until: Option<Instant>) -> Option<Duration> {
        if !self.to_read.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        if spin_until.is_some_and(|until| now < until) {
            return Some(Duration::ZERO);
        }
        // Rounded up, so the timer is due when the wait ends.
        self.timers
            .next_due()
            .map(|(_, at)| at.saturating_duration_since(now) + Duration::from_micros(500))
    }

    fn dispatch_events(&mut self) -> io::Result<()> {
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let result = self.dispatch(&events);
        events.clear();
        self.events = events;
        result
    }

    fn dispatch(&mut self, events: &Events) -> io::Result<()> {
        for event in events.iter() {
            match event.token() {
                WAKE => self.on_wake()?,
                Token(token) if token >= FIRST_LISTENER => self.accept(token - FIRST_LISTENER)?,
                Token(key) => {
                    let Some(conn) = self.connections.get_mut(key) else {
                        continue; // closed earlier in this turn
                    };
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        conn.readable = true;
                        if !conn.queued_read && conn.wants_reading() {
                            conn.queued_read = true;
                            self.to_read.push(key);
                        }
                    }
                    if event.is_writable() || event.is_error() {
                        conn.writable = true;
                        if conn.has_output() {
                            self.dirty.push(key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    // ---- accepting ----

    /// Accepts what listener `index` has queued (edge-triggered: all of it), unless
    /// shutting down or backing off.
    fn accept(&mut self, index: usize) -> io::Result<()> {
        loop {
            if self.draining || !self.accept.may_arm() {
                return Ok(());
            }
            let Some(listener) = self.listeners.get(index) else {
                return Ok(());
            };
            let kind = listener.kind;
            let accepted = match listener.socket.accept() {
                Ok((stream, _peer)) => Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(Failure::of(e.raw_os_error().unwrap_or(libc::EIO))),
            };
            let outcome = accepted.as_ref().map(|_| ()).map_err(|f| *f);
            match self.accept.on_result(outcome, Instant::now()) {
                AcceptStep::Admit => {
                    if let Ok(stream) = accepted {
                        self.admit(stream, index)?;
                    }
                }
                AcceptStep::Ignore => {}
                AcceptStep::Warn => {
                    if let Err(failure) = accepted {
                        tracing::warn!(
                            loop_index = self.index,
                            ?kind,
                            "accept failed: {}",
                            failure.error()
                        );
                    }
                    // Not again this turn: an error that repeats would repeat at once.
                    return Ok(());
                }
                AcceptStep::BackOff { warn } => {
                    if warn && let Err(failure) = accepted {
                        tracing::warn!(
                            loop_index = self.index,
                            ?kind,
                            "cannot accept connections: {}; retrying every {ACCEPT_RETRY:?}, \
                             warning again only after {EPISODE_QUIET:?} without this failure \
                             (raise `ulimit -n` or lower --max-connections)",
                            failure.error()
                        );
                    }
                    // Edge-triggered: the connections still queued raise no new event, so
                    // the retry timer accepts them.
                    self.timers
                        .schedule(Timer::AcceptRetry, Instant::now() + ACCEPT_RETRY);
                    return Ok(());
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, listener: usize) -> io::Result<()> {
        let Some(Listener { kind, refusal, .. }) = self.listeners.get(listener) else {
            return Ok(());
        };
        let kind = *kind;
        counters::CONNECTIONS_RECEIVED.fetch_add(1, Ordering::Relaxed);
        let budget = self.shared.budget(kind);
        if !budget.take() {
            counters::REJECTED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                limit = budget.limit,
                ?kind,
                "connection refused: {} reached",
                budget.flag
            );
            if let Some(refusal) = refusal {
                // A fresh socket's buffer takes the short line; should it not, the client
                // sees the close alone. Dropping the stream closes it.
                let _ = stream.write(refusal);
            }
            return Ok(());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                loop_index = self.index,
                peer = ?stream.peer_addr().ok(),
                fd = stream.as_raw_fd(),
                "connection accepted"
            );
        }
        let peer = stream.peer_addr().ok();
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            budget.give_back();
            tracing::warn!(loop_index = self.index, "cannot watch a connection: {e}");
            return Ok(());
        }
        entry.insert(Connection {
            stream,
            kind,
            handler: self.service.open(kind, key, peer.map(|addr| addr.ip())),
            pending: Vec::new(),
            written: 0,
            // Input may have arrived before registration; edge-triggered epoll reports it
            // anyway, but reading once costs less than reasoning about it.
            readable: true,
            queued_read: true,
            writable: true,
            reading_stopped: false,
            peer_closed: false,
            held: None,
            closing: Closing::No,
            peer,
            accounted: 0,
        });
        self.to_read.push(key);
        Ok(())
    }

    // ---- reading ----

    /// Reads every connection queued for reading, each up to its share of the turn; those
    /// with input left stay queued for the next turn.
    fn read_ready(&mut self) -> io::Result<()> {
        let queued = std::mem::take(&mut self.to_read);
        for &key in &queued {
            if let Some(conn) = self.connections.get_mut(key) {
                conn.queued_read = false;
                self.read_connection(key)?;
            }
        }
        if self.to_read.is_empty() {
            let mut queued = queued;
            queued.clear();
            self.to_read = queued;
        }
        Ok(())
    }

    fn read_connection(&mut self, key: usize) -> io::Result<()> {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.connections.get_mut(key) else {
                return Ok(());
            };
            if !conn.readable || !conn.wants_reading() {
                return Ok(());
            }
            match conn.stream.read(&mut self.read_buffer) {
                Ok(0) => {
                    conn.readable = false;
                    return self.on_end_of_input(key);
                }
                Ok(n) => {
                    if conn.closing == Closing::No {
                        if conn.pending.capacity() == 0 {
                            conn.pending = self.spare.take();
                        }
                        let next = self.service.receive(
                            &mut conn.handler,
                            key,
                            &self.read_buffer[..n],
                            &mut conn.pending,
                        );
                        self.after_service(key, next)?;
                        if self.service.take_housekeeping() {
                            self.housekeeping()?;
                        }
                    } // closing: input is discarded
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(key, "receive failed: {e}; closing connection");
                    conn.peer_closed = true;
                    self.release(key);
                    return Ok(());
                }
            }
        }
        self.queue_read(key);
        Ok(())
    }

    /// Queues `key` for reading if the kernel may hold input for it and it wants some.
    fn queue_read(&mut self, key: usize) {
        if let Some(conn) = self.connections.get_mut(key)
            && conn.readable
            && !conn.queued_read
            && conn.wants_reading()
        {
            conn.queued_read = true;
            self.to_read.push(key);
        }
    }

    fn on_end_of_input(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.connections[key];
        conn.peer_closed = true;
        if conn.closing == Closing::No {
            tracing::debug!(key, "peer closed its side");
            // A held session still holds requests: it answers them first; the close follows
            // when the session is done (see `after_service`).
            let next = self
                .service
                .end_of_input(&mut conn.handler, key, &mut conn.pending);
            if conn.held.is_none() {
                return self.after_service(key, next);
            }
            return Ok(());
        }
        self.maybe_release(key)
    }

    /// Reports what connection `key` holds (its output buffer, and the input the service
    /// keeps for it) to the output account; closes it at once when its unsent replies are
    /// over `--client-output-limit` (then returns true).
    fn account_output(&mut self, key: usize) -> bool {
        let conn = &mut self.connections[key];
        let held = conn.output_held() + self.service.held_input(&conn.handler);
        let queued = conn.queued();
        match self
            .output
            .report(&mut conn.accounted, held, queued, conn.peer)
        {
            Verdict::Within => false,
            Verdict::OverLimit => {
                self.release(key);
                true
            }
        }
    }

    /// Closes this loop's largest offenders when all clients' output buffers are over
    /// `--maxmemory-clients` (once per turn).
    fn enforce_output_cap(&mut self) {
        let excess = self.output.publish();
        if excess == 0 {
            return;
        }
        let held = self
            .connections
            .iter()
            .map(|(key, conn)| (key, conn.accounted))
            .collect();
        for key in largest_offenders(held, excess) {
            let conn = &self.connections[key];
            self.output.evicted(conn.accounted, conn.peer);
            self.release(key);
        }
    }

    /// Acts on what the service asked for after a call.
    fn after_service(&mut self, key: usize, next: Next) -> io::Result<()> {
        if self.account_output(key) {
            return Ok(());
        }
        let conn = &mut self.connections[key];
        if conn.has_output() {
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
                    self.queue_read(key);
                }
                Ok(())
            }
            Next::Hold {
                until,
                keep_reading,
            } => {
                if until == Until::Woken {
                    self.parked.push(key);
                }
                if !keep_reading && !conn.reading_stopped {
                    tracing::debug!(key, ?until, "pausing reads until the connection catches up");
                    conn.reading_stopped = true;
                }
                Ok(())
            }
            Next::Close => self.close_after_flush(key),
        }
    }

    // ---- writing ----

    /// One write per connection holding replies.
    fn send_replies(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            self.write_connection(key)?;
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        Ok(())
    }

    fn write_connection(&mut self, key: usize) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if !conn.writable || !conn.has_output() {
            return Ok(());
        }
        match conn.stream.write(&conn.pending[conn.written..]) {
            Ok(n) => {
                conn.written += n;
                if conn.has_output() {
                    // The socket's buffer is full: the writable edge brings the rest.
                    conn.writable = false;
                    if conn.written >= conn.pending.len() / 2 {
                        // Drop what is sent once it is half the buffer, so a reader that
                        // never quite catches up holds at most twice its unsent bytes.
                        conn.pending.drain(..conn.written);
                        conn.written = 0;
                    }
                    self.account_output(key);
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.writable = false;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.dirty.push(key);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(key, "send failed: {e}; closing connection");
                self.release(key);
                return Ok(());
            }
        }
        conn.pending.clear();
        conn.written = 0;
        if self.account_output(key) {
            return Ok(());
        }
        let conn = &mut self.connections[key];
        if conn.held == Some(Until::Drained) && conn.closing == Closing::No {
            let next = self
                .service
                .resume(&mut conn.handler, key, &mut conn.pending);
            self.after_service(key, next)?;
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if !conn.has_output() {
            // Idle: give the buffer back so an idle connection holds none.
            let pending = std::mem::take(&mut conn.pending);
            self.spare.give(pending);
            self.account_output(key);
        }
        self.maybe_release(key)
    }

    // ---- closing ----

    fn close_after_flush(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.connections[key];
        if conn.closing == Closing::No {
            conn.closing = Closing::AfterFlush;
        }
        if conn.has_output() {
            self.dirty.push(key);
        }
        // Input is read (and discarded) while closing, whatever the service held.
        self.queue_read(key);
        self.maybe_release(key)
    }

    /// Moves a closing connection along: once its replies are written it shuts down its side
    /// and lingers; once the peer closed (or nothing can be lost) the connection is freed.
    fn maybe_release(&mut self, key: usize) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        match conn.closing {
            Closing::No => Ok(()),
            Closing::AfterFlush if conn.has_output() => Ok(()),
            Closing::AfterFlush => {
                if conn.peer_closed || socket_is_quiet(conn.stream.as_raw_fd()) {
                    // Every reply delivered and acknowledged, no unread input: a close now
                    // cannot make the kernel throw a reply away.
                    self.release(key);
                } else {
                    // FIN after the last reply; then wait for the peer's.
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    let deadline = Instant::now() + LINGER;
                    conn.closing = Closing::Lingering(deadline);
                    self.lingering.push((key, deadline));
                    self.timers.schedule(Timer::Linger, deadline);
                    self.queue_read(key);
                }
                Ok(())
            }
            Closing::Lingering(_) => {
                if conn.peer_closed {
                    self.release(key);
                }
                Ok(())
            }
        }
    }

    /// Frees the connection's slot at once; queued output is dropped with it.
    fn release(&mut self, key: usize) {
        if !self.connections.contains(key) {
            return;
        }
        let mut conn = self.connections.remove(key);
        tracing::debug!(key, fd = conn.stream.as_raw_fd(), "connection closed");
        self.output.forget(&mut conn.accounted);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.service.close(&mut conn.handler, key);
        self.spare.give(conn.pending);
        self.shared.budget(conn.kind).give_back();
        // Dropping `conn.stream` closes the socket.
    }

    // ---- waking, timers, shutdown ----

    fn on_wake(&mut self) -> io::Result<()> {
        let mut counter = [0u8; 8];
        // SAFETY: reading 8 bytes into a live buffer from the loop's eventfd. It is
        // non-blocking: a failure (EAGAIN) only means another read already reset it.
        unsafe { libc::read(self.wake_fd, counter.as_mut_ptr().cast(), counter.len()) };
        // Requests waiting for a durable ceiling or a durable lease get another try.
        let parked = std::mem::take(&mut self.parked);
        for key in parked {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
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
        Ok(())
    }

    fn begin_drain(&mut self) -> io::Result<()> {
        if self.draining {
            return Ok(());
        }
        self.draining = true;
        if let Some(seen) = self.shared.draining.get(self.index) {
            seen.store(true, Ordering::Release);
        }
        tracing::debug!(
            loop_index = self.index,
            connections = self.connections.len(),
            "shutting down: no new connections; answering what was received"
        );
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut listener.socket);
            super::linger::stop_listening(listener.socket.as_raw_fd());
        }
        self.timers.fired(Timer::ServiceTick);
        self.timers.fired(Timer::AcceptRetry);
        let abandon = self.shared.abandon.load(Ordering::Acquire);
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            if abandon {
                self.release(key);
            } else {
                self.close_after_flush(key)?;
            }
        }
        if !self.connections.is_empty() {
            self.timers
                .schedule(Timer::ShutdownGrace, Instant::now() + SHUTDOWN_GRACE);
        }
        Ok(())
    }

    /// Runs every timer that is due.
    fn run_timers(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some((timer, at)) = self.timers.next_due()
            && at <= now
        {
            self.timers.fired(timer);
            match timer {
                Timer::ShutdownGrace => {
                    if !self.connections.is_empty() {
                        tracing::warn!(
                            loop_index = self.index,
                            connections = self.connections.len(),
                            "shutdown grace period over; closing connections that still have unsent replies"
                        );
                        let keys: Vec<usize> =
                            self.connections.iter().map(|(key, _)| key).collect();
                        for key in keys {
                            self.release(key);
                        }
                    }
                }
                Timer::AcceptRetry => {
                    self.accept.retry_due();
                    for index in 0..self.listeners.len() {
                        self.accept(index)?;
                    }
                }
                Timer::Linger => self.expire_lingering(now),
                Timer::ServiceTick => self.service_tick()?,
            }
        }
        Ok(())
    }

    /// Closes lingering connections whose peers did not close in time.
    fn expire_lingering(&mut self, now: Instant) {
        let lingering = std::mem::take(&mut self.lingering);
        for (key, deadline) in lingering {
            // The slot may have been freed and reused since: match the deadline too.
            let still = self
                .connections
                .get(key)
                .is_some_and(|c| c.closing == Closing::Lingering(deadline));
            if !still {
                continue;
            }
            if deadline <= now {
                self.release(key);
            } else {
                self.lingering.push((key, deadline));
                self.timers.schedule(Timer::Linger, deadline);
            }
        }
    }

    // ---- the service's tick (the stream protocol, loop 0) ----

    /// After input the service flagged: close the connections it let go, and make sure a
    /// tick comes.
    fn housekeeping(&mut self) -> io::Result<()> {
        self.close_released();
        self.schedule_service_tick();
        Ok(())
    }

    /// Closes the connections the service no longer serves (a stream taken over by a newer
    /// `CON`, or expired).
    fn close_released(&mut self) {
        for key in self.service.released() {
            if self.connections.contains(key) {
                tracing::debug!(key, "stream connection released by the hub; closing it");
                self.release(key);
            }
        }
    }

    /// The service's periodic work (the stream protocol's numbers, expiry, next sends).
    fn service_tick(&mut self) -> io::Result<()> {
        if self.draining {
            return Ok(());
        }
        for key in self.service.tick() {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            if conn.closing != Closing::No {
                continue;
            }
            let before = conn.pending.len();
            self.service.fill(&mut conn.handler, key, &mut conn.pending);
            if conn.pending.len() > before {
                self.dirty.push(key);
                self.account_output(key);
            }
        }
        self.close_released();
        self.schedule_service_tick();
        Ok(())
    }

    /// Schedules the tick for when the service next has something due.
    fn schedule_service_tick(&mut self) {
        if self.draining {
            return;
        }
        if let Some(after) = self.service.next_tick() {
            self.timers
                .schedule(Timer::ServiceTick, Instant::now() + after);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the server owns for the whole life of this loop.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
