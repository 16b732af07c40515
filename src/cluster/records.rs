//! Leases and streams as etcd keys, so a new leader serves them as the old one left them: a
//! lease retried with the same ids gets the same range, a stream resumes (docs/HA.md).
//! Pure encoding and decoding; the fenced writes are the ceiling store's (`node.rs`).
//!
//! Keys under the cluster's prefix `P`, one per record so a write carries only what changed:
//! - `P/leases/<sequence, 10 digits>/<first, 20 digits>` =
//!   `<count> <status> <time_ms> <client id length> <client id><request id>`;
//! - `P/streams/<client id, hex>` = `<sequence> <first> <count> <acked> <last_active_ms>`;
//! - `P/lease-table` = `<granted> <acknowledged> <retired> <returned> <reused>` then one
//!   ` <sequence>:<first>:<count>` per range in the reuse pool (few, and rarely changed).

use std::collections::BTreeMap;

use crate::lease::{LeaseCounters, LeaseRecord, LeaseStatus, PooledRange};
use crate::state::LeaseAndStreamRecords;
use crate::store::journal::Change;
use crate::stream::StreamRecord;

/// Where a cluster keeps its leases and streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKeys {
    pub leases: String,
    pub streams: String,
    pub lease_table: String,
}

impl RecordKeys {
    /// The keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> RecordKeys {
        let prefix = prefix.trim_end_matches('/');
        RecordKeys {
            leases: format!("{prefix}/leases/"),
            streams: format!("{prefix}/streams/"),
            lease_table: format!("{prefix}/lease-table"),
        }
    }
}

/// Every record as `key -> value`, the form etcd holds it in.
pub fn encode(keys: &RecordKeys, records: &LeaseAndStreamRecords) -> BTreeMap<String, String> {
    let mut kvs = BTreeMap::new();
    for lease in &records.leases {
        kvs.insert(
            lease_key(keys, lease.sequence, lease.first),
            lease_value(lease),
        );
    }
    for stream in &records.streams {
        kvs.insert(stream_key(keys, &stream.client_id), stream_value(stream));
    }
    kvs.insert(
        keys.lease_table.clone(),
        table_value(records.lease_counters, &records.pool),
    );
    kvs
}

/// The keys to put and delete for `changes` (the lease and stream changes of one write,
/// one per record): costs what changed. `pool_and_counters` gives the reuse pool and the
/// counters after the write, asked for only when they changed (they share one key).
pub fn encode_changes(
    keys: &RecordKeys,
    changes: &[Change],
    pool_and_counters: impl FnOnce() -> (Vec<PooledRange>, LeaseCounters),
) -> (Vec<(String, String)>, Vec<String>) {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    let mut table_changed = false;
    for change in changes {
        match change {
            Change::Lease(lease) => {
                puts.push((
                    lease_key(keys, lease.sequence, lease.first),
                    lease_value(lease),
                ));
            }
            Change::LeaseGone { sequence, first } => {
                deletes.push(lease_key(keys, *sequence, *first));
            }
            Change::Stream(stream) => {
                puts.push((stream_key(keys, &stream.client_id), stream_value(stream)));
            }
            Change::StreamGone { client_id } => deletes.push(stream_key(keys, client_id)),
            Change::PooledRange(_) | Change::PooledRangeGone { .. } | Change::LeaseCounters(_) => {
                table_changed = true;
            }
            // Ceilings have keys of their own, written by the ceiling store.
            Change::Sequence(_) => {}
        }
    }
    if table_changed {
        let (pool, counters) = pool_and_counters();
        puts.push((keys.lease_table.clone(), table_value(counters, &pool)));
    }
    (puts, deletes)
}

fn lease_key(keys: &RecordKeys, sequence: u32, first: u64) -> String {
    format!("{}{sequence:010}/{first:020}", keys.leases)
}

fn lease_value(lease: &LeaseRecord) -> String {
    format!(
        "{} {} {} {} {}{}",
        lease.count,
        lease.status as u8,
        lease.time_ms,
        lease.client.len(),
        lease.client,
        lease.request
    )
}

