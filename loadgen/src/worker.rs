//! One load-generating thread: a mio (epoll) loop driving many non-blocking connections.
//!
//! This is the hot path, written by hand because it is what the measurement rests on: per
//! loop turn one `epoll_wait`, then per ready connection one `read` of every reply that
//! arrived (decoded in place in a fixed buffer) and one `write` of every request it may send
//! now (copied from a prepared template into a preallocated buffer). No allocation, lock or
//! syscall per request; the clock is read twice per turn, not per request.
//!
//! Closed loop: each connection keeps `pipeline` requests in flight, topping up after every
//! read. Open loop: each connection sends every request whose planned time has come (at most
//! `pipeline` in flight), and latency is measured from the planned time (coordinated-omission
//! correction, as wrk2 does) as well as from the actual send (the service time).
//!
//! Given several addresses (the nodes of a seqd cluster), each connection follows the leader:
//! on a `NOTLEADER host:port` refusal it reconnects to that address at once, on `NOTLEADER
//! unknown`, `UNAVAILABLE` or a dropped connection to the next address after a short pause
//! (non-blocking connects, so the other connections keep going). What was in flight on the
//! connection left behind gets no number, so none is ever counted twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use serde::{Deserialize, Serialize};

use crate::clock::{Timer, now_ns, thread_cpu_ns};
use crate::schedule::{Schedule, quota_of_connection};
use crate::target::{Outcome, Parsed, Protocol};
use crate::tls::{Stream, TlsTarget};
use crate::verify::StreamLog;

/// Largest value the latency histograms track (one hour, in nanoseconds); larger values are
/// clamped to it.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant digits of every histogram.
pub const SIGFIG: u8 = 3;
const RECEIVE_BUFFER: usize = 64 * 1024;
const TIMER: Token = Token(usize::MAX);
const SECOND: u64 = 1_000_000_000;
/// Following a leader: the pause before trying the next address after a refusal that names
/// no leader or a dropped connection (a redirect to a named leader goes at once).
const RETRY_PAUSE_NS: u64 = 25_000_000;
/// No reconnect is scheduled for the connection.
const NOT_PENDING: u64 = u64::MAX;

pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).unwrap_or_else(|_| unreachable!())
}

/// What every worker of a run shares.
pub struct Plan {
    /// The server, or every node of a cluster whose leader the connections follow (the
    /// first is tried first).
    pub addrs: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub connections: usize,
    pub pipeline: usize,
    /// Open loop when set.
    pub schedule: Option<Schedule>,
    /// `--requests`: requests to send after the warm-up, over all connections.
    pub requests: Option<u64>,
    pub warmup_ns: u64,
    /// Open loop: sleep at least this long before the next send (0: until it is due).
    pub granularity_ns: u64,
    /// `--duration` after the warm-up (none with `--requests`).
    pub duration_ns: Option<u64>,
    /// How long to wait for replies still in flight once sending has stopped.
    pub drain_ns: u64,
    /// A connection whose oldest request waits longer than this is dropped.
    pub reply_timeout_ns: u64,
    pub connect_timeout: Duration,
    /// `--tls`: connect with TLS.
    pub tls: Option<TlsTarget>,
    pub verify: bool,
    /// Absolute monotonic start time, set by the coordinator between the two barriers.
    pub start_ns: AtomicU64,
    pub ready: Barrier,
    pub go: Barrier,
    /// Set on Ctrl-C: stop sending, drain, report.
    pub stop: Arc<AtomicBool>,
}

/// Error counters. Everything here means some requests did not get a good reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connections that could not be opened (refused, unreachable, timed out).
    pub connect_failed: u64,
    /// Connections the server closed (or reset) while requests were outstanding or the run
    /// was still going.
    pub closed_by_server: u64,
    /// Replies that could not be decoded (the connection is dropped).
    pub malformed_reply: u64,
    /// Error replies from the server (-ERR ..., binary status != 0).
    pub server_error: u64,
    /// Connections dropped because a reply took longer than --reply-timeout.
    pub timed_out: u64,
    /// Requests in flight on a connection that died, or still unanswered when the drain
    /// timeout ran out.
    pub lost: u64,
    /// Following a leader (several --addr): refusals of a node that does not serve
    /// (`NOTLEADER`, `UNAVAILABLE`) followed to another node, plus the requests abandoned in
    /// flight with them (refused too, or never answered: no number was counted). Not in
    /// [`Errors::total`]: they are the failover, not a fault.
    #[serde(default)]
    pub redirects: u64,
    /// Following a leader: connections opened again (after a redirect or a drop).
    #[serde(default)]
    pub reconnects: u64,
}

