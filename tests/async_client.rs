//! The async client (`seqd::client::AsyncClient`, feature `tokio`) and `IdSource` against
//! the real binary: many tasks on one connection, restarts (SIGTERM and kill -9) ridden out,
//! a paused server timed out, AUTH, TLS, leases across a crash, an IdSource through an
//! outage, and (with the `cluster` feature too) a failover between two nodes followed.
//!
//! `cargo test --features tokio --test async_client` (add `cluster` for the failover test).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqd::client::{AsyncClient, Client, ClientError, IdSource, IdSourceOptions, Sequence};
use seqd::protocol::ErrorCode;
use seqd_test_support::{PATIENCE, SeqdProcess, free_port, stop_process, temp_dir};

/// A seqd on a fixed port and data directory, so that it can be stopped and started again
/// where its clients expect it.
struct Restartable {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    process: Option<SeqdProcess>,
}

impl Restartable {
    fn start(extra: &[&str]) -> Restartable {
        let mut server = Restartable {
            port: free_port(),
            dir: temp_dir(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            process: None,
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        assert!(self.process.is_none(), "running already");
        let mut args = vec![
            "--host=127.0.0.1".to_string(),
            format!("--port={}", self.port),
            "--threads=2".to_string(),
            format!("--data-dir={}", self.dir.path().display()),
        ];
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.process = Some(SeqdProcess::start_exact(&args));
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn process(&mut self) -> &mut SeqdProcess {
        self.process.as_mut().expect("running")
    }

    fn terminate(&mut self) {
        assert!(self.process().terminate().success());
        self.process = None;
    }

    fn kill(&mut self) {
        self.process().kill();
        self.process = None;
    }
}

/// Tasks taking numbers from one client until told to stop, each keeping what it got.
struct Takers {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, Vec<u64>)>>,
}

impl Takers {
    /// `tasks` tasks, each alternating the default sequence and `named`.
    fn start(client: &AsyncClient, named: Sequence, tasks: usize) -> Takers {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|_| {
                let (client, stop, received) = (client.clone(), stop.clone(), received.clone());
                tokio::spawn(async move {
                    let (mut default, mut orders) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let n = client.get().await.expect("the client rides it out");
                        default.push(n);
                        let n = client
                            .get_from(&named)
                            .await
                            .expect("the client rides it out");
                        orders.push(n);
                        received.fetch_add(2, Ordering::Relaxed);
                    }
                    (default, orders)
                })
            })
            .collect();
        Takers {
            stop,
            received,
            tasks,
        }
    }

    /// Waits until the tasks got `count` more numbers.
    async fn progress(&self, count: u64) {
        let target = self.received.load(Ordering::Relaxed) + count;
        let deadline = Instant::now() + PATIENCE;
        while self.received.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "no progress within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the tasks; checks each one's numbers increase, and that no number repeats.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (mut default, mut orders) = (HashSet::new(), HashSet::new());
        let mut total = 0;
        for task in self.tasks {
            let (d, o) = task.await.expect("a taker panicked");
            for numbers in [&d, &o] {
                assert!(numbers.windows(2).all(|w| w[0] < w[1]), "not increasing");
            }
            total += d.len() + o.len();
            for n in d {
                assert!(default.insert(n), "{n} repeated");
            }
            for n in o {
                assert!(orders.insert(n), "{n} of orders repeated");
            }
        }
        total
    }
}

