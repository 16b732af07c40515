//! What a newly elected leader serves: its sequences at the ceilings etcd has committed.

use std::sync::Arc;

use anyhow::Context;

use super::{ClusterNode, Leadership};
use crate::commits::Commits;
use crate::lease::LeaseSettings;
use crate::sequence::{RecoveredSequence, Registry, Writers};
use crate::state::{LeaseAndStreamRecords, LeasesAndStreams};
use crate::store::format::{SequenceRecord, State};
use crate::store::persister::Persister;
use crate::store::window::WindowPolicy;

/// What a new leader serves: the sequences at their committed ceilings, each issuing under
/// the node's leadership deadline, and the persister that raises ceilings through fenced
/// transactions (its first windows already committed, so the server starts with numbers).
pub fn open_sequences(
    node: &ClusterNode,
    leadership: &Leadership,
    max_sequences: u32,
    initial: u64,
    policy: WindowPolicy,
    writers: Writers,
    leases: LeaseSettings,
) -> anyhow::Result<(Arc<Registry>, Arc<LeasesAndStreams>, Persister)> {
    let recovered: Vec<RecoveredSequence> = leadership
        .ceilings
        .iter()
        .map(|c| RecoveredSequence {
            id: c.id,
            name: c.name.clone(),
            resume_at: c.ceiling,
        })
        .collect();
    let registry = Registry::recovered(max_sequences, initial, &recovered)
        .context("the ceilings in etcd are inconsistent")?
        .with_writers(writers)
        .with_issue_deadline(node.deadline());
    let registry = Arc::new(registry);
    // Leases and streams are not shared between nodes yet: answered from memory.
    let records = Arc::new(LeasesAndStreams::empty(Commits::memory_only(), leases));
    let committed = State {
        generation: 0,
        clean_shutdown: false,
        written_at_ms: 0,
        sequences: leadership
            .ceilings
            .iter()
            .map(|c| SequenceRecord {
                id: c.id,
                name: c.name.clone(),
                next: c.ceiling,
                ceiling: c.ceiling,
            })
            .collect(),
        leases_and_streams: LeaseAndStreamRecords::default(),
    };
    for c in &leadership.ceilings {
        tracing::info!(
            "sequence {:?} (id {}) resumes at {}, its committed ceiling",
            c.name,
            c.id,
            c.ceiling
        );
    }
    let mut persister = Persister::new(
        Box::new(node.ceiling_store(leadership)),
        registry.clone(),
        records.clone(),
        policy,
        Some(&committed),
    );
    persister
        .raise_now()
        .context("cannot commit the first ceilings to etcd")?;
    Ok((registry, records, persister))
}
