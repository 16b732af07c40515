//! A cluster node: its own tokio runtime (one worker thread, "seqd-cluster"; the event loops
//! never see tokio), the election task, the renewal task that extends the issuing deadline,
//! and the fenced ceiling store the persister writes through.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions};
use tokio::sync::oneshot;

use super::ClusterSettings;
use super::etcd::{self, Campaign, CommittedCeiling, Keys, StoreError};
use super::records;
use super::role::{Role, RoleCell, RoleEvent};
use crate::sequence::{IssueDeadline, LeaderAddress, monotonic_nanos};
use crate::state::LeaseAndStreamRecords;
use crate::store::data_dir::{StateSink, StateWrite, WriteError};

/// HTTP/2 ping interval towards etcd.
const ETCD_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between two failed attempts to reach etcd while campaigning.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(200);

/// A won election, with what the previous leaders committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub token: i64,
    /// Every sequence's committed ceiling: this node serves strictly at or above them.
    pub ceilings: Vec<CommittedCeiling>,
    /// The leases and streams as the previous leaders committed them.
    pub records: LeaseAndStreamRecords,
}

/// The renewal task of the current term.
struct Term {
    lease: i64,
    stop: oneshot::Sender<()>,
}

/// What the election and renewal tasks share.
struct Shared {
    keys: Keys,
    settings: ClusterSettings,
    deadline: Arc<IssueDeadline>,
    /// Where the leader is, as the election last saw it.
    leader: Arc<LeaderAddress>,
    role: Arc<RoleCell>,
    term: Mutex<Option<Term>>,
}

impl Shared {
    /// Leadership is over: issue nothing from now on.
    fn depose(&self, reason: String) {
        self.deadline.revoke();
        if self.role.get().is_leader() {
            tracing::error!("leadership lost: {reason}; this node issues nothing from now on");
        }
        self.role.apply(RoleEvent::Lost { reason });
    }

    fn term(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

pub struct ClusterNode {
    runtime: tokio::runtime::Runtime,
    client: Client,
    shared: Arc<Shared>,
}

impl ClusterNode {
    /// Starts the runtime and the etcd client. etcd need not be reachable yet: the
    /// campaign retries until it is.
    pub fn connect(settings: ClusterSettings) -> anyhow::Result<ClusterNode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("seqd-cluster")
            .enable_all()
            .build()
            .context("cannot start the cluster runtime")?;
        let options = ConnectOptions::new()
            .with_connect_timeout(settings.timing.keep_alive_interval)
            // HTTP/2 pings find a silently dead etcd member (every request is bounded anyway).
            // No more often than etcd allows (--grpc-keepalive-min-time, 5 s by default):
            // etcd closes the connection of a client that pings faster, watches included.
            .with_keep_alive(ETCD_PING_INTERVAL, settings.timing.ttl);
        let client = runtime
            .block_on(Client::connect(&settings.endpoints, Some(options)))
            .with_context(|| format!("cannot use etcd at {}", settings.endpoints.join(",")))?;
        let leader = Arc::new(LeaderAddress::default());
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            deadline: Arc::new(IssueDeadline::for_candidate(leader.clone())),
            leader,
            role: Arc::new(RoleCell::default()),
            term: Mutex::new(None),
        });
        Ok(ClusterNode {
            runtime,
            client,
            shared,
        })
    }

    /// The deadline every sequence of this node issues under.
    pub fn deadline(&self) -> Arc<IssueDeadline> {
        self.shared.deadline.clone()
    }

    /// The deadline a standby serves under: nothing is ever issuable, and every refusal
    /// names the leader this node last saw in etcd.
    pub fn follower_deadline(&self) -> Arc<IssueDeadline> {
        Arc::new(IssueDeadline::follower(self.shared.leader.clone()))
    }

    pub fn role(&self) -> Role {
        self.shared.role.get()
    }

    pub fn is_deposed(&self) -> bool {
        matches!(self.role(), Role::Deposed { .. })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.shared.settings
    }

    /// Campaigns until elected (retrying while etcd is unreachable, waiting while another
    /// node leads), then starts renewing and reads the committed ceilings. The receiver gets
    /// the leadership once; drop it (and call [`ClusterNode::resign`]) to give up.
    pub fn start_campaign(&self) -> mpsc::Receiver<Leadership> {
        let (won, receiver) = mpsc::channel();
        let client = self.client.clone();
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let leadership = campaign_until_elected(client, shared).await;
            let _ = won.send(leadership);
        });
        receiver
    }

    /// The store the persister makes ceilings durable in, for the term of `leadership`.
    pub fn ceiling_store(&self, leadership: &Leadership) -> EtcdCeilingStore {
        EtcdCeilingStore {
            runtime: self.runtime.handle().clone(),
            client: self.client.clone(),
            shared: self.shared.clone(),
            token: leadership.token,
            written: leadership
                .ceilings
                .iter()
                .map(|c| (c.id, c.ceiling))
                .collect(),
            written_records: Some(records::encode(
                &self.shared.keys.records,
                &leadership.records,
            )),
            location: format!(
                "etcd {} {}",
                self.shared.settings.endpoints.join(","),
                self.shared.keys.ceilings
            ),
        }
    }

    /// The first step of a graceful stop: from now on every reservation is refused
    /// (`UNAVAILABLE`), so clients that follow the leader leave at once instead of being served
    /// until their connections linger out, and the handover waits only for the event loops to
    /// finish what they already took. The ceiling store still writes (the final, exact next
    /// numbers), then [`ClusterNode::resign`] hands leadership over.
    pub fn stop_issuing(&self) {
        self.shared.deadline.revoke();
        tracing::info!(
            "stopping: no number is issued from now on (requests are refused with UNAVAILABLE, \
             so clients go to the next leader)"
        );
    }

    /// Gives leadership up (a graceful stop): stops renewing and revokes the lease, which
    /// deletes the leader key so a standby takes over at once. Call only once nothing issues
    /// any more (the event loops stopped, the final ceilings written).
    pub fn resign(&self) {
        self.shared.deadline.revoke();
        let term = self.shared.term().take();
        if let Some(term) = term {
            let _ = term.stop.send(());
            let mut client = self.client.clone();
            let limit = self.shared.settings.timing.ttl;
            match self
                .runtime
                .block_on(etcd::bounded(limit, client.lease_revoke(term.lease)))
            {
                Ok(_) => tracing::info!("leadership given up: lease revoked"),
                Err(e) => tracing::warn!(
                    "cannot revoke the leader lease ({e}); standbys take over when it expires"
                ),
            }
        }
        self.shared.role.apply(RoleEvent::Resigned);
    }
}

