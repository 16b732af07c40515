//! The async client (cargo feature `tokio`): one connection shared by every task that holds
//! a clone of the [`AsyncClient`], concurrent calls pipelined into one write, reconnection
//! with backoff, several endpoints with leader following, and a timeout on every call.
//!
//! ```no_run
//! # async fn run() -> Result<(), seqd::client::ClientError> {
//! use seqd::client::AsyncClient;
//! let client = AsyncClient::builder(["h1:10001", "h2:10001"]).password("secret").connect().await?;
//! let id = client.get().await?;
//! let orders = client.sequence("orders").await?;
//! let range = client.get_batch_from(&orders, 100).await?;
//! for _ in 0..64 {
//!     let client = client.clone(); // the same connection
//!     tokio::spawn(async move { client.get_from(&orders).await });
//! }
//! # Ok(()) }
//! ```
//!
//! **Retries.** A call whose connection is lost, whose node answers `NOTLEADER` (the leader's
//! address: the client reconnects there) or `UNAVAILABLE`, or whose connection owes a reply
//! for longer than `reply_timeout` (the node is paused or cut off: the client leaves it) is
//! sent again, on the next connection, until `request_timeout` is over. A retry never replays a reply: the
//! failed connection is dropped with the replies it owed. A number request whose reply was
//! lost may have been served, so a retry may skip numbers; it never repeats one, since the
//! server never issues a number twice. A `lease` with ids gets the same range on a retry;
//! without ids it is a new lease (the lost one expires and is retired).
//!
//! **Named sequences** are [`Sequence`] handles: the client `OPEN`s every name it knows on
//! each new connection, so a handle stays valid across restarts and failovers.
//!
//! **TLS** (the server's `--tls-port`) is [`TlsConnector`], over the rustls configurations of
//! [`super::tls`]; any other stream plugs in as a [`Connector`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{ClientError, RangeSource, wire};
use crate::protocol::binary::{self, opcode};
use crate::protocol::{ErrorCode, LeaseIds};
use crate::sequence::{DEFAULT_SEQUENCE, SequenceId};

/// Opens connections: plain TCP ([`TcpConnector`]), or any stream that reads and writes
/// bytes (a TLS stream over TCP, a Unix socket in a test).
pub trait Connector: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// TCP with Nagle's algorithm off (requests are small and latency-bound).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self, addr: &str) -> io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// TLS over TCP: the server's certificate is checked against `config`'s roots and must name
/// `server_name`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use seqd::client::{AsyncClient, TlsConnector, tls};
/// let config = tls::client_config(std::path::Path::new("ca.crt"))?;
/// let connector = TlsConnector::new(config, "localhost")?;
/// let client = AsyncClient::builder(["127.0.0.1:6380"]).connect_with(connector).await?;
/// let id = client.get().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl TlsConnector {
    /// Fails if `server_name` is neither a DNS name nor an IP address.
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConnector, ClientError> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| {
                ClientError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{server_name:?} is not a server name for TLS: {e}"),
                ))
            })?;
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }
}

impl Connector for TlsConnector {
    type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        let tcp = TcpConnector.connect(addr).await?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// A sequence of the server: the default one, or one named (opened again on every new
/// connection, since ids are valid for one server process only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence(SeqRef);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqRef {
    Default,
    /// An index into the client's names.
    Named(usize),
}

impl Sequence {
    /// The sequence used when none is named (`default`, id 0).
    pub const DEFAULT: Sequence = Sequence(SeqRef::Default);
}

/// Settings of an [`AsyncClient`]; [`AsyncClient::builder`] starts one.
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    password: Option<String>,
    request_timeout: Duration,
    reply_timeout: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    queue: usize,
}

/// Requests in flight on one connection, at most: bounds both sides' buffers.
const WINDOW: usize = 16 * 1024;
/// Bytes encoded into one write, at most.
const MAX_WRITE: usize = 256 * 1024;
/// Pause before a retry when no node serves right now (`NOTLEADER unknown`, `UNAVAILABLE`).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

impl Builder {
    /// Where the request is tried first: the first endpoint, then the others in turn (and
    /// any leader a node names).
    pub fn password(mut self, password: impl Into<String>) -> Builder {
        self.password = Some(password.into());
        self
    }

    /// How long one call may take, retries included, before it fails with
    /// [`ClientError::Timeout`] (default 15 s: a crashed leader's lease and an election).
    pub fn request_timeout(mut self, timeout: Duration) -> Builder {
        self.request_timeout = timeout;
        self
    }

