//! The lease and stream records as the last successful write left them, and the changes
//! the next write must carry: what lets a write cost what changed since the previous one
//! instead of the whole tables. No I/O.
//!
//! The live tables say which records changed ([`LeaseAndStreamChanges`], taken by the
//! persister under the locks it takes anyway); [`RecordLog`] keeps them pending until a write
//! holding them succeeds, so a failed write's changes go with the next one. A change is
//! written as a removal only when the record is on disk: a lease granted and forgotten
//! between two writes leaves nothing to write, and a journal never removes what its state
//! does not hold.

use std::collections::BTreeMap;

use super::journal::Change;
use crate::lease::{LeaseCounters, LeaseRecord, PooledRange};
use crate::state::{LeaseAndStreamChanges, LeaseAndStreamRecords};
use crate::stream::StreamRecord;

type Key = (u32, u64);

/// The lease and stream records last written, and what changed since.
#[derive(Debug, Clone, Default)]
pub struct RecordLog {
    written: Records,
    pending: Pending,
}

#[derive(Debug, Clone, Default)]
struct Records {
    leases: BTreeMap<Key, LeaseRecord>,
    pool: BTreeMap<Key, PooledRange>,
    counters: LeaseCounters,
    streams: BTreeMap<Vec<u8>, StreamRecord>,
}

/// Changed records as they are now (None: gone), by key.
#[derive(Debug, Clone, Default)]
struct Pending {
    leases: BTreeMap<Key, Option<LeaseRecord>>,
    pool: BTreeMap<Key, Option<PooledRange>>,
    counters: Option<LeaseCounters>,
    streams: BTreeMap<Vec<u8>, Option<StreamRecord>>,
}

impl RecordLog {
    /// Starting from `records`, what the store holds (or what the first write, which must
    /// write every record, will hold).
    pub fn new(records: LeaseAndStreamRecords) -> RecordLog {
        RecordLog {
            written: Records {
                leases: records
                    .leases
                    .into_iter()
                    .map(|l| ((l.sequence, l.first), l))
                    .collect(),
                pool: records
                    .pool
                    .into_iter()
                    .map(|r| ((r.sequence, r.first), r))
                    .collect(),
                counters: records.lease_counters,
                streams: records
                    .streams
                    .into_iter()
                    .map(|s| (s.client_id.clone(), s))
                    .collect(),
            },
            pending: Pending::default(),
        }
    }

    /// Adds changes taken from the live tables; a later state of a record replaces an
    /// earlier one still pending.
    pub fn add(&mut self, changes: LeaseAndStreamChanges) {
        let pending = &mut self.pending;
        pending.leases.extend(changes.leases.leases);
        pending.pool.extend(changes.leases.pool);
        pending.streams.extend(changes.streams);
        if changes.leases.counters != self.written.counters || pending.counters.is_some() {
            pending.counters = Some(changes.leases.counters);
        }
    }

    /// Records changed and not yet written (each counted once, however often it changed).
    pub fn pending(&self) -> usize {
        let p = &self.pending;
        p.leases.len() + p.pool.len() + p.streams.len() + usize::from(p.counters.is_some())
    }

    /// What the next write must carry: every pending record that differs from what was
    /// written, and a removal for every pending removal of a written record. Costs what is
    /// pending, not the tables.
    pub fn changes(&self) -> Vec<Change> {
        let (written, pending) = (&self.written, &self.pending);
        let mut changes = Vec::with_capacity(self.pending());
        keyed(
            &written.leases,
            &pending.leases,
            |l| Change::Lease(l.clone()),
            |&(sequence, first)| Change::LeaseGone { sequence, first },
            &mut changes,
        );
        keyed(
            &written.pool,
            &pending.pool,
            |r| Change::PooledRange(*r),
            |&(sequence, first)| Change::PooledRangeGone { sequence, first },
            &mut changes,
        );
        if let Some(counters) = pending.counters.filter(|c| *c != written.counters) {
            changes.push(Change::LeaseCounters(counters));
        }
        keyed(
            &written.streams,
            &pending.streams,
            |s| Change::Stream(s.clone()),
            |id| Change::StreamGone {
                client_id: id.clone(),
            },
            &mut changes,
        );
        changes
    }

    /// Every record the next write makes durable (written, with the pending changes
    /// applied), in key order. Costs the whole tables: for a write of every record.
    pub fn records(&self) -> LeaseAndStreamRecords {
        LeaseAndStreamRecords {
            leases: merged(&self.written.leases, &self.pending.leases),
            pool: self.pool(),
            lease_counters: self.counters(),
            streams: merged(&self.written.streams, &self.pending.streams),
        }
    }

    /// The reuse pool the next write makes durable.
    pub fn pool(&self) -> Vec<PooledRange> {
        merged(&self.written.pool, &self.pending.pool)
    }

    /// The counters the next write makes durable.
    pub fn counters(&self) -> LeaseCounters {
        self.pending.counters.unwrap_or(self.written.counters)
    }

    /// Makes `records` what the next write makes durable, by comparing every record (a
    /// stand-in for the live tables' changes in tests).
    #[cfg(test)]
    pub fn replace_all(&mut self, records: LeaseAndStreamRecords) {
        let all = RecordLog::new(records);
        let pending = &mut self.pending;
        for key in self.written.leases.keys().chain(all.written.leases.keys()) {
            pending
                .leases
                .insert(*key, all.written.leases.get(key).cloned());
        }
        for key in self.written.pool.keys().chain(all.written.pool.keys()) {
            pending
                .pool
                .insert(*key, all.written.pool.get(key).copied());
        }
        for key in self
            .written
            .streams
            .keys()
            .chain(all.written.streams.keys())
        {
            pending
                .streams
                .insert(key.clone(), all.written.streams.get(key).cloned());
        }
        pending.counters = Some(all.written.counters);
    }

    /// The pending changes are durable now: they become what was written.
    pub fn written(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let written = &mut self.written;
        apply(&mut written.leases, pending.leases);
        apply(&mut written.pool, pending.pool);
        apply(&mut written.streams, pending.streams);
        if let Some(counters) = pending.counters {
            written.counters = counters;
        }
    }
}

fn keyed<K: Ord, T: PartialEq>(
    written: &BTreeMap<K, T>,
    pending: &BTreeMap<K, Option<T>>,
    put: impl Fn(&T) -> Change,
    gone: impl Fn(&K) -> Change,
    changes: &mut Vec<Change>,
) {
    for (key, now) in pending {
        match (written.get(key), now) {
            (before, Some(now)) if before != Some(now) => changes.push(put(now)),
            (Some(_), None) => changes.push(gone(key)),
            _ => {}
        }
    }
}

fn merged<K: Ord, T: Clone>(written: &BTreeMap<K, T>, pending: &BTreeMap<K, Option<T>>) -> Vec<T> {
    let mut all: BTreeMap<&K, &T> = written.iter().collect();
    for (key, now) in pending {
        match now {
            Some(now) => all.insert(key, now),
            None => all.remove(key),
        };
    }
    all.into_values().cloned().collect()
}

fn apply<K: Ord, T>(written: &mut BTreeMap<K, T>, pending: BTreeMap<K, Option<T>>) {
    for (key, now) in pending {
        match now {
            Some(now) => written.insert(key, now),
            None => written.remove(&key),
        };
    }
}
