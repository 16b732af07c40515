//! Open-loop schedule arithmetic: when each request is planned, and how connections are
//! spread over threads.
//!
//! A run at a total rate of `R` requests per second over `C` connections numbers every request
//! of the run `n = 0, 1, 2, ...` and plans request `n` at `n / R` seconds after the start.
//! Request `n` belongs to connection `n mod C` (it is that connection's `n div C`-th request).
//! So the union of all connections is one evenly spaced stream at exactly `R`, whatever `R` is:
//! a rate below the connection count (or below the thread count) simply gives each connection
//! a planned interval longer than a second, never a per-connection rate rounded down to zero.

use anyhow::{Result, bail};

const NANOS_PER_SEC: f64 = 1e9;

/// The planned send times of an open-loop run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    connections: u64,
}

impl Schedule {
    /// `rate`: requests per second over all `connections`.
    pub fn new(rate: f64, connections: usize) -> Result<Schedule> {
        if !rate.is_finite() || rate <= 0.0 {
            bail!("--rate must be a positive number of requests per second, not {rate}");
        }
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        Ok(Schedule {
            rate,
            connections: connections as u64,
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Nanoseconds after the start at which request `n` of the whole run is planned.
    #[inline]
    pub fn planned_ns(&self, n: u64) -> u64 {
        // f64 keeps 53 bits: exact to the nanosecond for the first ~104 days of a run.
        (n as f64 * NANOS_PER_SEC / self.rate) as u64
    }

    /// Nanoseconds after the start at which connection `connection` plans its `k`-th request.
    #[inline]
    pub fn connection_planned_ns(&self, connection: usize, k: u64) -> u64 {
        self.planned_ns(connection as u64 + k * self.connections)
    }

    /// Planned time between two requests of one connection, in nanoseconds.
    pub fn connection_interval_ns(&self) -> u64 {
        (self.connections as f64 * NANOS_PER_SEC / self.rate) as u64
    }

    /// How many requests of the whole run are planned before `ns` nanoseconds after the start.
    pub fn planned_before(&self, ns: u64) -> u64 {
        // Request n is planned before ns when n / R < ns, i.e. n < ns * R; count n = 0..ceil.
        let bound = ns as f64 * self.rate / NANOS_PER_SEC;
        bound.ceil() as u64
    }

    /// How many requests connection `connection` plans before `ns` nanoseconds after the start.
    pub fn connection_planned_before(&self, connection: usize, ns: u64) -> u64 {
        let total = self.planned_before(ns);
        let c = connection as u64;
        if total <= c {
            0
        } else {
            (total - c).div_ceil(self.connections)
        }
    }
}

/// The global indexes of the connections thread `thread` of `threads` drives: round-robin, so
/// connection counts differ by at most one between threads.
pub fn connections_of_thread(thread: usize, threads: usize, connections: usize) -> Vec<usize> {
    (thread..connections).step_by(threads.max(1)).collect()
}

/// Splits `total` requests over `connections` as evenly as possible (earlier ones get the
/// remainder), for `--requests`.
pub fn quota_of_connection(total: u64, connection: usize, connections: usize) -> u64 {
    let c = connections.max(1) as u64;
    total / c + u64::from((connection as u64) < total % c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_connections_is_one_even_stream() {
        let s = Schedule::new(1000.0, 7).unwrap();
        let mut all: Vec<u64> = (0..7)
            .flat_map(|c| (0..100).map(move |k| s.connection_planned_ns(c, k)))
            .collect();
        all.sort_unstable();
        let expected: Vec<u64> = (0..700).map(|n| n * 1_000_000).collect();
        assert_eq!(all, expected);
        assert_eq!(s.connection_interval_ns(), 7_000_000);
    }

    #[test]
    fn rate_below_connection_and_thread_count_still_sends() {
        // 3 requests per second over 10 connections on 4 threads.
        let s = Schedule::new(3.0, 10).unwrap();
        assert_eq!(s.connection_planned_ns(0, 0), 0);
        assert_eq!(s.connection_planned_ns(1, 0), 333_333_333);
        assert_eq!(s.connection_planned_ns(9, 0), 3_000_000_000);
        assert_eq!(s.connection_planned_ns(0, 1), 3_333_333_333);
        // Every connection gets its turn, at an interval of 10/3 s.
        assert_eq!(s.connection_interval_ns(), 3_333_333_333);
        // In 10 s, 30 requests are planned: 3 per connection.
        assert_eq!(s.planned_before(10_000_000_000), 30);
        let per_connection: u64 = (0..10)
            .map(|c| s.connection_planned_before(c, 10_000_000_000))
            .sum();
        assert_eq!(per_connection, 30);
        for thread in 0..4 {
            assert!(!connections_of_thread(thread, 4, 10).is_empty());
        }
    }

    #[test]
    fn fractional_rates_work() {
        let s = Schedule::new(0.5, 1).unwrap();
        assert_eq!(s.connection_planned_ns(0, 1), 2_000_000_000);
        assert_eq!(s.planned_before(4_000_000_001), 3);
    }

    #[test]
    fn planned_before_counts_exactly() {
        let s = Schedule::new(1000.0, 3).unwrap();
        assert_eq!(s.planned_before(0), 0);
        assert_eq!(s.planned_before(1), 1); // request 0 at t = 0
        assert_eq!(s.planned_before(1_000_000), 1);
        assert_eq!(s.planned_before(1_000_001), 2);
        assert_eq!(s.connection_planned_before(0, 1_000_001), 1);
        assert_eq!(s.connection_planned_before(1, 1_000_001), 1);
        assert_eq!(s.connection_planned_before(2, 1_000_001), 0);
        assert_eq!(s.connection_planned_before(0, 3_000_001), 2);
    }

    #[test]
    fn invalid_rates_are_refused() {
        assert!(Schedule::new(0.0, 1).is_err());
        assert!(Schedule::new(-1.0, 1).is_err());
        assert!(Schedule::new(f64::NAN, 1).is_err());
        assert!(Schedule::new(10.0, 0).is_err());
    }

    #[test]
    fn connections_spread_round_robin_over_threads() {
        assert_eq!(connections_of_thread(0, 3, 8), vec![0, 3, 6]);
        assert_eq!(connections_of_thread(1, 3, 8), vec![1, 4, 7]);
        assert_eq!(connections_of_thread(2, 3, 8), vec![2, 5]);
        let all: usize = (0..3).map(|t| connections_of_thread(t, 3, 8).len()).sum();
        assert_eq!(all, 8);
    }

    #[test]
    fn request_quota_splits_evenly() {
        let quotas: Vec<u64> = (0..4).map(|c| quota_of_connection(10, c, 4)).collect();
        assert_eq!(quotas, vec![3, 3, 2, 2]);
        assert_eq!(quota_of_connection(2, 3, 4), 0);
    }
}
