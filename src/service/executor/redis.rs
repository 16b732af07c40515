//! What a Redis client's connection adds to a session: the RESP version it chose with
//! `HELLO`, its name and id, and `MULTI` … `EXEC` transactions.
//!
//! A transaction keeps the raw bytes of its queued commands (they borrow from receive
//! buffers that do not outlive the call) and decodes them again at `EXEC`. `EXEC` first
//! reserves, per sequence, every number the transaction needs with one reservation, then
//! answers the commands in order from those reservations: the numbers of one transaction on
//! one sequence are consecutive, and a transaction that is discarded or aborted never
//! reserved anything.
//!
//! (Over 600 lines: the last 280 are its session tests, kept beside it.)

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Executor, Flow, LoopState, Wire};
use crate::protocol::redis::{self as resp, Command, RedisError, RedisReply, RespVersion};
use crate::protocol::{Problem, Reply, Request, text};
use crate::sequence::{BeyondDurable, ClusterRole, Refusal, SequenceId};
use crate::service::auth::AuthState;
use crate::service::{counters, replies};

/// Most commands one transaction may queue (its bytes are held until `EXEC`).
pub const MAX_QUEUED: usize = 1 << 20;

/// Client ids, unique in the process (Redis's `CLIENT ID`), handed out on first use.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Notes when the server started, for `INFO`'s uptime.
pub(super) fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// A connection's Redis-client state. Empty (and never touched by `GETSEQ`) until the client
/// sends a Redis command.
#[derive(Debug, Default)]
pub struct RedisClient {
    version: RespVersion,
    name: Option<Box<[u8]>>,
    id: u64,
    /// `Some` between `MULTI` and `EXEC`/`DISCARD`: every request is queued, not run.
    pub(super) transaction: Option<Box<Transaction>>,
    /// Whether the connection gave the password (any connection, not only Redis clients).
    pub(super) auth: AuthState,
}

impl RedisClient {
    pub(super) fn version(&self) -> RespVersion {
        self.version
    }

    fn id(&mut self) -> u64 {
        if self.id == 0 {
            self.id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        }
        self.id
    }
}

#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// The queued commands' frames, back to back, as received.
    frames: Vec<u8>,
    queued: usize,
    /// A queued command was refused: `EXEC` answers `EXECABORT`.
    aborted: bool,
    /// Reservations already made by an `EXEC` that then waited for a ceiling to rise.
    reserved: Vec<Cursor>,
}

