//! The lease table: the lease protocol's range leases as pure state. No I/O, no clock and no
//! log: callers pass the time (milliseconds since the Unix epoch, so deadlines survive a
//! restart) and the [`Commits`] that number each change for durability; refusals are
//! [`LeaseRefusal`]s (the service words them for the wire) and what deserves a log line is
//! queued as a [`LeaseEvent`] for the caller to report.
//!
//! A lease is `count` consecutive numbers of one sequence, granted to a client until it
//! acknowledges them or `--lease-timeout` passes. Its life:
//!
//! ```text
//! granted ──ACK──▶ acknowledged ──retention──▶ forgotten
//!    │
//!    └─timeout──▶ expired ──retention──▶ forgotten (retired; or, with --lease-reuse, its
//!                                        numbers go to the reuse pool)
//! ```
//!
//! A lease requested with a client id and a request id is found again by those ids: a retry
//! gets the same range, for as long as the lease is remembered (while outstanding, and for
//! one `--lease-timeout` after it finished — the *retention*).
//!
//! Besides the table's own bound (`--max-leases`) and the client id's, each peer (client
//! address, see [`Peer`]) may hold at most `--max-leases-per-peer` outstanding leases, so that
//! one host handing out many client ids cannot fill the table.
//!
//! (Over 600 lines: one lease life cycle whose rules only hold together — grant, retry,
//! acknowledge, expire, forget, reuse — and its unit tests.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::peers::{Peer, PeerHoldings, default_per_peer};
use super::records::{LeaseCounters, LeaseRecord, LeaseStatus, PooledRange};
use crate::commits::Commits;
use crate::sequence::{NameError, Refusal, Sequence, SequenceId, validate_name};

/// What the command line says about leases.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// How long a lease may stay unacknowledged; also how long a finished lease is
    /// remembered for retries and repeated acknowledgements.
    pub timeout: Duration,
    /// Largest lease (`--max-batch`).
    pub max_size: u64,
    /// Most unacknowledged leases one client id may hold.
    pub max_per_client: u32,
    /// Most leases remembered at once (outstanding and finished), and most pooled ranges.
    pub max_tracked: usize,
    /// Most unacknowledged leases one peer (client address) may hold; 0: no bound.
    pub max_per_peer: usize,
    /// Expired ranges go to a reuse pool instead of being retired.
    pub reuse: bool,
}

/// The command line's defaults.
impl Default for LeaseSettings {
    fn default() -> LeaseSettings {
        LeaseSettings {
            timeout: DEFAULT_TIMEOUT,
            max_size: 1_000_000,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            max_tracked: DEFAULT_MAX_TRACKED,
            max_per_peer: default_per_peer(DEFAULT_MAX_TRACKED),
            reuse: false,
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_PER_CLIENT: u32 = 16;
pub const DEFAULT_MAX_TRACKED: usize = 10_000;

impl LeaseSettings {
    fn retention_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Most events kept for the caller; later ones are dropped until it takes them.
const MAX_QUEUED_EVENTS: usize = 1024;

/// A sequence and the first number of a range: how leases and pooled ranges are keyed.
type Key = (SequenceId, u64);

/// The ids a client gave its lease request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Owner {
    client: Box<str>,
    request: Box<str>,
}

impl Owner {
    fn parse(ids: RequestIds<'_>) -> Result<Owner, LeaseRefusal> {
        let check =
            |which, id| validate_name(id).map_err(|error| LeaseRefusal::BadId { which, error });
        Ok(Owner {
            client: check("client id", ids.client)?.into(),
            request: check("request id", ids.request)?.into(),
        })
    }
}

#[derive(Debug, Clone)]
struct Lease {
    count: u64,
    owner: Option<Owner>,
    /// The connection that was last granted (or re-granted) the lease: it may acknowledge
    /// without naming the client id. 0: none (a lease recovered from disk).
    connection: u64,
    /// The peer whose per-peer count holds it while outstanding. None: not counted (no
    /// per-peer bound, or a lease recovered from disk or etcd, which no connected peer holds).
    holder: Option<Peer>,
    status: LeaseStatus,
    /// Outstanding: the deadline. Otherwise: when it was acknowledged or expired.
    time_ms: u64,
    /// The change that put the lease in its current status: replies about it wait for it.
    change: u64,
}

/// A lease granted (or found again by its ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub first: u64,
    pub count: u64,
    /// Reply only once this change is durable.
    pub change: u64,
}

/// The names a client gives a lease request so that a retry is recognised as the same
/// request: its own id and an id for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIds<'a> {
    pub client: &'a [u8],
    pub request: &'a [u8],
    /// The requesting connection (nonzero), which may then acknowledge without the ids.
    pub connection: u64,
}

/// Who sends an acknowledgement: the client id it names, if any, and its connection. A lease
/// granted with a client id is acknowledged only with that id or by the connection that got
/// it, so that one client cannot acknowledge (and so retire) another's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledger<'a> {
    pub client: Option<&'a [u8]>,
    pub connection: u64,
}

impl Acknowledger<'_> {
    fn may_acknowledge(&self, lease: &Lease) -> bool {
        match &lease.owner {
            None => true,
            Some(owner) => {
                self.client == Some(owner.client.as_bytes())
                    || (self.connection != 0 && self.connection == lease.connection)
            }
        }
    }
}

