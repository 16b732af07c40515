//! Rust clients of seqd's binary protocol. This module is the blocking client (single
//! requests and pipelines; [`LeaderClient`] follows a cluster's leader); with the `tokio`
//! feature, `AsyncClient` shares one pipelined connection between tasks; [`IdSource`]
//! hands out ids from ranges fetched in the background, on either. docs/RUST_CLIENT.md.
//!
//! ```no_run
//! let mut client = seqd::client::Client::connect("127.0.0.1:10001")?;
//! let id = client.get()?;                     // the next number of the default sequence
//! let range = client.get_batch(100)?;         // 100 consecutive numbers
//! let orders = client.open("orders")?;        // a named sequence
//! let order_id = client.get_from(orders)?;
//! // A range lease (the lease protocol): a retry with the same ids gets the same range.
//! let lease = client.lease(orders, 20, Some(("scanner-7", "42")))?;
//! client.ack(orders, lease)?;
//! # Ok::<(), seqd::client::ClientError>(())
//! ```
//!
//! A cluster (docs/HA.md): [`Client::connect_any`] takes every node's address and follows
//! the leader by itself (`NOTLEADER` redirects, dead or paused nodes). A request retried
//! after a lost reply may skip numbers, never repeat one.
//!
//! TLS (the server's `--tls-port`): [`Client::connect_tls`] with a configuration from
//! [`tls::client_config`].
//!
//! ```no_run
//! let mut client = seqd::client::Client::connect_any(&["h1:10001", "h2:10001", "h3:10001"])?;
//! let id = client.get()?;
//! # Ok::<(), seqd::client::ClientError>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod tls;
use tls::Transport;

use crate::protocol::ErrorCode;
use crate::protocol::binary::{self, opcode};
use crate::sequence::{DEFAULT_SEQUENCE, SequenceId};

#[cfg(feature = "tokio")]
pub mod async_client;
mod id_source;
mod wire;

#[cfg(feature = "tokio")]
pub use async_client::{
    AsyncClient, Builder, ClientStats, Connector, Sequence, TcpConnector, TlsConnector,
};
pub use id_source::{IdSource, IdSourceOptions, IdSourceStats, RangeSource};

/// Requests sent before their replies are read, at most; keeps both sides' buffers bounded so
/// a long pipeline cannot deadlock.
const PIPELINE_WINDOW: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error talking to seqd: {0}")]
    Io(#[from] io::Error),
    #[error("seqd answered {code:?} (detail {detail}): {message}")]
    Server {
        code: ErrorCode,
        detail: u64,
        message: String,
    },
    /// The server refused the connection before any request (e.g. too many connections).
    #[error("seqd refused the connection: {0}")]
    Refused(String),
    #[error("seqd closed the connection")]
    Closed,
    #[error("unexpected reply from seqd: {0}")]
    Protocol(String),
    /// No answer within the time the call allows (the async client, an [`IdSource`] waiting
    /// for a range).
    #[error("seqd did not answer within {0:?}")]
    Timeout(Duration),
}

/// One request of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Get(SequenceId),
    GetBatch(SequenceId, u64),
    Current(SequenceId),
    Ping,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Number(u64),
    Range(Range<u64>),
    Current(u64),
    Pong,
}

pub struct Client {
    stream: Transport,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Start of undecoded bytes in `input`.
    start: usize,
}

impl Client {
    /// A client of a cluster: connects to the first of `endpoints` that answers and follows
    /// the leader from then on (see [`LeaderClient`]).
    pub fn connect_any(endpoints: &[impl AsRef<str>]) -> Result<LeaderClient, ClientError> {
        LeaderClient::connect(endpoints)
    }