/// The address in a leader key's value (`<node-id> <advertise>`).
fn leader_address(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .map(|(_, address)| address.trim())
        .filter(|address| !address.is_empty())
}

async fn campaign_until_elected(mut client: Client, shared: Arc<Shared>) -> Leadership {
    let value = format!("{} {}", shared.settings.node_id, shared.settings.advertise);
    let timing = shared.settings.timing;
    let mut reported_failure = false;
    let elected = loop {
        match etcd::campaign(&mut client, &shared.keys, &value, &timing).await {
            Ok(Campaign::Won(elected)) => break elected,
            Ok(Campaign::Lost { leader, revision }) => {
                reported_failure = false;
                shared.leader.set(leader_address(&leader));
                shared.role.apply(RoleEvent::LeaderSeen { leader });
                if let Err(e) = etcd::wait_for_vacancy(&mut client, &shared.keys, revision).await {
                    tracing::debug!("watching the leader key: {e}; campaigning again");
                    tokio::time::sleep(CAMPAIGN_RETRY).await;
                }
                shared.leader.set(None);
                shared.role.apply(RoleEvent::Vacancy);
            }
            Err(e) => {
                if !reported_failure {
                    tracing::warn!("cannot campaign for leadership: {e}; retrying");
                    reported_failure = true;
                }
                tokio::time::sleep(CAMPAIGN_RETRY).await;
            }
        }
    };
    shared.leader.set(Some(&shared.settings.advertise));
    shared.role.apply(RoleEvent::Elected {
        token: elected.token,
    });
    shared.deadline.extend_to(elected.deadline);
    if elected.granted_ttl > timing.ttl {
        tracing::warn!(
            "etcd granted the leader lease {:?} instead of --leader-ttl {:?} (its minimum is 1.5 x \
             its --election-timeout): a crashed leader is replaced only after {:?}; run etcd \
             with --heartbeat-interval=50 --election-timeout=500 for a 1 s TTL (docs/HA.md)",
            elected.granted_ttl,
            timing.ttl,
            elected.granted_ttl
        );
    }
    let (stop, stopped) = oneshot::channel();
    *shared.term() = Some(Term {
        lease: elected.lease,
        stop,
    });
    tokio::spawn(keep_renewing(
        client.clone(),
        shared.clone(),
        elected.lease,
        stopped,
    ));
    // Only after the election: every ceiling an earlier leader committed is in this read,
    // and none it tries to write from now on can be.
    let mut reported_failure = false;
    let (ceilings, records) = loop {
        match etcd::read_committed(&mut client, &shared.keys, timing.ttl).await {
            Ok(committed) => break committed,
            Err(e) => {
                if !std::mem::replace(&mut reported_failure, true) {
                    tracing::warn!("cannot read the committed ceilings: {e}; retrying");
                }
                tokio::time::sleep(CAMPAIGN_RETRY).await;
            }
        }
    };
    Leadership {
        token: elected.token,
        ceilings,
        records,
    }
}

