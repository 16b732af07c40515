//! The one place where domain outcomes become wire replies: the lease table's refusals, the
//! registry's errors and the lease figures are worded here, so the domain never knows the
//! wire and the codecs never know the domain.

use crate::lease::{LeaseRefusal, RequestIds, TableStats};
use crate::protocol::{LeaseIds, LeaseStats, Problem};
use crate::sequence::{PersisterSignals, RegistryError, Unissuable};

/// A lease request's ids, as the lease table takes them, from `connection`.
#[inline]
pub fn request_ids(ids: LeaseIds<'_>, connection: u64) -> RequestIds<'_> {
    RequestIds {
        client: ids.client,
        request: ids.request,
        connection,
    }
}

pub fn lease_refused(refusal: LeaseRefusal) -> Problem<'static> {
    match refusal {
        LeaseRefusal::BadId { which, error } => Problem::BadLeaseId { which, error },
        LeaseRefusal::SizeOutOfRange { max } => Problem::LeaseSizeOutOfRange { max },
        LeaseRefusal::RequestIdReused { count } => Problem::RequestIdReused { count },
        LeaseRefusal::TooManyForClient { limit } => Problem::TooManyClientLeases { limit },
        LeaseRefusal::TooManyTracked { limit } => Problem::TooManyLeases { limit },
        LeaseRefusal::TooManyForPeer { limit } => Problem::TooManyPeerLeases { limit },
        LeaseRefusal::Exhausted { remaining } => Problem::Exhausted { remaining },
        LeaseRefusal::Unknown { first, last } => Problem::UnknownLease { first, last },
        LeaseRefusal::NotYours { first, last } => Problem::LeaseNotYours { first, last },
        LeaseRefusal::Mismatch {
            first,
            last,
            lease_first,
            lease_last,
        } => Problem::LeaseMismatch {
            first,
            last,
            lease_first,
            lease_last,
        },
        LeaseRefusal::Expired {
            first,
            last,
            returned,
        } => Problem::LeaseExpired {
            first,
            last,
            returned,
        },
    }
}

pub fn registry_refused(error: RegistryError) -> Problem<'static> {
    match error {
        RegistryError::InvalidName(e) => Problem::InvalidName(e),
        RegistryError::TooManySequences { limit } => Problem::TooManySequences { limit },
    }
}

/// The refusal of a request no number can be issued for now: a standby names the leader.
pub fn unissuable(signals: &PersisterSignals) -> Problem<'static> {
    match signals.unissuable() {
        Unissuable::Unavailable => Problem::Unavailable,
        Unissuable::NotLeader { leader } => Problem::NotLeader { leader },
    }
}

pub fn lease_stats(stats: TableStats) -> LeaseStats {
    let t = stats.totals;
    LeaseStats {
        outstanding: stats.outstanding,
        granted: t.granted,
        acknowledged: t.acknowledged,
        retired: t.retired,
        returned: t.returned,
        reused: t.reused,
    }
}
