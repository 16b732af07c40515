//! What clients' queued replies may cost: `--client-output-limit` per connection, and
//! `--maxmemory-clients` for all of them together (Redis's `client-output-buffer-limit` and
//! `maxmemory-clients`).
//!
//! What a connection counts is the memory its output buffers hold (their capacity), not the
//! reply bytes the kernel has yet to take: in io_uring the part of a send the kernel has
//! already taken stays allocated until the whole send completes, and a buffer grown for a
//! burst keeps its size until it is given back; counting unsent bytes alone would let
//! non-reading clients make seqd hold well over the cap. Only the backend sees its buffers,
//! and it sees them change at every service call, every send completion and every buffer
//! given back, so it reports each connection's held bytes after each of those to its loop's
//! [`OutputAccount`], together with the input the service keeps for it (Redis's
//! `maxmemory-clients` counts query buffers too). The per-connection limit is on the replies
//! not yet taken by the kernel, as Redis's is: a buffer's spare capacity says nothing of the
//! client. Each loop keeps its own sum and publishes it to the process total once
//! per turn; a loop that finds the total over the cap closes its own largest offenders, but
//! only if it holds at least its share of the total (the loops that hold the most act, and a
//! loop of well-behaved clients is left alone).
//!
//! A client that pipelines without reading seldom reaches these limits: the session stops
//! decoding its requests once [`OUTPUT_HIGH_WATER`](crate::service::OUTPUT_HIGH_WATER) bytes
//! of replies wait for it, and the backend stops reading it meanwhile (backpressure, see
//! `Next::Hold`), so it holds a bounded amount and costs the loop nothing until it reads.
//! The per-connection limit catches what a single call produces beyond that (a limit below
//! the threshold closes such clients before they would be paused), the cap what many paused
//! clients hold together.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::service::counters;

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// `--client-output-limit`: a connection whose output buffers hold this many bytes is
    /// closed.
    pub per_connection: Option<usize>,
    /// `--maxmemory-clients`: all connections' output buffers together.
    pub total: Option<usize>,
}

/// What the backend does after reporting a connection's held bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Within,
    /// Over `--client-output-limit`: close it now, dropping its output (logged here).
    OverLimit,
}

/// One event loop's view of its connections' output buffers.
#[derive(Debug)]
pub struct OutputAccount {
    limits: OutputLimits,
    loops: usize,
    /// This loop's connections' held bytes, summed.
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

    /// Records that a connection now holds `held` bytes (its output buffers' capacity and the
    /// input the service keeps for it), `queued` of them replies the kernel has not taken;
    /// `accounted` is the connection's last report (updated here). The cap counts what is
    /// held; the per-connection limit the queued replies, so a connection handed a large
    /// spare buffer for a short reply is not closed for the buffer's size.
    #[inline]
    pub fn report(
        &mut self,
        accounted: &mut usize,
        held: usize,
        queued: usize,
        peer: Option<SocketAddr>,
    ) -> Verdict {
        self.held = self.held - *accounted + held;
        *accounted = held;
        match self.limits.per_connection {
            Some(limit) if queued >= limit => {
                self.forget(accounted);
                counters::OUTPUT_LIMIT_DISCONNECTIONS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %display_peer(peer),
                    queued,
                    held,
                    limit,
                    "client disconnected: its queued replies reached --client-output-limit \
                     (it sends requests without reading the replies); raise \
                     --client-output-limit, or 0 to only ever pause such clients"
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

    /// Logs the eviction of a connection holding `held` bytes to bring the total under the cap.
    pub fn evicted(&self, held: usize, peer: Option<SocketAddr>) {
        counters::EVICTED_CLIENTS.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            peer = %display_peer(peer),
            held,
            total = counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed),
            limit = self.limits.total.unwrap_or(0),
            "client disconnected: all clients' queued replies reached --maxmemory-clients, \
             and this one held the most; raise --maxmemory-clients, or lower \
             --client-output-limit so each client is stopped sooner"
        );
    }
}

/// Which connections to close to free `excess` bytes: the largest first, from
/// `(key, held)` pairs.
pub fn largest_offenders(mut held: Vec<(usize, usize)>, excess: usize) -> Vec<usize> {
    held.sort_unstable_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
    let mut freed = 0;
    held.into_iter()
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
        assert_eq!(account.report(&mut a, 60, 60, None), Verdict::Within);
        assert_eq!(account.report(&mut b, 99, 99, None), Verdict::Within);
        assert_eq!(account.held, 159);
        assert_eq!(account.report(&mut a, 100, 100, None), Verdict::OverLimit);
        assert_eq!((a, account.held), (0, 99));
        account.forget(&mut b);
        assert_eq!(account.held, 0);
    }

    #[test]
    fn what_is_held_counts_against_the_cap_and_what_is_queued_against_the_limit() {
        let limits = OutputLimits {
            per_connection: Some(100),
            total: Some(150),
        };
        let mut account = OutputAccount::new(limits, 1);
        let mut a = 0;
        assert_eq!(account.report(&mut a, 590, 90, None), Verdict::Within);
        assert_eq!((a, account.held), (590, 590));
        assert_eq!(account.publish(), 440, "over the cap by what it holds");
        assert_eq!(account.report(&mut a, 50, 10, None), Verdict::Within);
        assert_eq!(account.publish(), 0);
        account.forget(&mut a);
        assert_eq!(account.publish(), 0);
        assert_eq!(counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed), 0);
    }
}
