//! seqd in cluster mode: three nodes on a three-member etcd. A client follows the leader by
//! trying every node; every number it sees must be unique and larger than all before it,
//! across crashes (kill -9), graceful handovers (SIGTERM) and a paused leader (SIGSTOP).
//!
//! Built with the `cluster` feature only: `cargo test --features cluster --test NAME`.
#![cfg(feature = "cluster")]

mod cluster_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_support::{Etcd, Node, PATIENCE, log_dir};
use seqd::client::{Client, ClientError};

/// Leader kills per run: each node is killed more than once, in about 2.5 s per cycle.
const KILL_CYCLES: usize = 10;

/// A short request timeout: a request to a node that is not serving fails fast.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A client that follows the leader: it tries each node until one answers with a number.
struct Follower {
    nodes: Vec<SocketAddr>,
    current: Option<(usize, Client)>,
    /// Every number received, in order.
    seen: Vec<u64>,
}

impl Follower {
    fn new(nodes: Vec<SocketAddr>) -> Follower {
        Follower {
            nodes,
            current: None,
            seen: Vec::new(),
        }
    }

    /// One number from whichever node serves, waiting (bounded) for a leader.
    fn next(&mut self) -> (usize, u64) {
        let deadline = Instant::now() + PATIENCE;
        let mut candidate = 0;
        loop {
            if self.current.is_none() {
                let index = candidate % self.nodes.len();
                candidate += 1;
                if let Ok(mut client) = Client::connect(self.nodes[index]) {
                    let _ = client.set_timeout(Some(REQUEST_TIMEOUT));
                    self.current = Some((index, client));
                }
            }
            if let Some((index, client)) = &mut self.current {
                match client.get() {
                    Ok(number) => {
                        let index = *index;
                        self.record(number);
                        return (index, number);
                    }
                    // Not leading (any more), or gone: try the next node.
                    Err(ClientError::Server { .. })
                    | Err(ClientError::Io(_))
                    | Err(ClientError::Closed)
                    | Err(ClientError::Refused(_)) => self.current = None,
                    Err(e) => panic!("unexpected client error: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "no node served within {PATIENCE:?}"
            );
            if self.current.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn record(&mut self, number: u64) {
        if let Some(&last) = self.seen.last() {
            assert!(
                number > last,
                "{number} after {last}: a number repeated or went back"
            );
        }
        self.seen.push(number);
    }

    fn take(&mut self, count: usize) -> usize {
        let mut leader = 0;
        for _ in 0..count {
            leader = self.next().0;
        }
        leader
    }
}

struct Cluster {
    // Declared first: nodes are killed before etcd.
    nodes: Vec<Node>,
    etcd: Etcd,
    _logs: tempfile::TempDir,
}

/// One cluster at a time: each is three etcd members and three seqd nodes, and this file's
/// tests would otherwise run them side by side on a machine of two cores.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

impl Cluster {
    fn start() -> Cluster {
        let etcd = Etcd::start(3);
        let logs = log_dir();
        let prefix = format!("--etcd-prefix=/failover-{}", std::process::id());
        let nodes = (1..=3)
            .map(|id| Node::start(&etcd, id, logs.path(), &[&prefix]))
            .collect();
        Cluster {
            nodes,
            etcd,
            _logs: logs,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {}:\n{}", n.id, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn kill_9_of_the_leader_fails_over_without_a_repeated_or_smaller_number() {
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let mut client = Follower::new(cluster.addrs());
    let mut outages = Vec::new();
    for _cycle in 0..KILL_CYCLES {
        let leader = client.take(200);
        let before = *client.seen.last().unwrap();
        cluster.nodes[leader].kill();
        let killed = Instant::now();
        let (new_leader, after) = client.next();
        outages.push(killed.elapsed());
        assert_ne!(new_leader, leader, "the killed node cannot serve");
        assert!(after > before);
        // The killed node comes back as a standby.
        cluster.nodes[leader].restart();
    }
    client.take(200);
    eprintln!("outage per kill -9 of the leader: {outages:?}");
    let mut sorted = client.seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), client.seen.len(), "no number twice");
    let _ = &cluster.etcd;
}

#[test]
fn sigterm_hands_over_with_no_gap_and_sigstop_past_the_lease_issues_nothing() {
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let mut client = Follower::new(cluster.addrs());

    // Graceful handover: the exact next number is committed, so nothing is skipped.
    let leader = client.take(100);
    // A client that pipelines reads (CURRENT issues nothing) and never takes its replies
    // keeps the stopping leader's loop lingering for seconds: leadership is handed over
    // without waiting for it.
    let mut lingering = std::net::TcpStream::connect(cluster.nodes[leader].addr).unwrap();
    std::io::Write::write_all(&mut lingering, &b"CURRENT\r\n".repeat(100_000)).unwrap();
    // The client keeps asking (the stopping leader may still answer a few) and closes the
    // connection the stopping leader closes.
    let stopping = Instant::now();
    cluster.nodes[leader].signal(libc::SIGTERM);
    let (before, after) = loop {
        let before = *client.seen.last().unwrap();
        let (node, number) = client.next();
        if node != leader {
            break (before, number);
        }
    };
    eprintln!("outage of a SIGTERM handover: {:?}", stopping.elapsed());
    assert!(
        !cluster.nodes[leader].has_exited(),
        "the new leader served only after the old one exited: leadership was not handed over \
         while its connections lingered; logs:\n{}",
        cluster.logs()
    );
    let status = cluster.nodes[leader].wait();
    assert!(status.success(), "graceful stop: {status:?}");
    assert_eq!(after, before + 1, "a graceful handover skips no number");
    cluster.nodes[leader].restart();

    // A paused leader: a request waits in its socket while a standby takes over.
    let paused = client.take(100);
    let mut stale = Client::connect(cluster.nodes[paused].addr).expect("connect to the leader");
    stale.set_timeout(Some(PATIENCE)).unwrap();
    assert!(stale.get().is_ok());
    cluster.nodes[paused].pause();
    client.current = None;
    let (successor, _) = client.next();
    assert_ne!(successor, paused);
    let taken_over = client.take(50);
    assert_eq!(taken_over, successor);
    let highest = *client.seen.last().unwrap();
    // Resumed past its deadline, the old leader answers no number, ever.
    let reply = std::thread::scope(|s| {
        let asked = s.spawn(|| stale.get());
        std::thread::sleep(Duration::from_millis(100));
        cluster.nodes[paused].signal(libc::SIGCONT);
        asked.join().unwrap()
    });
    assert!(
        reply.is_err(),
        "the resumed old leader issued {reply:?} (the new leader is at {highest}); logs:\n{}",
        cluster.logs()
    );
    let status = cluster.nodes[paused].wait();
    assert_eq!(status.code(), Some(3), "a deposed leader exits with 3");
    assert!(cluster.nodes[paused].log().contains("lost leadership"));
    client.take(50);
    assert!(*client.seen.last().unwrap() > highest);
}

/// One attempt at each node: the number the first serving node gives, if any.
fn any_number(nodes: &[SocketAddr]) -> Option<u64> {
    nodes.iter().find_map(|&addr| {
        let mut client = Client::connect(addr).ok()?;
        client.set_timeout(Some(REQUEST_TIMEOUT)).ok()?;
        client.get().ok()
    })
}

#[test]
fn without_etcd_quorum_no_node_issues_and_service_resumes_when_it_is_back() {
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let mut client = Follower::new(cluster.addrs());
    client.take(100);
    cluster.etcd.kill_member(1);
    cluster.etcd.kill_member(2);
    // The leader may issue until its deadline; then nothing, from any node.
    let deadline = Instant::now() + PATIENCE;
    while let Some(number) = any_number(&cluster.addrs()) {
        client.record(number);
        assert!(
            Instant::now() < deadline,
            "still issuing without quorum; logs:\n{}",
            cluster.logs()
        );
    }
    let refused_since = Instant::now();
    // Longer than a lease: no node may have taken over and none may resume by guessing.
    while refused_since.elapsed() < Duration::from_secs(4) {
        let issued = any_number(&cluster.addrs());
        assert_eq!(issued, None, "a number was issued without etcd quorum");
        std::thread::sleep(Duration::from_millis(100));
    }
    let highest = *client.seen.last().unwrap();
    cluster.etcd.restart_member(1);
    cluster.etcd.restart_member(2);
    cluster.etcd.wait_healthy();
    client.current = None;
    let (_, after) = client.next();
    assert!(after > highest, "service resumes above every number issued");
    client.take(50);
}

#[test]
fn a_leader_cut_off_from_etcd_stops_issuing_and_a_standby_continues_above() {
    let _serial = one_cluster_at_a_time();
    let etcd = Etcd::start(3);
    let logs = log_dir();
    let urls = etcd.urls();
    let prefix = format!("--etcd-prefix=/partition-{}", std::process::id());
    let args = [prefix.as_str()];
    // Node 1 reaches etcd only through member 0; it starts first and leads.
    let mut nodes = vec![Node::start_on(&urls[0], 1, logs.path(), &args)];
    let mut client = Follower::new(vec![nodes[0].addr]);
    client.take(100);
    let others = urls[1..].join(",");
    nodes.push(Node::start_on(&others, 2, logs.path(), &args));
    nodes.push(Node::start_on(&others, 3, logs.path(), &args));
    client.nodes = nodes.iter().map(|n| n.addr).collect();
    let cut_off = nodes[0].addr;
    let mut etcd = etcd;
    // Member 0 goes: node 1 still serves clients but reaches no etcd; quorum remains.
    etcd.kill_member(0);
    let (successor, after) = loop {
        let (node, number) = client.next();
        if node != 0 {
            break (node, number);
        }
    };
    assert_ne!(successor, 0);
    let highest_before = client.seen[client.seen.len() - 2];
    assert!(after > highest_before);
    // The cut-off leader answers no number any more, while it still accepts connections.
    for _ in 0..5 {
        let mut stale = Client::connect(cut_off).expect("the cut-off node still listens");
        stale.set_timeout(Some(REQUEST_TIMEOUT)).unwrap();
        assert!(
            stale.get().is_err(),
            "a leader cut off from etcd issued a number"
        );
    }
    client.take(100);
    // When it reaches etcd again it learns it lost the lease and exits.
    etcd.restart_member(0);
    let status = nodes[0].wait();
    assert_eq!(status.code(), Some(3), "log:\n{}", nodes[0].log());
    client.take(50);
}

/// The node that answers a number (the leader) and the standbys' refusals, once a leader
/// has been elected.
fn leader_index(nodes: &[SocketAddr]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (index, &addr) in nodes.iter().enumerate() {
            if let Ok(mut client) = Client::connect(addr) {
                let _ = client.set_timeout(Some(REQUEST_TIMEOUT));
                if client.get().is_ok() {
                    return index;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `request` as one text line and returns the first reply line.
fn text_line(addr: SocketAddr, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed by .ci/run)");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}

#[test]
fn a_standby_answers_with_the_leaders_address_and_issues_nothing() {
    let _serial = one_cluster_at_a_time();
    let cluster = Cluster::start();
    let addrs = cluster.addrs();
    let leader = leader_index(&addrs);
    let expected = format!("NOTLEADER {}", addrs[leader]);
    for (index, &addr) in addrs.iter().enumerate() {
        if index == leader {
            assert!(redis_cli(addr, &["INFO", "seqd"]).contains("role:leader"));
            continue;
        }
        // The standby's watch may still be catching up with the election: wait for the
        // address, never for a number.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = text_line(addr, "GETSEQ\r\n");
            if line == format!("-{expected}") {
                break;
            }
            assert_eq!(
                line, "-NOTLEADER unknown",
                "a standby issued or refused otherwise"
            );
            assert!(
                Instant::now() < deadline,
                "no leader address within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(redis_cli(addr, &["INCR", "orders"]), expected);
        assert_eq!(redis_cli(addr, &["PING"]), "PONG");
        let info = redis_cli(addr, &["INFO", "seqd"]);
        assert!(info.contains("role:follower"), "{info}");
        assert!(
            info.contains(&format!("leader:{}", addrs[leader])),
            "{info}"
        );
        let mut binary = Client::connect(addr).expect("a standby listens");
        binary.set_timeout(Some(REQUEST_TIMEOUT)).unwrap();
        match binary.get() {
            Err(ClientError::Server { code, message, .. }) => {
                assert_eq!(code, seqd::protocol::ErrorCode::NotLeader);
                assert_eq!(message, addrs[leader].to_string());
            }
            other => panic!("a standby answered {other:?}"),
        }
        match binary.get_batch(10) {
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, seqd::protocol::ErrorCode::NotLeader)
            }
            other => panic!("a standby answered {other:?}"),
        }
        binary.ping().expect("a standby answers PING");
    }
}

#[test]
fn the_leader_following_client_gets_unique_increasing_numbers_across_failovers() {
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let endpoints: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    let mut client = Client::connect_any(&endpoints).expect("a cluster client");
    let mut seen: Vec<u64> = Vec::new();
    let mut take = |client: &mut seqd::client::LeaderClient, count: usize| {
        for _ in 0..count {
            let number = client
                .get()
                .expect("the client follows the leader by itself");
            if let Some(&last) = seen.last() {
                assert!(number > last, "{number} after {last}");
            }
            seen.push(number);
        }
    };
    take(&mut client, 100);
    // kill -9, then SIGTERM, of whichever node leads: the client is never told.
    for graceful in [false, true] {
        let leader = leader_index(&cluster.addrs());
        take(&mut client, 50);
        if graceful {
            cluster.nodes[leader].signal(libc::SIGTERM);
            assert!(cluster.nodes[leader].wait().success());
        } else {
            cluster.nodes[leader].kill();
        }
        take(&mut client, 100);
        cluster.nodes[leader].restart();
    }
    take(&mut client, 50);
    assert!(client.redirects() + client.reconnects() > 0);
}
