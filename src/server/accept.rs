//! What to do with the outcome of an accept, for every listener alike: admit, ignore a peer
//! that gave up, or — when descriptors or memory run out — stop accepting, warn once per
//! episode and retry after [`ACCEPT_RETRY`] (accepting again at once would fail again at
//! once, and a warning per attempt floods the log).

use std::time::Duration;

use super::failure::Failure;

/// How long accepting pauses after running out of descriptors or memory.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the backend does after an accept completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStep {
    /// Admit the new connection; `recovered` when it ends an episode of exhaustion.
    Admit { recovered: bool },
    /// Nothing (a cancellation, or a peer that gave up while queued).
    Ignore,
    /// Log the failure and go on accepting.
    Warn,
    /// Stop accepting and arm the retry timer; `warn` on the episode's first failure only.
    BackOff { warn: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Accepting,
    /// Out of resources; waiting for the retry timer.
    BackingOff,
    /// The retry timer fired: accepting again, warning no more until one succeeds.
    Retrying,
}

/// One per event loop: descriptors are per process, so all its listeners back off together.
#[derive(Debug, Default)]
pub struct AcceptPolicy {
    state: State,
}

impl AcceptPolicy {
    /// The outcome of one accept: a new connection, or why there is none.
    pub fn on_result(&mut self, result: Result<(), Failure>) -> AcceptStep {
        match result {
            Ok(()) => {
                let recovered = self.state != State::Accepting;
                self.state = State::Accepting;
                AcceptStep::Admit { recovered }
            }
            Err(Failure::Cancelled | Failure::PeerGone(_)) => AcceptStep::Ignore,
            Err(Failure::Exhausted(_) | Failure::NoBuffers) => {
                let warn = self.state == State::Accepting;
                self.state = State::BackingOff;
                AcceptStep::BackOff { warn }
            }
            Err(Failure::Other(_)) => AcceptStep::Warn,
        }
    }

    /// The retry timer fired.
    pub fn retry_due(&mut self) {
        if self.state == State::BackingOff {
            self.state = State::Retrying;
        }
    }

    /// Whether a listener whose accept ended may be armed again now.
    pub fn may_arm(&self) -> bool {
        self.state != State::BackingOff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMFILE: Result<(), Failure> = Err(Failure::Exhausted(libc::EMFILE));

    #[test]
    fn exhaustion_backs_off_and_warns_once_per_episode() {
        let mut policy = AcceptPolicy::default();
        assert_eq!(policy.on_result(EMFILE), AcceptStep::BackOff { warn: true });
        assert!(!policy.may_arm(), "no accepting until the retry timer");
        policy.retry_due();
        assert!(policy.may_arm());
        assert_eq!(
            policy.on_result(EMFILE),
            AcceptStep::BackOff { warn: false }
        );
        policy.retry_due();
        assert_eq!(
            policy.on_result(Err(Failure::Exhausted(libc::ENFILE))),
            AcceptStep::BackOff { warn: false },
            "every kind of exhaustion is the same episode"
        );
        policy.retry_due();
        assert_eq!(
            policy.on_result(Ok(())),
            AcceptStep::Admit { recovered: true }
        );
        assert_eq!(
            policy.on_result(Ok(())),
            AcceptStep::Admit { recovered: false }
        );
        assert_eq!(
            policy.on_result(EMFILE),
            AcceptStep::BackOff { warn: true },
            "a new episode warns again"
        );
    }

    #[test]
    fn peers_that_gave_up_and_cancellations_are_ignored_other_errors_warned() {
        let mut policy = AcceptPolicy::default();
        assert_eq!(
            policy.on_result(Err(Failure::Cancelled)),
            AcceptStep::Ignore
        );
        assert_eq!(
            policy.on_result(Err(Failure::PeerGone(libc::ECONNABORTED))),
            AcceptStep::Ignore
        );
        assert_eq!(
            policy.on_result(Err(Failure::Other(libc::EINVAL))),
            AcceptStep::Warn
        );
        assert!(policy.may_arm());
    }

    #[test]
    fn a_retry_timer_outside_an_episode_changes_nothing() {
        let mut policy = AcceptPolicy::default();
        policy.retry_due();
        assert_eq!(
            policy.on_result(Ok(())),
            AcceptStep::Admit { recovered: false }
        );
    }
}
