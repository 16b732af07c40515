//! `--timeout`: which connections of the main port have sent nothing for that long. Kept by
//! the service adapters, so both backends close idle connections the same way: through the
//! service's tick and its list of released connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::handler::ConnKey;

/// Longest time between two checks: an idle connection is closed at most this late (Redis
/// checks its clients ten times a second; a second is plenty for a timeout in seconds).
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct IdleConnections {
    timeout: Duration,
    last_input: HashMap<ConnKey, Instant>,
    next_check: Instant,
}

impl IdleConnections {
    pub fn new(timeout: Duration, now: Instant) -> IdleConnections {
        IdleConnections {
            timeout,
            last_input: HashMap::new(),
            next_check: now + Self::period(timeout),
        }
    }

    fn period(timeout: Duration) -> Duration {
        timeout.min(CHECK_EVERY)
    }

    /// A connection opened, or sent something: its idle time starts again.
    #[inline]
    pub fn heard_from(&mut self, key: ConnKey, now: Instant) {
        self.last_input.insert(key, now);
    }

    pub fn forget(&mut self, key: ConnKey) {
        self.last_input.remove(&key);
    }

    /// How long until the next check is due.
    pub fn next_check(&self, now: Instant) -> Duration {
        self.next_check.saturating_duration_since(now)
    }

    /// When a check is due: appends the connections idle for the timeout or longer to
    /// `idle` (they are forgotten).
    pub fn check(&mut self, now: Instant, idle: &mut Vec<ConnKey>) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + Self::period(self.timeout);
        let timeout = self.timeout;
        let before = idle.len();
        self.last_input.retain(|&key, &mut at| {
            let keep = now.saturating_duration_since(at) < timeout;
            if !keep {
                idle.push(key);
            }
            keep
        });
        if idle.len() > before {
            tracing::debug!(
                closed = idle.len() - before,
                timeout_s = timeout.as_secs(),
                "closing idle connections (--timeout)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_idle_for_the_timeout_is_listed_once_and_one_heard_from_is_not() {
        let start = Instant::now();
        let timeout = Duration::from_secs(5);
        let mut idle = IdleConnections::new(timeout, start);
        idle.heard_from(1, start);
        idle.heard_from(2, start);
        let mut out = Vec::new();
        idle.check(start + Duration::from_secs(4), &mut out);
        assert!(out.is_empty());
        idle.heard_from(2, start + Duration::from_secs(4));
        idle.check(start + Duration::from_secs(5), &mut out);
        assert_eq!(out, [1]);
        idle.check(start + Duration::from_secs(6), &mut out);
        assert_eq!(out, [1], "listed once");
        idle.check(start + Duration::from_secs(9), &mut out);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn checks_come_at_most_a_second_apart_and_not_before_they_are_due() {
        let start = Instant::now();
        let mut idle = IdleConnections::new(Duration::from_secs(60), start);
        assert_eq!(idle.next_check(start), Duration::from_secs(1));
        idle.heard_from(1, start);
        let mut out = Vec::new();
        idle.check(start + Duration::from_millis(10), &mut out);
        assert_eq!(
            idle.next_check(start),
            Duration::from_secs(1),
            "not due yet"
        );
    }
}
