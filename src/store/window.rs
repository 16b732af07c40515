//! How far ahead of demand a durable ceiling is kept: the window.
//!
//! Like TiDB PD's timestamp window or Leaf's segments, the window is sized from how fast the
//! sequence is used — about [`WINDOW_SPAN`] of issuing at the recent rate — and bounded by the
//! configured maximum crash gap (the most numbers a crash may skip). It is refilled when half
//! of it is left, so at a steady rate the next raise is on disk long before it is needed and
//! no request waits for fsync. The rate estimate follows a rise at once and decays slowly
//! (half-life [`RATE_HALF_LIFE`]), so a burst after a pause waits at most for one raise.

use std::time::{Duration, Instant};

use crate::sequence::END_OF_SPACE;

/// A window lasts about this long at the recent rate.
pub const WINDOW_SPAN: Duration = Duration::from_secs(1);
/// The smallest window, so that a slow sequence is not written for every few numbers.
pub const MIN_WINDOW: u64 = 1024;
/// How fast the rate estimate forgets a burst.
pub const RATE_HALF_LIFE: Duration = Duration::from_secs(2);
/// Default bound on the window (`--max-crash-gap`).
pub const DEFAULT_MAX_CRASH_GAP: u64 = 1_000_000;

/// Sizes windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Most numbers below a durable ceiling that may be unissued: what a crash may skip.
    pub max_crash_gap: u64,
}

impl WindowPolicy {
    /// The window for a sequence issuing `rate` numbers per second.
    pub fn window(&self, rate: f64) -> u64 {
        let wanted = rate * WINDOW_SPAN.as_secs_f64();
        // `as` saturates: a huge or infinite rate becomes u64::MAX, NaN becomes 0.
        let wanted = (wanted.ceil() as u64).max(MIN_WINDOW);
        wanted.min(self.max_crash_gap).max(1)
    }
}

/// What the persister knows of one sequence when it plans a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceView {
    /// The next number to be issued.
    pub next: u64,
    /// The ceiling already on disk (0 for a sequence not yet on disk).
    pub durable: u64,
    /// The highest end a waiting request wants.
    pub demand: u64,
    /// Whether the sequence has a record on disk.
    pub on_disk: bool,
    /// The window its rate calls for.
    pub window: u64,
}

impl SequenceView {
    fn can_rise(&self) -> bool {
        self.durable < END_OF_SPACE
    }

    /// Whether this sequence alone is reason to write now.
    pub fn needs_write(&self) -> bool {
        if !self.on_disk {
            return true;
        }
        let headroom = self.durable.saturating_sub(self.next);
        self.can_rise() && (self.demand > self.durable || headroom < self.window / 2)
    }

    /// The ceiling to write for it, once a write is happening anyway: a sequence with less
    /// than a full window left is topped up (writes are shared, so top up together);
    /// the others keep theirs. Never below what is already durable.
    pub fn target(&self) -> u64 {
        let headroom = self.durable.saturating_sub(self.next);
        let top_up = !self.on_disk
            || (self.can_rise() && (self.demand > self.durable || headroom < self.window));
        if !top_up {
            return self.durable;
        }
        // A batch larger than the window gets exactly what it asked for.
        let wanted = self.next.saturating_add(self.window).max(self.demand);
        wanted.min(END_OF_SPACE).max(self.durable)
    }
}

/// A sequence's recent issue rate.
#[derive(Debug, Clone, Copy)]
pub struct RateEstimate {
    per_second: f64,
    last_next: u64,
    last_at: Instant,
}

impl RateEstimate {
    pub fn new(next: u64, now: Instant) -> RateEstimate {
        RateEstimate {
            per_second: 0.0,
            last_next: next,
            last_at: now,
        }
    }

    /// Takes a new sample of the sequence's `next`; returns how many numbers were issued
    /// since the previous sample.
    pub fn observe(&mut self, next: u64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last_at).as_secs_f64();
        if elapsed <= 0.0 {
            return 0;
        }
        let issued_count = next.saturating_sub(self.last_next);
        let issued = issued_count as f64;
        let recent = issued / elapsed;
        let decay = 0.5f64.powf(elapsed / RATE_HALF_LIFE.as_secs_f64());
        self.per_second = recent.max(self.per_second * decay);
        self.last_next = next;
        self.last_at = now;
        issued_count
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: WindowPolicy = WindowPolicy {
        max_crash_gap: 1_000_000,
    };

    #[test]
    fn window_follows_the_rate_within_its_bounds() {
        assert_eq!(POLICY.window(0.0), MIN_WINDOW);
        assert_eq!(POLICY.window(10.0), MIN_WINDOW);
        assert_eq!(POLICY.window(50_000.0), 50_000);
        assert_eq!(POLICY.window(3e6), 1_000_000, "bounded by the crash gap");
        assert_eq!(POLICY.window(f64::INFINITY), 1_000_000);
        assert_eq!(POLICY.window(f64::NAN), MIN_WINDOW);
        let tight = WindowPolicy { max_crash_gap: 10 };
        assert_eq!(tight.window(0.0), 10, "the bound wins over the minimum");
        assert_eq!(WindowPolicy { max_crash_gap: 0 }.window(5.0), 1);
    }

    fn view(next: u64, durable: u64, demand: u64, window: u64) -> SequenceView {
        SequenceView {
            next,
            durable,
            demand,
            on_disk: true,
            window,
        }
    }

    #[test]
    fn a_write_is_needed_when_half_the_window_is_used_or_a_request_waits() {
        assert!(!view(100, 1100, 0, 1000).needs_write());
        assert!(!view(600, 1100, 0, 1000).needs_write(), "exactly half left");
        assert!(view(601, 1100, 0, 1000).needs_write());
        assert!(view(100, 1100, 1101, 1000).needs_write(), "a request waits");
        let new = SequenceView {
            on_disk: false,
            ..view(1, 0, 0, 1000)
        };
        assert!(new.needs_write(), "a new sequence must reach the disk");
        assert_eq!(new.target(), 1001);
    }

    #[test]
    fn targets_top_up_to_a_window_and_never_fall() {
        assert_eq!(view(601, 1100, 0, 1000).target(), 1601);
        assert_eq!(view(200, 1100, 0, 1000).target(), 1200, "shares the write");
        assert_eq!(
            view(100, 1100, 0, 1000).target(),
            1100,
            "a full window is kept"
        );
        assert_eq!(view(100, 1100, 5000, 1000).target(), 5000, "a big batch");
        assert_eq!(view(100, 9000, 0, 100).target(), 9000, "never lowered");
    }

    #[test]
    fn an_exhausted_sequence_needs_nothing() {
        let end = END_OF_SPACE;
        assert!(!view(end, end, end + 1, 1000).needs_write());
        assert_eq!(view(end - 10, end - 5, 0, 1000).target(), end);
    }

    #[test]
    fn rate_rises_at_once_and_decays_by_half_life() {
        let start = Instant::now();
        let mut rate = RateEstimate::new(0, start);
        assert_eq!(rate.observe(1000, start + Duration::from_millis(10)), 1000);
        assert!((rate.per_second() - 100_000.0).abs() < 1.0);
        rate.observe(1000, start + Duration::from_millis(10) + RATE_HALF_LIFE);
        assert!((rate.per_second() - 50_000.0).abs() < 1.0);
        rate.observe(1000, start + Duration::from_millis(10) + RATE_HALF_LIFE); // no time passed
        assert!((rate.per_second() - 50_000.0).abs() < 1.0);
    }
}