/// The command word of a request that may not be queued, for the refusal.
fn unqueueable_name(request: &Request<'_>) -> Option<&'static [u8]> {
    Some(match request {
        Request::Get { .. }
        | Request::GetBatch { .. }
        | Request::Current { .. }
        | Request::Ping { .. }
        | Request::Redis(
            Command::IncrBy { .. }
            | Command::Get(_)
            | Command::Echo(_)
            | Command::Time
            | Command::DbSize,
        ) => return None,
        Request::Lease { .. } => b"GET_SEQUENCE_RANGE",
        Request::Ack { .. } | Request::AckAsClient { .. } => b"ACK",
        Request::LeaseStats => b"LEASES",
        Request::RedisHandshake { .. } => b"CONFIG/COMMAND",
        Request::Open { .. } => b"OPEN",
        Request::Auth { .. } => b"AUTH",
        Request::Redis(Command::Hello { .. }) => b"HELLO",
        Request::Redis(Command::Auth(_)) => b"AUTH",
        Request::Redis(Command::Select) => b"SELECT",
        Request::Redis(Command::Info(_)) => b"INFO",
        Request::Redis(Command::CommandCount) => b"COMMAND",
        Request::Redis(_) => b"CLIENT",
        Request::Quit
        | Request::Nothing
        | Request::Invalid(_)
        | Request::Refused { .. }
        | Request::RedisError(_) => {
            return None;
        }
    })
}

impl<W: Wire> Executor<'_, '_, '_, W> {
    fn redis_reply(&mut self, reply: RedisReply<'_>) -> Flow {
        if let RedisReply::Error(error) = &reply {
            counters::error_reply(error.prefix());
        }
        resp::encode(self.out, &reply, self.client.version);
        Flow::Continue
    }

    pub(super) fn redis_error(&mut self, error: RedisError<'_>) -> Flow {
        self.redis_reply(RedisReply::Error(error))
    }

    /// `-WRONGPASS`, counted; the connection closes after too many.
    fn wrong_password(&mut self) -> Flow {
        let closing = self.client.auth.failed();
        self.redis_error(RedisError::WrongPass);
        if closing { Flow::Close } else { Flow::Continue }
    }

    /// A seqd reply in the connection's RESP version.
    fn seqd_reply(&mut self, reply: Result<Reply<'_>, Problem<'_>>) -> Flow {
        let reply = reply.unwrap_or_else(|problem| Reply::Error { opcode: 0, problem });
        super::count_error(&reply);
        resp::encode_reply(self.out, &reply, self.client.version);
        Flow::Continue
    }

    /// A request that arrived between `MULTI` and `EXEC`: queued, or run if it ends or
    /// leaves the transaction. Cold: kept out of the number path it branches from.
    #[cold]
    pub(super) fn queue(&mut self, request: Request<'_>, frame: &[u8]) -> Flow {
        let Some(transaction) = self.client.transaction.as_deref_mut() else {
            return Flow::Continue;
        };
        match request {
            Request::Redis(Command::Exec) => return self.exec(),
            Request::Redis(Command::Discard) => {
                self.client.transaction = None;
                return self.redis_reply(RedisReply::Status("OK"));
            }
            Request::Redis(Command::Multi) => return self.redis_error(RedisError::MultiNested),
            Request::Redis(Command::Reset) | Request::Quit => return self.handle_alone(request),
            Request::Nothing => return Flow::Continue,
            Request::Invalid(problem) | Request::Refused { problem, .. } => {
                transaction.aborted = true;
                self.seqd_reply(Err(problem));
                return Flow::Continue;
            }
            Request::RedisError(error) => {
                transaction.aborted = true;
                return self.redis_error(error);
            }
            _ => {}
        }
        if let Some(name) = unqueueable_name(&request) {
            transaction.aborted = true;
            return self.redis_error(RedisError::NotInTransaction(name));
        }
        if transaction.queued >= MAX_QUEUED {
            transaction.aborted = true;
            return self.redis_error(RedisError::TransactionTooLong { limit: MAX_QUEUED });
        }
        transaction.frames.extend_from_slice(frame);
        transaction.queued += 1;
        self.redis_reply(RedisReply::Status("QUEUED"))
    }

    /// Serves a Redis command outside a transaction.
    #[cold]
    pub(super) fn redis(&mut self, command: Command<'_>) -> Flow {
        match command {
            Command::Hello {
                version,
                auth,
                name,
            } => {
                if let Some(auth) = auth {
                    if let Some(password) = &self.state.limits.password {
                        if !password.accepts(auth.user, auth.password) {
                            return self.wrong_password();
                        }
                        self.client.auth.authenticated = true;
                    } else if auth.user != Some(b"default") {
                        return self.redis_error(RedisError::WrongPass);
                    }
                }
                if let Some(version) = version {
                    self.client.version = version;
                }
                if let Some(name) = name {
                    self.client.name = (!name.is_empty()).then(|| name.into());
                }
                let id = self.client.id();
                let version = self.client.version;
                self.redis_reply(RedisReply::Hello { version, id })
            }
            // seqd has one user, `default`: without a password unless --requirepass sets one.
            Command::Auth(auth) => match (&self.state.limits.password, auth.user) {
                (Some(password), user) => {
                    if !password.accepts(user, auth.password) {
                        return self.wrong_password();
                    }
                    self.client.auth.authenticated = true;
                    self.redis_reply(RedisReply::Status("OK"))
                }
                (None, None) => self.redis_error(RedisError::AuthWithoutPassword),
                (None, Some(b"default")) => self.redis_reply(RedisReply::Status("OK")),
                (None, Some(_)) => self.redis_error(RedisError::WrongPass),
            },
            Command::ClientSetName(name) => {
                self.client.name = (!name.is_empty()).then(|| name.into());
                self.redis_reply(RedisReply::Status("OK"))
            }
            Command::ClientGetName => match self.client.name.take() {
                Some(name) => {
                    self.redis_reply(RedisReply::Bulk(&name));
                    self.client.name = Some(name);
                    Flow::Continue
                }
                None => self.redis_reply(RedisReply::Null),
            },
            Command::ClientId => {
                let id = self.client.id();
                self.redis_reply(RedisReply::Integer(id))
            }
            Command::ClientInfo => {
                let text = self.client_info();
                self.redis_reply(RedisReply::Text(text.as_bytes()))
            }
            Command::ClientAccepted | Command::Select => self.redis_reply(RedisReply::Status("OK")),
            Command::Info(section) => {
                let text = info(self.state, section);
                self.redis_reply(RedisReply::Text(text.as_bytes()))
            }
            Command::CommandCount => self.redis_reply(RedisReply::Integer(COMMAND_COUNT)),
            Command::Reset => {
                // The connection stays authenticated: seqd has one user, so RESET's return to
                // the default user changes nothing.
                *self.client = RedisClient {
                    id: self.client.id,
                    auth: self.client.auth,
                    ..RedisClient::default()
                };
                self.redis_reply(RedisReply::Status("RESET"))
            }
            Command::Multi => {
                self.client.transaction = Some(Box::default());
                self.redis_reply(RedisReply::Status("OK"))
            }
            Command::Exec => self.redis_error(RedisError::ExecWithoutMulti),
            Command::Discard => self.redis_error(RedisError::DiscardWithoutMulti),
            Command::IncrBy { .. }
            | Command::Get(_)
            | Command::Echo(_)
            | Command::Time
            | Command::DbSize => self.run_one(Request::Redis(command), &mut []),
        }
    }

    /// `EXEC`: reserves what the queued commands need, then answers them as one array.
    fn exec(&mut self) -> Flow {
        let Some(mut transaction) = self.client.transaction.take() else {
            return self.redis_error(RedisError::ExecWithoutMulti);
        };
        if transaction.aborted {
            return self.redis_error(RedisError::ExecAbort);
        }
        let needs = self.numbers_needed(&transaction.frames);
        for (id, total) in needs {
            if transaction.reserved.iter().any(|(done, _)| *done == id) {
                continue;
            }
            // Resolved by numbers_needed; sequences are never removed.
            let Some(sequence) = self.state.registry.get(id) else {
                continue;
            };
            let Some(reserved) = reserve(sequence, total, self.state) else {
                // EXEC is decoded again once the ceiling has risen; what is already reserved
                // stays with the transaction.
                self.client.transaction = Some(transaction);
                return Flow::AwaitCeiling(id);
            };
            transaction.reserved.push((id, reserved));
        }
        resp::encode(
            self.out,
            &RedisReply::ArrayOf(transaction.queued),
            self.client.version,
        );
        let mut cursors = std::mem::take(&mut transaction.reserved);
        for_each_frame(&transaction.frames, |request| {
            // Every sequence a queued command takes numbers from has its cursor: nothing here
            // waits.
            let _ = self.run_one(request, &mut cursors);
        });
        Flow::Continue
    }

    /// Per sequence, how many numbers the queued commands take.
    fn numbers_needed(&mut self, frames: &[u8]) -> Vec<(SequenceId, u64)> {
        let mut needs: Vec<(SequenceId, u64)> = Vec::new();
        let max_batch = self.state.limits.max_batch;
        for_each_frame(frames, |request| {
            let (target, count) = match request {
                Request::Get { target } => (target, 1),
                Request::GetBatch { target, count }
                | Request::Redis(Command::IncrBy { target, count })
                    if (1..=max_batch).contains(&count) =>
                {
                    (target, count)
                }
                _ => return,
            };
            let Ok(sequence) = self.state.resolve(target) else {
                return;
            };
            let id = sequence.id();
            match needs.iter_mut().find(|(seen, _)| *seen == id) {
                Some((_, total)) => *total = total.saturating_add(count),
                None => needs.push((id, count)),
            }
        });
        needs
    }

    /// Answers one command from the numbers in `cursors` (a transaction's reservations,
    /// advanced as they are handed out), or, outside a transaction (no cursors), with a
    /// reservation of its own: [`Flow::AwaitCeiling`] when that has to wait for a ceiling to rise.
    fn run_one(&mut self, request: Request<'_>, cursors: &mut [Cursor]) -> Flow {
        let max_batch = self.state.limits.max_batch;
        let (target, count, as_range) = match request {
            Request::Get { target } => (target, 1, false),
            Request::GetBatch { count, .. } | Request::Redis(Command::IncrBy { count, .. })
                if count == 0 || count > max_batch =>
            {
                return self.seqd_reply(Err(Problem::BatchOutOfRange { max: max_batch }));
            }
            Request::GetBatch { target, count } => (target, count, true),
            Request::Redis(Command::IncrBy { target, count }) => (target, count, false),
            Request::Current { target } => {
                let current = self.state.resolve(target).map(|s| (s.id(), s.current()));
                let reply = current.map(|(id, current)| match cursor(cursors, id) {
                    Some(Ok(next)) => Reply::Current(*next),
                    _ => Reply::Current(current),
                });
                return self.seqd_reply(reply);
            }
            Request::Redis(Command::Get(key)) => {
                let last = self.last_issued(key, cursors);
                let text;
                let reply = match last {
                    Some(n) => {
                        text = itoa::Buffer::new().format(n).to_owned();
                        RedisReply::Bulk(text.as_bytes())
                    }
                    None => RedisReply::Null,
                };
                return self.redis_reply(reply);
            }
            Request::Ping { echo } => return self.seqd_reply(Ok(Reply::Pong { echo })),
            Request::Redis(Command::Echo(message)) => {
                return self.redis_reply(RedisReply::Bulk(message));
            }
            Request::Redis(Command::Time) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                return self.redis_reply(RedisReply::Time {
                    seconds: now.as_secs(),
                    micros: now.subsec_micros(),
                });
            }
            Request::Redis(Command::DbSize) => {
                let size = self.state.registry.len() as u64;
                return self.redis_reply(RedisReply::Integer(size));
            }
            // Only the requests above are ever queued or passed here.
            _ => return Flow::Continue,
        };
        let id = match self.state.resolve(target) {
            Ok(sequence) => sequence.id(),
            Err(problem) => return self.seqd_reply(Err(problem)),
        };
        let first = match cursor(cursors, id) {
            Some(Ok(next)) => {
                let first = *next;
                *next += count;
                Ok(first)
            }
            Some(Err(problem)) => Err(*problem),
            None => {
                // Resolved just above; sequences are never removed.
                let Some(sequence) = self.state.registry.get(id) else {
                    return self.seqd_reply(Err(Problem::UnknownSequence(id)));
                };
                match reserve(sequence, count, self.state) {
                    Some(reserved) => reserved,
                    None => return Flow::AwaitCeiling(id),
                }
            }
        };
        if matches!(first, Err(Problem::Unavailable | Problem::NotLeader { .. })) {
            self.state.registry.persister_signals().count_refusal();
        }
        let reply = first.map(|first| match as_range {
            true => Reply::Range { first, count },
            false => Reply::Number(first + count - 1),
        });
        self.seqd_reply(reply)
    }

    /// `GET key`: the last number the sequence issued, or `None` if it does not exist or has
    /// issued nothing. Never creates the sequence.
    fn last_issued(&mut self, key: &[u8], cursors: &[Cursor]) -> Option<u64> {
        let registry = &*self.state.registry;
        let sequence = match self.state.names.get(key) {
            Some(&id) => registry.get(id)?,
            None => registry.iter().find(|s| s.name().as_bytes() == key)?,
        };
        let next = match cursors.iter().find(|(id, _)| *id == sequence.id()) {
            Some((_, Ok(next))) => *next,
            _ => sequence.current(),
        };
        (next > registry.initial()).then(|| next - 1)
    }

    fn client_info(&mut self) -> String {
        let id = self.client.id();
        let name = self
            .client
            .name
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let multi = match &self.client.transaction {
            Some(t) => t.queued as i64,
            None => -1,
        };
        let resp = match self.client.version {
            RespVersion::Resp2 => 2,
            RespVersion::Resp3 => 3,
        };
        format!("id={id} name={name} db=0 multi={multi} resp={resp}\n")
    }
}

