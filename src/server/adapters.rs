//! The service layer behind [`Service`]: thin adapters over the session ([`Session`] with its
//! loop-wide [`LoopState`]) and the stream hub ([`StreamHub`]). This is the only file of
//! `src/server/` that names session or stream types, so moving them touches this file alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::handler::{ConnKey, Kind, Next, Service, Until};
use super::idle::IdleConnections;
use crate::clock::Now;
use crate::protocol::{Problem, Reply, text};
use crate::sequence::Registry;
use crate::service::stream_hub::{StreamHub, Verdict};
use crate::service::{LoopState, Pause, Session, Status, counters};
use crate::state::LeasesAndStreams;

pub use crate::service::Limits;
pub use crate::service::stream_hub::StreamSettings;

/// A held session stops being read once this much of its input is held.
const HELD_INPUT_LIMIT: usize = 1 << 20;
/// A stream connection gets more to send only while less than this waits to be sent.
const STREAM_BACKLOG: usize = 64 * 1024;

/// Per connection: which handler serves it, and its state.
#[derive(Debug)]
pub enum Handler {
    Session(Session),
    /// The stream hub keeps a stream connection's state, by key.
    Stream,
    /// Refused by protected mode: answered (sessions) and closed at its first input.
    Denied(Kind),
}

/// The services of one event loop: sessions on the main port, and (loop 0 only) the stream
/// protocol's hub.
pub struct Services {
    state: LoopState,
    refusal: Box<[u8]>,
    streams: Option<StreamPort>,
    /// Protected mode: `Some(the -DENIED reply)` while it is in force.
    denial: Option<Box<[u8]>>,
    /// `--timeout`: sessions' last input, and those found idle, to be released.
    idle: Option<IdleConnections>,
    idle_released: Vec<ConnKey>,
}

struct StreamPort {
    hub: StreamHub,
    /// A stream connection sent something since the last `take_housekeeping`.
    touched: bool,
    /// The time of the last tick, for the fills that follow it.
    tick_now: Now,
}

/// Who the main port admits, and how long it keeps an idle connection.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Connections served at once (all loops); the next is refused with a message.
    pub max_connections: usize,
    /// Refuse peers that are not on loopback (no password and a non-loopback bind).
    pub protected_mode: bool,
    /// Close a connection idle this long.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Services {
    pub fn new(
        registry: Arc<Registry>,
        records: Arc<LeasesAndStreams>,
        limits: Limits,
        admission: Admission,
        streams: Option<StreamSettings>,
        stream_sequence: Option<&str>,
    ) -> Services {
        let Admission {
            max_connections,
            protected_mode,
            idle_timeout,
        } = admission;
        let mut refusal = Vec::new();
        let problem = Problem::TooManyConnections {
            limit: max_connections,
        };
        text::encode_reply(&mut refusal, &Reply::Error { opcode: 0, problem });
        let streams = streams.map(|settings| {
            let now = Now::current();
            StreamPort {
                hub: StreamHub::new(settings, registry.clone(), records.clone(), now),
                touched: false,
                tick_now: now,
            }
        });
        let mut state = LoopState::with_records(registry, records, limits);
        if let Some(name) = stream_sequence {
            state.reserve_for_streams(name);
        }
        let denial = protected_mode.then(|| {
            let mut denial = Vec::new();
            let problem = Problem::ProtectedMode;
            text::encode_reply(&mut denial, &Reply::Error { opcode: 0, problem });
            denial.into_boxed_slice()
        });
        Services {
            state,
            refusal: refusal.into_boxed_slice(),
            streams,
            denial,
            idle: idle_timeout.map(|timeout| IdleConnections::new(timeout, Instant::now())),
            idle_released: Vec::new(),
        }
    }
}

fn session_next(status: Status, session: &Session) -> Next {
    match status {
        Status::Open => Next::Read,
        Status::Paused(pause) => Next::Hold {
            until: if pause.waits_for_persister() {
                Until::Woken
            } else {
                Until::Drained
            },
            // A client that does not read its replies gains nothing from more of its input
            // being read: stopping at once keeps what it costs to its replies (and stops the
            // loop's work for it until it reads). Waiting for the persister, input is taken
            // on meanwhile so the pipeline is ready when the ceiling rises.
            keep_reading: pause != Pause::Backpressure && session.buffered() <= HELD_INPUT_LIMIT,
        },
        Status::Closing => Next::Close,
    }
}

impl Service for Services {
    type Conn = Handler;

