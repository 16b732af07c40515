//! A connection's lifecycle as the io_uring loop sees it: where it is between open and
//! freed ([`Phase`]), and which of its operations are in flight. The decisions — may the
//! slot be freed, should the multishot receive be armed, what an answer of the service
//! takes — are pure functions of this state, so they are tested without a ring.

use std::time::Instant;

use crate::server::handler::{Next, Until};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Input goes to the service.
    Open,
    /// The service holds input until `until`; `reading` turns false when it holds too much.
    Held { until: Until, reading: bool },
    /// Sending what is queued, then closing; input is discarded.
    Flushing,
    /// Everything is sent and our side shut down (FIN); reading and discarding until the peer
    /// closes or `deadline` passes. Closing a socket with unread input makes the kernel reset
    /// the connection and throw away replies not yet delivered — often the very error reply
    /// that explains the close.
    Lingering { deadline: Instant },
    /// Closing as soon as no operation is in flight; queued output is dropped.
    Closing,
}

/// The connection's multishot receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvOp {
    Idle,
    Armed,
    /// Armed, and asked to stop: its final completion follows.
    Cancelling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    pub recv: RecvOp,
    /// A send is with the kernel: its buffer must not move until it completes.
    pub send_inflight: bool,
    /// The peer shut down its side (we received EOF) or the socket failed.
    pub peer_closed: bool,
    /// Receive one buffer at a time rather than multishot: from when reading resumes after a
    /// pause until a receive comes back short of a full buffer. The kernel's queue for a
    /// paused client fills (MiBs on loopback), and a multishot receive armed on it brings
    /// all of it in one turn: past the few buffers the service decodes before it pauses
    /// again, the service would have to keep the rest. A short receive says the queue is
    /// drained, so multishot brings only what arrives.
    pub recv_one: bool,
}

/// What the loop must do after the service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Steps {
    /// Close after flush (the service said so, or the peer had closed and nothing is held).
    pub close: bool,
    /// Wake-ups retry this connection.
    pub park: bool,
    /// Cancel the receive: the service holds too much.
    pub stop_reading: bool,
    /// Reading was stopped and may go on again.
    pub resume_reading: bool,
}

/// What follows once a flushing connection has sent everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing to wait for: free the slot once nothing is in flight.
    Close,
    /// As `Close`, after cancelling the receive.
    CloseStopReading,
    /// Shut our side down and linger; arm the receive if `arm_recv`.
    Linger { arm_recv: bool },
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            phase: Phase::Open,
            recv: RecvOp::Idle,
            send_inflight: false,
            peer_closed: false,
            recv_one: false,
        }
    }
}