/// Reserves `count` numbers: the first, or why none can be had; `None` when they wait for
/// the durable ceiling to rise (a raise has been asked for).
fn reserve(
    sequence: &crate::sequence::Sequence,
    count: u64,
    state: &LoopState,
) -> Option<Result<u64, Problem<'static>>> {
    match sequence.reserve(count) {
        Ok(first) => Some(Ok(first)),
        Err(Refusal::Exhausted { remaining }) => Some(Err(Problem::Exhausted { remaining })),
        // Fail closed while the disk is unavailable, as a run of GETSEQ does.
        Err(Refusal::AwaitingCeiling) => {
            let signals = state.registry.persister_signals();
            match signals.beyond_durable() {
                BeyondDurable::Refuse => Some(Err(replies::unissuable(signals))),
                BeyondDurable::Wait => None,
            }
        }
    }
}

/// A transaction's reservation on a sequence: the next number to hand out, or why none.
type Cursor = (SequenceId, Result<u64, Problem<'static>>);

fn cursor(cursors: &mut [Cursor], id: SequenceId) -> Option<&mut Result<u64, Problem<'static>>> {
    cursors
        .iter_mut()
        .find(|(seen, _)| *seen == id)
        .map(|(_, next)| next)
}

/// Decodes a transaction's queued frames again, in order.
fn for_each_frame<'a>(frames: &'a [u8], mut each: impl FnMut(Request<'a>)) {
    let mut pos = 0;
    while pos < frames.len() {
        // Every frame decoded once already, when it was queued.
        let Ok(parsed) = text::decode_request(&frames[pos..]) else {
            return;
        };
        each(parsed.message);
        pos += parsed.consumed;
    }
}

