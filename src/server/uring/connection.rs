//! A connection's I/O on the ring: admitting it, its multishot receive fed to the service,
//! one send per turn, and closing (after flush, lingering, or at once).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types};

use super::lifecycle::{Flushed, Lifecycle, Phase, RecvOp};
use super::token::{Generation, Op, Token};
use super::{EventLoop, RECV_BUFFER_SIZE};
use crate::server::failure::Failure;
use crate::server::handler::{Kind, Next, Service, Until};
use crate::server::linger::{LINGER, socket_is_quiet};
use crate::server::output::{Verdict, largest_offenders};
use crate::service::counters;

pub(super) struct Connection<C> {
    fd: OwnedFd,
    /// The port it came in on: the budget it counts against.
    kind: Kind,
    /// Tells this connection's completions from those of an earlier one in the same slot.
    pub generation: Generation,
    /// The service's state for this connection.
    handler: C,
    /// Replies not yet handed to the kernel.
    pending: Vec<u8>,
    /// Replies handed to the kernel: must not move or change until the send completes.
    sending: Vec<u8>,
    /// Bytes of `sending` the kernel has accepted.
    sent: usize,
    life: Lifecycle,
    peer: Option<std::net::SocketAddr>,
    /// Its held bytes as last reported to the loop's output account.
    accounted: usize,
}

impl<C> Connection<C> {
    fn has_output(&self) -> bool {
        !self.pending.is_empty() || self.life.send_inflight
    }

    /// Reply bytes held for it that the kernel has not taken.
    fn queued(&self) -> usize {
        self.pending.len() + (self.sending.len() - self.sent)
    }

    /// The memory its output holds: both buffers whole, since the part of `sending` the
    /// kernel has taken is freed only once the send completes (see `server/output.rs`).
    fn output_held(&self) -> usize {
        self.pending.capacity() + self.sending.capacity()
    }
}

impl<S: Service> EventLoop<S> {
    /// The token of connection `key`'s operation `op`.
    fn connection_token(&self, op: Op, key: usize) -> Token {
        Token::of_connection(op, key, self.connections[key].generation)
    }