    fn open(&mut self, kind: Kind, key: ConnKey, peer: Option<std::net::IpAddr>) -> Handler {
        // An unknown peer counts as another host: protected mode fails closed.
        let from_loopback = peer.is_some_and(|ip| ip.to_canonical().is_loopback());
        if self.denial.is_some() && !from_loopback {
            tracing::debug!(?peer, ?kind, "connection denied: protected mode");
            counters::DENIED_PROTECTED_MODE.fetch_add(1, Ordering::Relaxed);
            return Handler::Denied(kind);
        }
        match kind {
            Kind::Session | Kind::TlsSession => {
                if let Some(idle) = &mut self.idle {
                    idle.heard_from(key, Instant::now());
                }
                Handler::Session(Session::with_peer(peer))
            }
            Kind::Stream => {
                if let Some(streams) = &mut self.streams {
                    streams.hub.open(key, peer);
                }
                Handler::Stream
            }
        }
    }

    fn refusal(&self, kind: Kind) -> Option<&[u8]> {
        match kind {
            Kind::Session => Some(&self.refusal),
            // A TLS client could not read it in plaintext: closed without a word.
            Kind::TlsSession => None,
            // The stream protocol has no error message: closing says it all.
            Kind::Stream => None,
        }
    }

    #[inline]
    fn receive(
        &mut self,
        conn: &mut Handler,
        key: ConnKey,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Next {
        match conn {
            Handler::Session(session) => {
                if let Some(idle) = &mut self.idle {
                    idle.heard_from(key, Instant::now());
                }
                let status = session.receive(data, &mut self.state, out);
                session_next(status, session)
            }
            Handler::Denied(kind) => {
                if let (Kind::Session | Kind::TlsSession, Some(denial)) = (kind, &self.denial) {
                    out.extend_from_slice(denial);
                }
                Next::Close
            }
            Handler::Stream => {
                let Some(streams) = &mut self.streams else {
                    return Next::Close;
                };
                // What a stream sends is paced by the tick alone: an acknowledgement never
                // triggers the next send.
                streams.touched = true;
                match streams.hub.receive(key, data, Now::current()) {
                    Verdict::Open => Next::Read,
                    Verdict::Close => Next::Close,
                }
            }
        }
    }

    fn end_of_input(&mut self, conn: &mut Handler, _key: ConnKey, _out: &mut Vec<u8>) -> Next {
        match conn {
            Handler::Session(session) => {
                let status = session.end_of_input();
                session_next(status, session)
            }
            Handler::Stream | Handler::Denied(_) => Next::Close,
        }
    }

    fn resume(&mut self, conn: &mut Handler, _key: ConnKey, out: &mut Vec<u8>) -> Next {
        match conn {
            Handler::Session(session) => {
                let status = session.resume(&mut self.state, out);
                session_next(status, session)
            }
            Handler::Stream => Next::Read,
            Handler::Denied(_) => Next::Close,
        }
    }

    fn close(&mut self, conn: &mut Handler, key: ConnKey) {
        if let (Handler::Session(_), Some(idle)) = (&*conn, &mut self.idle) {
            idle.forget(key);
        }
        if let Handler::Stream = conn
            && let Some(streams) = &mut self.streams
        {
            streams.hub.close(key, Now::current());
        }
    }

    #[inline]
    fn take_housekeeping(&mut self) -> bool {
        self.streams
            .as_mut()
            .is_some_and(|s| std::mem::take(&mut s.touched))
    }

    fn released(&mut self) -> Vec<ConnKey> {
        let mut released = self
            .streams
            .as_mut()
            .map(|s| s.hub.take_to_close())
            .unwrap_or_default();
        released.append(&mut self.idle_released);
        released
    }

    fn next_tick(&self) -> Option<std::time::Duration> {
        let streams = self
            .streams
            .as_ref()
            .and_then(|s| s.hub.next_tick(Now::current()));
        let idle = self.idle.as_ref().map(|i| i.next_check(Instant::now()));
        match (streams, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self) -> Vec<ConnKey> {
        if let Some(idle) = &mut self.idle {
            let before = self.idle_released.len();
            idle.check(Instant::now(), &mut self.idle_released);
            let closed = (self.idle_released.len() - before) as u64;
            counters::IDLE_CLOSED.fetch_add(closed, Ordering::Relaxed);
        }
        let Some(streams) = &mut self.streams else {
            return Vec::new();
        };
        streams.tick_now = Now::current();
        streams.hub.tick(streams.tick_now)
    }

    fn fill(&mut self, conn: &mut Handler, key: ConnKey, out: &mut Vec<u8>) {
        if let (Handler::Stream, Some(streams)) = (conn, &mut self.streams)
            && out.len() < STREAM_BACKLOG
        {
            streams.hub.fill(key, out, streams.tick_now);
        }
    }

    #[inline]
    fn held_input(&self, conn: &Handler) -> usize {
        match conn {
            Handler::Session(session) => session.held_input(),
            // A stream connection's input held is at most a part of one short frame; a
            // denied client's is dropped.
            Handler::Stream | Handler::Denied(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The boundary as a backend sees it, over the real session and hub.
    use super::*;
    use crate::commits::Commits;
    use crate::lease::LeaseSettings;

    fn services(registry: Registry, streams: Option<StreamSettings>) -> (Services, Arc<Registry>) {
        let registry = Arc::new(registry);
        let commits = match registry.is_durable() {
            true => Commits::persisted(),
            false => Commits::memory_only(),
        };
        let records = Arc::new(LeasesAndStreams::empty(commits, LeaseSettings::default()));
        let limits = Limits {
            max_batch: 1000,
            password: None,
            held_output: crate::service::OUTPUT_HIGH_WATER,
        };
        let admission = Admission {
            max_connections: 10,
            protected_mode: false,
            idle_timeout: None,
        };
        let services = Services::new(registry.clone(), records, limits, admission, streams, None);
        (services, registry)
    }

    fn stream_settings() -> StreamSettings {
        StreamSettings {
            interval: std::time::Duration::from_millis(1),
            burst: 64,
            ttl: std::time::Duration::from_secs(60),
            max_streams: 2,
            max_per_peer: 0,
            max_count: 1000,
            sequence: "stream".into(),
        }
    }

    #[test]
    fn a_session_answers_into_the_output_and_keeps_reading() {
        let (mut services, _) = services(Registry::new(8, 1), None);
        let mut conn = services.open(Kind::Session, 0, None);
        let mut out = Vec::new();
        let next = services.receive(&mut conn, 0, b"GETSEQ\r\nGETSEQ\r\nCURRENT", &mut out);
        assert_eq!((next, out.as_slice()), (Next::Read, &b":1\r\n:2\r\n"[..]));
        out.clear();
        let next = services.end_of_input(&mut conn, 0, &mut out);
        assert_eq!(
            (next, out.as_slice()),
            (Next::Read, &b""[..]),
            "a last line without a line ending is discarded at end of input, as Redis does"
        );
        assert!(
            !services.take_housekeeping(),
            "sessions need no housekeeping"
        );
    }

    #[test]
    fn an_unknown_protocol_is_answered_then_closed() {
        let (mut services, _) = services(Registry::new(8, 1), None);
        let mut conn = services.open(Kind::Session, 0, None);
        let mut out = Vec::new();
        assert_eq!(
            services.receive(&mut conn, 0, b"\x00\x01", &mut out),
            Next::Close
        );
        assert!(out.starts_with(b"-ERR"));
    }

    #[test]
    fn a_request_beyond_the_durable_ceiling_holds_until_woken() {
        let (mut services, registry) = services(Registry::durable(8, 1), None);
        let mut conn = services.open(Kind::Session, 0, None);
        let mut out = Vec::new();
        let held = Next::Hold {
            until: Until::Woken,
            keep_reading: true,
        };
        assert_eq!(
            services.receive(&mut conn, 0, b"GETSEQ\r\n", &mut out),
            held
        );
        assert!(out.is_empty());
        assert_eq!(services.resume(&mut conn, 0, &mut out), held);
        registry.get(0).unwrap().raise_ceiling(10);
        assert_eq!(services.resume(&mut conn, 0, &mut out), Next::Read);
        assert_eq!(out, b":1\r\n");
    }

    #[test]
    fn a_session_holding_too_much_input_asks_to_stop_reading() {
        let (mut services, _) = services(Registry::durable(8, 1), None);
        let mut conn = services.open(Kind::Session, 0, None);
        let mut out = Vec::new();
        services.receive(&mut conn, 0, b"GETSEQ\r\n", &mut out);
        let flood = vec![b'\n'; HELD_INPUT_LIMIT + 1];
        assert_eq!(
            services.receive(&mut conn, 0, &flood, &mut out),
            Next::Hold {
                until: Until::Woken,
                keep_reading: false
            }
        );
    }

    #[test]
    fn only_sessions_are_refused_with_words() {
        let (services, _) = services(Registry::new(8, 1), None);
        let refusal = services.refusal(Kind::Session).unwrap_or_default();
        assert!(refusal.starts_with(b"-LIMIT") && refusal.ends_with(b"\r\n"));
        assert_eq!(services.refusal(Kind::Stream), None);
    }

    #[test]
    fn without_a_stream_port_there_is_no_periodic_work() {
        let (mut services, _) = services(Registry::new(8, 1), None);
        assert_eq!(services.next_tick(), None);
        assert!(services.tick().is_empty());
        assert!(services.released().is_empty());
        assert!(!services.take_housekeeping());
    }

    #[test]
    fn stream_input_asks_for_housekeeping_once_and_end_of_input_closes() {
        let (mut services, _) = services(Registry::new(8, 1), Some(stream_settings()));
        let mut conn = services.open(Kind::Stream, 3, None);
        let mut out = Vec::new();
        services.receive(&mut conn, 3, b"CO", &mut out);
        assert!(
            out.is_empty(),
            "a stream's sends are paced by the tick alone"
        );
        assert!(services.take_housekeeping());
        assert!(!services.take_housekeeping());
        assert_eq!(services.end_of_input(&mut conn, 3, &mut out), Next::Close);
        services.close(&mut conn, 3);
    }
}