impl Lifecycle {
    /// Whether input still goes to the service (not closing in any way).
    pub fn serving(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Held { .. })
    }

    /// What a held connection waits for.
    pub fn held(&self) -> Option<Until> {
        match self.phase {
            Phase::Held { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Whether the multishot receive should be running.
    pub fn wants_reading(&self) -> bool {
        !self.peer_closed
            && self.recv != RecvOp::Cancelling
            && match self.phase {
                Phase::Open | Phase::Flushing | Phase::Lingering { .. } => true,
                Phase::Held { reading, .. } => reading,
                Phase::Closing => false,
            }
    }

    /// Whether a receive must be armed now.
    pub fn should_arm_recv(&self) -> bool {
        self.recv == RecvOp::Idle && self.wants_reading()
    }

    /// Whether a send may be started: one at a time, and none once closing at once.
    pub fn may_send(&self) -> bool {
        !self.send_inflight && self.phase != Phase::Closing
    }

    /// Whether the slot may be freed: closing, and no operation can still complete.
    pub fn may_free(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. } | Phase::Closing)
            && !self.send_inflight
            && self.recv == RecvOp::Idle
    }

    /// Takes in what the service answered (only while serving).
    pub fn apply(&mut self, next: Next) -> Steps {
        debug_assert!(self.serving());
        let was_reading = !matches!(self.phase, Phase::Held { reading: false, .. });
        match next {
            Next::Read if self.peer_closed => Steps {
                close: true,
                ..Steps::default()
            },
            Next::Read => {
                self.phase = Phase::Open;
                if !was_reading {
                    self.recv_one = true;
                }
                Steps {
                    resume_reading: !was_reading,
                    ..Steps::default()
                }
            }
            Next::Hold {
                until,
                keep_reading,
            } => {
                let reading = was_reading && keep_reading;
                self.phase = Phase::Held { until, reading };
                Steps {
                    park: until == Until::Woken,
                    stop_reading: was_reading && !reading,
                    ..Steps::default()
                }
            }
            Next::Close => Steps {
                close: true,
                ..Steps::default()
            },
        }
    }

    /// Starts closing after the queued output (no change once closing already).
    pub fn close_after_flush(&mut self) {
        if self.serving() {
            self.phase = Phase::Flushing;
        }
    }

    pub fn close_now(&mut self) {
        self.phase = Phase::Closing;
    }

    /// A flushing connection has sent everything: close it, or linger until `deadline`.
    /// `quiet` says whether the socket has nothing unacknowledged or unread (asked only when
    /// the peer has not closed).
    pub fn flushed(&mut self, quiet: impl FnOnce() -> bool, deadline: Instant) -> Flushed {
        debug_assert_eq!(self.phase, Phase::Flushing);
        if self.peer_closed {
            self.phase = Phase::Closing;
            Flushed::Close
        } else if quiet() {
            // Every reply delivered and acknowledged, no unread input: a close now cannot
            // make the kernel throw a reply away (an idle client at shutdown is closed at once).
            self.phase = Phase::Closing;
            Flushed::CloseStopReading
        } else {
            self.phase = Phase::Lingering { deadline };
            Flushed::Linger {
                arm_recv: self.recv == RecvOp::Idle,
            }
        }
    }

    /// A receive brought `bytes` into a buffer of `capacity`: short of full, the kernel had
    /// no more queued, and the receive may be multishot again.
    pub fn received(&mut self, bytes: usize, capacity: usize) {
        if bytes < capacity {
            self.recv_one = false;
        }
    }

    /// Asks the receive to stop; true when a cancellation must be submitted.
    pub fn cancel_recv(&mut self) -> bool {
        if self.recv == RecvOp::Armed {
            self.recv = RecvOp::Cancelling;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Lifecycle {
        Lifecycle {
            recv: RecvOp::Armed,
            ..Lifecycle::default()
        }
    }

    const HOLD_FOR_DURABLE: Next = Next::Hold {
        until: Until::Woken,
        keep_reading: true,
    };
    const HOLD_TOO_MUCH: Next = Next::Hold {
        until: Until::Drained,
        keep_reading: false,
    };

    #[test]
    fn a_new_connection_reads_and_is_not_freed() {
        let conn = Lifecycle::default();
        assert!(conn.serving());
        assert!(conn.should_arm_recv());
        assert!(!conn.may_free());
        assert!(conn.may_send());
    }

    #[test]
    fn a_hold_parks_for_a_wake_up_and_keeps_reading_until_it_holds_too_much() {
        let mut conn = open();
        let steps = conn.apply(HOLD_FOR_DURABLE);
        assert!(steps.park && !steps.stop_reading && !steps.close);
        assert_eq!(conn.held(), Some(Until::Woken));
        assert!(conn.wants_reading());

        let steps = conn.apply(HOLD_TOO_MUCH);
        assert!(steps.stop_reading && !steps.park);
        assert!(conn.cancel_recv());
        assert!(!conn.cancel_recv(), "one cancellation is enough");
        conn.recv = RecvOp::Idle; // its final completion
        assert!(!conn.should_arm_recv(), "stopped reading stays stopped");

        let steps = conn.apply(HOLD_FOR_DURABLE);
        assert!(!steps.stop_reading, "already stopped");
        assert!(
            !conn.wants_reading(),
            "a new reason to hold does not resume reading"
        );

        let steps = conn.apply(Next::Read);
        assert!(steps.resume_reading);
        assert!(conn.should_arm_recv());
        assert_eq!(conn.held(), None);
    }

    #[test]
    fn after_a_pause_it_receives_one_buffer_at_a_time_until_the_queue_is_drained() {
        let mut conn = open();
        assert!(!conn.recv_one, "a new connection receives multishot");
        conn.apply(HOLD_TOO_MUCH);
        conn.apply(HOLD_FOR_DURABLE);
        assert!(!conn.recv_one, "nothing changes while paused");
        conn.apply(Next::Read);
        assert!(conn.recv_one);
        conn.received(16, 16);
        assert!(conn.recv_one, "a full buffer: more may be queued");
        conn.apply(Next::Read);
        assert!(conn.recv_one, "reading all along is no resume");
        conn.received(15, 16);
        assert!(!conn.recv_one, "the kernel's queue is drained");
    }

    #[test]
    fn read_after_the_peer_closed_means_close() {
        let mut conn = open();
        conn.peer_closed = true;
        assert!(conn.apply(Next::Read).close);
        assert!(!conn.wants_reading());
    }

    #[test]
    fn a_flushing_connection_reads_to_discard_and_is_never_freed_before_flushed() {
        let mut conn = open();
        assert!(conn.apply(Next::Close).close);
        conn.close_after_flush();
        assert_eq!(conn.phase, Phase::Flushing);
        assert!(conn.wants_reading());
        assert!(!conn.serving());
        assert!(!conn.may_free());
        conn.close_after_flush();
        assert_eq!(conn.phase, Phase::Flushing, "no change once closing");
    }

    #[test]
    fn flushed_with_the_peer_gone_closes_without_asking_the_socket() {
        let mut conn = open();
        conn.close_after_flush();
        conn.peer_closed = true;
        let flushed = conn.flushed(|| panic!("not asked"), Instant::now());
        assert_eq!(flushed, Flushed::Close);
        assert!(!conn.may_free(), "its receive is still armed");
        conn.recv = RecvOp::Idle;
        assert!(conn.may_free());
    }

    #[test]
    fn flushed_and_quiet_closes_at_once() {
        let mut conn = open();
        conn.close_after_flush();
        assert_eq!(
            conn.flushed(|| true, Instant::now()),
            Flushed::CloseStopReading
        );
        assert_eq!(conn.phase, Phase::Closing);
        assert!(!conn.wants_reading());
    }

    #[test]
    fn flushed_with_replies_in_flight_lingers_reading_until_freed() {
        let mut conn = Lifecycle::default();
        conn.close_after_flush();
        let deadline = Instant::now();
        assert_eq!(
            conn.flushed(|| false, deadline),
            Flushed::Linger { arm_recv: true }
        );
        assert_eq!(conn.phase, Phase::Lingering { deadline });
        assert!(conn.should_arm_recv());
        assert!(conn.may_free(), "nothing in flight: freeable at once");
        conn.recv = RecvOp::Armed;
        assert!(!conn.may_free());
    }

    #[test]
    fn closing_now_waits_for_every_operation() {
        let mut conn = open();
        conn.send_inflight = true;
        conn.close_now();
        assert!(!conn.wants_reading() && !conn.may_send());
        assert!(!conn.may_free());
        conn.send_inflight = false;
        assert!(!conn.may_free(), "the receive is still armed");
        assert!(conn.cancel_recv());
        assert!(!conn.may_free(), "cancelling is not over");
        conn.recv = RecvOp::Idle;
        assert!(conn.may_free());
        assert!(!conn.should_arm_recv());
    }
}
