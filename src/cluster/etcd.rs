//! What seqd does in etcd, as async operations on an `etcd_client::Client`: the election
//! (a leader key created if absent under a lease), renewals, and the fenced ceiling store.
//!
//! Keys, under a prefix so several clusters share one etcd:
//! - `<prefix>/leader`: `<node-id> <advertise>`, bound to the leader's lease. Its create
//!   revision is the leader's fencing token: a key deleted and created again has another.
//! - `<prefix>/ceilings/<id, 10 digits>`: `<ceiling> <name>`, the durable ceiling of one
//!   sequence: no number at or above it was issued. Written only by a transaction that
//!   compares the leader key's create revision with the writer's token.
//! - leases, streams and the lease table (`super::records`), written by the same fenced
//!   transactions.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};

use crate::sequence::{SequenceId, monotonic_nanos};
use crate::state::LeaseAndStreamRecords;

use super::records::{self, RecordKeys};
use super::timing::LeaseTiming;

/// Most puts in one transaction (etcd's `--max-txn-ops` defaults to 128). A raise that
/// touches more sequences is split: each part is fenced on its own, which is enough (every
/// ceiling only has to be durable before it is used, not together with the others).
pub const MAX_PUTS_PER_TXN: usize = 100;

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Everything of this cluster is under it.
    pub prefix: String,
    pub leader: String,
    pub ceilings: String,
    pub records: RecordKeys,
}

impl Keys {
    /// The keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/');
        Keys {
            prefix: format!("{prefix}/"),
            leader: format!("{prefix}/leader"),
            ceilings: format!("{prefix}/ceilings/"),
            records: RecordKeys::new(prefix),
        }
    }

    pub fn ceiling(&self, id: SequenceId) -> String {
        format!("{}{id:010}", self.ceilings)
    }
}

/// One sequence's committed ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedCeiling {
    pub id: SequenceId,
    pub name: String,
    pub ceiling: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the leader key no longer has this node's fencing token {token}: another node leads \
         (or the key was deleted), so this node's ceiling writes are refused"
    )]
    NotLeader { token: i64 },
    #[error("{key} holds {value:?}, which is not `<ceiling> <name>`")]
    Malformed { key: String, value: String },
    #[error(transparent)]
    MalformedRecord(#[from] records::Malformed),
}

/// Runs `operation` with a bound on how long etcd may take.
pub async fn bounded<T>(
    limit: Duration,
    operation: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// A won election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elected {
    pub lease: i64,
    /// The leader key's create revision.
    pub token: i64,
    /// Until when (monotonic nanoseconds) the lease is certainly ours, from the grant.
    pub deadline: u64,
    /// The TTL etcd granted: more than asked for when etcd's minimum is higher.
    pub granted_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    Won(Elected),
    /// `leader` holds the key; watch for its deletion after `revision`.
    Lost {
        leader: String,
        revision: i64,
    },
}

/// One attempt: grant a lease, create the leader key under it if absent.
pub async fn campaign(
    client: &mut Client,
    keys: &Keys,
    value: &str,
    timing: &LeaseTiming,
) -> Result<Campaign, StoreError> {
    let limit = timing.ttl;
    let sent = monotonic_nanos();
    let grant = bounded(limit, client.lease_grant(timing.ttl_seconds(), None)).await?;
    let granted = Duration::from_secs(grant.ttl().max(0) as u64);
    let lease = grant.id();
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.leader.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                keys.leader.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::get(keys.leader.as_str(), None),
        ])
        .or_else([TxnOp::get(keys.leader.as_str(), None)]);
    let response = match bounded(limit, client.txn(txn)).await {
        Ok(response) => response,
        Err(e) => {
            // Whether the key was created is unknown; the lease is ours either way, so
            // revoking it deletes the key if it was (and a new campaign starts clean).
            let _ = bounded(limit, client.lease_revoke(lease)).await;
            return Err(e);
        }
    };
    let revision = response.header().map_or(0, |h| h.revision());
    let holder = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    });
    if response.succeeded() {
        let token = holder.map_or(revision, |kv| kv.create_revision());
        return Ok(Campaign::Won(Elected {
            lease,
            token,
            deadline: timing.deadline(sent, granted),
            granted_ttl: granted,
        }));
    }
    let _ = bounded(limit, client.lease_revoke(lease)).await;
    let leader = holder
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    Ok(Campaign::Lost { leader, revision })
}