fn fast_reconnect(endpoints: &[String]) -> seqd::client::Builder {
    AsyncClient::builder(endpoints.iter().cloned())
        .backoff(Duration::from_millis(5), Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(1))
        .reply_timeout(Duration::from_secs(2))
        .request_timeout(PATIENCE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_client_and_get_unique_numbers() {
    let server = SeqdProcess::start(&[]);
    let client = AsyncClient::connect(server.addr.to_string()).await.unwrap();
    let orders = client.sequence("orders").await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut numbers = Vec::new();
                for i in 0..200u64 {
                    if i % 10 == 0 {
                        numbers.extend(client.get_batch(10).await.unwrap());
                    } else {
                        numbers.push(client.get().await.unwrap());
                    }
                }
                let order = client.get_from(&orders).await.unwrap();
                (numbers, order)
            })
        })
        .collect();
    let (mut all, mut order_ids) = (HashSet::new(), HashSet::new());
    for task in tasks {
        let (numbers, order) = task.await.unwrap();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "a task's numbers increase"
        );
        for n in numbers {
            assert!(all.insert(n), "{n} was issued twice");
        }
        assert!(order_ids.insert(order));
    }
    assert_eq!(all.len(), 64 * (180 + 20 * 10));
    assert_eq!(order_ids.len(), 64);
    let highest = *all.iter().max().unwrap();
    assert_eq!(client.current().await.unwrap(), highest + 1);
    let orders_next = client.current_of(&orders).await.unwrap();
    assert_eq!(orders_next, order_ids.iter().max().unwrap() + 1);
    let stats = client.stats();
    assert_eq!(stats.reconnects, 0);
    // 64 tasks at once on one connection: calls shared writes.
    assert!(stats.writes < stats.requests, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_sigterm_and_kill_9_are_ridden_out_by_reconnecting() {
    let mut server = Restartable::start(&[]);
    let client = fast_reconnect(&[server.addr()]).connect().await.unwrap();
    let orders = client.sequence("orders").await.unwrap();
    let takers = Takers::start(&client, orders, 8);
    takers.progress(200).await;
    server.terminate();
    server.restart();
    takers.progress(200).await;
    server.kill();
    server.restart();
    takers.progress(200).await;
    let total = takers.finish().await;
    assert!(total >= 600);
    assert!(client.stats().reconnects >= 2, "{:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_times_the_call_out_and_serves_again_after() {
    let server = SeqdProcess::start(&[]);
    let client = AsyncClient::builder([server.addr.to_string()])
        .request_timeout(Duration::from_millis(600))
        .reply_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let before = client.get().await.unwrap();
    stop_process(server.pid());
    let result = client.get().await;
    server.signal(libc::SIGCONT);
    assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        match client.get().await {
            Ok(n) => break n,
            Err(ClientError::Timeout(_)) if Instant::now() < deadline => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(after > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_the_password_and_refusals_without_it() {
    let server = SeqdProcess::start(&["--requirepass=s3cret"]);
    let addr = server.addr.to_string();
    let client = AsyncClient::builder([addr.clone()])
        .password("s3cret")
        .connect()
        .await
        .unwrap();
    assert!(client.get().await.unwrap() >= 1);
    let orders = client.sequence("orders").await.unwrap();
    client.get_from(&orders).await.unwrap();

    let wrong = AsyncClient::builder([addr.clone()])
        .password("wrong")
        .connect()
        .await;
    assert!(
        matches!(
            &wrong,
            Err(ClientError::Server {
                code: ErrorCode::WrongPass,
                ..
            })
        ),
        "{:?}",
        wrong.err()
    );
    let none = AsyncClient::connect(addr.clone()).await.unwrap();
    let refused = none.get().await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Server {
                code: ErrorCode::NoAuth,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_a_crash_and_is_acknowledged_from_the_new_connection() {
    let mut server = Restartable::start(&[]);
    let client = fast_reconnect(&[server.addr()]).connect().await.unwrap();
    let jobs = client.sequence("jobs").await.unwrap();
    let first = client
        .lease(&jobs, 20, Some(("worker-1", "r1")))
        .await
        .unwrap();
    let second = client
        .lease(&jobs, 5, Some(("worker-1", "r2")))
        .await
        .unwrap();
    assert_eq!(first.end - first.start, 20);
    server.kill();
    server.restart();
    // The retry with the same ids answers the same range (and the named sequence is open
    // again on the new connection without the caller doing anything).
    let again = client
        .lease(&jobs, 20, Some(("worker-1", "r1")))
        .await
        .unwrap();
    assert_eq!(again, first);
    client.ack(&jobs, first, Some("worker-1")).await.unwrap();
    // Granted to the connection before the crash: acknowledged by client id.
    client
        .ack(&jobs, second.clone(), Some("worker-1"))
        .await
        .unwrap();
    let unknown = client.ack(&jobs, second.end..second.end + 3, None).await;
    assert!(
        matches!(
            unknown,
            Err(ClientError::Server {
                code: ErrorCode::NoLease,
                ..
            })
        ),
        "{unknown:?}"
    );
    assert!(client.get_from(&jobs).await.unwrap() >= second.end);
}

/// An IdSource on the blocking cluster-aware client, one endpoint; a fetch fails at once
/// when the server is down (the IdSource retries it).
fn blocking_source(
    addr: &str,
) -> impl FnMut(u64) -> Result<Range<u64>, ClientError> + Send + use<> {
    let mut client = Client::connect_any(&[addr]).expect("connect");
    client.retry_for(Duration::ZERO);
    move |count| client.get_batch(count)
}

#[test]
fn id_source_hands_out_ids_while_the_server_is_stopped_and_resumes_after() {
    let mut server = Restartable::start(&[]);
    let options = IdSourceOptions {
        min_batch: 5_000,
        max_batch: 5_000,
        refill_at: 0.2,
        wait_timeout: PATIENCE,
        ..IdSourceOptions::default()
    };
    let mut ids = IdSource::new(blocking_source(&server.addr()), options);
    let mut taken = Vec::new();
    for _ in 0..1_001 {
        taken.push(ids.next_id().unwrap());
    }
    // Past the refill mark: the next range comes in the background.
    let deadline = Instant::now() + PATIENCE;
    while ids.buffered() < 5_000 + 3_999 {
        assert!(Instant::now() < deadline, "no prefetch");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waited = ids.stats().waited;
    server.terminate();
    // Less than what is buffered: served without the server.
    for _ in 0..8_000 {
        taken.push(ids.next_id().unwrap());
    }
    assert_eq!(
        ids.stats().waited,
        waited,
        "no call waited while ids were buffered"
    );
    server.restart();
    for _ in 0..20_000 {
        taken.push(ids.next_id().unwrap());
    }
    assert!(
        ids.stats().failed_fetches > 0,
        "the refill failed while the server was down"
    );
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "ids increase");
    // Dropped (a process exiting): the rest of its ranges is abandoned, a bounded gap. Ids
    // the server issues from now on are above every id handed out: none will repeat.
    let last = *taken.last().unwrap();
    drop(ids);
    let mut check = Client::connect(server.addr()).unwrap();
    let next = check.get().unwrap();
    assert!(next > last);
    assert!(
        next - last <= 2 * 5_000,
        "gap {} above two ranges",
        next - last
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_sources_on_the_async_client_and_direct_calls_never_share_an_id() {
    let server = SeqdProcess::start(&[]);
    let client = AsyncClient::connect(server.addr.to_string()).await.unwrap();
    let options = IdSourceOptions {
        min_batch: 100,
        max_batch: 1_000,
        ..IdSourceOptions::default()
    };
    let all = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut ids = IdSource::new(client.range_source(Sequence::DEFAULT), options.clone());
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..20_000 {
                mine.push(ids.next_id_async().await.unwrap());
            }
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
            let mut all = all.lock().unwrap();
            assert!(mine.into_iter().all(|id| all.insert(id)), "an id repeated");
        }));
    }
    for _ in 0..500 {
        let n = client.get().await.unwrap();
        assert!(all.lock().unwrap().insert(n), "{n} repeated");
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(all.lock().unwrap().len(), 40_500);
}

#[cfg(feature = "cluster")]
mod cluster_support;

/// Two nodes on a one-member etcd: the client starts on the standby, is sent to the leader,
/// and follows a kill -9 and a SIGTERM of whichever node leads.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_between_two_nodes_is_followed() {
    use cluster_support::{Etcd, Node, log_dir};
    let etcd = Etcd::start(1);
    let logs = log_dir();
    let prefix = format!("--etcd-prefix=/async-client-{}", std::process::id());
    let mut nodes: Vec<Node> = (1..=2)
        .map(|id| Node::start(&etcd, id, logs.path(), &[&prefix, "--leader-ttl=2s"]))
        .collect();
    let leader = leader_index(&nodes).await;
    // The standby first: its NOTLEADER names the leader.
    let endpoints = vec![
        nodes[1 - leader].addr.to_string(),
        nodes[leader].addr.to_string(),
    ];
    let client = fast_reconnect(&endpoints).connect().await.unwrap();
    let orders = client.sequence("orders").await.unwrap();
    let takers = Takers::start(&client, orders, 8);
    takers.progress(100).await;
    assert!(client.stats().redirects >= 1, "{:?}", client.stats());
    for graceful in [false, true] {
        let leader = leader_index(&nodes).await;
        takers.progress(100).await;
        if graceful {
            assert!(nodes[leader].terminate().success());
        } else {
            nodes[leader].kill();
        }
        takers.progress(200).await;
        nodes[leader].restart();
    }
    let total = takers.finish().await;
    assert!(total >= 600);
}

/// The node that answers a number, once one leads.
#[cfg(feature = "cluster")]
async fn leader_index(nodes: &[cluster_support::Node]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (index, node) in nodes.iter().enumerate() {
            let addr = node.addr;
            // One endpoint and no retry: a standby's NOTLEADER is not followed here.
            let serves = tokio::task::spawn_blocking(move || {
                Client::connect(addr).is_ok_and(|mut client| {
                    let _ = client.set_timeout(Some(Duration::from_millis(500)));
                    client.get().is_ok()
                })
            });
            if serves.await.unwrap_or(false) {
                return index;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_password_many_tasks_get_unique_numbers() {
    use seqd::client::{TlsConnector, tls};
    use seqd_test_support::pki::Pki;

    let pki = Pki::new();
    let mut args = vec!["--requirepass=s3cret".to_string()];
    args.extend(pki.server_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = SeqdProcess::start(&args);
    let config = tls::client_config(&pki.path("ca.crt")).unwrap();
    let connector = TlsConnector::new(config, "localhost").unwrap();
    let client = AsyncClient::builder([server.tls_addr().to_string()])
        .password("s3cret")
        .connect_with(connector)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..200 {
                    mine.push(client.get().await.unwrap());
                }
                mine
            })
        })
        .collect();
    let mut all = HashSet::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a task's numbers increase"
        );
        all.extend(mine);
    }
    assert_eq!(all.len(), 16 * 200, "every number unique");

    // A certificate from another authority is refused, not silently trusted.
    let other = tls::client_config(&pki.path("other-ca.crt")).unwrap();
    let refused = AsyncClient::builder([server.tls_addr().to_string()])
        .password("s3cret")
        .request_timeout(Duration::from_secs(2))
        .connect_with(TlsConnector::new(other, "localhost").unwrap())
        .await;
    assert!(
        refused.is_err(),
        "a server outside the trusted CA was accepted"
    );
}