    /// How long a reply may be owed before its connection is given up, and its calls sent
    /// again on another (default 3 s).
    pub fn reply_timeout(mut self, timeout: Duration) -> Builder {
        self.reply_timeout = timeout;
        self
    }

    /// How long one connection attempt (connect, `AUTH`, `OPEN`s) may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder {
        self.connect_timeout = timeout;
        self
    }

    /// The pause after a failed connection attempt: `min`, doubled per failure up to `max`
    /// (default 10 ms to 1 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Builder {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Calls queued for the connection, at most, before a caller waits (default 65 536).
    pub fn queue(mut self, depth: usize) -> Builder {
        self.queue = depth.max(1);
        self
    }

    /// Starts the client over TCP and waits for a first answer (a `PING`), within
    /// `request_timeout`.
    pub async fn connect(self) -> Result<AsyncClient, ClientError> {
        self.connect_with(TcpConnector).await
    }

    /// Like [`Builder::connect`], over the streams `connector` opens.
    pub async fn connect_with(self, connector: impl Connector) -> Result<AsyncClient, ClientError> {
        let client = self.start_with(connector)?;
        client.ping().await?;
        Ok(client)
    }

    /// Starts the client without waiting: calls wait for the connection (within their
    /// timeout). Must be called inside a tokio runtime.
    pub fn start_with(self, connector: impl Connector) -> Result<AsyncClient, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Protocol("no endpoint given".into()));
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let shared = Arc::new(Shared {
            targets: Mutex::new(Targets {
                endpoints: self.endpoints.clone(),
                next: 0,
                named_leader: None,
            }),
            names: Mutex::new(Vec::new()),
            redirects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Protocol("the async client must be started inside a tokio runtime".into())
        })?;
        runtime.spawn(supervise(connector, rx, shared.clone(), self.clone()));
        Ok(AsyncClient {
            inner: Arc::new(Inner {
                tx,
                shared,
                settings: self,
            }),
        })
    }
}

/// A handle on one multiplexed connection; clone it for every task (clones share the
/// connection). The connection ends when the last clone is dropped.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    settings: Builder,
}

/// What the callers and the connection task share.
struct Shared {
    targets: Mutex<Targets>,
    /// Every sequence name the client was asked to open; a [`Sequence`] is an index here.
    names: Mutex<Vec<String>>,
    redirects: AtomicU64,
    reconnects: AtomicU64,
    requests: AtomicU64,
    writes: AtomicU64,
}

/// What an [`AsyncClient`] did so far (all its clones together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests written (a retried call counts each time).
    pub requests: u64,
    /// Writes they took: fewer than `requests` when concurrent calls were pipelined.
    pub writes: u64,
    /// `NOTLEADER` answers followed.
    pub redirects: u64,
    /// Connections lost or given up (errors, timeouts, refusals).
    pub reconnects: u64,
}

struct Targets {
    endpoints: Vec<String>,
    /// The endpoint to try when no leader was named.
    next: usize,
    /// The leader a follower named, tried first.
    named_leader: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds valid state.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn target(&self) -> String {
        let targets = lock(&self.targets);
        targets
            .named_leader
            .clone()
            .unwrap_or_else(|| targets.endpoints[targets.next].clone())
    }

    /// The next endpoint is tried from now on (no leader named).
    fn advance(&self) {
        let mut targets = lock(&self.targets);
        targets.named_leader = None;
        targets.next = (targets.next + 1) % targets.endpoints.len();
    }

    fn several_endpoints(&self) -> bool {
        lock(&self.targets).endpoints.len() > 1
    }
}

/// One request as the connection task sends it.
#[derive(Debug, Clone)]
enum Op {
    Get(SeqRef),
    GetBatch(SeqRef, u64),
    Current(SeqRef),
    Ping,
    /// The index of the name in the client's names, and the name.
    Open(usize, String),
    Lease {
        sequence: SeqRef,
        count: u64,
        ids: Option<(String, String)>,
    },
    Ack {
        sequence: SeqRef,
        first: u64,
        count: u64,
        client: Option<String>,
    },
}

impl Op {
    fn opcode(&self) -> u8 {
        match self {
            Op::Get(_) => opcode::GETSEQ,
            Op::GetBatch(..) => opcode::GETSEQ_BATCH,
            Op::Current(_) => opcode::CURRENT,
            Op::Ping => opcode::PING,
            Op::Open(..) => opcode::OPEN,
            Op::Lease { .. } => opcode::LEASE,
            Op::Ack { .. } => opcode::ACK,
        }
    }
}