/// What `COMMAND COUNT` answers: the commands seqd serves, as the unknown-command error lists
/// them.
const COMMAND_COUNT: u64 = list_length(crate::protocol::TEXT_COMMANDS);

/// Items in a comma-separated list.
const fn list_length(list: &str) -> u64 {
    let bytes = list.as_bytes();
    let (mut i, mut items) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            items += 1;
        }
        i += 1;
    }
    items
}

/// `INFO [section]`: Redis's `# Section` / `key:value` text, plus a `seqd` section with every
/// sequence's next number and how far its durable ceiling is ahead.
fn info(state: &LoopState, section: Option<&[u8]>) -> String {
    let wanted = |name: &str| match section {
        None => true,
        Some(s) => {
            s.eq_ignore_ascii_case(name.as_bytes())
                || [&b"all"[..], b"default", b"everything"]
                    .iter()
                    .any(|all| s.eq_ignore_ascii_case(all))
        }
    };
    let registry = &*state.registry;
    let mut text = String::new();
    // Writing to a String cannot fail.
    if wanted("server") {
        let uptime = STARTED.get().map_or(0, |s| s.elapsed().as_secs());
        let _ = write!(
            text,
            "# Server\r\nredis_version:{}\r\nseqd_version:{}\r\nredis_mode:standalone\r\n\
             os:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\nuptime_in_seconds:{uptime}\r\n\
             uptime_in_days:{}\r\n\r\n",
            resp::REDIS_COMPATIBLE_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            uptime / 86_400,
        );
    }
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    if wanted("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n\r\n",
            counters::CONNECTED.load(Ordering::Relaxed)
        );
    }
    if wanted("memory") {
        // The unsent replies of every client: what --maxmemory-clients caps.
        let _ = write!(
            text,
            "# Memory\r\nmem_clients_normal:{}\r\n\r\n",
            counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed)
        );
    }
    if wanted("persistence") {
        let _ = write!(
            text,
            "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:0\r\n\
             aof_enabled:0\r\nseqd_durable:{}\r\n\r\n",
            u8::from(registry.is_durable())
        );
    }
    if wanted("stats") {
        let stats = state.records.leases.stats();
        let requests = counters::Protocol::ALL.map(counters::requests);
        let errors: u64 = counters::errors().iter().map(|(_, n)| n).sum();
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             rejected_connections:{}\r\ntotal_error_replies:{errors}\r\n\
             client_output_buffer_limit_disconnections:{}\r\nevicted_clients:{}\r\n\
             seqd_auth_failures:{}\r\nseqd_denied_protected_mode:{}\r\n\
             seqd_idle_closed:{}\r\n",
            count(&counters::CONNECTIONS_RECEIVED),
            requests.iter().sum::<u64>(),
            count(&counters::REJECTED_CONNECTIONS),
            count(&counters::OUTPUT_LIMIT_DISCONNECTIONS),
            count(&counters::EVICTED_CLIENTS),
            count(&counters::AUTH_FAILURES),
            count(&counters::DENIED_PROTECTED_MODE),
            count(&counters::IDLE_CLOSED),
        );
        for (protocol, n) in counters::Protocol::ALL.iter().zip(requests) {
            let _ = write!(text, "seqd_requests_{}:{n}\r\n", protocol.name());
        }
        let _ = write!(
            text,
            "leases_outstanding:{}\r\nleases_granted:{}\r\nleases_acknowledged:{}\r\n\
             leases_refused_per_peer:{}\r\nstreams_refused_per_peer:{}\r\n\r\n",
            stats.outstanding,
            stats.totals.granted,
            stats.totals.acknowledged,
            count(&counters::LEASES_REFUSED_PER_PEER),
            count(&counters::STREAMS_REFUSED_PER_PEER),
        );
    }
    if wanted("errorstats") {
        text.push_str("# Errorstats\r\n");
        for (kind, n) in counters::errors() {
            let _ = write!(text, "errorstat_{kind}:count={n}\r\n");
        }
        text.push_str("\r\n");
    }
    if wanted("keyspace") {
        let _ = write!(text, "# Keyspace\r\n");
        if !registry.is_empty() {
            let _ = write!(text, "db0:keys={},expires=0,avg_ttl=0\r\n", registry.len());
        }
        text.push_str("\r\n");
    }
    if wanted("seqd") {
        let _ = write!(
            text,
            "# seqd\r\nsequences:{}\r\nsequence_limit:{}\r\n",
            registry.len(),
            registry.capacity()
        );
        match registry.persister_signals().cluster_role() {
            None => {}
            Some(ClusterRole::Leader) => text.push_str("role:leader\r\n"),
            Some(ClusterRole::Follower { leader }) => {
                let _ = write!(
                    text,
                    "role:follower\r\nleader:{}\r\n",
                    leader.unwrap_or("unknown")
                );
            }
        }
        for sequence in registry.iter() {
            let next = sequence.current();
            let ceiling = sequence.ceiling();
            // Keyed by id: a name may hold ':', which ends an INFO key.
            let _ = write!(
                text,
                "sequence_{}:name={},next={next},ceiling={ceiling},headroom={}\r\n",
                sequence.id(),
                sequence.name(),
                ceiling.saturating_sub(next)
            );
        }
        text.push_str("\r\n");
    }
    // Redis ends the text without the blank line after the last section.
    if text.ends_with("\r\n\r\n") {
        text.truncate(text.len() - 2);
    }
    text
}