    /// Connects and disables Nagle's algorithm (requests are small and latency-bound).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client::over(Transport::Plain(stream)))
    }

    /// Connects to a TLS port (`--tls-port`) and completes the handshake: `config` says whom
    /// to trust (see [`tls::client_config`]), `server_name` is the host name or IP address
    /// the server's certificate must carry.
    pub fn connect_tls(
        addr: impl ToSocketAddrs,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client::over(Transport::tls(stream, config, server_name)?))
    }

    fn over(stream: Transport) -> Client {
        Client {
            stream,
            out: Vec::with_capacity(4096),
            input: Vec::with_capacity(64 * 1024),
            start: 0,
        }
    }

    /// Fails reads and writes that take longer than `timeout` (default: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.tcp().set_read_timeout(timeout)?;
        self.stream.tcp().set_write_timeout(timeout)?;
        Ok(())
    }

    /// The id of the sequence called `name`, created if it does not exist yet.
    pub fn open(&mut self, name: &str) -> Result<SequenceId, ClientError> {
        self.out.clear();
        binary::encode_open(&mut self.out, name.as_bytes());
        self.stream.write_all(&self.out)?;
        let value = self.read_reply(opcode::OPEN)?.1;
        SequenceId::try_from(value)
            .map_err(|_| ClientError::Protocol(format!("sequence id {value} out of range")))
    }

    /// Authenticates the connection with the server's `--requirepass` password (refused with
    /// [`ErrorCode::WrongPass`]; the server closes a connection after 10 wrong ones). Until
    /// then a server with a password answers every other request [`ErrorCode::NoAuth`].
    pub fn auth(&mut self, password: &str) -> Result<(), ClientError> {
        self.out.clear();
        binary::encode_auth(&mut self.out, password.as_bytes());
        self.stream.write_all(&self.out)?;
        self.read_reply(opcode::AUTH).map(drop)
    }

    /// The next number of the default sequence.
    pub fn get(&mut self) -> Result<u64, ClientError> {
        self.get_from(DEFAULT_SEQUENCE)
    }

    pub fn get_from(&mut self, sequence: SequenceId) -> Result<u64, ClientError> {
        match self.call(Request::Get(sequence))? {
            Response::Number(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// `count` consecutive numbers of the default sequence.
    pub fn get_batch(&mut self, count: u64) -> Result<Range<u64>, ClientError> {
        self.get_batch_from(DEFAULT_SEQUENCE, count)
    }

    pub fn get_batch_from(
        &mut self,
        sequence: SequenceId,
        count: u64,
    ) -> Result<Range<u64>, ClientError> {
        match self.call(Request::GetBatch(sequence, count))? {
            Response::Range(range) => Ok(range),
            other => Err(unexpected(&other)),
        }
    }

    /// The next number the default sequence will issue.
    pub fn current(&mut self) -> Result<u64, ClientError> {
        self.current_of(DEFAULT_SEQUENCE)
    }

    pub fn current_of(&mut self, sequence: SequenceId) -> Result<u64, ClientError> {
        match self.call(Request::Current(sequence))? {
            Response::Current(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Leases `count` consecutive numbers of `sequence` until they are acknowledged with
    /// [`Client::ack`]. With `ids` (client id, request id), a retry after a lost reply or a
    /// lost connection returns the same range — also after a server restart.
    pub fn lease(
        &mut self,
        sequence: SequenceId,
        count: u64,
        ids: Option<(&str, &str)>,
    ) -> Result<Range<u64>, ClientError> {
        self.out.clear();
        let ids = ids.map(|(client, request)| crate::protocol::LeaseIds {
            client: client.as_bytes(),
            request: request.as_bytes(),
        });
        binary::encode_lease(&mut self.out, sequence, count, ids);
        self.stream.write_all(&self.out)?;
        let (count, first) = self.read_reply(opcode::LEASE)?;
        Ok(wire::range(count, first))
    }

    /// Acknowledges the lease of exactly `range`. Answered once the acknowledgement is
    /// durable; an expired lease is [`ErrorCode::Expired`], an unknown or mismatched range
    /// [`ErrorCode::NoLease`].
    pub fn ack(&mut self, sequence: SequenceId, range: Range<u64>) -> Result<(), ClientError> {
        self.out.clear();
        let count = range.end.saturating_sub(range.start);
        binary::encode_ack(&mut self.out, sequence, range.start, count);
        self.stream.write_all(&self.out)?;
        self.read_reply(opcode::ACK).map(drop)
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.call(Request::Ping).map(drop)
    }

    fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let mut replies = self.pipeline(&[request])?;
        replies.pop().ok_or(ClientError::Closed)?
    }

    /// Sends `requests` back to back and returns their replies in order. The outer error is
    /// for the connection; each inner one is the server's answer to that request.
    pub fn pipeline(
        &mut self,
        requests: &[Request],
    ) -> Result<Vec<Result<Response, ClientError>>, ClientError> {
        let mut replies = Vec::with_capacity(requests.len());
        for window in requests.chunks(PIPELINE_WINDOW) {
            self.out.clear();
            for request in window {
                wire::encode(&mut self.out, request);
            }
            self.stream.write_all(&self.out)?;
            for request in window {
                let reply = match self.read_reply(wire::opcode_of(request)) {
                    Ok(reply) => Ok(wire::response(request, reply)),
                    Err(e @ ClientError::Server { .. }) => Err(e),
                    Err(e) => return Err(e),
                };
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    /// Reads one reply; returns its (count, value), or the server's error.
    fn read_reply(&mut self, expected: u8) -> Result<(u32, u64), ClientError> {
        loop {
            if let wire::Decoded::Reply { consumed, result } =
                wire::decode(&self.input[self.start..], expected)?
            {
                self.start += consumed;
                return result;
            }
            self.fill()?;
        }
    }

    /// Reads more bytes from the socket into `input`.
    fn fill(&mut self) -> Result<(), ClientError> {
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        } else if self.start > self.input.capacity() / 2 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        let len = self.input.len();
        self.input.resize(len + 64 * 1024, 0);
        let read = self.stream.read(&mut self.input[len..]);
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.input.truncate(len);
                return Err(e.into());
            }
        };
        self.input.truncate(len + n);
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// How long a [`LeaderClient`] keeps retrying one request by default (a crashed leader's
/// lease TTL plus an election, with room to spare).
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(15);
/// A reply slower than this means the node is stuck (paused, partitioned): try another.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a whole round of endpoints failed with no leader named: short at first, so a
/// graceful handover (tens of milliseconds) is noticed within a few; after
/// [`FAST_RETRIES_FOR`] of failing, longer, so a crash's election (about a second) costs each
/// client a few attempts per endpoint and second, not a busy loop.
const RETRY_PAUSE_FAST: Duration = Duration::from_millis(5);
const RETRY_PAUSE_SLOW: Duration = Duration::from_millis(25);
const FAST_RETRIES_FOR: Duration = Duration::from_millis(250);

/// A client of a seqd cluster that follows the leader: on `NOTLEADER <addr>` it reconnects
/// to `addr`, on `NOTLEADER unknown`, `UNAVAILABLE`, a connection error or a timeout it tries
/// the next endpoint, and retries the request there, for up to [`LeaderClient::retry_for`].
///
/// A retry never replays a reply: the connection that failed is dropped with whatever it
/// had buffered. A number request whose reply was lost may have been served (its numbers are
/// then skipped), but the server never issues a number twice, so no retry repeats one.
pub struct LeaderClient {
    endpoints: Vec<String>,
    /// The endpoint to try when no leader was named.
    next: usize,
    /// The leader a follower named, tried first.
    named_leader: Option<String>,
    client: Option<Client>,
    retry_for: Duration,
    reply_timeout: Option<Duration>,
    redirects: u64,
    reconnects: u64,
    /// Where the current connection goes.
    target: String,
    /// Attempts failed in a row with no leader named (every endpoint tried once per round).
    failed_in_row: usize,
}

impl LeaderClient {
    /// Connects to the first of `endpoints` that accepts; fails if none does within the
    /// retry time.
    pub fn connect(endpoints: &[impl AsRef<str>]) -> Result<LeaderClient, ClientError> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        if endpoints.is_empty() {
            return Err(ClientError::Protocol("no endpoint given".into()));
        }
        let mut client = LeaderClient {
            endpoints,
            next: 0,
            named_leader: None,
            client: None,
            retry_for: DEFAULT_RETRY_FOR,
            reply_timeout: Some(DEFAULT_REPLY_TIMEOUT),
            redirects: 0,
            reconnects: 0,
            target: String::new(),
            failed_in_row: 0,
        };
        client.with_retries(|c| c.ping())?;
        Ok(client)
    }

    /// How long one request is retried before its last error is returned.
    pub fn retry_for(&mut self, retry_for: Duration) -> &mut LeaderClient {
        self.retry_for = retry_for;
        self
    }

    /// How long a reply may take before the node is given up for another.
    pub fn reply_timeout(&mut self, timeout: Option<Duration>) -> &mut LeaderClient {
        self.reply_timeout = timeout;
        self.client = None;
        self
    }

    /// `NOTLEADER` replies followed so far.
    pub fn redirects(&self) -> u64 {
        self.redirects
    }

    /// Connections given up (errors, timeouts, refusals) so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    pub fn get(&mut self) -> Result<u64, ClientError> {
        self.with_retries(|c| c.get())
    }

    pub fn get_from(&mut self, sequence: SequenceId) -> Result<u64, ClientError> {
        self.with_retries(|c| c.get_from(sequence))
    }

    pub fn get_batch(&mut self, count: u64) -> Result<Range<u64>, ClientError> {
        self.with_retries(|c| c.get_batch(count))
    }

    pub fn get_batch_from(
        &mut self,
        sequence: SequenceId,
        count: u64,
    ) -> Result<Range<u64>, ClientError> {
        self.with_retries(|c| c.get_batch_from(sequence, count))
    }

    /// The id of the sequence called `name` (ids are the same on every leader).
    pub fn open(&mut self, name: &str) -> Result<SequenceId, ClientError> {
        self.with_retries(|c| c.open(name))
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.with_retries(|c| c.ping())
    }

    /// Runs `request` on the leader, following redirects and retrying on another node
    /// after a failure, until it succeeds, fails for a reason a retry cannot fix, or the
    /// retry time is over.
    pub fn with_retries<T>(
        &mut self,
        mut request: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        loop {
            let error = match self.connected() {
                Ok(client) => match request(client) {
                    Ok(value) => {
                        self.failed_in_row = 0;
                        return Ok(value);
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            // Whatever the connection had buffered is dropped with it: no reply is replayed.
            self.client = None;
            let pause = match &error {
                ClientError::Server {
                    code: ErrorCode::NotLeader,
                    message,
                    ..
                } => {
                    self.redirects += 1;
                    // A node that names itself is a restarted standby whose old lease has not
                    // expired yet: no leader serves right now.
                    if message == "unknown" || *message == self.target {
                        self.named_leader = None;
                        self.advance();
                        true
                    } else {
                        self.named_leader = Some(message.clone());
                        false
                    }
                }
                ClientError::Server {
                    code: ErrorCode::Unavailable,
                    ..
                }
                | ClientError::Io(_)
                | ClientError::Closed
                | ClientError::Refused(_) => {
                    self.reconnects += 1;
                    if self.named_leader.take().is_none() {
                        self.advance();
                    }
                    true
                }
                _ => return Err(error),
            };
            if started.elapsed() >= self.retry_for {
                return Err(error);
            }
            if pause {
                // The other endpoints first: the leader may be one of them already.
                self.failed_in_row += 1;
                if self.failed_in_row.is_multiple_of(self.endpoints.len()) {
                    std::thread::sleep(if started.elapsed() < FAST_RETRIES_FOR {
                        RETRY_PAUSE_FAST
                    } else {
                        RETRY_PAUSE_SLOW
                    });
                }
            }
        }
    }

    fn advance(&mut self) {
        self.next = (self.next + 1) % self.endpoints.len();
    }

    fn connected(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            let target = self
                .named_leader
                .clone()
                .unwrap_or_else(|| self.endpoints[self.next].clone());
            self.target.clone_from(&target);
            let mut client = Client::connect(target.as_str())?;
            client.set_timeout(self.reply_timeout)?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("not connected".into()))
    }
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {response:?}"))
}
