//! The durable side of streams: one record per stream, shared with the persister. The event
//! loop that serves streams updates it when a stream is created, resumed, detached or
//! finished; acknowledgements in between live only in that loop (after a crash the
//! client gets some numbers again, which the protocol allows).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::commits::Commits;
use crate::stream::StreamRecord;

/// Streams changed, by client id, as they are now (None: removed).
pub type StreamChanges = Vec<(Vec<u8>, Option<StreamRecord>)>;

#[derive(Debug, Default)]
pub struct StreamRecords {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_client_id: BTreeMap<Vec<u8>, StreamRecord>,
    /// Client ids whose record changed since the persister last took the changes.
    changed: BTreeSet<Vec<u8>>,
}

impl StreamRecords {
    pub fn new(records: Vec<StreamRecord>) -> StreamRecords {
        StreamRecords {
            inner: Mutex::new(Inner {
                by_client_id: records
                    .into_iter()
                    .map(|r| (r.client_id.clone(), r))
                    .collect(),
                changed: BTreeSet::new(),
            }),
        }
    }

    /// Creates or replaces a stream's record; returns the change to wait for.
    pub fn put(&self, record: StreamRecord, commits: &Commits) -> u64 {
        let mut inner = self.lock();
        inner.changed.insert(record.client_id.clone());
        inner.by_client_id.insert(record.client_id.clone(), record);
        commits.next()
    }

    /// Removes a finished or expired stream's record.
    pub fn remove(&self, client_id: &[u8], commits: &Commits) {
        let mut inner = self.lock();
        if inner.by_client_id.remove(client_id).is_some() {
            inner.changed.insert(client_id.to_vec());
            commits.next();
        }
    }

    /// Every record, for a write (take the change number first, see [`Commits`]) or for the
    /// loop that serves streams at start-up.
    pub fn records(&self) -> Vec<StreamRecord> {
        self.lock().by_client_id.values().cloned().collect()
    }

    /// The records changed since the last call, as they are now (None: removed); with
    /// `all`, also every record, taken under the same lock (a write's starting point).
    pub fn take_changes(&self, all: bool) -> (StreamChanges, Vec<StreamRecord>) {
        let mut inner = self.lock();
        let changes = std::mem::take(&mut inner.changed)
            .into_iter()
            .map(|id| {
                let record = inner.by_client_id.get(&id).cloned();
                (id, record)
            })
            .collect();
        let records = if all {
            inner.by_client_id.values().cloned().collect()
        } else {
            Vec::new()
        };
        (changes, records)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each method leaves the map and its change set consistent before anything can
        // panic: a poisoned lock still guards a usable map.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
