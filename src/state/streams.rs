//! The durable side of streams: one record per stream, shared with the persister. The event
//! loop that serves streams updates it when a stream is created, resumed, detached or
//! finished; acknowledgements in between live only in that loop (after a crash the
//! client gets some numbers again, which the protocol allows).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::commits::Commits;
use crate::stream::StreamRecord;

#[derive(Debug, Default)]
pub struct StreamRecords {
    by_client_id: Mutex<BTreeMap<Vec<u8>, StreamRecord>>,
}

impl StreamRecords {
    pub fn new(records: Vec<StreamRecord>) -> StreamRecords {
        StreamRecords {
            by_client_id: Mutex::new(
                records
                    .into_iter()
                    .map(|r| (r.client_id.clone(), r))
                    .collect(),
            ),
        }
    }

    /// Creates or replaces a stream's record; returns the change to wait for.
    pub fn put(&self, record: StreamRecord, commits: &Commits) -> u64 {
        let mut records = self.lock();
        records.insert(record.client_id.clone(), record);
        commits.next()
    }

    /// Removes a finished or expired stream's record.
    pub fn remove(&self, client_id: &[u8], commits: &Commits) {
        let mut records = self.lock();
        if records.remove(client_id).is_some() {
            commits.next();
        }
    }

    /// Every record, for a write (take the change number first, see [`Commits`]) or for the
    /// loop that serves streams at start-up.
    pub fn records(&self) -> Vec<StreamRecord> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, StreamRecord>> {
        // Each method is a single map operation: a poisoned lock still guards a whole map.
        self.by_client_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
