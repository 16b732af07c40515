//! What a newly elected leader serves: its sequences at the ceilings etcd has committed,
//! and the leases and streams as the previous leaders left them.

use std::sync::Arc;

use anyhow::Context;

use super::{ClusterNode, Leadership};
use crate::commits::Commits;
use crate::lease::LeaseSettings;
use crate::sequence::{RecoveredSequence, Registry, Writers};
use crate::state::LeasesAndStreams;
use crate::store::format::{SequenceRecord, State};
use crate::store::persister::Persister;
use crate::store::recovery::restore_records;
use crate::store::window::WindowPolicy;

/// What a new leader serves: the sequences at their committed ceilings, each issuing under
/// the node's leadership deadline, the leases and streams from etcd (a lease or stream
/// change is answered once it is committed there, as a single node answers once it is on
/// disk), and the persister that writes both through fenced transactions (its first windows
/// already committed, so the server starts with numbers).
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
        leases_and_streams: leadership.records.clone(),
    };
    let records = restore_records(Some(&committed), &registry, leases, Commits::persisted())
        .context("the leases and streams in etcd do not fit its ceilings")?;
    let records = Arc::new(records);
    if !committed.leases_and_streams.leases.is_empty()
        || !committed.leases_and_streams.streams.is_empty()
    {
        tracing::info!(
            "{} leases and {} streams taken over from etcd",
            committed.leases_and_streams.leases.len(),
            committed.leases_and_streams.streams.len()
        );
    }
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