type Answer = Result<(u32, u64), ClientError>;

struct Job {
    op: Op,
    reply: oneshot::Sender<Answer>,
}

impl AsyncClient {
    /// Settings for a client of `endpoints` (one address, or every node of a cluster).
    pub fn builder<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Builder {
        Builder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            password: None,
            request_timeout: Duration::from_secs(15),
            reply_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            queue: 64 * 1024,
        }
    }

    /// A client of one server with the default settings.
    pub async fn connect(addr: impl Into<String>) -> Result<AsyncClient, ClientError> {
        AsyncClient::builder([addr.into()]).connect().await
    }

    /// The next number of the default sequence.
    pub async fn get(&self) -> Result<u64, ClientError> {
        self.get_from(&Sequence::DEFAULT).await
    }

    pub async fn get_from(&self, sequence: &Sequence) -> Result<u64, ClientError> {
        Ok(self.call(Op::Get(sequence.0)).await?.1)
    }

    /// `count` consecutive numbers of the default sequence.
    pub async fn get_batch(&self, count: u64) -> Result<Range<u64>, ClientError> {
        self.get_batch_from(&Sequence::DEFAULT, count).await
    }

    pub async fn get_batch_from(
        &self,
        sequence: &Sequence,
        count: u64,
    ) -> Result<Range<u64>, ClientError> {
        let (n, first) = self.call(Op::GetBatch(sequence.0, count)).await?;
        Ok(wire::range(n, first))
    }

    /// The next number the default sequence will issue.
    pub async fn current(&self) -> Result<u64, ClientError> {
        self.current_of(&Sequence::DEFAULT).await
    }

    pub async fn current_of(&self, sequence: &Sequence) -> Result<u64, ClientError> {
        Ok(self.call(Op::Current(sequence.0)).await?.1)
    }

    /// The sequence called `name`, created on the server if it does not exist yet.
    pub async fn sequence(&self, name: &str) -> Result<Sequence, ClientError> {
        let index = {
            let mut names = lock(&self.inner.shared.names);
            match names.iter().position(|n| n == name) {
                Some(index) => index,
                None => {
                    names.push(name.to_owned());
                    names.len() - 1
                }
            }
        };
        self.call(Op::Open(index, name.to_owned())).await?;
        Ok(Sequence(SeqRef::Named(index)))
    }

    /// Leases `count` consecutive numbers of `sequence` until they are acknowledged with
    /// [`AsyncClient::ack`]. With `ids` (client id, request id), a retry — this client's own
    /// after a lost reply, or a later call with the same ids — returns the same range.
    pub async fn lease(
        &self,
        sequence: &Sequence,
        count: u64,
        ids: Option<(&str, &str)>,
    ) -> Result<Range<u64>, ClientError> {
        let ids = ids.map(|(c, r)| (c.to_owned(), r.to_owned()));
        let op = Op::Lease {
            sequence: sequence.0,
            count,
            ids,
        };
        let (n, first) = self.call(op).await?;
        Ok(wire::range(n, first))
    }

    /// Acknowledges the lease of exactly `range`. `client` is the client id it was leased
    /// with, if any: it lets a new connection (after a reconnect) acknowledge it.
    pub async fn ack(
        &self,
        sequence: &Sequence,
        range: Range<u64>,
        client: Option<&str>,
    ) -> Result<(), ClientError> {
        let op = Op::Ack {
            sequence: sequence.0,
            first: range.start,
            count: range.end.saturating_sub(range.start),
            client: client.map(str::to_owned),
        };
        self.call(op).await.map(drop)
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call(Op::Ping).await.map(drop)
    }

    pub fn stats(&self) -> ClientStats {
        let shared = &self.inner.shared;
        ClientStats {
            requests: shared.requests.load(Ordering::Relaxed),
            writes: shared.writes.load(Ordering::Relaxed),
            redirects: shared.redirects.load(Ordering::Relaxed),
            reconnects: shared.reconnects.load(Ordering::Relaxed),
        }
    }

    /// A [`RangeSource`] for an [`IdSource`](super::IdSource): batches of `sequence`. Its
    /// fetches run on the IdSource's own thread and wait there for this runtime, so that
    /// thread must not be one of the runtime's (it is not: the IdSource starts its own).
    pub fn range_source(&self, sequence: Sequence) -> impl RangeSource + use<> {
        let client = self.clone();
        let runtime = tokio::runtime::Handle::current();
        move |count: u64| runtime.block_on(client.get_batch_from(&sequence, count))
    }

    /// Sends `op` until it is answered, retrying where a retry is safe (module
    /// documentation), within `request_timeout`.
    async fn call(&self, op: Op) -> Answer {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.request_timeout;
        let timed_out = || ClientError::Timeout(settings.request_timeout);
        loop {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                op: op.clone(),
                reply,
            };
            match tokio::time::timeout_at(deadline, self.inner.tx.send(job)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(timed_out()),
            }
            // A connection whose oldest reply is later than `reply_timeout` is dropped by its
            // watchdog, which answers this call `Closed`: it is then sent again.
            let error = match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(Ok(value))) => return Ok(value),
                Ok(Ok(Err(error))) => error,
                // The connection task is gone (the runtime shuts down).
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(timed_out()),
            };
            let pause = match &error {
                ClientError::Server {
                    code: ErrorCode::NotLeader,
                    message,
                    ..
                } => message == "unknown",
                ClientError::Server {
                    code: ErrorCode::Unavailable,
                    ..
                } => true,
                ClientError::Io(_)
                | ClientError::Closed
                | ClientError::Refused(_)
                | ClientError::Timeout(_) => false,
                _ => return Err(error),
            };
            if Instant::now() >= deadline {
                return Err(match error {
                    ClientError::Timeout(_) => timed_out(),
                    other => other,
                });
            }
            if pause {
                tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
            }
        }
    }
}