/// Waits until the leader key is deleted after `revision` (the leader resigned or its lease
/// expired). Returns `Ok` on deletion; an error when the watch broke (campaign again then:
/// a campaign is safe to repeat).
pub async fn wait_for_vacancy(
    client: &mut Client,
    keys: &Keys,
    revision: i64,
) -> Result<(), StoreError> {
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let (_watcher, mut stream) = client
        .watch(keys.leader.as_str(), Some(options))
        .await
        .map_err(StoreError::Etcd)?;
    while let Some(message) = stream.message().await? {
        if message.canceled() {
            break;
        }
        if message
            .events()
            .iter()
            .any(|event| event.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
    Err(StoreError::Etcd(etcd_client::Error::WatchError(
        "the watch on the leader key ended".into(),
    )))
}

/// What the previous leaders committed: every ceiling (in id order) and every lease and
/// stream record, in one linearizable read (etcd's default) of the whole prefix.
pub async fn read_committed(
    client: &mut Client,
    keys: &Keys,
    limit: Duration,
) -> Result<(Vec<CommittedCeiling>, LeaseAndStreamRecords), StoreError> {
    let response = bounded(
        limit,
        client.get(keys.prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut ceilings = Vec::new();
    let mut others = Vec::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        if key.starts_with(&keys.ceilings) {
            let parsed = parse_ceiling(&keys.ceilings, &key, &value);
            ceilings.push(parsed.ok_or(StoreError::Malformed { key, value })?);
        } else {
            others.push((key, value));
        }
    }
    ceilings.sort_by_key(|c| c.id);
    let records = records::decode(
        &keys.records,
        others.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok((ceilings, records))
}

/// Every committed ceiling, in id order. A linearizable read (etcd's default): everything
/// a previous leader committed is in it.
pub async fn read_ceilings(
    client: &mut Client,
    keys: &Keys,
    limit: Duration,
) -> Result<Vec<CommittedCeiling>, StoreError> {
    let response = bounded(
        limit,
        client.get(
            keys.ceilings.as_str(),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let mut ceilings = Vec::with_capacity(response.kvs().len());
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        let parsed = parse_ceiling(&keys.ceilings, &key, &value);
        ceilings.push(parsed.ok_or(StoreError::Malformed { key, value })?);
    }
    ceilings.sort_by_key(|c| c.id);
    Ok(ceilings)
}

fn parse_ceiling(prefix: &str, key: &str, value: &str) -> Option<CommittedCeiling> {
    let id = key.strip_prefix(prefix)?.parse().ok()?;
    let (ceiling, name) = value.split_once(' ')?;
    Some(CommittedCeiling {
        id,
        name: name.to_owned(),
        ceiling: ceiling.parse().ok()?,
    })
}

/// Writes `ceilings`, each transaction conditioned on the leader key still carrying `token`.
/// `Err(NotLeader)` when etcd refused: nothing of that transaction was written.
pub async fn write_ceilings(
    client: &mut Client,
    keys: &Keys,
    token: i64,
    ceilings: &[CommittedCeiling],
    limit: Duration,
) -> Result<(), StoreError> {
    let puts: Vec<(String, String)> = ceilings
        .iter()
        .map(|c| (keys.ceiling(c.id), format!("{} {}", c.ceiling, c.name)))
        .collect();
    write_fenced(client, keys, token, &puts, &[], limit).await
}

/// Puts `puts` and deletes `deletes`, at most [`MAX_PUTS_PER_TXN`] operations per
/// transaction, each conditioned on the leader key still carrying `token`.
/// `Err(NotLeader)` when etcd refused: nothing of that transaction was written.
pub async fn write_fenced(
    client: &mut Client,
    keys: &Keys,
    token: i64,
    puts: &[(String, String)],
    deletes: &[String],
    limit: Duration,
) -> Result<(), StoreError> {
    let operations: Vec<TxnOp> = puts
        .iter()
        .map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None))
        .chain(deletes.iter().map(|key| TxnOp::delete(key.as_str(), None)))
        .collect();
    for part in operations.chunks(MAX_PUTS_PER_TXN) {
        let txn = Txn::new()
            .when([Compare::create_revision(
                keys.leader.as_str(),
                CompareOp::Equal,
                token,
            )])
            .and_then(part.to_vec());
        let response = bounded(limit, client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(StoreError::NotLeader { token });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_and_sort_by_id() {
        let keys = Keys::new("/seqd/a/");
        assert_eq!(keys.leader, "/seqd/a/leader");
        assert_eq!(keys.ceiling(7), "/seqd/a/ceilings/0000000007");
        assert!(keys.ceiling(9) < keys.ceiling(10));
    }

    #[test]
    fn ceilings_parse_back_and_garbage_is_refused() {
        let keys = Keys::new("/p");
        let parsed = parse_ceiling(&keys.ceilings, &keys.ceiling(3), "1200 orders");
        assert_eq!(
            parsed,
            Some(CommittedCeiling {
                id: 3,
                name: "orders".into(),
                ceiling: 1200
            })
        );
        assert_eq!(parse_ceiling(&keys.ceilings, &keys.ceiling(3), "12"), None);
        assert_eq!(parse_ceiling(&keys.ceilings, &keys.ceiling(3), "x y"), None);
        assert_eq!(parse_ceiling(&keys.ceilings, "/p/other", "1 a"), None);
    }
}
