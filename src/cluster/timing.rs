//! Lease timing: the leader key's TTL, how often it is renewed, and the self-fencing
//! deadline each renewal buys. Pure arithmetic, so the rules are unit-tested.
//!
//! The deadline is counted from the moment a renewal was *sent*, not answered: etcd restarts
//! the lease's TTL when it handles the request, which is after we sent it, so the lease
//! cannot expire before `sent + ttl` (etcd never expires a lease early; a new etcd leader
//! even extends every lease). A margin is taken off for what lies between the check and the
//! reply (a reservation checks the coarse clock, up to one kernel tick behind), and for clock
//! rate differences between this host and etcd's leader.

use std::time::Duration;

/// The default TTL of the leader key: 1 s, so a crashed leader is replaced within about
/// 1.5 s (the TTL, plus etcd's expiry check, which runs every 500 ms). etcd raises any TTL
/// below 1.5 x its election timeout to that minimum, rounded up to whole seconds, so 1 s
/// needs etcd's `--election-timeout=500` (with `--heartbeat-interval=50`); with etcd's
/// defaults (1 s) it grants 2 s, and the node still fences on its own 1 s. The margin
/// (250 ms) and the renewal interval (333 ms) then leave one lost renewal without a lapse;
/// an etcd leader change (about one election timeout without answers) may pause issuing
/// for a moment, never fence a healthy leader for good (docs/HA.md, "Timing").
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// The smallest margin, whatever the TTL: room for a kernel tick, a scheduling delay
/// between the check and the reply, and clock drift.
pub const MIN_MARGIN: Duration = Duration::from_millis(100);

/// How a node times its leadership lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The TTL asked for (etcd counts leases in whole seconds).
    pub ttl: Duration,
    /// Taken off `sent + ttl` to get the deadline.
    pub margin: Duration,
    /// Time between two renewals: a third of the TTL, so one lost renewal is survived.
    pub keep_alive_interval: Duration,
}

/// Why a TTL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("--leader-ttl must be a whole number of seconds (etcd leases are), got {0:?}")]
    NotWholeSeconds(Duration),
    #[error("--leader-ttl must be between 1 s and 60 s, got {0:?}")]
    OutOfRange(Duration),
}

impl LeaseTiming {
    /// The timing for a leader key of `ttl`: renewals every `ttl / 3`, and a margin of a
    /// quarter of the TTL (at least [`MIN_MARGIN`]), so a renewal answered within
    /// `ttl - ttl/3 - margin` of its predecessor's deadline never lets issuing lapse.
    pub fn for_ttl(ttl: Duration) -> Result<LeaseTiming, TimingError> {
        if ttl.subsec_nanos() != 0 {
            return Err(TimingError::NotWholeSeconds(ttl));
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(TimingError::OutOfRange(ttl));
        }
        Ok(LeaseTiming {
            ttl,
            margin: (ttl / 4).max(MIN_MARGIN),
            keep_alive_interval: ttl / 3,
        })
    }

    /// The TTL in etcd's unit.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl.as_secs() as i64
    }

    /// Until when a lease renewed (or granted) by a request sent at monotonic `sent_at`
    /// nanoseconds may be relied on, given the TTL etcd granted: the lease lives at least
    /// `granted_ttl` from `sent_at`; the smaller of the granted and the asked-for TTL is used
    /// (etcd may raise a TTL to its minimum, never lower it, but trusting our own is safer).
    pub fn deadline(&self, sent_at: u64, granted_ttl: Duration) -> u64 {
        let lease = granted_ttl.min(self.ttl).saturating_sub(self.margin);
        sent_at.saturating_add(lease.as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn default_ttl_renews_every_third_and_keeps_a_quarter_as_margin() {
        let timing = LeaseTiming::for_ttl(DEFAULT_TTL).unwrap();
        assert_eq!(timing.keep_alive_interval, DEFAULT_TTL / 3);
        assert_eq!(timing.margin, Duration::from_millis(250));
        assert_eq!(timing.ttl_seconds(), 1);
    }

    #[test]
    fn the_deadline_is_the_send_time_plus_ttl_minus_the_margin() {
        let timing = LeaseTiming::for_ttl(Duration::from_secs(2)).unwrap();
        let sent = 100 * SECOND;
        assert_eq!(
            timing.deadline(sent, Duration::from_secs(2)),
            sent + 3 * SECOND / 2
        );
        // etcd granted more (its minimum TTL): our own TTL still bounds the deadline.
        assert_eq!(
            timing.deadline(sent, Duration::from_secs(5)),
            sent + 3 * SECOND / 2
        );
        // etcd granted less (an almost expired lease): the deadline shrinks with it.
        assert_eq!(
            timing.deadline(sent, Duration::from_secs(1)),
            sent + SECOND / 2
        );
        assert_eq!(timing.deadline(sent, Duration::ZERO), sent);
    }

    #[test]
    fn one_lost_renewal_does_not_lapse_the_deadline() {
        for seconds in 1..=60 {
            let timing = LeaseTiming::for_ttl(Duration::from_secs(seconds)).unwrap();
            let deadline = timing.deadline(0, timing.ttl);
            let third_renewal_sent = 2 * timing.keep_alive_interval.as_nanos() as u64;
            assert!(
                third_renewal_sent < deadline,
                "ttl {seconds}s: the renewal after a lost one is sent after the deadline"
            );
            assert!(timing.margin >= MIN_MARGIN);
        }
    }

    #[test]
    fn the_deadline_falls_a_margin_before_the_earliest_expiry_whatever_etcd_grants() {
        for seconds in 1..=60 {
            let timing = LeaseTiming::for_ttl(Duration::from_secs(seconds)).unwrap();
            for granted in 0..=seconds + 5 {
                let granted = Duration::from_secs(granted);
                let sent = 7 * SECOND;
                // The lease lives at least until `sent + granted` (etcd restarted its TTL
                // after we sent the renewal).
                let earliest_expiry = sent + granted.as_nanos() as u64;
                let deadline = timing.deadline(sent, granted);
                assert!(
                    deadline + MIN_MARGIN.as_nanos() as u64 <= earliest_expiry || deadline == sent,
                    "ttl {seconds}s granted {granted:?}: deadline too close to the expiry"
                );
            }
        }
    }

    #[test]
    fn unusable_ttls_are_refused() {
        assert_eq!(
            LeaseTiming::for_ttl(Duration::from_millis(1500)),
            Err(TimingError::NotWholeSeconds(Duration::from_millis(1500)))
        );
        assert_eq!(
            LeaseTiming::for_ttl(Duration::ZERO),
            Err(TimingError::OutOfRange(Duration::ZERO))
        );
        assert!(LeaseTiming::for_ttl(Duration::from_secs(61)).is_err());
    }
}