/// Why a connection ended.
enum End {
    /// Every handle is gone.
    ClientGone,
    /// Lost, stuck, or out of step: try again (the next endpoint if `advance`).
    Lost { advance: bool },
    /// A node named the leader (or said none is known: `None`).
    Redirect(Option<String>),
}

/// The connection task: connects, serves until the connection ends, and again, until the
/// last handle is dropped.
async fn supervise(
    connector: impl Connector,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    settings: Builder,
) {
    let mut backoff = settings.backoff_min;
    loop {
        if rx.is_closed() && rx.is_empty() {
            return;
        }
        let target = shared.target();
        let attempt = tokio::time::timeout(
            settings.connect_timeout,
            handshake(&connector, &target, &shared, &settings),
        )
        .await;
        let (stream, ids) = match attempt {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                if let ClientError::Server { code, .. } = &error
                    && matches!(code, ErrorCode::WrongPass | ErrorCode::NoAuth)
                {
                    // A retry cannot fix a wrong or missing password: tell whoever waits.
                    refuse_waiting(&mut rx, &error);
                }
                shared.advance();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.backoff_max);
                continue;
            }
            Err(_) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                shared.advance();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.backoff_max);
                continue;
            }
        };
        backoff = settings.backoff_min;
        let mut connection = Connection {
            pending: VecDeque::new(),
            ids,
        };
        let end = connection
            .serve(stream, &mut rx, &shared, settings.reply_timeout)
            .await;
        // Whatever the connection owed is dropped with it: no reply is ever replayed, each
        // caller retries on the next connection.
        for pending in connection.pending.drain(..) {
            let _ = pending.reply.send(Err(ClientError::Closed));
        }
        match end {
            End::ClientGone => return,
            End::Lost { advance } => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                if advance {
                    shared.advance();
                }
            }
            End::Redirect(Some(leader)) => {
                shared.redirects.fetch_add(1, Ordering::Relaxed);
                lock(&shared.targets).named_leader = Some(leader);
            }
            End::Redirect(None) => {
                shared.redirects.fetch_add(1, Ordering::Relaxed);
                shared.advance();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Answers every call queued now with `error` (a server error, so callers do not retry).
fn refuse_waiting(rx: &mut mpsc::Receiver<Job>, error: &ClientError) {
    let ClientError::Server {
        code,
        detail,
        message,
    } = error
    else {
        return;
    };
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(ClientError::Server {
            code: *code,
            detail: *detail,
            message: message.clone(),
        }));
    }
}

