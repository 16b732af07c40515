//! The lease protocol's requests in the executor: `GET_SEQUENCE_RANGE` and `ACK` change
//! durable records, so their replies wait — with everything the client sent after them —
//! until the change is on disk (the session pauses; the loop resumes it when the persister
//! wakes it).

use std::sync::atomic::Ordering;

use super::counters;
use super::executor::{Awaiting, Executor, Flow, LoopState, Wire};
use super::replies;
use crate::lease::{Acknowledger, GrantError, LeaseRefusal};
use crate::protocol::{self, LeaseIds, Problem, Reply, Target, binary};
use crate::sequence::BeyondDurable;

impl<W: Wire> Executor<'_, '_, '_, W> {
    /// `GET_SEQUENCE_RANGE`: grants (or finds again) a lease; the reply waits until the lease
    /// is durable.
    pub(super) fn lease(
        &mut self,
        target: Target<'_>,
        count: u64,
        ids: Option<LeaseIds<'_>>,
        framing: protocol::Framing,
    ) -> Flow {
        let opcode = binary::opcode::LEASE;
        let id = match self.state.resolve(target) {
            Ok(sequence) => sequence.id(),
            Err(problem) => return self.reply(opcode, Err(problem)),
        };
        let state = &*self.state;
        // Resolved just above; sequences are never removed.
        let Some(sequence) = state.registry.get(id) else {
            return self.reply(opcode, Err(Problem::UnknownSequence(id)));
        };
        let records = &state.records;
        let ids = ids.map(|ids| replies::request_ids(ids, self.connection));
        match records
            .leases
            .grant(sequence, count, ids, self.peer, &records.commits)
        {
            Ok(granted) => self.after_change(Awaiting {
                reply: Reply::Leased {
                    first: granted.first,
                    count: granted.count,
                    framing,
                },
                change: granted.change,
                opcode,
            }),
            Err(GrantError::Refused(refusal)) => {
                if let LeaseRefusal::TooManyForPeer { .. } = refusal {
                    counters::LEASES_REFUSED_PER_PEER.fetch_add(1, Ordering::Relaxed);
                }
                self.reply(opcode, Err(replies::lease_refused(refusal)))
            }
            Err(GrantError::AwaitingCeiling) => {
                let signals = state.registry.persister_signals();
                match signals.beyond_durable() {
                    BeyondDurable::Wait => Flow::AwaitCeiling(id),
                    BeyondDurable::Refuse => {
                        signals.count_refusal();
                        self.reply(opcode, Err(replies::unissuable(signals)))
                    }
                }
            }
        }
    }

    /// `ACK start,end` (with the client id the lease was granted to, if it names one): the
    /// reply waits until the acknowledgement is durable.
    pub(super) fn acknowledge(
        &mut self,
        target: Target<'_>,
        first: u64,
        last: u64,
        client: Option<&[u8]>,
    ) -> Flow {
        let by = Acknowledger {
            client,
            connection: self.connection,
        };
        let opcode = binary::opcode::ACK;
        let sequence = match self.state.resolve(target) {
            Ok(sequence) => sequence.id(),
            Err(problem) => return self.reply(opcode, Err(problem)),
        };
        let records = &self.state.records;
        match records
            .leases
            .acknowledge(sequence, first, last, by, &records.commits)
        {
            Ok(change) => self.after_change(Awaiting {
                reply: Reply::Acked { first },
                change,
                opcode,
            }),
            Err(refusal) => self.reply(opcode, Err(replies::lease_refused(refusal))),
        }
    }

    /// Answers now if the change is already durable (or cannot become so), else waits.
    fn after_change(&mut self, awaiting: Awaiting) -> Flow {
        answer_when_durable::<W>(awaiting, self.state, self.out).unwrap_or(Flow::Continue)
    }
}

/// Encodes `awaiting`'s reply if its change is durable, or refuses it if the durable state
/// cannot be written now (the change stays in memory: a retry with the same ids finds it);
/// otherwise returns it as a [`Flow::AwaitDurable`].
pub(super) fn answer_when_durable<W: Wire>(
    awaiting: Awaiting,
    state: &LoopState,
    out: &mut Vec<u8>,
) -> Option<Flow> {
    if state.records.commits.is_durable(awaiting.change) {
        W::encode(out, &awaiting.reply);
        return None;
    }
    match state.registry.persister_signals().beyond_durable() {
        BeyondDurable::Wait => Some(Flow::AwaitDurable(awaiting)),
        BeyondDurable::Refuse => {
            let problem = Problem::LeaseNotDurable;
            W::encode(
                out,
                &Reply::Error {
                    opcode: awaiting.opcode,
                    problem,
                },
            );
            None
        }
    }
}