/// Renews the lease every `keep_alive_interval` and extends the issuing deadline from each
/// renewal's send time. Ends when stopped (resign) or when etcd says the lease is gone.
async fn keep_renewing(
    mut client: Client,
    shared: Arc<Shared>,
    lease: i64,
    mut stop: oneshot::Receiver<()>,
) {
    let timing = shared.settings.timing;
    let interval = timing.keep_alive_interval;
    // Logged once per run of failures, not once per attempt (etcd may be gone for minutes).
    let mut failing = false;
    loop {
        // Opening the stream sends a first renewal and waits for its answer.
        let mut sent = monotonic_nanos();
        let opened = tokio::select! {
            _ = &mut stop => return,
            opened = etcd::bounded(interval, client.lease_keep_alive(lease)) => opened,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(opened) => {
                shared.deadline.extend_to(timing.deadline(sent, timing.ttl));
                if std::mem::take(&mut failing) {
                    tracing::info!("the leader lease is renewed again");
                }
                opened
            }
            Err(StoreError::Etcd(etcd_client::Error::LeaseKeepAliveError(message)))
                if message.contains("not found") =>
            {
                shared.depose("the leader lease expired in etcd".into());
                return;
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "cannot renew the leader lease: {e}; retrying every {interval:?} (numbers \
                         are issued only until the deadline of the last renewal)"
                    );
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = sleep_until_nanos(sent_after(sent, interval)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = sleep_until_nanos(sent_after(sent, interval)) => {}
            }
            sent = monotonic_nanos();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            let answer = tokio::select! {
                _ = &mut stop => return,
                answer = tokio::time::timeout(interval, stream.message()) => answer,
            };
            match answer {
                Ok(Ok(Some(renewed))) if renewed.ttl() > 0 => {
                    let granted = Duration::from_secs(renewed.ttl() as u64);
                    shared.deadline.extend_to(timing.deadline(sent, granted));
                }
                Ok(Ok(Some(_))) => {
                    shared.depose("the leader lease expired in etcd".into());
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            "a lease renewal went unanswered within {interval:?}; reopening the \
                             renewal stream"
                        );
                    }
                    break;
                }
            }
        }
    }
}

fn sent_after(sent: u64, interval: Duration) -> u64 {
    sent.saturating_add(interval.as_nanos() as u64)
}

async fn sleep_until_nanos(at: u64) {
    let now = monotonic_nanos();
    if at > now {
        tokio::time::sleep(Duration::from_nanos(at - now)).await;
    }
}

/// The ceiling store of one term: every write is a transaction fenced on this term's token.
/// The persister writes through it as through the state file ([`StateSink`]): the sequences'
/// ceilings and the lease and stream records go to etcd, only what changed since the last
/// write (`super::records` keeps one key per record).
pub struct EtcdCeilingStore {
    runtime: tokio::runtime::Handle,
    client: Client,
    shared: Arc<Shared>,
    token: i64,
    /// What etcd holds per sequence id, as far as this term wrote or read it.
    written: HashMap<u32, u64>,
    /// What etcd holds of the leases and streams (key -> value) when the term began, until
    /// the first write succeeds: that write puts and deletes what differs from every record
    /// the persister holds; the later ones, only the records that changed.
    written_records: Option<BTreeMap<String, String>>,
    location: String,
}

impl EtcdCeilingStore {
    fn error(&self, source: StoreError) -> WriteError {
        WriteError {
            step: "commit the fenced ceilings to",
            path: PathBuf::from(&self.location),
            source: std::io::Error::other(source.to_string()),
        }
    }
}

impl StateSink for EtcdCeilingStore {
    fn write_state(&mut self, state: &StateWrite<'_>) -> Result<(), WriteError> {
        // A deposed node writes nothing more (etcd would refuse it anyway). A stopping one
        // still does: its final write records the exact next numbers.
        if !self.shared.role.get().is_leader() {
            return Err(self.error(StoreError::NotLeader { token: self.token }));
        }
        let changed: Vec<CommittedCeiling> = state
            .sequences
            .iter()
            .filter(|s| self.written.get(&s.id) != Some(&s.ceiling))
            .map(|s| CommittedCeiling {
                id: s.id,
                name: s.name.clone(),
                ceiling: s.ceiling,
            })
            .collect();
        let keys = &self.shared.keys;
        let mut puts: Vec<(String, String)> = changed
            .iter()
            .map(|c| (keys.ceiling(c.id), format!("{} {}", c.ceiling, c.name)))
            .collect();
        let (record_puts, deletes) = match &self.written_records {
            Some(written) => {
                let records = records::encode(&keys.records, &state.state().leases_and_streams);
                let puts = records
                    .iter()
                    .filter(|(key, value)| written.get(*key) != Some(*value))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                let deletes = written
                    .keys()
                    .filter(|key| !records.contains_key(*key))
                    .cloned()
                    .collect();
                (puts, deletes)
            }
            None => {
                records::encode_changes(&keys.records, &state.changes, || state.pool_and_counters())
            }
        };
        puts.extend(record_puts);
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let limit = self.shared.settings.timing.ttl;
        let mut client = self.client.clone();
        let result = self.runtime.block_on(etcd::write_fenced(
            &mut client,
            keys,
            self.token,
            &puts,
            &deletes,
            limit,
        ));
        match result {
            Ok(()) => {
                self.written
                    .extend(changed.iter().map(|c| (c.id, c.ceiling)));
                self.written_records = None;
                Ok(())
            }
            Err(e @ StoreError::NotLeader { .. }) => {
                self.shared.depose(e.to_string());
                Err(self.error(e))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn fsyncs(&self) -> u64 {
        0
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}
