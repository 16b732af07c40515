//! The event loop's timers: one entry per purpose, each with its own deadline, so a backend
//! knows which are armed, whether a new deadline needs a new timer, an earlier one or none,
//! and what is due next.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Shutting down: connections that still have unsent replies are closed when it fires.
    ShutdownGrace = 0,
    /// Accepting failed for want of descriptors or memory: try again when it fires.
    AcceptRetry = 1,
    /// The earliest deadline of the connections lingering after close.
    Linger = 2,
    /// The service's periodic work (the stream protocol's pacing).
    ServiceTick = 3,
}

impl Timer {
    pub const COUNT: usize = 4;
    pub const ALL: [Timer; Timer::COUNT] = [
        Timer::ShutdownGrace,
        Timer::AcceptRetry,
        Timer::Linger,
        Timer::ServiceTick,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: usize) -> Option<Timer> {
        Timer::ALL.get(index).copied()
    }
}

/// What to do so a timer fires by a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arming {
    /// Not armed: arm it.
    Arm,
    /// Armed for later: move it forward.
    BringForward,
    /// Armed for then or earlier: nothing (it fires first, and is re-armed if still wanted).
    Keep,
}

/// Which timers are armed, and for when.
#[derive(Debug, Default)]
pub struct TimerTable {
    due: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Records that `timer` must fire by `at`, and says what that takes.
    pub fn schedule(&mut self, timer: Timer, at: Instant) -> Arming {
        let due = &mut self.due[timer.index()];
        match *due {
            None => {
                *due = Some(at);
                Arming::Arm
            }
            Some(armed) if armed > at => {
                *due = Some(at);
                Arming::BringForward
            }
            Some(_) => Arming::Keep,
        }
    }

    /// The timer fired (or its cancellation completed): it is no longer armed.
    pub fn fired(&mut self, timer: Timer) {
        self.due[timer.index()] = None;
    }

    pub fn is_armed(&self, timer: Timer) -> bool {
        self.due[timer.index()].is_some()
    }

    /// The armed timer that fires first, and when.
    pub fn next_due(&self) -> Option<(Timer, Instant)> {
        Timer::ALL
            .iter()
            .filter_map(|&timer| self.due[timer.index()].map(|at| (timer, at)))
            .min_by_key(|&(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unarmed_timer_is_armed_an_earlier_deadline_brings_it_forward_a_later_one_does_not() {
        let now = Instant::now();
        let mut timers = TimerTable::default();
        assert_eq!(
            timers.schedule(Timer::ServiceTick, now + Duration::from_millis(50)),
            Arming::Arm
        );
        assert_eq!(
            timers.schedule(Timer::ServiceTick, now + Duration::from_millis(80)),
            Arming::Keep
        );
        assert_eq!(
            timers.schedule(Timer::ServiceTick, now + Duration::from_millis(50)),
            Arming::Keep
        );
        assert_eq!(
            timers.schedule(Timer::ServiceTick, now + Duration::from_millis(10)),
            Arming::BringForward
        );
        assert_eq!(
            timers.next_due(),
            Some((Timer::ServiceTick, now + Duration::from_millis(10)))
        );
    }

    #[test]
    fn a_fired_timer_is_armed_afresh() {
        let now = Instant::now();
        let mut timers = TimerTable::default();
        assert_eq!(timers.schedule(Timer::Linger, now), Arming::Arm);
        assert!(timers.is_armed(Timer::Linger));
        timers.fired(Timer::Linger);
        assert!(!timers.is_armed(Timer::Linger));
        assert_eq!(timers.next_due(), None);
        assert_eq!(
            timers.schedule(Timer::Linger, now + Duration::from_secs(2)),
            Arming::Arm
        );
    }

    #[test]
    fn the_next_due_is_the_earliest_of_the_armed_timers() {
        let now = Instant::now();
        let mut timers = TimerTable::default();
        assert_eq!(timers.next_due(), None);
        timers.schedule(Timer::ShutdownGrace, now + Duration::from_secs(5));
        timers.schedule(Timer::Linger, now + Duration::from_secs(2));
        timers.schedule(Timer::AcceptRetry, now + Duration::from_millis(100));
        assert_eq!(
            timers.next_due(),
            Some((Timer::AcceptRetry, now + Duration::from_millis(100)))
        );
        timers.fired(Timer::AcceptRetry);
        assert_eq!(
            timers.next_due(),
            Some((Timer::Linger, now + Duration::from_secs(2)))
        );
        timers.fired(Timer::Linger);
        assert_eq!(
            timers.next_due(),
            Some((Timer::ShutdownGrace, now + Duration::from_secs(5)))
        );
    }

    #[test]
    fn timers_round_trip_through_their_index() {
        for timer in Timer::ALL {
            assert_eq!(Timer::from_index(timer.index()), Some(timer));
        }
        assert_eq!(Timer::from_index(Timer::COUNT), None);
    }
}