/// Connects to `target`, authenticates, opens every known name; returns the stream and the
/// names' ids on this connection.
async fn handshake<C: Connector>(
    connector: &C,
    target: &str,
    shared: &Shared,
    settings: &Builder,
) -> Result<(C::Stream, Vec<Option<SequenceId>>), ClientError> {
    let mut stream = connector.connect(target).await?;
    let names = lock(&shared.names).clone();
    let mut out = Vec::new();
    let mut expected = Vec::new();
    match &settings.password {
        Some(password) => {
            binary::encode_auth(&mut out, password.as_bytes());
            expected.push(opcode::AUTH);
        }
        // A first answer proves the node serves this protocol (or refuses us in text).
        None => {
            wire::encode(&mut out, &super::Request::Ping);
            expected.push(opcode::PING);
        }
    }
    for name in &names {
        binary::encode_open(&mut out, name.as_bytes());
        expected.push(opcode::OPEN);
    }
    stream.write_all(&out).await?;
    let mut input = Vec::with_capacity(4096);
    let mut start = 0;
    let mut ids = Vec::with_capacity(names.len());
    for (i, &op) in expected.iter().enumerate() {
        let (_, value) = loop {
            if let wire::Decoded::Reply { consumed, result } = wire::decode(&input[start..], op)? {
                start += consumed;
                break result?;
            }
            read_more(&mut stream, &mut input, &mut start).await?;
        };
        if i > 0 {
            let id = SequenceId::try_from(value)
                .map_err(|_| ClientError::Protocol(format!("sequence id {value} out of range")))?;
            ids.push(Some(id));
        }
    }
    if start != input.len() {
        return Err(ClientError::Protocol("reply to nothing asked".into()));
    }
    Ok((stream, ids))
}

/// Reads what the stream has into `input` (dropping what was decoded); end of stream is
/// [`ClientError::Closed`].
async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    input: &mut Vec<u8>,
    start: &mut usize,
) -> Result<(), ClientError> {
    if *start == input.len() {
        input.clear();
        *start = 0;
    } else if *start > input.capacity() / 2 {
        input.drain(..*start);
        *start = 0;
    }
    input.reserve(64 * 1024);
    if stream.read_buf(input).await? == 0 {
        return Err(ClientError::Closed);
    }
    Ok(())
}

struct PendingReply {
    op: Op,
    reply: oneshot::Sender<Answer>,
    /// When its write started.
    sent: Instant,
}

/// One live connection: the calls sent on it, in order, and the names' ids on it.
struct Connection {
    pending: VecDeque<PendingReply>,
    ids: Vec<Option<SequenceId>>,
}

/// The writer and the reader of one connection take turns on it (one task: the lock is
/// never contended; it makes the futures `Send`).
struct Turns<'a> {
    connection: Mutex<&'a mut Connection>,
    /// The reader freed room in the window.
    room: Notify,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        rx: &mut mpsc::Receiver<Job>,
        shared: &Shared,
        reply_timeout: Duration,
    ) -> End {
        let (reader, writer) = tokio::io::split(stream);
        let turns = Turns {
            connection: Mutex::new(self),
            room: Notify::new(),
        };
        tokio::select! {
            end = turns.write(writer, rx, shared) => end,
            end = turns.read(reader, shared) => end,
            end = turns.watch(reply_timeout, shared) => end,
        }
    }
}

