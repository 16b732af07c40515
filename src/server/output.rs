//! What clients' unsent replies may cost: `--client-output-limit` per connection, and
//! `--maxmemory-clients` for all of them together (Redis's `client-output-buffer-limit` and
//! `maxmemory-clients`).
//!
//! A connection's queued bytes are what seqd holds for it and the kernel has not taken: the
//! replies not yet handed to a send and, in io_uring, the unsent part of the send in flight.
//! Only the backend sees both, and it sees them change at every service call and every send
//! completion, so the backend reports each connection's queued bytes after each of those to
//! its loop's [`OutputAccount`]. Each loop keeps its own sum and publishes it to the process
//! total once per turn; a loop that finds the total over the cap closes its own largest
//! offenders, but only if it holds at least its share of the total (the loops that hold the
//! most act, and a loop of well-behaved clients is left alone).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::service::counters;

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// `--client-output-limit`: a connection holding this many unsent reply bytes is closed.
    pub per_connection: Option<usize>,
    /// `--maxmemory-clients`: all connections' unsent reply bytes together.
    pub total: Option<usize>,
}

/// What the backend does after reporting a connection's queued bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Within,
    /// Over `--client-output-limit`: close it now, dropping its output (logged here).
    OverLimit,
}

/// One event loop's view of its connections' unsent replies.
#[derive(Debug)]
pub struct OutputAccount {
    limits: OutputLimits,
    loops: usize,
    /// This loop's connections' queued bytes, summed.
    held: usize,
    /// What of `held` the process total knows.
    published: usize,
}

impl OutputAccount {
    pub fn new(limits: OutputLimits, loops: usize) -> OutputAccount {
        OutputAccount {
            limits,
            loops: loops.max(1),
            held: 0,
            published: 0,
        }
    }

    /// Records that a connection now has `queued` unsent bytes; `accounted` is the
    /// connection's last report (updated here).
    #[inline]
    pub fn report(
        &mut self,
        accounted: &mut usize,
        queued: usize,
        peer: Option<SocketAddr>,
    ) -> Verdict {
        self.held = self.held - *accounted + queued;
        *accounted = queued;
        match self.limits.per_connection {
            Some(limit) if queued >= limit => {
                self.forget(accounted);
                counters::OUTPUT_LIMIT_DISCONNECTIONS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %display_peer(peer),
                    queued,
                    limit,
                    "client disconnected: its unsent replies reached --client-output-limit \
                     (it sends requests without reading the replies); raise \
                     --client-output-limit, or 0 to hold such clients instead"
                );
                Verdict::OverLimit
            }
            _ => Verdict::Within,
        }
    }

    /// The connection's output is gone (closed): it no longer counts.
    #[inline]
    pub fn forget(&mut self, accounted: &mut usize) {
        self.held -= *accounted;
        *accounted = 0;
    }

    /// Publishes this loop's sum to the process total (once per turn), and says how many
    /// bytes this loop should free by closing its largest offenders (0: none).
    pub fn publish(&mut self) -> usize {
        if self.held != self.published {
            if self.held > self.published {
                counters::CLIENT_OUTPUT_BYTES
                    .fetch_add(self.held - self.published, Ordering::Relaxed);
            } else {
                counters::CLIENT_OUTPUT_BYTES
                    .fetch_sub(self.published - self.held, Ordering::Relaxed);
            }
            self.published = self.held;
        }
        let Some(cap) = self.limits.total else {
            return 0;
        };
        let total = counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed);
        if total <= cap || self.held < total / self.loops {
            return 0;
        }
        (total - cap).min(self.held)
    }

    /// Logs the eviction of a connection holding `queued` bytes to bring the total under the cap.
    pub fn evicted(&self, queued: usize, peer: Option<SocketAddr>) {
        counters::EVICTED_CLIENTS.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            peer = %display_peer(peer),
            queued,
            total = counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed),
            limit = self.limits.total.unwrap_or(0),
            "client disconnected: all clients' unsent replies reached --maxmemory-clients, \
             and this one held the most; raise --maxmemory-clients, or lower \
             --client-output-limit so each client is stopped sooner"
        );
    }
}

/// Which connections to close to free `excess` bytes: the largest first, from
/// `(key, queued)` pairs.
pub fn largest_offenders(mut queued: Vec<(usize, usize)>, excess: usize) -> Vec<usize> {
    queued.sort_unstable_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
    let mut freed = 0;
    queued
        .into_iter()
        .take_while(|&(_, bytes)| {
            let more = freed < excess && bytes > 0;
            freed += bytes;
            more
        })
        .map(|(key, _)| key)
        .collect()
}

fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_are_closed_until_enough_is_freed() {
        let queued = vec![(1, 10), (2, 500), (3, 0), (4, 300), (5, 200)];
        assert_eq!(largest_offenders(queued.clone(), 400), vec![2]);
        assert_eq!(largest_offenders(queued.clone(), 600), vec![2, 4]);
        assert_eq!(largest_offenders(queued.clone(), 10_000), vec![2, 4, 5, 1]);
        assert!(largest_offenders(queued, 0).is_empty());
    }

    #[test]
    fn a_connection_at_its_limit_is_over_it_and_stops_counting() {
        let limits = OutputLimits {
            per_connection: Some(100),
            total: None,
        };
        let mut account = OutputAccount::new(limits, 1);
        let (mut a, mut b) = (0, 0);
        assert_eq!(account.report(&mut a, 60, None), Verdict::Within);
        assert_eq!(account.report(&mut b, 99, None), Verdict::Within);
        assert_eq!(account.held, 159);
        assert_eq!(account.report(&mut a, 100, None), Verdict::OverLimit);
        assert_eq!((a, account.held), (0, 99));
        account.forget(&mut b);
        assert_eq!(account.held, 0);
    }
}
