//! The election, the fenced ceiling store and the renewal deadline, against a real etcd.
//!
//! Built with the `cluster` feature only: `cargo test --features cluster --test NAME`.
#![cfg(feature = "cluster")]

mod cluster_support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_support::{Etcd, PATIENCE};
use seqd::cluster::etcd::{self, Campaign, CommittedCeiling, Keys, StoreError};
use seqd::cluster::role::Role;
use seqd::cluster::timing::LeaseTiming;
use seqd::cluster::{ClusterNode, ClusterSettings, Leadership};

/// seqd's default (cluster_support runs etcd with the timing that grants it).
const TTL: Duration = seqd::cluster::timing::DEFAULT_TTL;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> etcd_client::Client {
    rt.block_on(etcd_client::Client::connect(etcd.urls(), None))
        .unwrap()
}

fn timing() -> LeaseTiming {
    LeaseTiming::for_ttl(TTL).unwrap()
}

fn ceiling(id: u32, name: &str, ceiling: u64) -> CommittedCeiling {
    CommittedCeiling {
        id,
        name: name.into(),
        ceiling,
    }
}

#[test]
fn two_candidates_one_wins_and_a_stale_leaders_write_is_refused() {
    let etcd = Etcd::start(1);
    let rt = runtime();
    let mut first = client(&rt, &etcd);
    let mut second = client(&rt, &etcd);
    let keys = Keys::new("/test-election");
    let Campaign::Won(leader) = rt
        .block_on(etcd::campaign(&mut first, &keys, "1 a:1", &timing()))
        .unwrap()
    else {
        panic!("the first candidate must win an empty election");
    };
    let lost = rt
        .block_on(etcd::campaign(&mut second, &keys, "2 b:2", &timing()))
        .unwrap();
    let Campaign::Lost {
        leader: holder,
        revision,
    } = lost
    else {
        panic!("the second candidate must lose: {lost:?}");
    };
    assert_eq!(holder, "1 a:1");

    rt.block_on(etcd::write_ceilings(
        &mut first,
        &keys,
        leader.token,
        &[ceiling(0, "default", 1000), ceiling(1, "orders", 50)],
        TTL,
    ))
    .unwrap();
    // The standby watches; the leader's lease is revoked (as a graceful stop does).
    let watch = {
        let mut second = second.clone();
        let keys = keys.clone();
        rt.spawn(async move { etcd::wait_for_vacancy(&mut second, &keys, revision).await })
    };
    rt.block_on(first.lease_revoke(leader.lease)).unwrap();
    rt.block_on(async { tokio::time::timeout(PATIENCE, watch).await })
        .expect("the standby sees the vacancy")
        .unwrap()
        .unwrap();
    let Campaign::Won(successor) = rt
        .block_on(etcd::campaign(&mut second, &keys, "2 b:2", &timing()))
        .unwrap()
    else {
        panic!("the standby must win once the key is gone");
    };
    assert!(successor.token > leader.token, "a new term has a new token");

    // The old leader's token no longer holds: etcd refuses its write, and nothing changes.
    let stale = rt.block_on(etcd::write_ceilings(
        &mut first,
        &keys,
        leader.token,
        &[ceiling(0, "default", 5)],
        TTL,
    ));
    assert!(
        matches!(stale, Err(StoreError::NotLeader { .. })),
        "{stale:?}"
    );
    let read = rt
        .block_on(etcd::read_ceilings(&mut second, &keys, TTL))
        .unwrap();
    assert_eq!(
        read,
        vec![ceiling(0, "default", 1000), ceiling(1, "orders", 50)],
        "the new leader reads what the old one committed, not its refused write"
    );
}

