//! What one peer holds: the per-address bound on the lease table and on the stream table, so
//! that one host can never fill either and lock everyone else out. A peer is the client's IP
//! address, whatever port or protocol (plaintext or TLS) it connects with; an IPv4-mapped
//! IPv6 address is the IPv4 address it maps.
//!
//! Records recovered from disk or etcd belong to no connected peer: they count against the
//! table's own bound only, never against an address (see [`PeerHoldings::take`]).

use std::collections::HashMap;
use std::net::IpAddr;

/// A client's address, as the per-peer bounds count it.
/// The default: an unknown address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Peer(Option<IpAddr>);

impl Peer {
    /// 127.0.0.1.
    pub const LOCALHOST: Peer = Peer(Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));

    /// The peer of a connection from `addr` (None: the address could not be read; such
    /// connections share one count, so the bound fails closed).
    pub fn of(addr: Option<IpAddr>) -> Peer {
        Peer(addr.map(|ip| ip.to_canonical()))
    }

    pub fn addr(self) -> Option<IpAddr> {
        self.0
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("an unknown address"),
        }
    }
}

/// How many records each peer holds, against a bound (0: none, and nothing is counted).
#[derive(Debug, Clone, Default)]
pub struct PeerHoldings {
    limit: usize,
    /// Only peers that hold something: at most one entry per record held.
    held: HashMap<Peer, usize>,
}

impl PeerHoldings {
    pub fn new(limit: usize) -> PeerHoldings {
        PeerHoldings {
            limit,
            held: HashMap::new(),
        }
    }

    /// The bound (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `peer` may take one more record.
    pub fn may_take(&self, peer: Peer) -> bool {
        self.limit == 0 || self.held(peer) < self.limit
    }

    /// Counts a record `peer` now holds. Returns who holds it, for [`give_back`]: None when
    /// there is no bound (nothing to give back then).
    ///
    /// [`give_back`]: PeerHoldings::give_back
    pub fn take(&mut self, peer: Peer) -> Option<Peer> {
        if self.limit == 0 {
            return None;
        }
        *self.held.entry(peer).or_default() += 1;
        Some(peer)
    }

    /// Gives back a record [`take`](PeerHoldings::take) counted (None: one that was never
    /// counted, such as a record recovered at start-up).
    pub fn give_back(&mut self, holder: Option<Peer>) {
        if let Some(peer) = holder
            && let Some(held) = self.held.get_mut(&peer)
        {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&peer);
            }
        }
    }

    /// Records `peer` holds now.
    pub fn held(&self, peer: Peer) -> usize {
        self.held.get(&peer).copied().unwrap_or(0)
    }
}

/// The default bound for a table of `table` places: a quarter of it (at least 1), so that
/// no single address can take the whole table and at least four must join to fill it.
pub fn default_per_peer(table: usize) -> usize {
    table.div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_peer() {
        let v4 = Peer::of(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        let mapped = Peer::of(Some(IpAddr::V6(
            Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(),
        )));
        assert_eq!(v4, mapped);
        assert_ne!(v4, Peer::of(Some(IpAddr::V6(Ipv6Addr::LOCALHOST))));
        assert_eq!(mapped.to_string(), "10.0.0.1");
    }

    #[test]
    fn each_peer_is_bounded_and_gets_its_places_back() {
        let (a, b) = (
            Peer::of(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))),
            Peer::of(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))),
        );
        let mut holdings = PeerHoldings::new(2);
        let first = holdings.take(a);
        holdings.take(a);
        assert!(!holdings.may_take(a));
        assert!(holdings.may_take(b), "another peer is not held back");
        holdings.give_back(first);
        assert!(holdings.may_take(a));
        holdings.give_back(None);
        assert_eq!(
            holdings.held(a),
            1,
            "an uncounted record gives nothing back"
        );
    }

    #[test]
    fn without_a_bound_nothing_is_counted() {
        let mut holdings = PeerHoldings::new(0);
        let peer = Peer::of(None);
        for _ in 0..10 {
            assert!(holdings.may_take(peer));
            assert_eq!(holdings.take(peer), None);
        }
        assert_eq!(holdings.held(peer), 0);
    }

    #[test]
    fn the_default_is_a_quarter_of_the_table() {
        assert_eq!(default_per_peer(10_000), 2_500);
        assert_eq!(default_per_peer(1024), 256);
        assert_eq!(default_per_peer(3), 1);
        assert_eq!(default_per_peer(1), 1);
    }
}