impl Turns<'_> {
    /// Sends every call queued, as many as are waiting in one write.
    async fn write(
        &self,
        mut writer: impl AsyncWrite + Unpin,
        rx: &mut mpsc::Receiver<Job>,
        shared: &Shared,
    ) -> End {
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            while lock(&self.connection).pending.len() >= WINDOW {
                self.room.notified().await;
            }
            let Some(job) = rx.recv().await else {
                return End::ClientGone;
            };
            out.clear();
            let mut job = Some(job);
            let mut requests = 0;
            let now = Instant::now();
            {
                let mut connection = lock(&self.connection);
                while let Some(next) = job.take() {
                    if !connection.encode(&mut out, next, now) {
                        // A name opened after this connection's handshake, by a call on an
                        // earlier one: a new connection opens it.
                        return End::Lost { advance: false };
                    }
                    requests += 1;
                    if out.len() < MAX_WRITE && connection.pending.len() < WINDOW {
                        job = rx.try_recv().ok();
                    }
                }
            }
            shared.requests.fetch_add(requests, Ordering::Relaxed);
            shared.writes.fetch_add(1, Ordering::Relaxed);
            if writer.write_all(&out).await.is_err() {
                return End::Lost { advance: true };
            }
        }
    }

    /// Ends a connection whose oldest reply is overdue (the node is paused, or cut off).
    async fn watch(&self, reply_timeout: Duration, shared: &Shared) -> End {
        let tick = (reply_timeout / 4).max(Duration::from_millis(5));
        loop {
            tokio::time::sleep(tick).await;
            let overdue = lock(&self.connection)
                .pending
                .front()
                .is_some_and(|p| p.sent.elapsed() > reply_timeout);
            if overdue {
                return End::Lost {
                    advance: shared.several_endpoints(),
                };
            }
        }
    }

    /// Hands each reply to its caller, in order.
    async fn read(&self, mut reader: impl AsyncRead + Unpin, shared: &Shared) -> End {
        let mut input = Vec::with_capacity(64 * 1024);
        let mut start = 0;
        loop {
            if read_more(&mut reader, &mut input, &mut start)
                .await
                .is_err()
            {
                return End::Lost { advance: true };
            }
            let mut connection = lock(&self.connection);
            loop {
                let Some(expected) = connection.pending.front().map(|p| p.op.opcode()) else {
                    if start < input.len() {
                        return End::Lost { advance: true };
                    }
                    break;
                };
                let (consumed, result) = match wire::decode(&input[start..], expected) {
                    Ok(wire::Decoded::Reply { consumed, result }) => (consumed, result),
                    Ok(wire::Decoded::Incomplete) => break,
                    Err(_) => return End::Lost { advance: true },
                };
                start += consumed;
                let Some(pending) = connection.pending.pop_front() else {
                    break;
                };
                let end = match &result {
                    Ok((_, value)) => {
                        if let Op::Open(index, _) = pending.op {
                            connection.record_open(index, *value);
                        }
                        None
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::NotLeader,
                        message,
                        ..
                    }) => {
                        // A node that names itself is a restarted standby whose old lease
                        // has not expired yet: no leader serves right now.
                        let known = message != "unknown" && *message != shared.target();
                        Some(End::Redirect(known.then(|| message.clone())))
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::Unavailable,
                        ..
                    }) if shared.several_endpoints() => Some(End::Lost { advance: true }),
                    Err(ClientError::Protocol(_)) => Some(End::Lost { advance: true }),
                    Err(_) => None,
                };
                let _ = pending.reply.send(result);
                if let Some(end) = end {
                    return end;
                }
            }
            drop(connection);
            self.room.notify_one();
        }
    }
}

impl Connection {
    /// Encodes `job` and records it as pending; false if it names a sequence this
    /// connection has not opened.
    fn encode(&mut self, out: &mut Vec<u8>, job: Job, now: Instant) -> bool {
        if self.encode_op(out, &job.op).is_none() {
            let _ = job.reply.send(Err(ClientError::Closed));
            return false;
        }
        self.pending.push_back(PendingReply {
            op: job.op,
            reply: job.reply,
            sent: now,
        });
        true
    }

    fn encode_op(&self, out: &mut Vec<u8>, op: &Op) -> Option<()> {
        let id = |sequence: &SeqRef| match *sequence {
            SeqRef::Default => Some(DEFAULT_SEQUENCE),
            SeqRef::Named(index) => self.ids.get(index).copied().flatten(),
        };
        match op {
            Op::Get(s) => binary::encode_request(out, opcode::GETSEQ, id(s)?, 0),
            Op::GetBatch(s, n) => binary::encode_request(out, opcode::GETSEQ_BATCH, id(s)?, *n),
            Op::Current(s) => binary::encode_request(out, opcode::CURRENT, id(s)?, 0),
            Op::Ping => binary::encode_request(out, opcode::PING, 0, 0),
            Op::Open(_, name) => binary::encode_open(out, name.as_bytes()),
            Op::Lease {
                sequence,
                count,
                ids,
            } => {
                let ids = ids.as_ref().map(|(client, request)| LeaseIds {
                    client: client.as_bytes(),
                    request: request.as_bytes(),
                });
                binary::encode_lease(out, id(sequence)?, *count, ids);
            }
            Op::Ack {
                sequence,
                first,
                count,
                client,
            } => {
                let client = client.as_deref().unwrap_or("").as_bytes();
                binary::encode_ack_as(out, id(sequence)?, *first, *count, client);
            }
        }
        Some(())
    }

    fn record_open(&mut self, index: usize, value: u64) {
        if let Ok(id) = SequenceId::try_from(value) {
            if self.ids.len() <= index {
                self.ids.resize(index + 1, None);
            }
            self.ids[index] = Some(id);
        }
    }
}
