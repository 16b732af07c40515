//! What to do with the outcome of an accept, for every listener alike: admit, ignore a peer
//! that gave up, or — when descriptors or memory run out — stop accepting, retry after
//! [`ACCEPT_RETRY`] and warn once per episode (accepting again at once would fail again at
//! once, and a warning per attempt floods the log). An episode is a run of such failures
//! with less than [`EPISODE_QUIET`] between them: while descriptors are short, a retry often
//! admits one connection and fails on the next, which is still the same episode.

use std::time::{Duration, Instant};

use super::failure::Failure;

/// How long accepting pauses after running out of descriptors or memory.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long without such a failure ends an episode (the next one warns again).
pub const EPISODE_QUIET: Duration = Duration::from_secs(10);

/// What the backend does after an accept completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStep {
    /// Admit the new connection.
    Admit,
    /// Nothing (a cancellation, or a peer that gave up while queued).
    Ignore,
    /// Log the failure and go on accepting.
    Warn,
    /// Stop accepting and arm the retry timer; `warn` on an episode's first failure only.
    BackOff { warn: bool },
}

/// One per event loop: descriptors are per process, so all its listeners back off together.
#[derive(Debug, Default)]
pub struct AcceptPolicy {
    /// Waiting for the retry timer: no listener is armed again before it fires.
    backing_off: bool,
    /// When accepting last ran out of descriptors or memory.
    last_exhausted: Option<Instant>,
}

impl AcceptPolicy {
    /// The outcome of one accept at `now`: a new connection, or why there is none.
    pub fn on_result(&mut self, result: Result<(), Failure>, now: Instant) -> AcceptStep {
        match result {
            Ok(()) => AcceptStep::Admit,
            Err(Failure::Cancelled | Failure::PeerGone(_)) => AcceptStep::Ignore,
            Err(Failure::Exhausted(_) | Failure::NoBuffers) => {
                let warn = self
                    .last_exhausted
                    .is_none_or(|last| now.saturating_duration_since(last) >= EPISODE_QUIET);
                self.last_exhausted = Some(now);
                self.backing_off = true;
                AcceptStep::BackOff { warn }
            }
            Err(Failure::Other(_)) => AcceptStep::Warn,
        }
    }

    /// The retry timer fired.
    pub fn retry_due(&mut self) {
        self.backing_off = false;
    }

    /// Whether a listener whose accept ended may be armed again now.
    pub fn may_arm(&self) -> bool {
        !self.backing_off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMFILE: Result<(), Failure> = Err(Failure::Exhausted(libc::EMFILE));

    #[test]
    fn exhaustion_backs_off_until_the_retry_timer() {
        let now = Instant::now();
        let mut policy = AcceptPolicy::default();
        assert!(policy.may_arm());
        assert_eq!(
            policy.on_result(EMFILE, now),
            AcceptStep::BackOff { warn: true }
        );
        assert!(!policy.may_arm(), "no accepting until the retry timer");
        policy.retry_due();
        assert!(policy.may_arm());
    }

    #[test]
    fn one_warning_per_episode_even_when_retries_admit_some() {
        let start = Instant::now();
        let mut policy = AcceptPolicy::default();
        assert_eq!(
            policy.on_result(EMFILE, start),
            AcceptStep::BackOff { warn: true }
        );
        let mut now = start;
        for attempt in 0..200 {
            // Every retry admits one connection and fails on the next, for 20 s.
            now += ACCEPT_RETRY;
            policy.retry_due();
            assert_eq!(policy.on_result(Ok(()), now), AcceptStep::Admit);
            let kind = [libc::ENFILE, libc::ENOMEM][attempt % 2];
            assert_eq!(
                policy.on_result(Err(Failure::Exhausted(kind)), now),
                AcceptStep::BackOff { warn: false },
                "every kind of exhaustion is the same episode"
            );
        }
        policy.retry_due();
        now += EPISODE_QUIET;
        assert_eq!(policy.on_result(Ok(()), now), AcceptStep::Admit);
        assert_eq!(
            policy.on_result(EMFILE, now),
            AcceptStep::BackOff { warn: true },
            "after a quiet spell a new episode warns again"
        );
    }

    #[test]
    fn peers_that_gave_up_and_cancellations_are_ignored_other_errors_warned() {
        let now = Instant::now();
        let mut policy = AcceptPolicy::default();
        assert_eq!(
            policy.on_result(Err(Failure::Cancelled), now),
            AcceptStep::Ignore
        );
        assert_eq!(
            policy.on_result(Err(Failure::PeerGone(libc::ECONNABORTED)), now),
            AcceptStep::Ignore
        );
        assert_eq!(
            policy.on_result(Err(Failure::Other(libc::EINVAL)), now),
            AcceptStep::Warn
        );
        assert!(policy.may_arm(), "only exhaustion backs off");
    }
}