fn stream_key(keys: &RecordKeys, client_id: &[u8]) -> String {
    format!("{}{}", keys.streams, hex(client_id))
}

fn stream_value(stream: &StreamRecord) -> String {
    format!(
        "{} {} {} {} {}",
        stream.sequence, stream.first, stream.count, stream.acked, stream.last_active_ms
    )
}

fn table_value(c: LeaseCounters, pool: &[PooledRange]) -> String {
    let mut table = format!(
        "{} {} {} {} {}",
        c.granted, c.acknowledged, c.retired, c.returned, c.reused
    );
    for range in pool {
        table.push_str(&format!(
            " {}:{}:{}",
            range.sequence, range.first, range.count
        ));
    }
    table
}

/// A key etcd holds under the record prefixes that is not what [`encode`] writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} holds {value:?}, which is not a lease, stream or lease-table record")]
pub struct Malformed {
    pub key: String,
    pub value: String,
}

/// The records from etcd's `key -> value` pairs (keys under other prefixes are ignored).
pub fn decode<'a>(
    keys: &RecordKeys,
    kvs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<LeaseAndStreamRecords, Malformed> {
    let mut records = LeaseAndStreamRecords::default();
    for (key, value) in kvs {
        let malformed = || Malformed {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        if let Some(rest) = key.strip_prefix(&keys.leases) {
            records
                .leases
                .push(decode_lease(rest, value).ok_or_else(malformed)?);
        } else if let Some(rest) = key.strip_prefix(&keys.streams) {
            records
                .streams
                .push(decode_stream(rest, value).ok_or_else(malformed)?);
        } else if key == keys.lease_table {
            let (counters, pool) = decode_table(value).ok_or_else(malformed)?;
            records.lease_counters = counters;
            records.pool = pool;
        }
    }
    Ok(records)
}

fn decode_lease(key: &str, value: &str) -> Option<LeaseRecord> {
    let (sequence, first) = key.split_once('/')?;
    let mut fields = value.splitn(4, ' ');
    let count = fields.next()?.parse().ok()?;
    let status = match fields.next()?.parse::<u8>().ok()? {
        s if s == LeaseStatus::Outstanding as u8 => LeaseStatus::Outstanding,
        s if s == LeaseStatus::Acknowledged as u8 => LeaseStatus::Acknowledged,
        s if s == LeaseStatus::Expired as u8 => LeaseStatus::Expired,
        _ => return None,
    };
    let time_ms = fields.next()?.parse().ok()?;
    let (client_len, ids) = fields.next()?.split_once(' ')?;
    let client_len: usize = client_len.parse().ok()?;
    let (client, request) = (ids.get(..client_len)?, ids.get(client_len..)?);
    Some(LeaseRecord {
        sequence: sequence.parse().ok()?,
        first: first.parse().ok()?,
        count,
        status,
        time_ms,
        client: client.to_owned(),
        request: request.to_owned(),
    })
}

fn decode_stream(key: &str, value: &str) -> Option<StreamRecord> {
    let mut fields = value.split(' ');
    let record = StreamRecord {
        client_id: unhex(key)?,
        sequence: fields.next()?.parse().ok()?,
        first: fields.next()?.parse().ok()?,
        count: fields.next()?.parse().ok()?,
        acked: fields.next()?.parse().ok()?,
        last_active_ms: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(record)
}

fn decode_table(value: &str) -> Option<(LeaseCounters, Vec<PooledRange>)> {
    let mut fields = value.split(' ');
    let mut next = || fields.next()?.parse::<u64>().ok();
    let counters = LeaseCounters {
        granted: next()?,
        acknowledged: next()?,
        retired: next()?,
        returned: next()?,
        reused: next()?,
    };
    let pool = value
        .split(' ')
        .skip(5)
        .map(|range| {
            let mut parts = range.split(':');
            let range = PooledRange {
                sequence: parts.next()?.parse().ok()?,
                first: parts.next()?.parse().ok()?,
                count: parts.next()?.parse().ok()?,
            };
            parts.next().is_none().then_some(range)
        })
        .collect::<Option<Vec<_>>>()?;
    Some((counters, pool))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LeaseAndStreamRecords {
        LeaseAndStreamRecords {
            leases: vec![
                LeaseRecord {
                    sequence: 0,
                    first: 1001,
                    count: 20,
                    status: LeaseStatus::Outstanding,
                    time_ms: 1_700_000_000_000,
                    client: "scanner 7".into(),
                    request: "r 1".into(),
                },
                LeaseRecord {
                    sequence: 3,
                    first: 5,
                    count: 1,
                    status: LeaseStatus::Expired,
                    time_ms: 9,
                    client: String::new(),
                    request: String::new(),
                },
            ],
            pool: vec![PooledRange {
                sequence: 3,
                first: 40,
                count: 2,
            }],
            lease_counters: LeaseCounters {
                granted: 5,
                acknowledged: 1,
                retired: 2,
                returned: 1,
                reused: 0,
            },
            streams: vec![StreamRecord {
                client_id: b"\x00a b\xff".to_vec(),
                sequence: 0,
                first: 2000,
                count: 300,
                acked: 120,
                last_active_ms: 77,
            }],
        }
    }

    #[test]
    fn records_survive_the_trip_through_etcd_keys() {
        let keys = RecordKeys::new("/seqd/");
        let records = sample();
        let kvs = encode(&keys, &records);
        assert!(kvs.keys().all(|k| k.starts_with("/seqd/")));
        let back = decode(&keys, kvs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let mut expected = records;
        expected.leases.sort_by_key(|l| (l.sequence, l.first));
        assert_eq!(back, expected);
    }

    #[test]
    fn one_changed_lease_changes_one_key() {
        let keys = RecordKeys::new("/p");
        let before = encode(&keys, &sample());
        let mut records = sample();
        records.leases[0].status = LeaseStatus::Acknowledged;
        let after = encode(&keys, &records);
        let changed: Vec<&String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            changed,
            [&"/p/leases/0000000000/00000000000000001001".to_string()]
        );
    }

    #[test]
    fn changes_put_and_delete_what_a_whole_encoding_would() {
        let keys = RecordKeys::new("/p");
        let before = sample();
        let mut after = sample();
        after.leases[0].status = LeaseStatus::Acknowledged;
        after.leases.remove(1);
        after.lease_counters.acknowledged += 1;
        after.streams.clear();
        let changes = vec![
            Change::Lease(after.leases[0].clone()),
            Change::LeaseGone {
                sequence: 3,
                first: 5,
            },
            Change::LeaseCounters(after.lease_counters),
            Change::StreamGone {
                client_id: before.streams[0].client_id.clone(),
            },
        ];
        let (puts, deletes) = encode_changes(&keys, &changes, || {
            (after.pool.clone(), after.lease_counters)
        });
        let mut kvs = encode(&keys, &before);
        for key in &deletes {
            assert!(kvs.remove(key).is_some(), "{key}");
        }
        kvs.extend(puts);
        assert_eq!(kvs, encode(&keys, &after));
    }

    #[test]
    fn garbage_is_refused_with_its_key() {
        let keys = RecordKeys::new("/p");
        for (key, value) in [
            ("/p/leases/0000000000/00000000000000001001", "20 9 1 0 "),
            ("/p/leases/0000000000/00000000000000001001", "20 1 1 50 ab"),
            ("/p/leases/x", "20 1 1 0 "),
            ("/p/streams/zz", "0 1 2 3 4"),
            ("/p/streams/61", "0 1 2 3"),
            ("/p/lease-table", "1 2 3"),
            ("/p/lease-table", "1 2 3 4 5 1:2"),
        ] {
            let error = decode(&keys, [(key, value)]).unwrap_err();
            assert_eq!(error.key, key);
        }
        assert_eq!(
            decode(&keys, [("/p/ceilings/0000000001", "5 a")]).unwrap(),
            LeaseAndStreamRecords::default()
        );
    }
}