    /// Takes in a connection accepted on listener `index`, or refuses it over the limit.
    pub(super) fn admit(&mut self, fd: OwnedFd, index: usize) -> io::Result<()> {
        if self.draining {
            return Ok(()); // dropping the descriptor closes it
        }
        let kind = self.listeners[index].kind;
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
            let Some(refusal) = &self.listeners[index].refusal else {
                return Ok(()); // closed without a word
            };
            let raw = fd.as_raw_fd();
            let entry = opcode::Send::new(types::Fd(raw), refusal.as_ptr(), refusal.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(Token::of_loop(Op::Refuse, raw as usize).user_data());
            std::mem::forget(fd); // closed when the refusal completes
            self.refusals_inflight += 1;
            return self.push(entry);
        }
        let peer = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                loop_index = self.index,
                ?peer,
                ?kind,
                fd = fd.as_raw_fd(),
                "connection accepted"
            );
        }
        let generation = self.generations.next();
        let slot = self.connections.vacant_entry();
        let key = slot.key();
        slot.insert(Connection {
            fd,
            kind,
            generation,
            handler: self.service.open(kind, key, peer.map(|addr| addr.ip())),
            pending: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            life: Lifecycle::default(),
            peer,
            accounted: 0,
        });
        self.arm_recv(key)
    }

    // ---- receiving ----

    fn arm_recv(&mut self, key: usize) -> io::Result<()> {
        let token = self.connection_token(Op::Recv, key);
        let conn = &mut self.connections[key];
        let fd = types::Fd(conn.fd.as_raw_fd());
        let entry = if conn.life.recv_one {
            opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_SIZE)
                .buf_group(self.buffers.group())
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(fd, self.buffers.group()).build()
        }
        .user_data(token.user_data());
        conn.life.recv = RecvOp::Armed;
        self.push(entry)
    }

    /// Stops the connection's multishot receive (its final completion follows).
    fn stop_reading(&mut self, key: usize) -> io::Result<()> {
        let token = self.connection_token(Op::Recv, key);
        if !self.connections[key].life.cancel_recv() {
            return Ok(());
        }
        let entry = opcode::AsyncCancel::new(token.user_data())
            .build()
            .user_data(Token::of_loop(Op::Cancel, key).user_data());
        self.push(entry)
    }

    pub(super) fn on_recv(&mut self, key: usize, result: i32, flags: u32) -> io::Result<()> {
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
            conn.life.recv = RecvOp::Idle;
        }
        if result > 0 {
            let Some(bid) = bid else {
                tracing::error!(
                    key,
                    "receive completed without a buffer; closing connection"
                );
                return self.close_now(key);
            };
            conn.life
                .received(result as usize, RECV_BUFFER_SIZE as usize);
            if conn.life.serving() {
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
            conn.life.peer_closed = true;
            if conn.life.serving() {
                tracing::debug!(key, "peer closed its side");
                // An unfinished request is discarded (see `Session::end_of_input`). A held
                // session still holds requests (`echo GETSEQ new | nc -N` waits for the new
                // sequence's first durable ceiling): it answers them first; the close follows
                // when the session is done (see `after_service`).
                let next = self
                    .service
                    .end_of_input(&mut conn.handler, key, &mut conn.pending);
                if conn.life.held().is_none() {
                    return self.after_service(key, next);
                }
            }
        } else {
            match Failure::of_recv(-result) {
                // Our cancellation, or the buffer ring ran dry for a moment (buffers are back
                // by now): re-armed below if still wanted.
                Failure::Cancelled | Failure::NoBuffers => {}
                failure => {
                    tracing::debug!(
                        key,
                        "receive failed: {}; closing connection",
                        failure.error()
                    );
                    conn.life.peer_closed = true;
                    return self.close_now(key);
                }
            }
        }
        if self
            .connections
            .get(key)
            .is_some_and(|c| c.life.should_arm_recv())
        {
            self.arm_recv(key)?;
        }
        self.maybe_release(key)
    }

    /// Reports what connection `key` holds (its output buffers, and the input the service
    /// keeps for it) to the output account; closes it at once when its unsent replies are
    /// over `--client-output-limit` (then returns true).
    fn account_output(&mut self, key: usize) -> io::Result<bool> {
        let conn = &mut self.connections[key];
        let held = conn.output_held() + self.service.held_input(&conn.handler);
        let queued = conn.queued();
        match self
            .output
            .report(&mut conn.accounted, held, queued, conn.peer)
        {
            Verdict::Within => Ok(false),
            Verdict::OverLimit => self.close_now(key).map(|()| true),
        }
    }

    /// Closes this loop's largest offenders when all clients' output buffers are over
    /// `--maxmemory-clients` (once per turn).
    pub(super) fn enforce_output_cap(&mut self) -> io::Result<()> {
        let excess = self.output.publish();
        if excess == 0 {
            return Ok(());
        }
        let held = self
            .connections
            .iter()
            .filter(|(_, conn)| conn.life.phase != Phase::Closing)
            .map(|(key, conn)| (key, conn.accounted))
            .collect();
        for key in largest_offenders(held, excess) {
            let conn = &self.connections[key];
            self.output.evicted(conn.accounted, conn.peer);
            self.close_now(key)?;
        }
        Ok(())
    }

    /// Acts on what the service answered.
    fn after_service(&mut self, key: usize, next: Next) -> io::Result<()> {
        if self.account_output(key)? {
            return Ok(());
        }
        let conn = &mut self.connections[key];
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        }
        let steps = conn.life.apply(next);
        if steps.park {
            self.parked
                .push(Token::of_connection(Op::Recv, key, conn.generation));
        }
        if steps.stop_reading {
            tracing::debug!(key, "pausing reads until the connection catches up");
            self.stop_reading(key)?;
        }
        if steps.resume_reading {
            tracing::debug!(key, "resuming reads");
            if self.connections[key].life.should_arm_recv() {
                self.arm_recv(key)?;
            }
        }
        if steps.close {
            return self.close_after_flush(key);
        }
        Ok(())
    }

    /// Gives every connection held until a wake-up another try.
    pub(super) fn resume_parked(&mut self) -> io::Result<()> {
        let parked = std::mem::take(&mut self.parked);
        for token in parked {
            if !self.is_current(token) {
                continue;
            }
            let key = token.key();
            let conn = &mut self.connections[key];
            if conn.life.held() != Some(Until::Woken) {
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
        Ok(())
    }

    /// Appends what the service has due for connection `key` after a tick.
    pub(super) fn fill(&mut self, key: usize) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(());
        };
        if !conn.life.serving() {
            return Ok(());
        }
        let before = conn.pending.len();
        self.service.fill(&mut conn.handler, key, &mut conn.pending);
        if conn.pending.len() > before {
            self.dirty.push(key);
            self.account_output(key)?;
        }
        Ok(())
    }

    /// Closes the connections the service no longer serves (a stream taken over by a newer
    /// `CON`, or expired).
    pub(super) fn close_released(&mut self) -> io::Result<()> {
        for key in self.service.released() {
            if self.connections.contains(key) {
                tracing::debug!(key, "connection released by the service; closing it");
                self.close_now(key)?;
            }
        }
        Ok(())
    }

    // ---- sending ----

    /// Hands every connection's queued replies to the kernel: one send per connection.
    pub(super) fn send_replies(&mut self) -> io::Result<()> {
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
        if !conn.life.may_send() || conn.pending.is_empty() {
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
            .user_data(token.user_data());
        conn.life.send_inflight = true;
        self.push(entry)
    }

    pub(super) fn on_send(&mut self, key: usize, result: i32) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            tracing::error!(key, "send completion for a closed connection");
            return Ok(());
        };
        conn.life.send_inflight = false;
        match Failure::check(result) {
            Ok(sent) => conn.sent += sent as usize,
            Err(failure) => {
                if failure != Failure::Cancelled {
                    tracing::debug!(key, "send failed: {}; closing connection", failure.error());
                }
                return self.close_now(key);
            }
        }
        if conn.life.phase != Phase::Closing && self.account_output(key)? {
            return Ok(());
        }
        let conn = &mut self.connections[key];
        if conn.sent < conn.sending.len() {
            if conn.life.phase == Phase::Closing {
                return self.maybe_release(key);
            }
            return self.submit_send(key); // partial send: the rest, in order
        }
        conn.sending.clear();
        conn.sent = 0;
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        } else if conn.life.held() == Some(Until::Drained) {
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
            if conn.life.phase != Phase::Closing {
                self.account_output(key)?;
            }
        }
        self.maybe_release(key)
    }

    // ---- closing ----

    pub(super) fn close_after_flush(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.connections[key];
        conn.life.close_after_flush();
        if !conn.pending.is_empty() {
            self.dirty.push(key);
        }
        self.maybe_release(key)
    }

    pub(super) fn close_now(&mut self, key: usize) -> io::Result<()> {
        let send = self.connection_token(Op::Send, key);
        let conn = &mut self.connections[key];
        conn.life.close_now();
        // Its queued output is dropped: it no longer counts.
        self.output.forget(&mut conn.accounted);
        let send_inflight = conn.life.send_inflight;
        self.stop_reading(key)?;
        if send_inflight {
            let entry = opcode::AsyncCancel::new(send.user_data())
                .build()
                .user_data(Token::of_loop(Op::Cancel, key).user_data());
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
        if conn.life.phase == Phase::Flushing && !conn.has_output() {
            let fd = conn.fd.as_raw_fd();
            let deadline = Instant::now() + LINGER;
            match conn.life.flushed(|| socket_is_quiet(fd), deadline) {
                Flushed::Close => {}
                Flushed::CloseStopReading => self.stop_reading(key)?,
                Flushed::Linger { arm_recv } => {
                    // FIN after the last reply; then wait for the peer's.
                    // SAFETY: shutting down a socket we own; failure only means it is dead.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                    let token = Token::of_connection(Op::Recv, key, conn.generation);
                    self.lingering.push((token, deadline));
                    if arm_recv {
                        self.arm_recv(key)?;
                    }
                    return self.schedule(crate::server::timers::Timer::Linger, LINGER);
                }
            }
        }
        if self.connections[key].life.may_free() {
            let mut conn = self.connections.remove(key);
            tracing::debug!(key, fd = conn.fd.as_raw_fd(), "connection closed");
            self.output.forget(&mut conn.accounted);
            self.service.close(&mut conn.handler, key);
            // Queued output is dropped with the connection: the pool empties the buffers.
            self.spare.give(conn.pending);
            self.spare.give(conn.sending);
            self.shared.budget(conn.kind).give_back();
            // Dropping `conn.fd` closes the socket.
        }
        Ok(())
    }

    /// Closes lingering connections whose peers did not close in time.
    pub(super) fn expire_lingering(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let lingering = std::mem::take(&mut self.lingering);
        let mut next = None::<Instant>;
        for (token, deadline) in lingering {
            let still = self.is_current(token)
                && matches!(
                    self.connections[token.key()].life.phase,
                    Phase::Lingering { .. }
                );
            if !still {
                continue;
            }
            if deadline <= now {
                self.close_now(token.key())?;
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                self.lingering.push((token, deadline));
            }
        }
        if let Some(next) = next {
            self.schedule(
                crate::server::timers::Timer::Linger,
                next.saturating_duration_since(now),
            )?;
        }
        Ok(())
    }
}