impl Errors {
    pub fn add(&mut self, o: &Errors) {
        self.connect_failed += o.connect_failed;
        self.closed_by_server += o.closed_by_server;
        self.malformed_reply += o.malformed_reply;
        self.server_error += o.server_error;
        self.timed_out += o.timed_out;
        self.lost += o.lost;
        self.redirects += o.redirects;
        self.reconnects += o.reconnects;
    }

    pub fn total(&self) -> u64 {
        self.connect_failed
            + self.closed_by_server
            + self.malformed_reply
            + self.server_error
            + self.timed_out
            + self.lost
    }
}

/// One interval's measurements from one thread; `index` -1 is the warm-up.
pub struct IntervalReport {
    pub thread: usize,
    pub index: i64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// From the planned send time (equal to `service` in a closed loop).
    pub latency: Histogram<u64>,
    /// From the actual send.
    pub service: Histogram<u64>,
    pub completed: u64,
    pub numbers: u64,
    pub errors: Errors,
    pub cpu_ns: u64,
}

/// What a thread reports when it is done.
pub struct WorkerResult {
    pub thread: usize,
    pub core: Option<usize>,
    /// (connection index, what it received) when verifying.
    pub streams: Vec<(usize, StreamLog)>,
    pub first_errors: Vec<String>,
    /// Open loop: how late requests were sent after their planned time.
    pub send_lag: Histogram<u64>,
    /// Open loop: times a due request had to wait because `pipeline` were in flight.
    pub held_by_pipeline: u64,
    /// Requests sent after the warm-up.
    pub sent: u64,
    /// Open loop: requests planned before the end that were never sent.
    pub unsent: u64,
    /// CPU and wall time of the thread over the measured part of the run.
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// Monotonic time at which the last reply of the measured part arrived (or the end).
    pub finished_ns: u64,
}

struct Conn {
    index: usize,
    stream: Option<Stream>,
    out: Vec<u8>,
    out_pos: usize,
    input: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// (planned, sent) monotonic ns of each request in flight, oldest first.
    in_flight: VecDeque<(u64, u64)>,
    /// Open loop: index of this connection's next request in the schedule.
    next_k: u64,
    next_planned_ns: u64,
    /// Requests this connection may still send after the warm-up (`--requests`).
    quota: Option<u64>,
    /// Closed loop: already on the list of connections to top up.
    queued: bool,
    /// Open loop: out of the schedule heap until a reply makes room under `pipeline` (or
    /// until it is connected again).
    waiting_for_room: bool,
    log: StreamLog,
    /// Following a leader: the address this connection goes to, its index in the plan's
    /// addresses (where the rotation continues), and when to reconnect ([`NOT_PENDING`]).
    target: SocketAddr,
    target_index: usize,
    reconnect_at: u64,
    /// Following a leader: reopened and no reply yet, so a failure means the node is down
    /// (or not serving yet), not that a server dropped requests.
    connecting: bool,
}

impl Conn {
    fn alive(&self) -> bool {
        self.stream.is_some()
    }
}

struct Recorder {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    completed: u64,
    numbers: u64,
    errors: Errors,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            latency: new_histogram(),
            service: new_histogram(),
            completed: 0,
            numbers: 0,
            errors: Errors::default(),
        }
    }
}

struct Worker<'a> {
    plan: &'a Plan,
    /// Where reconnected streams are registered.
    registry: Registry,
    /// Several addresses: connections follow the leader.
    follow: bool,
    /// Connections waiting to reconnect.
    pending: Vec<usize>,
    thread: usize,
    conns: Vec<Conn>,
    rec: Recorder,
    first_errors: Vec<String>,
    send_lag: Histogram<u64>,
    held_by_pipeline: u64,
    sent: u64,
    start_ns: u64,
    measure_start_ns: u64,
    verify: bool,
    /// Requests in flight on all connections.
    in_flight: usize,
    /// Closed loop: connections that got replies and may send again.
    ready: Vec<usize>,
    /// Open loop: (next planned send, connection) of every connection that may send, earliest
    /// first, so a turn touches only the connections that are due.
    due: BinaryHeap<Reverse<(u64, usize)>>,
}

