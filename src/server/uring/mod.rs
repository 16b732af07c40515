//! The io_uring backend: one event loop per core, single-threaded, sharing nothing but
//! [`Shared`]. It drives the service layer only through [`Service`] (see `handler.rs`), so it
//! holds no protocol or sequence logic.
//!
//! Each turn: submit what is queued and wait for at least one completion → handle every
//! completion (new connections, received bytes fed to the service, finished sends) → queue
//! one send per connection holding replies → repeat. Receives are multishot into a provided
//! buffer ring; accepts are multishot; nothing is allocated per request.
//!
//! The parts: [`token`] (what a completion answers: op, key, generation), [`lifecycle`] (a
//! connection's phase and in-flight operations), `connection.rs` (receiving, sending,
//! closing); accept policy, timers and errno mapping are backend-independent
//! (`server/accept.rs`, `server/timers.rs`, `server/failure.rs`). A connection's slot is only
//! freed once none of its operations can still complete, and a completion whose generation is
//! not its slot's current one is refused, so a token never reaches a stranger. Output buffers
//! are reused through an [`OutputPool`], which only ever hands out empty ones.

mod connection;
mod lifecycle;
mod token;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use self::connection::Connection;
use self::token::{Generations, Op, Token};
use super::Shared;
use super::accept::{ACCEPT_RETRY, AcceptPolicy, AcceptStep, EPISODE_QUIET};
use super::bufring::BufRing;
use super::failure::Failure;
use super::handler::{Kind, Service};
use super::linger::SHUTDOWN_GRACE;
use super::output::{OutputAccount, OutputLimits};
use super::pool::OutputPool;
use super::probe::{self, Features};
use super::timers::{Arming, Timer, TimerTable};

const SUBMISSION_ENTRIES: u32 = 4096;
const COMPLETION_ENTRIES: u32 = 16384;
const BUFFER_GROUP: u16 = 0;
/// Receive buffers: enough that every busy connection of a turn finds one (a connection
/// holds a buffer only while its completion is handled).
const RECV_BUFFERS: u16 = 1024;
const RECV_BUFFER_SIZE: u32 = 16 * 1024;

pub(super) struct LoopSettings {
    pub index: usize,
    /// The listeners this loop accepts on: the main port's, and on loop 0 perhaps the stream
    /// port's (one loop serves every stream, so one client id never has two writers).
    pub listeners: Vec<(std::net::TcpListener, Kind)>,
    pub wake_fd: RawFd,
    pub busy_poll: Duration,
    /// `--client-output-limit` and `--maxmemory-clients`.
    pub output: OutputLimits,
    /// Event loops in the process (each acts on its share of the output cap).
    pub loops: usize,
}

struct Listener {
    /// Taken when the loop is dropped, so queued connections are reset promptly.
    socket: Option<std::net::TcpListener>,
    kind: Kind,
    /// Its multishot accept is with the kernel.
    armed: bool,
    /// What a connection refused over the limit is sent; must outlive the ring (refusals in
    /// flight point into it).
    refusal: Option<Box<[u8]>>,
}

pub(super) struct EventLoop<S: Service> {
    // Field order is drop order: the ring goes first, so the kernel is done with every
    // buffer below before they are freed.
    ring: IoUring,
    buffers: BufRing,
    features: Features,
    busy_poll: Duration,
    index: usize,
    /// Indexed by the key of their accept tokens.
    listeners: Vec<Listener>,
    accept: AcceptPolicy,
    wake_fd: RawFd,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    timers: TimerTable,
    /// One timespec per timer, each read by the kernel when it takes that timer's submission.
    timespecs: Box<[types::Timespec; Timer::COUNT]>,
    refusals_inflight: usize,
    connections: Slab<Connection<S::Conn>>,
    service: S,
    shared: Arc<Shared>,
    /// Connections lingering after close, with their deadlines.
    lingering: Vec<(Token, Instant)>,
    /// Connections that may have replies to send this turn.
    dirty: Vec<usize>,
    /// Connections held until a wake-up (a durable ceiling or record); retried when woken.
    parked: Vec<Token>,
    spare: OutputPool,
    /// Its connections' unsent replies, against the output limits.
    output: OutputAccount,
    generations: Generations,
    draining: bool,
}