/// Why the table refuses a grant or an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// `which` is "client id" or "request id".
    BadId {
        which: &'static str,
        error: NameError,
    },
    SizeOutOfRange {
        max: u64,
    },
    /// The client used this request id before for a lease of another size or sequence.
    RequestIdReused {
        count: u64,
    },
    TooManyForClient {
        limit: u32,
    },
    /// The requesting peer (client address) holds `--max-leases-per-peer` unacknowledged
    /// leases.
    TooManyForPeer {
        limit: usize,
    },
    TooManyTracked {
        limit: usize,
    },
    Exhausted {
        remaining: u64,
    },
    /// No lease holds `first`.
    Unknown {
        first: u64,
        last: u64,
    },
    /// The lease was granted with a client id that the acknowledgement neither names nor
    /// comes from the connection of.
    NotYours {
        first: u64,
        last: u64,
    },
    /// The range asked about is inside the lease `lease_first..=lease_last`, but is not it.
    Mismatch {
        first: u64,
        last: u64,
        lease_first: u64,
        lease_last: u64,
    },
    /// `returned`: to the reuse pool rather than retired.
    Expired {
        first: u64,
        last: u64,
        returned: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    Refused(LeaseRefusal),
    /// The numbers are not yet below the sequence's durable ceiling; nothing changed.
    AwaitingCeiling,
}

impl From<LeaseRefusal> for GrantError {
    fn from(refusal: LeaseRefusal) -> GrantError {
        GrantError::Refused(refusal)
    }
}

/// Something that happened inside the table that an operator should hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease expired unacknowledged after `timeout`. `to_pool`: its numbers go to the
    /// reuse pool once it is forgotten (else they are retired); `so_far` counts the leases
    /// returned (or retired) so far.
    Expired {
        sequence: SequenceId,
        first: u64,
        last: u64,
        /// Client and request id, when the lease was requested with them.
        owner: Option<(Box<str>, Box<str>)>,
        timeout: Duration,
        to_pool: bool,
        so_far: u64,
    },
    /// The reuse pool was full (`ranges` ranges): the range was retired instead.
    PoolFull {
        sequence: SequenceId,
        ranges: usize,
        first: u64,
        count: u64,
    },
}

/// The table's state, for the `LEASES` command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Leases granted and not yet acknowledged or expired.
    pub outstanding: u64,
    pub totals: LeaseCounters,
}

/// Why recovered lease records cannot form a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("lease or pooled range {first}+{count} of sequence {sequence} overlaps another")]
    Overlap {
        sequence: SequenceId,
        first: u64,
        count: u64,
    },
    #[error("client {client:?} has two leases with request id {request:?}")]
    DuplicateRequest { client: String, request: String },
}

#[derive(Debug)]
pub struct LeaseTable {
    settings: LeaseSettings,
    leases: BTreeMap<Key, Lease>,
    requests: HashMap<Owner, Key>,
    outstanding_by_client: HashMap<Box<str>, u32>,
    /// Outstanding leases by the peer that was granted them.
    outstanding_by_peer: PeerHoldings,
    /// Outstanding leases by deadline.
    deadlines: BTreeSet<(u64, Key)>,
    /// Finished leases by when they are forgotten.
    finished: BTreeSet<(u64, Key)>,
    /// Ranges free for reuse (`--lease-reuse`): first → count.
    pool: BTreeMap<Key, u64>,
    counters: LeaseCounters,
    /// What happened since the caller last took the events.
    events: Vec<LeaseEvent>,
    /// Leases and pooled ranges changed (added, changed or removed) since the persister last
    /// took the changes: what its next write holds, so a write costs what changed rather
    /// than the table.
    changed_leases: BTreeSet<Key>,
    changed_pool: BTreeSet<Key>,
}

/// The leases and pooled ranges changed since the last [`LeaseTable::take_changes`], as they
/// are now (None: gone), and the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseChanges {
    pub leases: Vec<((SequenceId, u64), Option<LeaseRecord>)>,
    pub pool: Vec<((SequenceId, u64), Option<PooledRange>)>,
    pub counters: LeaseCounters,
}

impl LeaseTable {
    pub fn new(settings: LeaseSettings) -> LeaseTable {
        LeaseTable {
            outstanding_by_peer: PeerHoldings::new(settings.max_per_peer),
            settings,
            leases: BTreeMap::new(),
            requests: HashMap::new(),
            outstanding_by_client: HashMap::new(),
            deadlines: BTreeSet::new(),
            finished: BTreeSet::new(),
            pool: BTreeMap::new(),
            counters: LeaseCounters::default(),
            events: Vec::new(),
            changed_leases: BTreeSet::new(),
            changed_pool: BTreeSet::new(),
        }
    }

