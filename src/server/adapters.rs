//! The service layer behind [`Service`]: thin adapters over the session ([`Session`] with its
//! loop-wide [`LoopState`]) and the stream hub ([`StreamHub`]). This is the only file of
//! `src/server/` that names session or stream types, so moving them touches this file alone.

use std::sync::Arc;

use super::handler::{ConnKey, Kind, Next, Service, Until};
use crate::protocol::{Problem, Reply, text};
use crate::sequence::Registry;
use crate::service::{LoopState, Session, Status};
use crate::store::records::Records;
use crate::stream::hub::{Now, StreamHub, Verdict};

pub use crate::service::Limits;
pub use crate::stream::hub::StreamSettings;

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
}

/// The services of one event loop: sessions on the main port, and (loop 0 only) the stream
/// protocol's hub.
pub struct Services {
    state: LoopState,
    refusal: Box<[u8]>,
    streams: Option<StreamPort>,
}

struct StreamPort {
    hub: StreamHub,
    /// A stream connection sent something since the last `take_housekeeping`.
    touched: bool,
    /// The time of the last tick, for the fills that follow it.
    tick_now: Now,
}

impl Services {
    pub fn new(
        registry: Arc<Registry>,
        records: Arc<Records>,
        limits: Limits,
        max_connections: usize,
        streams: Option<StreamSettings>,
    ) -> Services {
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
        Services {
            state: LoopState::with_records(registry, records, limits),
            refusal: refusal.into_boxed_slice(),
            streams,
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
            keep_reading: session.buffered() <= HELD_INPUT_LIMIT,
        },
        Status::Closing => Next::Close,
    }
}

impl Service for Services {
    type Conn = Handler;

    fn open(&mut self, kind: Kind, key: ConnKey) -> Handler {
        match kind {
            Kind::Session => Handler::Session(Session::new()),
            Kind::Stream => {
                if let Some(streams) = &mut self.streams {
                    streams.hub.open(key);
                }
                Handler::Stream
            }
        }
    }

    fn refusal(&self, kind: Kind) -> Option<&[u8]> {
        match kind {
            Kind::Session => Some(&self.refusal),
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
                let status = session.receive(data, &mut self.state, out);
                session_next(status, session)
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

    fn end_of_input(&mut self, conn: &mut Handler, _key: ConnKey, out: &mut Vec<u8>) -> Next {
        match conn {
            Handler::Session(session) => {
                let status = session.end_of_input(&mut self.state, out);
                session_next(status, session)
            }
            Handler::Stream => Next::Close,
        }
    }

    fn resume(&mut self, conn: &mut Handler, _key: ConnKey, out: &mut Vec<u8>) -> Next {
        match conn {
            Handler::Session(session) => {
                let status = session.resume(&mut self.state, out);
                session_next(status, session)
            }
            Handler::Stream => Next::Read,
        }
    }

    fn close(&mut self, conn: &mut Handler, key: ConnKey) {
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
        self.streams
            .as_mut()
            .map(|s| s.hub.take_to_close())
            .unwrap_or_default()
    }

    fn next_tick(&self) -> Option<std::time::Duration> {
        self.streams
            .as_ref()
            .and_then(|s| s.hub.next_tick(Now::current()))
    }

    fn tick(&mut self) -> Vec<ConnKey> {
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
}
