//! The boundary between an I/O backend and the service layer: everything a backend may ask
//! of the service, and everything the service may answer. A backend moves bytes between
//! sockets and these calls; it holds no protocol or sequence logic, so a second backend
//! (epoll) drives the same sessions and streams by implementing the contract below.
//!
//! # The calls
//! A backend owns one value implementing [`Service`] per event loop (never shared between
//! threads) and, per connection, the [`Service::Conn`] that [`Service::open`] returned.
//!
//! | when                                              | call                      |
//! |---------------------------------------------------|---------------------------|
//! | a connection was accepted on a listener of `kind` | [`Service::open`]         |
//! | bytes were received                               | [`Service::receive`]      |
//! | the peer shut down its side (EOF)                 | [`Service::end_of_input`] |
//! | a hold the service asked for is over              | [`Service::resume`]       |
//! | the service's tick is due                         | [`Service::tick`], then [`Service::fill`] per connection returned |
//! | the slot is being freed                           | [`Service::close`]        |
//!
//! Every call that may produce replies appends them to `out`, the connection's queue of
//! bytes not yet handed to the kernel, and says what comes [`Next`].
//!
//! # What a backend must do
//! 1. Per listener of each [`Kind`], accept; admit up to the connection limit; over it, send
//!    [`Service::refusal`] if there is one and close. Pass [`Service::open`] the peer's
//!    address (protected mode serves only loopback peers while no password is set).
//! 2. Feed received bytes in order to [`Service::receive`]; at EOF call
//!    [`Service::end_of_input`] once. If the connection is held ([`Next::Hold`]) at EOF, its
//!    answer changes nothing: the hold stands, and the service, which now knows the input
//!    ended, finishes on resume.
//! 3. Act on every [`Next`]:
//!    - [`Next::Read`]: keep reading; if the peer has already closed, close after flush.
//!    - [`Next::Hold`]: the service answers nothing more until it is resumed. Go on
//!      reading and feeding what arrives (the service keeps it) while `keep_reading`; stop
//!      reading otherwise. When `until` is [`Until::Drained`] call [`Service::resume`] once
//!      every queued byte has been sent; when [`Until::Woken`], each time the loop's wake-up
//!      fires (the persister wrote) — a resume may answer another hold.
//!    - [`Next::Close`]: send what is queued, then close; feed nothing more.
//! 4. Send a connection's queued bytes in order, at most one send in flight per connection,
//!    ideally one send per connection per turn.
//! 5. When [`Service::take_housekeeping`] says so (checked after each receive), close at once
//!    the connections [`Service::released`] lists and re-arm the tick for
//!    [`Service::next_tick`]. When the tick fires, call [`Service::tick`], then
//!    [`Service::fill`] for each returned connection that is not closing, close the
//!    connections [`Service::released`] lists (streams let go, sessions idle past
//!    `--timeout`), and re-arm.
//! 6. Call [`Service::close`] exactly once per opened connection, when its slot is freed.
//! 7. Count a connection's output buffers and [`Service::held_input`] against the output
//!    limits after each call that may change them (`server/output.rs`).
//!
//! What a backend decides alone: buffers, readiness or completion handling, lingering after
//! close, shutdown grace, accept back-off. What it never decides: framing, replies, when a
//! connection pauses or closes for protocol reasons.

use std::time::Duration;

/// A connection's key within its event loop; unique among the loop's open connections.
pub type ConnKey = usize;

/// Which listener a connection came from, and so which handler serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The main port: binary, text and RESP sessions.
    Session,
    /// `--tls-port`: sessions as on the main port, over TLS (`server/tls.rs` decrypts before
    /// and encrypts after the session).
    TlsSession,
    /// `--stream-port`: the stream protocol.
    Stream,
}

/// What the backend does with a connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep reading and feeding input.
    Read,
    /// Nothing more is answered until [`Service::resume`] is called for `until`; input that
    /// arrives meanwhile is still fed (and kept) while `keep_reading`.
    Hold {
        until: Until,
        /// Whether to go on reading meanwhile (the service keeps what arrives); false once
        /// it holds too much.
        keep_reading: bool,
    },
    /// Send what is queued, then close. Further input is ignored.
    Close,
}

/// What a held connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Its queued output has all been sent (the client was not reading).
    Drained,
    /// The loop is woken: the persister made something durable.
    Woken,
}

/// The service layer as a backend sees it. See the module documentation for the contract.
pub trait Service {
    /// The service's state for one connection, kept in the backend's connection slot.
    type Conn;

    /// A connection accepted on a listener of `kind`, from `peer` (None: unknown).
    fn open(&mut self, kind: Kind, key: ConnKey, peer: Option<std::net::IpAddr>) -> Self::Conn;

    /// Bytes to send a connection of `kind` refused over the connection limit before closing
    /// it (None: close without a word).
    fn refusal(&self, kind: Kind) -> Option<&[u8]>;

    /// Bytes received from the connection, in order.
    fn receive(
        &mut self,
        conn: &mut Self::Conn,
        key: ConnKey,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Next;

    /// The peer will send nothing more.
    fn end_of_input(&mut self, conn: &mut Self::Conn, key: ConnKey, out: &mut Vec<u8>) -> Next;

    /// A hold is over (see [`Until`]).
    fn resume(&mut self, conn: &mut Self::Conn, key: ConnKey, out: &mut Vec<u8>) -> Next;

    /// The connection is gone; called once, when its slot is freed.
    fn close(&mut self, conn: &mut Self::Conn, key: ConnKey);

    /// Whether the service's tick or its list of released connections may have changed since
    /// the last call (cheap: a flag).
    fn take_housekeeping(&mut self) -> bool;

    /// Connections the service no longer serves: close them at once, dropping their output.
    fn released(&mut self) -> Vec<ConnKey>;

    /// How long until [`Service::tick`] is due (None: not until input arrives).
    fn next_tick(&self) -> Option<Duration>;

    /// Periodic work; returns the connections that may now have something to send.
    fn tick(&mut self) -> Vec<ConnKey>;

    /// Appends what connection `key` has due after a tick (nothing once enough waits in `out`).
    fn fill(&mut self, conn: &mut Self::Conn, key: ConnKey, out: &mut Vec<u8>);

    /// The memory the service holds for the connection's input (a frame split across
    /// receives, input kept while held), which the backend counts with its output buffers
    /// against `--maxmemory-clients`; it changes only within the calls above.
    fn held_input(&self, conn: &Self::Conn) -> usize;
}