#[cfg(test)]
mod tests {
    use crate::sequence::Registry;
    use crate::service::{Limits, LoopState, Pause, Session, Status};
    use std::sync::Arc;

    fn state() -> LoopState {
        LoopState::new(
            Arc::new(Registry::new(8, 1)),
            Limits {
                max_batch: 100,
                password: None,
                held_output: crate::service::OUTPUT_HIGH_WATER,
            },
        )
    }

    fn exchange(session: &mut Session, state: &mut LoopState, input: &str) -> String {
        let mut out = Vec::new();
        session.receive(input.as_bytes(), state, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hello_3_switches_the_connection_to_resp3() {
        let mut st = state();
        let mut s = Session::new();
        let out = exchange(&mut s, &mut st, "GET orders\r\nCLIENT GETNAME\r\n");
        assert_eq!(out, "$-1\r\n$-1\r\n", "RESP2 until HELLO 3");
        let out = exchange(
            &mut s,
            &mut st,
            "HELLO 3 SETNAME app\r\nCLIENT GETNAME\r\nGET orders\r\nGETSEQ\r\n\
             CONFIG GET save\r\nCLIENT ID\r\n",
        );
        let (hello, rest) = out.split_at(out.find("$3\r\napp").unwrap());
        assert!(
            hello.starts_with("%7\r\n$6\r\nserver\r\n$4\r\nseqd\r\n"),
            "{hello}"
        );
        assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
        let id = hello.split("$2\r\nid\r\n:").nth(1).unwrap();
        let id = &id[..id.find("\r\n").unwrap()];
        assert_eq!(
            rest,
            format!("$3\r\napp\r\n_\r\n:1\r\n%1\r\n$4\r\nsave\r\n$0\r\n\r\n:{id}\r\n")
        );
        let out = exchange(&mut s, &mut st, "RESET\r\nGET orders\r\nCLIENT GETNAME\r\n");
        assert_eq!(out, "+RESET\r\n$-1\r\n$-1\r\n", "RESET: RESP2, no name");
        let out = exchange(
            &mut s,
            &mut st,
            "HELLO 4\r\nHELLO 3 AUTH bob pw\r\nPING\r\n",
        );
        assert!(out.starts_with("-NOPROTO unsupported protocol version\r\n-WRONGPASS"));
        assert!(out.ends_with("+PONG\r\n"), "{out}");
    }

    #[test]
    fn housekeeping_commands() {
        let mut st = state();
        let mut s = Session::new();
        let out = exchange(
            &mut s,
            &mut st,
            "CLIENT SETINFO lib-name redis-py\r\nCLIENT NO-EVICT on\r\nSELECT 0\r\nSELECT 1\r\n\
             ECHO hi\r\nDBSIZE\r\nINCR a\r\nDBSIZE\r\nCOMMAND COUNT\r\n",
        );
        assert_eq!(
            out,
            "+OK\r\n+OK\r\n+OK\r\n-ERR DB index is out of range: seqd has one database, \
             SELECT 0\r\n$2\r\nhi\r\n:1\r\n:1\r\n:2\r\n:25\r\n"
        );
        let out = exchange(&mut s, &mut st, "TIME\r\n");
        assert!(out.starts_with("*2\r\n$10\r\n"), "{out}");
        let out = exchange(&mut s, &mut st, "CLIENT INFO\r\n");
        assert!(out.contains(" name= db=0 multi=-1 resp=2\n\r\n"), "{out}");
    }

    #[test]
    fn info_has_redis_sections_and_every_sequence() {
        let mut st = state();
        let mut s = Session::new();
        exchange(&mut s, &mut st, "INCR orders\r\nINCRBY orders 9\r\n");
        let out = exchange(&mut s, &mut st, "INFO\r\n");
        for line in [
            "# Server\r\nredis_version:7.2.0\r\n",
            "# Persistence\r\nloading:0\r\n",
            "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n",
            "# seqd\r\nsequences:2\r\nsequence_limit:8\r\n",
            "sequence_1:name=orders,next=11,ceiling=",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        assert!(out.ends_with("\r\n\r\n") && !out.ends_with("\r\n\r\n\r\n"));
        let out = exchange(&mut s, &mut st, "INFO persistence\r\n");
        assert!(out.starts_with("$") && !out.contains("# Server"), "{out}");
        let out = exchange(&mut s, &mut st, "HELLO 3\r\n");
        assert!(out.starts_with('%'));
        let out = exchange(&mut s, &mut st, "INFO keyspace\r\n");
        assert_eq!(
            out,
            "=48\r\ntxt:# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n\r\n"
        );
    }

    #[test]
    fn incr_incrby_and_get_are_a_named_sequence() {
        let mut st = state();
        let mut s = Session::new();
        let out = exchange(
            &mut s,
            &mut st,
            "GET ids\r\nDBSIZE\r\nINCR ids\r\nINCR ids\r\nGET ids\r\nINCRBY ids 10\r\n\
             GET ids\r\nCURRENT ids\r\nGETSEQ ids\r\nSET ids 5\r\nINCRBY ids 0\r\n",
        );
        assert_eq!(
            out,
            "$-1\r\n:1\r\n:1\r\n:2\r\n$1\r\n2\r\n:12\r\n$2\r\n12\r\n:13\r\n:13\r\n\
             -ERR 'SET' is not supported: a key is a sequence, and a sequence never goes \
             back (use INCR, INCRBY and GET)\r\n\
             -ERR increment must be at least 1: a sequence never goes back\r\n",
            "GET neither creates the sequence (DBSIZE 1: only the default) nor consumes"
        );
    }

    #[test]
    fn a_transaction_is_queued_then_served_as_one_unit() {
        let mut st = state();
        let (mut a, mut b) = (Session::new(), Session::new());
        let out = exchange(
            &mut a,
            &mut st,
            "MULTI\r\nGETSEQ\r\nINCR orders\r\nGETSEQ\r\n",
        );
        assert_eq!(out, "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n");
        // Queued, not run: another client is served first.
        assert_eq!(exchange(&mut b, &mut st, "GETSEQ\r\n"), ":1\r\n");
        let out = exchange(
            &mut a,
            &mut st,
            "CURRENT\r\nGET orders\r\nGETSEQ_BATCH 3\r\nINCRBY orders 5\r\nPING\r\nEXEC\r\n\
             GETSEQ\r\n",
        );
        assert_eq!(
            out,
            "+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n\
             *8\r\n:2\r\n:1\r\n:3\r\n:4\r\n$1\r\n1\r\n*2\r\n:4\r\n:6\r\n:6\r\n+PONG\r\n:7\r\n"
        );
    }

    #[test]
    fn discarded_and_aborted_transactions_consume_nothing() {
        let mut st = state();
        let mut s = Session::new();
        let out = exchange(
            &mut s,
            &mut st,
            "MULTI\r\nGETSEQ\r\nDISCARD\r\nMULTI\r\nGETSEQ\r\nFOOBAR\r\nGETSEQ\r\nEXEC\r\n\
             MULTI\r\nMULTI\r\nGET_SEQUENCE_RANGE 5\r\nEXEC\r\nEXEC\r\nDISCARD\r\nGETSEQ\r\n",
        );
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[..3], ["+OK", "+QUEUED", "+OK"]);
        assert_eq!(lines[3..5], ["+OK", "+QUEUED"]);
        assert!(lines[5].starts_with("-ERR Unknown command 'FOOBAR'"));
        assert_eq!(
            lines[6..8],
            [
                "+QUEUED",
                "-EXECABORT Transaction discarded because of previous errors."
            ]
        );
        assert_eq!(lines[8..10], ["+OK", "-ERR MULTI calls can not be nested"]);
        assert!(lines[10].starts_with("-ERR 'GET_SEQUENCE_RANGE' is not allowed inside MULTI"));
        assert!(lines[11].starts_with("-EXECABORT"));
        assert_eq!(
            lines[12..],
            [
                "-ERR EXEC without MULTI",
                "-ERR DISCARD without MULTI",
                ":1",
                ""
            ]
        );
        assert_eq!(st.registry().get(0).unwrap().current(), 2);
    }

    #[test]
    fn exec_waits_for_a_durable_ceiling_and_keeps_its_numbers_consecutive() {
        let registry = Arc::new(Registry::durable(8, 1));
        registry.get(0).unwrap().raise_ceiling(3); // 1 and 2 may be issued
        let mut st = LoopState::new(
            registry.clone(),
            Limits {
                max_batch: 100,
                password: None,
                held_output: crate::service::OUTPUT_HIGH_WATER,
            },
        );
        let mut s = Session::new();
        let mut out = Vec::new();
        let status = s.receive(
            b"MULTI\r\nGETSEQ\r\nGETSEQ\r\nGETSEQ\r\nEXEC\r\nPING\r\n",
            &mut st,
            &mut out,
        );
        assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(0)));
        assert_eq!(out, b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n");
        assert_eq!(
            registry.get(0).unwrap().current(),
            1,
            "nothing reserved yet"
        );
        registry.get(0).unwrap().raise_ceiling(100);
        out.clear();
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        assert_eq!(out, b"*3\r\n:1\r\n:2\r\n:3\r\n+PONG\r\n");
        // INCRBY (what redis-py's incr sends) on a new sequence waits for its ceiling too.
        out.clear();
        let status = s.receive(b"INCRBY fresh 1\r\nINCR fresh\r\n", &mut st, &mut out);
        assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(1)));
        assert!(out.is_empty());
        registry.get(1).unwrap().raise_ceiling(100);
        assert_eq!(s.resume(&mut st, &mut out), Status::Open);
        assert_eq!(out, b":1\r\n:2\r\n");
    }

    #[test]
    fn exhausted_sequence_refuses_its_commands_in_exec_only() {
        let max = crate::sequence::MAX_VALUE;
        let mut st = LoopState::new(
            Arc::new(Registry::new(8, max)),
            Limits {
                max_batch: 100,
                password: None,
                held_output: crate::service::OUTPUT_HIGH_WATER,
            },
        );
        let mut s = Session::new();
        let out = exchange(
            &mut s,
            &mut st,
            "MULTI\r\nGETSEQ\r\nGETSEQ\r\nINCR other\r\nEXEC\r\n",
        );
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[4], "*3");
        assert!(lines[5].starts_with("-EXHAUSTED") && lines[6].starts_with("-EXHAUSTED"));
        assert_eq!(lines[7], format!(":{max}"));
        assert_eq!(
            st.registry().get(0).unwrap().current(),
            max,
            "nothing consumed"
        );
    }

    #[test]
    fn an_unfinished_resp_command_at_end_of_input_is_discarded() {
        let mut st = state();
        for (n, partial) in [
            &b"*2\r\n$18\r\nGET_SEQUENCE_RANGE\r\n$2\r\n20\r"[..],
            b"*2\r\n$18\r\nGET_SEQUENCE_RANGE\r\n$2\r\n20",
            b"*1\r\n$6\r\nGETSEQ\r",
        ]
        .into_iter()
        .enumerate()
        {
            let mut out = Vec::new();
            let mut s = Session::new();
            s.receive(b"GETSEQ\r\n", &mut st, &mut out);
            s.receive(partial, &mut st, &mut out);
            assert_eq!(s.end_of_input(), Status::Open);
            assert_eq!(out, format!(":{}\r\n", n + 1).as_bytes(), "{partial:?}");
        }
        assert_eq!(
            st.registry().get(0).unwrap().current(),
            4,
            "three GETSEQs ran"
        );
        assert_eq!(st.records.leases.stats().totals.granted, 0);
    }
}