impl<S: Service> EventLoop<S> {
    pub fn new(settings: LoopSettings, service: S, shared: Arc<Shared>) -> io::Result<Self> {
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
        let listeners = settings
            .listeners
            .into_iter()
            .map(|(socket, kind)| Listener {
                socket: Some(socket),
                kind,
                armed: false,
                refusal: service.refusal(kind).map(Box::from),
            })
            .collect();
        Ok(EventLoop {
            ring,
            buffers,
            features,
            busy_poll: settings.busy_poll,
            index: settings.index,
            listeners,
            accept: AcceptPolicy::default(),
            wake_fd: settings.wake_fd,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            timers: TimerTable::default(),
            timespecs: Box::new([types::Timespec::new(); Timer::COUNT]),
            refusals_inflight: 0,
            connections: Slab::with_capacity(1024),
            service,
            shared,
            lingering: Vec::new(),
            dirty: Vec::with_capacity(1024),
            parked: Vec::new(),
            spare: OutputPool::for_event_loop(),
            output: OutputAccount::new(settings.output, settings.loops),
            generations: Generations::default(),
            draining: false,
        })
    }

    pub fn features(&self) -> Features {
        self.features
    }

    pub fn run(mut self) -> io::Result<()> {
        self.arm_accepts()?;
        self.schedule_service_tick()?;
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
            for &(user_data, result, flags) in &completions {
                self.complete(Token::from_user_data(user_data), result, flags)?;
            }
            self.enforce_output_cap()?;
        }
    }

    /// Submits what is queued and returns once completions are ready. With `--busy-poll`, it
    /// first watches the kernel's "work pending" flag in shared memory for a while (no system
    /// calls, no sleep), so a request arriving soon after the last one is picked up without
    /// the wake-up a sleeping thread needs; then it blocks.
    fn wait_for_completions(&mut self) -> io::Result<()> {
        if self.busy_poll.is_zero()
            || !self.features.work_pending_flag
            || self.draining
            || self.shared.busy_poll_off.load(Ordering::Relaxed)
        {
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
        let deadline = Instant::now() + self.busy_poll;
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(());
            }
            if self.ring.submission().taskrun() {
                return self.enter(0);
            }
            if Instant::now() >= deadline {
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
            && !self.listeners.iter().any(|l| l.armed)
            && !self.wake_armed
            && self.refusals_inflight == 0
    }

    /// Queues a submission. A full submission queue is not an error: it is flushed to the
    /// kernel and the entry queued again.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer a queued entry points to (wake_buf, a listener's refusal, a
            // connection's `sending`, a timer's timespec) stays valid and unmoved until that
            // entry's completion (a timespec: until the kernel has taken the submission).
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
                    user_data = token.user_data(),
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
            Some(Op::Timer) => match Timer::from_index(token.key()) {
                Some(timer) => self.on_timer(timer),
                None => {
                    tracing::error!(user_data = token.user_data(), "unknown timer; ignored");
                    Ok(())
                }
            },
            None => {
                tracing::error!(
                    user_data = token.user_data(),
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
            .is_some_and(|c| token.is_for(c.generation))
    }

    // ---- accepting: every listener alike ----

    /// Arms the accept of every listener that has none, unless shutting down or backing off.
    fn arm_accepts(&mut self) -> io::Result<()> {
        if self.draining || !self.accept.may_arm() {
            return Ok(());
        }
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            let Some(socket) = &listener.socket else {
                continue;
            };
            if listener.armed {
                continue;
            }
            let entry = opcode::AcceptMulti::new(types::Fd(socket.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(Token::of_loop(Op::Accept, index).user_data());
            listener.armed = true;
            self.push(entry)?;
        }
        Ok(())
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32) -> io::Result<()> {
        let Some(listener) = self.listeners.get_mut(index) else {
            tracing::error!(index, "accept completion for an unknown listener; ignored");
            return Ok(());
        };
        if !cqueue::more(flags) {
            listener.armed = false;
        }
        let kind = listener.kind;
        let outcome = Failure::check(result);
        match self.accept.on_result(outcome.map(|_| ()), Instant::now()) {
            AcceptStep::Admit => {
                // SAFETY: a successful accept returns a new descriptor that we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(result) };
                self.admit(fd, index)?;
            }
            AcceptStep::Ignore => {}
            // A draining loop's listeners were shut down: their accepts end with an error.
            AcceptStep::Warn if self.draining => {}
            AcceptStep::Warn => {
                if let Err(failure) = outcome {
                    tracing::warn!(
                        loop_index = self.index,
                        ?kind,
                        "accept failed: {}",
                        failure.error()
                    );
                }
            }
            AcceptStep::BackOff { warn } => {
                if warn && let Err(failure) = outcome {
                    tracing::warn!(
                        loop_index = self.index,
                        ?kind,
                        "cannot accept connections: {}; retrying every {ACCEPT_RETRY:?}, \
                         warning again only after {EPISODE_QUIET:?} without this failure \
                         (raise `ulimit -n` or lower --max-connections)",
                        failure.error()
                    );
                }
                self.schedule(Timer::AcceptRetry, ACCEPT_RETRY)?;
            }
        }
        self.arm_accepts()
    }

    // ---- waking, timers, shutdown ----

    fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(Token::of_loop(Op::Wake, 0).user_data());
        self.wake_armed = true;
        self.push(entry)
    }

    fn on_wake(&mut self, result: i32) -> io::Result<()> {
        self.wake_armed = false;
        if let Err(failure) = Failure::check(result)
            && failure != Failure::Cancelled
        {
            let error = failure.error();
            return Err(io::Error::new(
                error.kind(),
                format!("reading the wake-up eventfd failed: {error}"),
            ));
        }
        self.resume_parked()?;
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
        if let Some(seen) = self.shared.draining.get(self.index) {
            seen.store(true, Ordering::Release);
        }
        tracing::debug!(
            loop_index = self.index,
            connections = self.connections.len(),
            "shutting down: no new connections; answering what was received"
        );
        let cancel = Token::of_loop(Op::Cancel, 0).user_data();
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                let accept = Token::of_loop(Op::Accept, index).user_data();
                self.push(opcode::AsyncCancel::new(accept).build().user_data(cancel))?;
            }
            if let Some(socket) = &self.listeners[index].socket {
                super::linger::stop_listening(socket.as_raw_fd());
            }
        }
        if self.timers.is_armed(Timer::ServiceTick) {
            let tick = Token::of_loop(Op::Timer, Timer::ServiceTick.index()).user_data();
            self.push(opcode::TimeoutRemove::new(tick).build().user_data(cancel))?;
        }
        if self.wake_armed {
            let wake = Token::of_loop(Op::Wake, 0).user_data();
            self.push(opcode::AsyncCancel::new(wake).build().user_data(cancel))?;
        }
        let abandon = self.shared.abandon.load(Ordering::Acquire);
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            if abandon {
                self.close_now(key)?;
            } else {
                self.close_after_flush(key)?;
            }
        }
        if !self.connections.is_empty() {
            self.schedule(Timer::ShutdownGrace, SHUTDOWN_GRACE)?;
        }
        Ok(())
    }

    /// Makes `timer` fire within `after`: arms it, brings it forward, or leaves it when it
    /// fires sooner anyway.
    fn schedule(&mut self, timer: Timer, after: Duration) -> io::Result<()> {
        let arming = self.timers.schedule(timer, Instant::now() + after);
        if arming == Arming::Keep {
            return Ok(());
        }
        let timespec = &mut self.timespecs[timer.index()];
        *timespec = types::Timespec::from(after);
        let token = Token::of_loop(Op::Timer, timer.index()).user_data();
        let entry = match arming {
            Arming::BringForward => opcode::TimeoutUpdate::new(token, &*timespec)
                .build()
                .user_data(Token::of_loop(Op::Cancel, 0).user_data()),
            _ => opcode::Timeout::new(&*timespec).build().user_data(token),
        };
        self.push(entry)
    }

    fn on_timer(&mut self, timer: Timer) -> io::Result<()> {
        self.timers.fired(timer);
        match timer {
            Timer::ShutdownGrace => {
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
            Timer::Linger => self.expire_lingering(),
            Timer::ServiceTick => self.service_tick(),
            Timer::AcceptRetry => {
                self.accept.retry_due();
                self.arm_accepts()
            }
        }
    }

    /// The service's periodic work (the stream protocol's numbers, expiry, next sends).
    fn service_tick(&mut self) -> io::Result<()> {
        if self.draining {
            return Ok(());
        }
        for key in self.service.tick() {
            self.fill(key)?;
        }
        self.close_released()?;
        self.schedule_service_tick()
    }

    /// Arms the tick for when the service next has something due.
    fn schedule_service_tick(&mut self) -> io::Result<()> {
        if self.draining {
            return Ok(());
        }
        match self.service.next_tick() {
            Some(after) => self.schedule(Timer::ServiceTick, after),
            None => Ok(()),
        }
    }

    /// After input the service flagged: close the connections it let go, and make sure a
    /// tick comes.
    fn housekeeping(&mut self) -> io::Result<()> {
        self.close_released()?;
        self.schedule_service_tick()
    }
}

impl<S: Service> Drop for EventLoop<S> {
    fn drop(&mut self) {
        // Closing the listeners lets queued, unaccepted connections be reset promptly.
        for listener in &mut self.listeners {
            listener.socket.take();
        }
    }
}