    /// Rebuilds the table from durable records. Pooled ranges are dropped (retired) when
    /// `--lease-reuse` is now off: returning them was the previous run's choice (the caller
    /// says so in the log). Recovered leases belong to no connected peer: they count against
    /// `--max-leases` and their client id's bound, not against any address, until they are
    /// acknowledged or expire (the records do not keep addresses, and the address a lease
    /// came from before a restart or a failover need not be the client's now).
    pub fn restore(
        settings: LeaseSettings,
        leases: &[LeaseRecord],
        pool: &[PooledRange],
        counters: LeaseCounters,
    ) -> Result<LeaseTable, RestoreError> {
        let mut table = LeaseTable::new(settings);
        table.counters = counters;
        let mut ranges: Vec<(SequenceId, u64, u64)> = leases
            .iter()
            .map(|l| (l.sequence, l.first, l.count))
            .chain(pool.iter().map(|r| (r.sequence, r.first, r.count)))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let ((seq_a, first_a, count_a), (seq_b, first_b, count_b)) = (pair[0], pair[1]);
            if seq_a == seq_b && first_a + count_a > first_b {
                return Err(RestoreError::Overlap {
                    sequence: seq_b,
                    first: first_b,
                    count: count_b,
                });
            }
        }
        let retention = table.settings.retention_ms();
        for record in leases {
            let key = (record.sequence, record.first);
            let owner = (!record.client.is_empty()).then(|| Owner {
                client: record.client.as_str().into(),
                request: record.request.as_str().into(),
            });
            if let Some(owner) = &owner {
                if table.requests.insert(owner.clone(), key).is_some() {
                    return Err(RestoreError::DuplicateRequest {
                        client: record.client.clone(),
                        request: record.request.clone(),
                    });
                }
                if record.status == LeaseStatus::Outstanding {
                    *table
                        .outstanding_by_client
                        .entry(owner.client.clone())
                        .or_default() += 1;
                }
            }
            match record.status {
                LeaseStatus::Outstanding => table.deadlines.insert((record.time_ms, key)),
                _ => table
                    .finished
                    .insert((record.time_ms.saturating_add(retention), key)),
            };
            table.leases.insert(
                key,
                Lease {
                    count: record.count,
                    owner,
                    connection: 0,
                    holder: None,
                    status: record.status,
                    time_ms: record.time_ms,
                    change: 0,
                },
            );
        }
        if table.settings.reuse {
            table
                .pool
                .extend(pool.iter().map(|r| ((r.sequence, r.first), r.count)));
        }
        Ok(table)
    }

    /// Grants `count` numbers of `sequence` to a client at `from`, or finds the lease granted
    /// before to the same ids (a retry takes no more of the per-peer bound: the lease stays
    /// counted against the peer it was granted to).
    pub fn grant(
        &mut self,
        sequence: &Sequence,
        count: u64,
        ids: Option<RequestIds<'_>>,
        from: Peer,
        now_ms: u64,
        commits: &Commits,
    ) -> Result<Granted, GrantError> {
        let connection = ids.map_or(0, |ids| ids.connection);
        let owner = ids.map(Owner::parse).transpose()?;
        if let Some(owner) = &owner
            && let Some(&key) = self.requests.get(owner)
            && let Some(lease) = self.leases.get(&key)
        {
            let granted = self.retried(key, lease, sequence.id(), count)?;
            // The retry named the ids: its connection may now acknowledge without them.
            if let Some(lease) = self.leases.get_mut(&key) {
                lease.connection = connection;
            }
            return Ok(granted);
        }
        if count == 0 || count > self.settings.max_size {
            return Err(LeaseRefusal::SizeOutOfRange {
                max: self.settings.max_size,
            }
            .into());
        }
        if let Some(owner) = &owner {
            let held = self
                .outstanding_by_client
                .get(&owner.client)
                .copied()
                .unwrap_or(0);
            if held >= self.settings.max_per_client {
                return Err(LeaseRefusal::TooManyForClient {
                    limit: self.settings.max_per_client,
                }
                .into());
            }
        }
        // Before the table's own bound: a peer that would fill the table is told that it is
        // the one holding too much, and nothing is forgotten early on its behalf.
        if !self.outstanding_by_peer.may_take(from) {
            return Err(LeaseRefusal::TooManyForPeer {
                limit: self.outstanding_by_peer.limit(),
            }
            .into());
        }
        if self.leases.len() >= self.settings.max_tracked && !self.forget_oldest(commits) {
            return Err(LeaseRefusal::TooManyTracked {
                limit: self.settings.max_tracked,
            }
            .into());
        }
        let first = match self.take_from_pool(sequence.id(), count) {
            Some(first) => {
                self.counters.reused += 1;
                first
            }
            None => match sequence.reserve(count) {
                Ok(first) => first,
                Err(Refusal::AwaitingCeiling) => return Err(GrantError::AwaitingCeiling),
                Err(Refusal::Exhausted { remaining }) => {
                    return Err(LeaseRefusal::Exhausted { remaining }.into());
                }
            },
        };
        let key = (sequence.id(), first);
        let deadline = now_ms.saturating_add(self.settings.retention_ms());
        let change = commits.next();
        if let Some(owner) = &owner {
            *self
                .outstanding_by_client
                .entry(owner.client.clone())
                .or_default() += 1;
            self.requests.insert(owner.clone(), key);
        }
        self.deadlines.insert((deadline, key));
        self.changed_leases.insert(key);
        let holder = self.outstanding_by_peer.take(from);
        self.leases.insert(
            key,
            Lease {
                count,
                owner,
                connection,
                holder,
                status: LeaseStatus::Outstanding,
                time_ms: deadline,
                change,
            },
        );
        self.counters.granted += 1;
        Ok(Granted {
            first,
            count,
            change,
        })
    }

    /// The answer to a retry: the same range, unless the ids now mean something else.
    fn retried(
        &self,
        key: Key,
        lease: &Lease,
        sequence: SequenceId,
        count: u64,
    ) -> Result<Granted, GrantError> {
        if key.0 != sequence || lease.count != count {
            return Err(LeaseRefusal::RequestIdReused { count: lease.count }.into());
        }
        let (first, last) = (key.1, key.1 + lease.count - 1);
        match lease.status {
            LeaseStatus::Expired => Err(LeaseRefusal::Expired {
                first,
                last,
                returned: self.settings.reuse,
            }
            .into()),
            LeaseStatus::Outstanding | LeaseStatus::Acknowledged => Ok(Granted {
                first,
                count,
                change: lease.change,
            }),
        }
    }

    /// Acknowledges the lease of exactly `first..=last`. Returns the change to wait for
    /// before answering (an acknowledgement must be durable: with `--lease-reuse` a lost one
    /// would let the range be handed out again).
    pub fn acknowledge(
        &mut self,
        sequence: SequenceId,
        first: u64,
        last: u64,
        by: Acknowledger<'_>,
        now_ms: u64,
        commits: &Commits,
    ) -> Result<u64, LeaseRefusal> {
        // The lease holding `first`, if any: the one starting at or before it.
        let holder = self
            .leases
            .range((sequence, 0)..=(sequence, first))
            .next_back()
            .map(|(&key, lease)| (key, key.1 + lease.count - 1))
            .filter(|&(_, lease_last)| lease_last >= first);
        let Some((key, lease_last)) = holder else {
            return Err(LeaseRefusal::Unknown { first, last });
        };
        if key.1 != first || lease_last != last {
            return Err(LeaseRefusal::Mismatch {
                first,
                last,
                lease_first: key.1,
                lease_last,
            });
        }
        let retention = self.settings.retention_ms();
        let Some(lease) = self.leases.get_mut(&key) else {
            return Err(LeaseRefusal::Unknown { first, last });
        };
        if !by.may_acknowledge(lease) {
            return Err(LeaseRefusal::NotYours { first, last });
        }
        match lease.status {
            LeaseStatus::Acknowledged => Ok(lease.change),
            LeaseStatus::Expired => Err(LeaseRefusal::Expired {
                first,
                last,
                returned: self.settings.reuse,
            }),
            LeaseStatus::Outstanding => {
                self.deadlines.remove(&(lease.time_ms, key));
                lease.status = LeaseStatus::Acknowledged;
                lease.time_ms = now_ms;
                lease.change = commits.next();
                self.changed_leases.insert(key);
                let change = lease.change;
                let owner = lease.owner.clone();
                let holder = lease.holder.take();
                self.finished
                    .insert((now_ms.saturating_add(retention), key));
                self.release(owner.as_ref(), holder);
                self.counters.acknowledged += 1;
                Ok(change)
            }
        }
    }

    /// Expires leases whose deadline has passed and forgets finished ones whose retention
    /// is over. Returns when to call again (None: nothing is waiting).
    pub fn expire(&mut self, now_ms: u64, commits: &Commits) -> Option<u64> {
        let retention = self.settings.retention_ms();
        while let Some(&(deadline, key)) = self.deadlines.first()
            && deadline <= now_ms
        {
            self.deadlines.pop_first();
            let Some(lease) = self.leases.get_mut(&key) else {
                continue;
            };
            lease.status = LeaseStatus::Expired;
            lease.change = commits.next();
            self.changed_leases.insert(key);
            let owner = lease.owner.clone();
            let holder = lease.holder.take();
            let count = lease.count;
            self.finished
                .insert((deadline.saturating_add(retention), key));
            self.release(owner.as_ref(), holder);
            let to_pool = self.settings.reuse;
            let so_far = if to_pool {
                self.counters.returned += 1;
                self.counters.returned
            } else {
                self.counters.retired += 1;
                self.counters.retired
            };
            self.report(LeaseEvent::Expired {
                sequence: key.0,
                first: key.1,
                last: key.1 + count - 1,
                owner: owner.map(|o| (o.client, o.request)),
                timeout: self.settings.timeout,
                to_pool,
                so_far,
            });
        }
        while let Some(&(forget_at, _)) = self.finished.first()
            && forget_at <= now_ms
        {
            self.forget_oldest(commits);
        }
        let next_deadline = self.deadlines.first().map(|&(at, _)| at);
        let next_forget = self.finished.first().map(|&(at, _)| at);
        next_deadline.into_iter().chain(next_forget).min()
    }

    /// Forgets the finished lease due first (early, when the table is full). Returns false
    /// when no lease is finished.
    fn forget_oldest(&mut self, commits: &Commits) -> bool {
        let Some((_, key)) = self.finished.pop_first() else {
            return false;
        };
        commits.next();
        self.changed_leases.insert(key);
        if let Some(lease) = self.leases.remove(&key) {
            if let Some(owner) = &lease.owner {
                self.requests.remove(owner);
            }
            if lease.status == LeaseStatus::Expired && self.settings.reuse {
                self.return_to_pool(key, lease.count);
            }
        }
        true
    }

    /// An outstanding lease is finished: its client id and its peer may hold another.
    fn release(&mut self, owner: Option<&Owner>, holder: Option<Peer>) {
        self.outstanding_by_peer.give_back(holder);
        if let Some(owner) = owner
            && let Some(held) = self.outstanding_by_client.get_mut(&owner.client)
        {
            *held -= 1;
            if *held == 0 {
                self.outstanding_by_client.remove(&owner.client);
            }
        }
    }

    /// Adds a range to the pool, merged with its neighbours. A full pool retires it instead.
    fn return_to_pool(&mut self, key: Key, count: u64) {
        let (sequence, mut first) = key;
        let mut count = count;
        if let Some((&(seq, before), &before_count)) = self.pool.range(..key).next_back()
            && seq == sequence
            && before + before_count == first
        {
            self.pool.remove(&(seq, before));
            self.changed_pool.insert((seq, before));
            first = before;
            count += before_count;
        }
        if let Some(&after_count) = self.pool.get(&(sequence, first + count)) {
            self.pool.remove(&(sequence, first + count));
            self.changed_pool.insert((sequence, first + count));
            count += after_count;
        }
        if self.pool.len() >= self.settings.max_tracked {
            self.report(LeaseEvent::PoolFull {
                sequence,
                ranges: self.pool.len(),
                first,
                count,
            });
            return;
        }
        self.pool.insert((sequence, first), count);
        self.changed_pool.insert((sequence, first));
    }

    /// Takes `count` numbers from the first pooled range of `sequence` that has enough.
    fn take_from_pool(&mut self, sequence: SequenceId, count: u64) -> Option<u64> {
        let (&key, &available) = self
            .pool
            .range((sequence, 0)..=(sequence, u64::MAX))
            .find(|&(_, &available)| available >= count)?;
        self.pool.remove(&key);
        self.changed_pool.insert(key);
        if available > count {
            self.pool
                .insert((sequence, key.1 + count), available - count);
            self.changed_pool.insert((sequence, key.1 + count));
        }
        Some(key.1)
    }

    fn report(&mut self, event: LeaseEvent) {
        // Bounded for callers that never take them (a table without a keeper).
        if self.events.len() < MAX_QUEUED_EVENTS {
            self.events.push(event);
        }
    }

    /// What happened since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<LeaseEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            outstanding: self.deadlines.len() as u64,
            totals: self.counters,
        }
    }

    /// Everything to persist.
    pub fn records(&self) -> (Vec<LeaseRecord>, Vec<PooledRange>, LeaseCounters) {
        let leases = self
            .leases
            .iter()
            .map(|(&key, lease)| lease.record(key))
            .collect();
        let pool = self
            .pool
            .iter()
            .map(|(&key, &count)| pooled(key, count))
            .collect();
        (leases, pool, self.counters)
    }

    /// What changed since the last call (or since the table was made or restored): each
    /// lease and pooled range changed, as it is now. Costs what changed, not the table.
    pub fn take_changes(&mut self) -> LeaseChanges {
        let leases = std::mem::take(&mut self.changed_leases)
            .into_iter()
            .map(|key| (key, self.leases.get(&key).map(|lease| lease.record(key))))
            .collect();
        let pool = std::mem::take(&mut self.changed_pool)
            .into_iter()
            .map(|key| (key, self.pool.get(&key).map(|&count| pooled(key, count))))
            .collect();
        LeaseChanges {
            leases,
            pool,
            counters: self.counters,
        }
    }
}