#[test]
fn a_split_raise_of_many_sequences_is_read_back_whole() {
    let etcd = Etcd::start(1);
    let rt = runtime();
    let mut c = client(&rt, &etcd);
    let keys = Keys::new("/test-many");
    let Campaign::Won(leader) = rt
        .block_on(etcd::campaign(&mut c, &keys, "1 a:1", &timing()))
        .unwrap()
    else {
        panic!("must win");
    };
    let many: Vec<CommittedCeiling> = (0..250)
        .map(|id| ceiling(id, &format!("s{id}"), 10 + u64::from(id)))
        .collect();
    rt.block_on(etcd::write_ceilings(
        &mut c,
        &keys,
        leader.token,
        &many,
        TTL,
    ))
    .unwrap();
    assert_eq!(
        rt.block_on(etcd::read_ceilings(&mut c, &keys, TTL))
            .unwrap(),
        many
    );
}

fn settings(etcd: &Etcd, prefix: &str, id: u64) -> ClusterSettings {
    ClusterSettings {
        endpoints: etcd.urls(),
        prefix: prefix.into(),
        node_id: id,
        advertise: format!("127.0.0.1:{}", 20000 + id),
        timing: timing(),
    }
}

fn elected_within(won: &mpsc::Receiver<Leadership>, limit: Duration) -> Option<Leadership> {
    won.recv_timeout(limit).ok()
}

fn wait_for_role(node: &ClusterNode, what: &str, matches: impl Fn(&Role) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !matches(&node.role()) {
        assert!(Instant::now() < deadline, "never {what}: {}", node.role());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nodes_take_over_on_resign_and_on_a_crash_and_renewals_keep_the_deadline() {
    let etcd = Etcd::start(1);
    let first = ClusterNode::connect(settings(&etcd, "/test-nodes", 1)).unwrap();
    let second = ClusterNode::connect(settings(&etcd, "/test-nodes", 2)).unwrap();
    let third = ClusterNode::connect(settings(&etcd, "/test-nodes", 3)).unwrap();
    let first_won = first.start_campaign();
    let leadership = elected_within(&first_won, PATIENCE).expect("the only candidate wins");
    assert!(leadership.ceilings.is_empty());
    assert!(first.deadline().allows_issuing());
    let second_won = second.start_campaign();
    wait_for_role(
        &second,
        "a standby",
        |r| matches!(r, Role::Standby { leader } if leader == "1 127.0.0.1:20001"),
    );

    // Renewals keep extending the deadline beyond the first TTL, one every TTL/3 (a loop
    // that renewed without pausing would make thousands).
    let renewed_before = etcd.metric("etcd_debugging_lease_renewed_total");
    std::thread::sleep(TTL + Duration::from_millis(500));
    assert!(first.deadline().allows_issuing(), "renewed");
    let renewals = etcd.metric("etcd_debugging_lease_renewed_total") - renewed_before;
    assert!(
        (1.0..=20.0).contains(&renewals),
        "{renewals} renewals in {:?}",
        TTL + Duration::from_millis(500)
    );
    assert!(
        elected_within(&second_won, Duration::ZERO).is_none(),
        "no second leader while the first renews"
    );

    // Graceful stop: the lease is revoked, which deletes the key at once (no expiry).
    first.resign();
    assert!(!first.deadline().allows_issuing());
    assert!(
        !etcd
            .etcdctl(&["get", "/test-nodes/leader", "--print-value-only"])
            .contains("1 127.0.0.1:20001"),
        "the leader key is gone with the revoked lease"
    );
    assert_eq!(first.role(), Role::Resigned);
    let second_leadership = elected_within(&second_won, PATIENCE).expect("the standby takes over");
    assert!(second_leadership.token > leadership.token);

    // A crash: the leader's runtime stops (no renewal, no revoke); its lease expires.
    let third_won = third.start_campaign();
    wait_for_role(&third, "a standby", |r| matches!(r, Role::Standby { .. }));
    drop(second);
    let third_leadership = elected_within(&third_won, PATIENCE).expect("taken over on expiry");
    assert!(third_leadership.token > second_leadership.token);
    assert!(third.deadline().allows_issuing());
}