const MAX_FIRST_ERRORS: usize = 5;

impl Worker<'_> {
    fn note_error(&mut self, message: String) {
        if self.first_errors.len() < MAX_FIRST_ERRORS && !self.first_errors.contains(&message) {
            self.first_errors.push(message);
        }
    }

    /// Drops a connection: whatever it had in flight is lost.
    fn kill(&mut self, i: usize, why: Death, detail: String) {
        if self.follow && self.conns[i].connecting && self.conns[i].alive() {
            // A reopened connection that failed before any reply: the node is down or not
            // serving yet, and nothing sent on it reached a server. Try the next one.
            let abandoned = self.leave(i);
            self.rec.errors.redirects += abandoned as u64;
            return self.schedule_reconnect(i, None, now_ns());
        }
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.take() else {
            return;
        };
        drop(stream);
        let lost = conn.in_flight.len() as u64;
        conn.in_flight.clear();
        let index = conn.index;
        self.in_flight -= lost as usize;
        self.rec.errors.lost += lost;
        match why {
            Death::Closed => self.rec.errors.closed_by_server += 1,
            Death::Malformed => self.rec.errors.malformed_reply += 1,
            Death::Timeout => self.rec.errors.timed_out += 1,
        }
        self.note_error(format!(
            "connection {index}: {detail} ({lost} requests in flight lost)"
        ));
        if self.follow {
            self.schedule_reconnect(i, None, now_ns());
        }
    }

    /// Following a leader: connection `i` goes to `leader` at once, or (`None`) to the next
    /// address after [`RETRY_PAUSE_NS`]. Its stream must be gone already.
    fn schedule_reconnect(&mut self, i: usize, leader: Option<SocketAddr>, now: u64) {
        let addrs = &self.plan.addrs;
        let conn = &mut self.conns[i];
        // A node that names itself (a restarted leader whose old lease has not expired yet)
        // is no lead to follow at once: that would reconnect in a loop.
        match leader.filter(|&leader| leader != conn.target) {
            Some(leader) => {
                conn.target = leader;
                if let Some(index) = addrs.iter().position(|&a| a == leader) {
                    conn.target_index = index;
                }
                conn.reconnect_at = now;
            }
            None => {
                conn.target_index = (conn.target_index + 1) % addrs.len();
                conn.target = addrs[conn.target_index];
                conn.reconnect_at = now.saturating_add(RETRY_PAUSE_NS);
            }
        }
        if !self.pending.contains(&i) {
            self.pending.push(i);
        }
    }

    /// Following a leader: a node refused with `NOTLEADER` or `UNAVAILABLE`. The connection
    /// is left (what it still has in flight would be refused too, or is abandoned) and
    /// opened again where the refusal points.
    /// The refusal itself is counted with the abandoned requests.
    fn redirect(&mut self, i: usize, leader: Option<SocketAddr>, now: u64) {
        let abandoned = self.leave(i);
        self.rec.errors.redirects += 1 + abandoned as u64;
        self.schedule_reconnect(i, leader, now);
    }

    /// Following a leader: closes connection `i`, abandoning what it has in flight (no
    /// number of it is counted); returns how many requests that was.
    fn leave(&mut self, i: usize) -> usize {
        let conn = &mut self.conns[i];
        conn.stream = None;
        let abandoned = conn.in_flight.len();
        conn.in_flight.clear();
        conn.in_start = 0;
        conn.in_end = 0;
        self.in_flight -= abandoned;
        abandoned
    }

    /// Following a leader: opens the connections whose reconnect time has come (a
    /// non-blocking connect; a failure shows as an error on the stream and moves on).
    fn reconnect_due(&mut self, now: u64) {
        let mut k = 0;
        while k < self.pending.len() {
            let i = self.pending[k];
            if self.conns[i].reconnect_at > now {
                k += 1;
                continue;
            }
            self.pending.swap_remove(k);
            let conn = &mut self.conns[i];
            conn.reconnect_at = NOT_PENDING;
            self.rec.errors.reconnects += 1;
            let target = conn.target;
            let opened = match &self.plan.tls {
                // A non-blocking connect: a failure shows as an error on the stream.
                None => TcpStream::connect(target).and_then(|stream| {
                    stream.set_nodelay(true)?;
                    Ok(Stream::Plain(stream))
                }),
                // The TLS handshake needs the connection: this thread waits for it (at most
                // the connect timeout twice), which only happens while following a leader.
                Some(tls) => StdTcpStream::connect_timeout(&target, self.plan.connect_timeout)
                    .and_then(|tcp| connected(tcp, Some(tls), self.plan.connect_timeout)),
            }
            .and_then(|mut stream| {
                register(&self.registry, &mut stream, Token(i))?;
                Ok(stream)
            });
            match opened {
                Ok(stream) => {
                    let conn = &mut self.conns[i];
                    conn.stream = Some(stream);
                    conn.connecting = true;
                    conn.out.clear();
                    conn.out_pos = 0;
                    if self.plan.schedule.is_none() {
                        if !conn.queued {
                            conn.queued = true;
                            self.ready.push(i);
                        }
                    } else if conn.waiting_for_room {
                        conn.waiting_for_room = false;
                        self.due.push(Reverse((conn.next_planned_ns, i)));
                    }
                }
                Err(e) => {
                    self.note_error(format!("cannot connect to {target}: {e}"));
                    self.schedule_reconnect(i, None, now);
                }
            }
        }
    }

    /// The earliest scheduled reconnect, if any.
    fn next_reconnect(&self) -> Option<u64> {
        self.pending
            .iter()
            .map(|&i| self.conns[i].reconnect_at)
            .min()
    }

    /// Reads every reply that has arrived on connection `i` and records it.
    fn read_ready(&mut self, i: usize, now: u64) {
        loop {
            let conn = &mut self.conns[i];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            if conn.in_end == conn.input.len() {
                if conn.in_start == 0 {
                    let detail = format!(
                        "a reply longer than {RECEIVE_BUFFER} bytes (not a reply to this target?)"
                    );
                    return self.kill(i, Death::Malformed, detail);
                }
                conn.input.copy_within(conn.in_start..conn.in_end, 0);
                conn.in_end -= conn.in_start;
                conn.in_start = 0;
            }
            let space = conn.input.len() - conn.in_end;
            match stream.read(&mut conn.input[conn.in_end..]) {
                Ok(0) => {
                    let outstanding = !conn.in_flight.is_empty();
                    let detail = if outstanding {
                        "the server closed the connection with requests outstanding"
                    } else {
                        "the server closed the connection"
                    };
                    return self.kill(i, Death::Closed, detail.to_string());
                }
                Ok(n) => {
                    conn.in_end += n;
                    if !self.process_replies(i, now) {
                        return;
                    }
                    // A short read drained the socket; epoll reports the next data as a new edge.
                    if n < space {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let detail = format!("the server closed or reset the connection: {e}");
                    return self.kill(i, Death::Closed, detail);
                }
            }
        }
    }

    /// Decodes the complete replies in connection `i`'s buffer. False if the connection died.
    #[inline]
    fn process_replies(&mut self, i: usize, now: u64) -> bool {
        let protocol = &self.plan.protocol;
        let conn = &mut self.conns[i];
        let rec = &mut self.rec;
        let measure_start = self.measure_start_ns;
        let before = conn.in_flight.len();
        let mut failure = None;
        let mut refused_by = None;
        while conn.in_start < conn.in_end {
            let buf = &conn.input[conn.in_start..conn.in_end];
            match protocol.parse(buf) {
                Parsed::Incomplete => break,
                Parsed::Malformed(why) => {
                    failure = Some(why);
                    break;
                }
                Parsed::Reply { outcome, consumed } => {
                    let Some((planned, sent)) = conn.in_flight.pop_front() else {
                        failure = Some("a reply arrived with no request outstanding".into());
                        break;
                    };
                    match outcome {
                        Outcome::Numbers { first, count } => {
                            // Only requests planned after the warm-up are measured.
                            if planned >= measure_start {
                                rec.latency.saturating_record(now.saturating_sub(planned));
                                rec.service.saturating_record(now.saturating_sub(sent));
                                rec.completed += 1;
                                rec.numbers += count;
                            }
                            if self.verify {
                                conn.log.record(first, count);
                            }
                        }
                        Outcome::NotServing { leader, .. } if self.follow => {
                            refused_by = Some(leader.and_then(leader_address));
                            conn.in_start += consumed;
                            break;
                        }
                        Outcome::ServerError(message) | Outcome::NotServing { message, .. } => {
                            rec.errors.server_error += 1;
                            if self.first_errors.len() < MAX_FIRST_ERRORS {
                                let message = format!(
                                    "server error reply: {}",
                                    String::from_utf8_lossy(message)
                                );
                                if !self.first_errors.contains(&message) {
                                    self.first_errors.push(message);
                                }
                            }
                        }
                    }
                    conn.in_start += consumed;
                }
            }
        }
        if conn.in_start == conn.in_end {
            conn.in_start = 0;
            conn.in_end = 0;
        }
        let answered = before - conn.in_flight.len();
        self.in_flight -= answered;
        if answered > 0 {
            conn.connecting = false;
        }
        if let Some(leader) = refused_by {
            self.redirect(i, leader, now);
            return false;
        }
        if answered > 0 && failure.is_none() {
            // Room for more requests on this connection.
            if self.plan.schedule.is_none() {
                if !conn.queued {
                    conn.queued = true;
                    self.ready.push(i);
                }
            } else if conn.waiting_for_room {
                conn.waiting_for_room = false;
                self.due.push(Reverse((conn.next_planned_ns, i)));
            }
        }
        match failure {
            Some(why) => {
                self.kill(i, Death::Malformed, format!("malformed reply: {why}"));
                false
            }
            None => true,
        }
    }

    /// Writes what connection `i` has queued.
    fn flush(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        // TLS records still waiting for the socket go first.
        if let Err(e) = stream.flush()
            && e.kind() != io::ErrorKind::WouldBlock
        {
            let detail = format!("the server closed or reset the connection: {e}");
            return self.kill(i, Death::Closed, detail);
        }
        while conn.out_pos < conn.out.len() {
            match stream.write(&conn.out[conn.out_pos..]) {
                Ok(n) => {
                    let short = n < conn.out.len() - conn.out_pos;
                    conn.out_pos += n;
                    if short {
                        break; // the socket buffer is full: wait for a writable edge
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let detail = format!("the server closed or reset the connection: {e}");
                    return self.kill(i, Death::Closed, detail);
                }
            }
        }
        if conn.out_pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
        }
    }

    /// Queues the requests connection `i` may send at `now` and writes them.
    #[inline]
    fn top_up(&mut self, i: usize, now: u64, end_ns: u64) {
        let pipeline = self.plan.pipeline;
        let measuring = now >= self.measure_start_ns;
        let template = self.plan.protocol.request();
        let conn = &mut self.conns[i];
        if !conn.alive() {
            // Out of the schedule; a reconnect puts it back.
            conn.waiting_for_room = true;
            return;
        }
        let before = conn.in_flight.len();
        match &self.plan.schedule {
            None => {
                while conn.in_flight.len() < pipeline {
                    if measuring {
                        match conn.quota.as_mut() {
                            Some(0) => break,
                            Some(q) => *q -= 1,
                            None => {}
                        }
                    }
                    conn.out.extend_from_slice(template);
                    conn.in_flight.push_back((now, now));
                }
            }
            Some(schedule) => {
                while conn.next_planned_ns <= now && conn.next_planned_ns < end_ns {
                    if conn.in_flight.len() >= pipeline {
                        self.held_by_pipeline += 1;
                        break;
                    }
                    let planned = conn.next_planned_ns;
                    if planned >= self.measure_start_ns {
                        self.send_lag.saturating_record(now - planned);
                    }
                    conn.out.extend_from_slice(template);
                    conn.in_flight.push_back((planned, now));
                    conn.next_k += 1;
                    conn.next_planned_ns =
                        self.start_ns + schedule.connection_planned_ns(conn.index, conn.next_k);
                }
                // Back into the schedule, or wait for a reply to make room.
                if conn.next_planned_ns < end_ns {
                    if conn.in_flight.len() < pipeline {
                        self.due.push(Reverse((conn.next_planned_ns, i)));
                    } else {
                        conn.waiting_for_room = true;
                    }
                }
            }
        }
        let added = conn.in_flight.len() - before;
        self.in_flight += added;
        if measuring {
            self.sent += added as u64;
        }
        if conn.in_flight.len() > before || conn.out_pos < conn.out.len() {
            self.flush(i);
        }
    }

    /// Drops connections whose oldest request has waited longer than the reply timeout.
    fn expire(&mut self, now: u64) {
        let timeout = self.plan.reply_timeout_ns;
        for i in 0..self.conns.len() {
            let stale = self.conns[i]
                .in_flight
                .front()
                .is_some_and(|&(_, sent)| now.saturating_sub(sent) > timeout);
            if stale {
                let detail = format!(
                    "no reply for {} ms (--reply-timeout); the connection was dropped",
                    timeout / 1_000_000
                );
                self.kill(i, Death::Timeout, detail);
            }
        }
    }

    /// Whether connection `i` has nothing more to do (`--requests` reached and all answered).
    fn done(&self, i: usize) -> bool {
        let conn = &self.conns[i];
        (!conn.alive() && conn.reconnect_at == NOT_PENDING)
            || (conn.quota == Some(0) && conn.in_flight.is_empty())
    }

    fn take_interval(
        &mut self,
        index: i64,
        start_ns: u64,
        end_ns: u64,
        cpu_ns: u64,
    ) -> IntervalReport {
        let rec = std::mem::replace(&mut self.rec, Recorder::new());
        IntervalReport {
            thread: self.thread,
            index,
            start_ns,
            end_ns,
            latency: rec.latency,
            service: rec.service,
            completed: rec.completed,
            numbers: rec.numbers,
            errors: rec.errors,
            cpu_ns,
        }
    }
}