fn pooled((sequence, first): Key, count: u64) -> PooledRange {
    PooledRange {
        sequence,
        first,
        count,
    }
}

impl Lease {
    fn record(&self, (sequence, first): Key) -> LeaseRecord {
        let (client, request) = self.owner.as_ref().map_or_else(
            || (String::new(), String::new()),
            |o| (o.client.to_string(), o.request.to_string()),
        );
        LeaseRecord {
            sequence,
            first,
            count: self.count,
            status: self.status,
            time_ms: self.time_ms,
            client,
            request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::END_OF_SPACE;

    const T: u64 = 1_000; // the timeout, in ms

    fn settings(reuse: bool) -> LeaseSettings {
        LeaseSettings {
            timeout: Duration::from_millis(T),
            max_size: 100,
            max_per_client: 2,
            max_tracked: 4,
            max_per_peer: 0,
            reuse,
        }
    }

    struct Fixture {
        table: LeaseTable,
        sequence: Sequence,
        commits: Commits,
    }

    fn fixture(reuse: bool) -> Fixture {
        Fixture {
            table: LeaseTable::new(settings(reuse)),
            sequence: Sequence::new(0, "default", 1001, END_OF_SPACE),
            commits: Commits::persisted(),
        }
    }

    fn ids<'a>(client: &'a str, request: &'a str) -> Option<RequestIds<'a>> {
        Some(RequestIds {
            client: client.as_bytes(),
            request: request.as_bytes(),
            connection: 1,
        })
    }

    /// The peer of the tests' requests, unless they say otherwise.
    const ME: Peer = Peer::LOCALHOST;

    /// An acknowledgement from another connection that names no client id.
    const STRANGER: Acknowledger<'static> = Acknowledger {
        client: None,
        connection: 2,
    };

    impl Fixture {
        fn grant(
            &mut self,
            count: u64,
            ids: Option<RequestIds<'_>>,
            now: u64,
        ) -> Result<(u64, u64), GrantError> {
            self.table
                .grant(&self.sequence, count, ids, ME, now, &self.commits)
                .map(|g| (g.first, g.first + g.count - 1))
        }

        fn ack(&mut self, first: u64, last: u64, now: u64) -> Result<u64, LeaseRefusal> {
            let granting_connection = Acknowledger {
                client: None,
                connection: 1,
            };
            self.table
                .acknowledge(0, first, last, granting_connection, now, &self.commits)
        }
    }

    #[test]
    fn lease_protocol_exchange() {
        let mut f = fixture(false);
        assert_eq!(f.grant(20, None, 0), Ok((1001, 1020)));
        assert!(f.commits.pending(), "the grant waits for a write");
        assert!(f.ack(1001, 1020, 10).is_ok());
        assert_eq!(f.grant(5, None, 20), Ok((1021, 1025)));
        let stats = f.table.stats();
        assert_eq!(
            (
                stats.outstanding,
                stats.totals.granted,
                stats.totals.acknowledged
            ),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_retry_with_the_same_ids_gets_the_same_range() {
        let mut f = fixture(false);
        let first = f
            .table
            .grant(&f.sequence, 20, ids("c", "r1"), ME, 0, &f.commits)
            .unwrap();
        let again = f
            .table
            .grant(&f.sequence, 20, ids("c", "r1"), ME, 5, &f.commits)
            .unwrap();
        assert_eq!(first, again, "same range, waiting for the same change");
        assert_eq!(f.grant(20, ids("c", "r2"), 5), Ok((1021, 1040)));
        assert_eq!(
            f.grant(20, ids("other", "r1"), 5),
            Ok((1041, 1060)),
            "ids are per client"
        );
        // After the acknowledgement, a late retry still gets the range (and a second ACK is
        // fine), until the retention is over.
        let change = f.ack(1001, 1020, 10).unwrap();
        assert_eq!(f.ack(1001, 1020, 11), Ok(change));
        assert_eq!(f.grant(20, ids("c", "r1"), 12), Ok((1001, 1020)));
        assert_eq!(
            f.grant(21, ids("c", "r1"), 12),
            Err(GrantError::Refused(LeaseRefusal::RequestIdReused {
                count: 20
            }))
        );
        f.table.expire(10 + T, &f.commits);
        assert_eq!(
            f.grant(20, ids("c", "r1"), 10 + T),
            Ok((1061, 1080)),
            "forgotten: new"
        );
    }

    #[test]
    fn unknown_and_mismatched_acks_are_told_apart() {
        let mut f = fixture(false);
        f.grant(20, None, 0).unwrap();
        assert_eq!(
            f.ack(1, 5, 1),
            Err(LeaseRefusal::Unknown { first: 1, last: 5 })
        );
        assert_eq!(
            f.ack(1021, 1030, 1),
            Err(LeaseRefusal::Unknown {
                first: 1021,
                last: 1030
            })
        );
        for (first, last) in [(1001, 1019), (1005, 1020)] {
            assert_eq!(
                f.ack(first, last, 1),
                Err(LeaseRefusal::Mismatch {
                    first,
                    last,
                    lease_first: 1001,
                    lease_last: 1020
                })
            );
        }
        assert_eq!(
            f.table.acknowledge(1, 1001, 1020, STRANGER, 1, &f.commits),
            Err(LeaseRefusal::Unknown {
                first: 1001,
                last: 1020
            }),
            "another sequence"
        );
    }

    #[test]
    fn unacknowledged_leases_expire_and_are_retired() {
        let mut f = fixture(false);
        f.grant(20, ids("c", "r"), 0).unwrap();
        assert_eq!(f.table.expire(T - 1, &f.commits), Some(T));
        let before = f.commits.last();
        assert_eq!(
            f.table.expire(T, &f.commits),
            Some(2 * T),
            "forgotten later"
        );
        assert!(f.commits.last() > before, "expiry is a change to persist");
        let expired = LeaseRefusal::Expired {
            first: 1001,
            last: 1020,
            returned: false,
        };
        assert_eq!(f.ack(1001, 1020, T + 1), Err(expired));
        assert_eq!(
            f.grant(20, ids("c", "r"), T + 1),
            Err(GrantError::Refused(expired))
        );
        let stats = f.table.stats();
        assert_eq!((stats.outstanding, stats.totals.retired), (0, 1));
        // Never reissued: the next lease starts after it.
        assert_eq!(f.grant(20, None, T + 2), Ok((1021, 1040)));
        f.table.expire(3 * T, &f.commits);
        assert_eq!(f.grant(20, None, 3 * T), Ok((1041, 1060)));
    }

    #[test]
    fn with_reuse_an_expired_range_is_reissued_once_forgotten() {
        let mut f = fixture(true);
        f.grant(20, None, 0).unwrap();
        f.table.expire(T, &f.commits);
        assert_eq!(
            f.ack(1001, 1020, T),
            Err(LeaseRefusal::Expired {
                first: 1001,
                last: 1020,
                returned: true
            })
        );
        assert_eq!(
            f.grant(5, None, T),
            Ok((1021, 1025)),
            "still remembered: not pooled yet"
        );
        f.ack(1021, 1025, T).unwrap();
        f.table.expire(2 * T, &f.commits);
        assert_eq!(f.grant(5, None, 2 * T), Ok((1001, 1005)), "from the pool");
        assert_eq!(f.grant(15, None, 2 * T), Ok((1006, 1020)), "the rest of it");
        assert_eq!(f.grant(1, None, 2 * T), Ok((1026, 1026)), "pool empty");
        let totals = f.table.stats().totals;
        assert_eq!((totals.returned, totals.reused), (1, 2));
    }

    /// What the records were when the changes were last taken, with the changes applied:
    /// equals the records now if every change was noted.
    #[derive(Default)]
    struct Mirror {
        leases: BTreeMap<Key, LeaseRecord>,
        pool: BTreeMap<Key, PooledRange>,
    }

    impl Mirror {
        fn follow(&mut self, table: &mut LeaseTable) -> usize {
            let changes = table.take_changes();
            let taken = changes.leases.len() + changes.pool.len();
            for (key, lease) in changes.leases {
                match lease {
                    Some(lease) => self.leases.insert(key, lease),
                    None => self.leases.remove(&key),
                };
            }
            for (key, range) in changes.pool {
                match range {
                    Some(range) => self.pool.insert(key, range),
                    None => self.pool.remove(&key),
                };
            }
            let (leases, pool, counters) = table.records();
            assert_eq!(self.leases.values().cloned().collect::<Vec<_>>(), leases);
            assert_eq!(self.pool.values().copied().collect::<Vec<_>>(), pool);
            assert_eq!(changes.counters, counters);
            taken
        }
    }

    #[test]
    fn every_change_is_noted_and_only_changes() {
        let mut f = fixture(true);
        let mut mirror = Mirror::default();
        f.grant(20, None, 0).unwrap();
        f.grant(10, ids("a", "r"), 0).unwrap();
        assert_eq!(mirror.follow(&mut f.table), 2);
        assert_eq!(mirror.follow(&mut f.table), 0, "taken: nothing left");
        f.ack(1021, 1030, 1).unwrap();
        assert_eq!(mirror.follow(&mut f.table), 1, "one lease acknowledged");
        f.table.expire(T, &f.commits);
        assert_eq!(mirror.follow(&mut f.table), 1, "one lease expired");
        f.table.expire(3 * T, &f.commits);
        assert_eq!(
            mirror.follow(&mut f.table),
            3,
            "two leases forgotten, one range pooled"
        );
        f.grant(5, None, 3 * T).unwrap();
        assert_eq!(
            mirror.follow(&mut f.table),
            3,
            "a lease, and the pooled range split"
        );
        f.grant(15, None, 3 * T).unwrap();
        f.grant(1, None, 3 * T).unwrap();
        mirror.follow(&mut f.table);
        // A full table forgets its oldest finished lease for a new one.
        for now in [4 * T, 4 * T + 1] {
            f.ack(1001, 1005, now).ok();
            f.ack(1006, 1020, now).ok();
            f.grant(1, None, now).unwrap();
            mirror.follow(&mut f.table);
        }
    }

    #[test]
    fn limits() {
        let mut f = fixture(false);
        for count in [0, 101] {
            assert_eq!(
                f.grant(count, None, 0),
                Err(GrantError::Refused(LeaseRefusal::SizeOutOfRange {
                    max: 100
                }))
            );
        }
        f.grant(1, ids("c", "1"), 0).unwrap();
        f.grant(1, ids("c", "2"), 0).unwrap();
        assert_eq!(
            f.grant(1, ids("c", "3"), 0),
            Err(GrantError::Refused(LeaseRefusal::TooManyForClient {
                limit: 2
            }))
        );
        f.grant(1, None, 0).unwrap();
        f.grant(1, None, 0).unwrap();
        assert_eq!(
            f.grant(1, None, 0),
            Err(GrantError::Refused(LeaseRefusal::TooManyTracked {
                limit: 4
            }))
        );
        // A finished lease is forgotten early to make room; outstanding ones never are.
        f.ack(1001, 1001, 1).unwrap();
        assert_eq!(f.grant(1, ids("c", "3"), 1), Ok((1005, 1005)));
        assert!(matches!(
            f.grant(1, ids("bad id", "1"), 1),
            Err(GrantError::Refused(LeaseRefusal::BadId {
                which: "client id",
                ..
            }))
        ));
    }

    #[test]
    fn one_peer_holds_at_most_its_bound_and_gets_it_back() {
        let mut f = fixture(false);
        f.table = LeaseTable::new(LeaseSettings {
            max_per_peer: 2,
            max_tracked: 100,
            ..settings(false)
        });
        let other = Peer::of(Some("127.0.0.2".parse().unwrap()));
        let grant = |f: &mut Fixture, client: &str, from: Peer, now: u64| {
            f.table
                .grant(&f.sequence, 1, ids(client, "r"), from, now, &f.commits)
                .map(|g| g.first)
        };
        assert_eq!(grant(&mut f, "a", ME, 0), Ok(1001));
        assert_eq!(grant(&mut f, "b", ME, 0), Ok(1002));
        let refused = Err(GrantError::Refused(LeaseRefusal::TooManyForPeer {
            limit: 2,
        }));
        assert_eq!(
            grant(&mut f, "c", ME, 0),
            refused,
            "new client ids do not help"
        );
        assert_eq!(
            grant(&mut f, "a", ME, 0),
            Ok(1001),
            "a retry takes nothing more"
        );
        assert_eq!(
            grant(&mut f, "c", other, 0),
            Ok(1003),
            "another peer is served"
        );
        let mapped = Peer::of(Some("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(
            grant(&mut f, "d", mapped, 0),
            refused,
            "the same peer over IPv6"
        );
        // Acknowledged (by client id, from anywhere): the place is given back.
        let by_id = Acknowledger {
            client: Some(b"a"),
            connection: 9,
        };
        f.table
            .acknowledge(0, 1001, 1001, by_id, 1, &f.commits)
            .unwrap();
        assert_eq!(grant(&mut f, "g", ME, 1), Ok(1004));
        assert_eq!(grant(&mut f, "h", ME, 1), refused);
        // Expired: given back too.
        f.table.expire(T + 1, &f.commits);
        assert_eq!(grant(&mut f, "i", ME, T + 1), Ok(1005));
        assert_eq!(grant(&mut f, "j", ME, T + 1), Ok(1006));
        assert_eq!(grant(&mut f, "k", ME, T + 1), refused);
    }

    #[test]
    fn recovered_leases_count_against_no_peer() {
        let mut f = fixture(false);
        let bounded = LeaseSettings {
            max_per_peer: 1,
            max_tracked: 100,
            ..settings(false)
        };
        f.table = LeaseTable::new(bounded.clone());
        f.grant(1, ids("a", "r"), 0).unwrap();
        let (leases, pool, counters) = f.table.records();
        f.table = LeaseTable::restore(bounded, &leases, &pool, counters).unwrap();
        assert_eq!(f.grant(1, ids("b", "r"), 0), Ok((1002, 1002)));
        assert_eq!(
            f.grant(1, ids("c", "r"), 0),
            Err(GrantError::Refused(LeaseRefusal::TooManyForPeer {
                limit: 1
            }))
        );
        // Acknowledging the recovered lease gives nothing back that was not taken.
        f.ack(1001, 1001, 1).unwrap_err();
        let by_id = Acknowledger {
            client: Some(b"a"),
            connection: 9,
        };
        f.table
            .acknowledge(0, 1001, 1001, by_id, 1, &f.commits)
            .unwrap();
        assert!(f.grant(1, ids("c", "r"), 1).is_err(), "still one held");
    }

    #[test]
    fn a_refusal_for_want_of_a_ceiling_changes_nothing() {
        let mut f = fixture(false);
        f.sequence = Sequence::new(0, "default", 1001, 1010);
        assert_eq!(
            f.grant(20, ids("c", "r"), 0),
            Err(GrantError::AwaitingCeiling)
        );
        assert_eq!(f.commits.last(), 0);
        assert_eq!(f.table.stats(), TableStats::default());
        f.sequence.raise_ceiling(2000);
        assert_eq!(f.grant(20, ids("c", "r"), 0), Ok((1001, 1020)));
    }

    #[test]
    fn records_restore_the_same_table() {
        let mut f = fixture(true);
        f.grant(20, ids("c", "r"), 0).unwrap();
        f.grant(5, None, 0).unwrap();
        f.ack(1021, 1025, 1).unwrap();
        f.grant(3, ids("c", "s"), 500).unwrap();
        f.table.expire(T, &f.commits); // the first expires
        f.table.expire(2 * T + 1, &f.commits); // forgotten: pooled; the ack forgotten too
        let (leases, pool, counters) = f.table.records();
        assert_eq!(
            pool,
            vec![PooledRange {
                sequence: 0,
                first: 1001,
                count: 20
            }]
        );
        let restored = LeaseTable::restore(settings(true), &leases, &pool, counters).unwrap();
        assert_eq!(restored.records(), f.table.records());
        assert_eq!(restored.stats(), f.table.stats());
        // Without --lease-reuse the pool is retired.
        let strict = LeaseTable::restore(settings(false), &leases, &pool, counters).unwrap();
        assert!(strict.records().1.is_empty());
        // Overlaps are corruption.
        let mut overlapping = leases.clone();
        overlapping[0].first = 1010;
        assert!(matches!(
            LeaseTable::restore(settings(true), &overlapping, &pool, counters),
            Err(RestoreError::Overlap { .. })
        ));
    }

    #[test]
    fn a_lease_granted_with_a_client_id_is_acknowledged_only_by_its_client() {
        let mut f = fixture(false);
        assert_eq!(f.grant(20, ids("c", "r"), 0), Ok((1001, 1020)));
        assert_eq!(f.grant(5, None, 0), Ok((1021, 1025)));
        assert_eq!(
            f.table.acknowledge(0, 1001, 1020, STRANGER, 1, &f.commits),
            Err(LeaseRefusal::NotYours {
                first: 1001,
                last: 1020
            })
        );
        let impostor = Acknowledger {
            client: Some(b"d"),
            connection: 2,
        };
        assert!(
            f.table
                .acknowledge(0, 1001, 1020, impostor, 1, &f.commits)
                .is_err()
        );
        // A lease without ids is anyone's to acknowledge, as before.
        assert!(
            f.table
                .acknowledge(0, 1021, 1025, STRANGER, 1, &f.commits)
                .is_ok()
        );
        let named = Acknowledger {
            client: Some(b"c"),
            connection: 2,
        };
        assert!(
            f.table
                .acknowledge(0, 1001, 1020, named, 1, &f.commits)
                .is_ok()
        );
    }

    #[test]
    fn a_retry_on_a_new_connection_moves_the_right_to_acknowledge() {
        let mut f = fixture(false);
        f.grant(20, ids("c", "r"), 0).unwrap();
        let mut again = ids("c", "r").unwrap();
        again.connection = 2;
        f.grant(20, Some(again), 1).unwrap();
        assert!(
            f.table
                .acknowledge(0, 1001, 1020, STRANGER, 1, &f.commits)
                .is_ok()
        );
    }
}