/// The leader's address in a `NOTLEADER` refusal (a host name is resolved: advertised
/// addresses may be names).
fn leader_address(address: &[u8]) -> Option<SocketAddr> {
    let address = std::str::from_utf8(address).ok()?;
    address.parse().ok().or_else(|| {
        std::net::ToSocketAddrs::to_socket_addrs(address)
            .ok()?
            .next()
    })
}

#[derive(Clone, Copy)]
enum Death {
    Closed,
    Malformed,
    Timeout,
}

/// Opens `connections`, waits for the start signal, drives load, reports intervals on
/// `intervals` and returns the thread's totals.
pub fn run(
    plan: &Plan,
    thread: usize,
    core: Option<usize>,
    connections: Vec<usize>,
    intervals: mpsc::Sender<IntervalReport>,
) -> io::Result<WorkerResult> {
    // Planned send times are microseconds apart: ask the kernel not to defer our timer
    // wake-ups by the default 50 us of slack. (Best effort; the send lag is measured anyway.)
    // SAFETY: PR_SET_TIMERSLACK takes one integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let setup = setup(plan, thread, &connections);
    // Always meet the others at the barriers, even after a failure, so nobody waits forever.
    plan.ready.wait();
    plan.go.wait();
    let (mut worker, mut poll) = setup?;
    let start_ns = plan.start_ns.load(Ordering::Acquire);
    // Every thread begins at the same instant.
    while now_ns() < start_ns {
        std::thread::sleep(Duration::from_nanos(start_ns.saturating_sub(now_ns())));
    }
    worker.start_ns = start_ns;
    worker.measure_start_ns = start_ns + plan.warmup_ns;
    for (i, conn) in worker.conns.iter_mut().enumerate() {
        match &plan.schedule {
            Some(schedule) => {
                conn.next_planned_ns = start_ns + schedule.connection_planned_ns(conn.index, 0);
                worker.due.push(Reverse((conn.next_planned_ns, i)));
            }
            None => {
                conn.queued = true;
                worker.ready.push(i);
            }
        }
    }
    let mut ready = Vec::with_capacity(worker.conns.len());
    let measure_start = worker.measure_start_ns;
    let mut end_ns = plan
        .duration_ns
        .map_or(u64::MAX, |d| measure_start.saturating_add(d));
    let mut timer = Timer::new()?;
    poll.registry()
        .register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);

    let mut interval_index: i64 = if plan.warmup_ns > 0 { -1 } else { 0 };
    let mut interval_start = start_ns;
    let mut next_boundary = if plan.warmup_ns > 0 {
        measure_start
    } else {
        measure_start + SECOND
    };
    let mut interval_cpu = thread_cpu_ns();
    let mut measured_cpu_start = if plan.warmup_ns > 0 { 0 } else { interval_cpu };
    let mut drain_deadline = u64::MAX;
    let finished_ns;

    loop {
        let now = now_ns();
        // Interval boundaries (also the end of the warm-up).
        if now >= next_boundary {
            let cpu = thread_cpu_ns();
            if interval_index == -1 {
                measured_cpu_start = cpu;
            }
            let report = worker.take_interval(
                interval_index,
                interval_start,
                next_boundary,
                cpu - interval_cpu,
            );
            let _ = intervals.send(report);
            interval_cpu = cpu;
            worker.expire(now);
            interval_start = next_boundary;
            interval_index += 1;
            next_boundary = measure_start + (interval_index as u64 + 1) * SECOND;
        }
        if plan.stop.load(Ordering::Relaxed) && end_ns > now {
            end_ns = now;
        }
        let sending = now < end_ns;
        if sending && !worker.pending.is_empty() {
            worker.reconnect_due(now);
        }
        if sending {
            if plan.schedule.is_some() {
                while let Some(&Reverse((due, i))) = worker.due.peek() {
                    if due > now {
                        break;
                    }
                    worker.due.pop();
                    worker.top_up(i, now, end_ns);
                }
            } else {
                std::mem::swap(&mut ready, &mut worker.ready);
                for &i in &ready {
                    worker.conns[i].queued = false;
                    worker.top_up(i, now, end_ns);
                }
                ready.clear();
            }
        } else if drain_deadline == u64::MAX {
            drain_deadline = end_ns.saturating_add(plan.drain_ns);
        }
        // (Scanning every connection only when nothing is in flight keeps busy turns cheap.)
        let all_done = worker.in_flight == 0 && (0..worker.conns.len()).all(|i| worker.done(i));
        if (!sending && worker.in_flight == 0) || all_done {
            finished_ns = now;
            break;
        }
        if now >= drain_deadline {
            for i in 0..worker.conns.len() {
                let lost = worker.conns[i].in_flight.len() as u64;
                if lost > 0 {
                    worker.rec.errors.lost += lost;
                    worker.in_flight -= lost as usize;
                    worker.conns[i].in_flight.clear();
                    let index = worker.conns[i].index;
                    worker.note_error(format!(
                        "connection {index}: {lost} requests unanswered {} ms after the end \
                         (--drain-timeout)",
                        plan.drain_ns / 1_000_000
                    ));
                }
            }
            finished_ns = now;
            break;
        }

        // Sleep until something happens: a reply, writable space, or the next planned send,
        // interval boundary, end or drain deadline.
        let mut wake = next_boundary.min(drain_deadline);
        if sending {
            wake = wake.min(end_ns);
            if let Some(at) = worker.next_reconnect() {
                wake = wake.min(at);
            }
            if let Some(&Reverse((due, _))) = worker.due.peek() {
                // With a granularity, requests due within it wait for one wake-up and go out
                // together (late, and their latency says so) instead of one wake-up each.
                wake = wake.min(due.max(now.saturating_add(plan.granularity_ns)));
            }
        }
        let timeout = if wake <= now {
            Some(Duration::ZERO)
        } else {
            timer.arm_by(wake, now)?;
            // Also a coarse epoll timeout, so a lost timer edge cannot hang the run.
            Some(Duration::from_nanos(wake - now) + Duration::from_millis(2))
        };
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        let now = now_ns();
        for event in events.iter() {
            let token = event.token();
            if token == TIMER {
                timer.expired();
                continue;
            }
            let i = token.0;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                worker.read_ready(i, now);
            }
            let conn = &worker.conns[i];
            let pending = conn.out_pos < conn.out.len();
            if event.is_writable()
                && (pending || conn.stream.as_ref().is_some_and(Stream::wants_write))
            {
                worker.flush(i);
            }
        }
    }

    // The last, partial interval.
    let cpu = thread_cpu_ns();
    let end_of_last = finished_ns.max(interval_start);
    let report = worker.take_interval(
        interval_index,
        interval_start,
        end_of_last,
        cpu - interval_cpu,
    );
    let _ = intervals.send(report);

    let mut unsent = 0;
    if let Some(schedule) = &plan.schedule {
        let window = end_ns.saturating_sub(start_ns);
        for conn in &worker.conns {
            let planned = schedule.connection_planned_before(conn.index, window);
            unsent += planned.saturating_sub(conn.next_k);
        }
    }
    let measured_from = if measured_cpu_start == 0 {
        cpu
    } else {
        measured_cpu_start
    };
    let streams = if worker.verify {
        worker
            .conns
            .iter_mut()
            .map(|c| (c.index, std::mem::take(&mut c.log)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(WorkerResult {
        thread,
        core,
        streams,
        first_errors: worker.first_errors,
        send_lag: worker.send_lag,
        held_by_pipeline: worker.held_by_pipeline,
        sent: worker.sent,
        unsent,
        cpu_ns: cpu - measured_from,
        wall_ns: finished_ns.saturating_sub(measure_start),
        finished_ns,
    })
}

/// Connects this thread's connections (blocking, with a timeout) and registers them.
fn setup<'a>(
    plan: &'a Plan,
    thread: usize,
    connections: &[usize],
) -> io::Result<(Worker<'a>, Poll)> {
    let poll = Poll::new()?;
    let template_len = plan.protocol.request().len();
    let follow = plan.addrs.len() > 1;
    let mut worker = Worker {
        plan,
        registry: poll.registry().try_clone()?,
        follow,
        pending: Vec::new(),
        thread,
        conns: Vec::with_capacity(connections.len()),
        rec: Recorder::new(),
        first_errors: Vec::new(),
        send_lag: new_histogram(),
        held_by_pipeline: 0,
        sent: 0,
        start_ns: 0,
        measure_start_ns: 0,
        verify: plan.verify,
        in_flight: 0,
        ready: Vec::with_capacity(connections.len()),
        due: BinaryHeap::with_capacity(connections.len()),
    };
    let first = plan.addrs[0];
    for (slot, &index) in connections.iter().enumerate() {
        let mut retry_elsewhere = false;
        let stream = StdTcpStream::connect_timeout(&first, plan.connect_timeout)
            .and_then(|s| connected(s, plan.tls.as_ref(), plan.connect_timeout));
        let stream = match stream {
            Ok(mut s) => {
                register(poll.registry(), &mut s, Token(slot))?;
                Some(s)
            }
            Err(e) => {
                worker.note_error(format!("cannot connect to {first}: {e}"));
                if follow {
                    // Tried again on the next address once the run starts.
                    worker.pending.push(slot);
                    retry_elsewhere = true;
                } else {
                    worker.rec.errors.connect_failed += 1;
                }
                None
            }
        };
        worker.conns.push(Conn {
            index,
            stream,
            out: Vec::with_capacity(plan.pipeline * template_len),
            out_pos: 0,
            input: vec![0u8; RECEIVE_BUFFER].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            in_flight: VecDeque::with_capacity(plan.pipeline),
            next_k: 0,
            next_planned_ns: 0,
            quota: plan
                .requests
                .map(|total| quota_of_connection(total, index, plan.connections)),
            queued: false,
            waiting_for_room: false,
            log: StreamLog::default(),
            target: first,
            target_index: 0,
            reconnect_at: NOT_PENDING,
            connecting: false,
        });
        if retry_elsewhere {
            let conn = &mut worker.conns[slot];
            conn.target_index = 1;
            conn.target = plan.addrs[1];
            conn.reconnect_at = 0;
        }
    }
    Ok((worker, poll))
}

/// A connected socket made ready for the loop: non-blocking, after the TLS handshake (given
/// at most `timeout`) with `tls`.
fn connected(tcp: StdTcpStream, tls: Option<&TlsTarget>, timeout: Duration) -> io::Result<Stream> {
    tcp.set_nodelay(true)?;
    match tls {
        None => {
            tcp.set_nonblocking(true)?;
            Ok(Stream::Plain(TcpStream::from_std(tcp)))
        }
        Some(target) => {
            tcp.set_read_timeout(Some(timeout))?;
            tcp.set_write_timeout(Some(timeout))?;
            Ok(Stream::Tls(Box::new(Stream::tls(tcp, target)?)))
        }
    }
}

/// Registers a connection's socket for reads and writes under `token`.
fn register(registry: &Registry, stream: &mut Stream, token: Token) -> io::Result<()> {
    let interest = Interest::READABLE | Interest::WRITABLE;
    match stream {
        Stream::Plain(tcp) => registry.register(tcp, token, interest),
        Stream::Tls(tls) => registry.register(tls.tcp_mut(), token, interest),
    }
}
