//! seqd: parse the command line, recover the sequences, start the event loops and the
//! persister, wait for a signal, shut down gracefully and record where every sequence stopped.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context;
use seqd::cluster::ClusterNode;
#[cfg(feature = "cluster")]
use seqd::cluster::Leadership;
use seqd::commits::Commits;
use seqd::config::Config;
use seqd::sequence::{Registry, Writers};
use seqd::server::{Event, Server, Settings};
use seqd::service::Limits;
use seqd::service::auth::Password;
use seqd::state::{LeaseKeeper, LeasesAndStreams};
use seqd::store::persister::{Persister, PersisterHandle, Report};
use seqd::store::recovery;
use seqd::store::window::WindowPolicy;
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    let config = match seqd::config::load(std::env::args_os().collect()) {
        Ok(config) => config,
        Err(e) => e.exit(),
    };
    // A file size limit (ulimit -f) must show up as a write error, which fails closed,
    // not as a signal that kills the server.
    // SAFETY: setting a signal's disposition to "ignore" touches no memory.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if let Err(e) = init_logging(&config.log_level) {
        eprintln!("seqd: {e:#}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log-level {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

/// How often the main thread checks, in cluster mode, whether leadership was lost.
const ROLE_CHECK: Duration = Duration::from_millis(50);
/// The exit status of a leader that lost leadership (it issues nothing more; restart it
/// and it comes back as a standby).
const EXIT_DEPOSED: i32 = 3;

fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let cluster = config.cluster()?;
    let addr = config.listen_addr()?;
    let password = config.password()?;
    let protected_mode = config.protected_mode && password.is_none() && !addr.ip().is_loopback();
    let access = Access {
        password: password.clone(),
        protected_mode,
        plaintext: config.serves_plaintext(),
        tls: config.tls_port(addr.ip())?,
    };
    if protected_mode {
        tracing::warn!(
            "protected mode: no password is set and {} is not a loopback address, so only \
             clients on this host are served; set --requirepass or --password-file to serve \
             others (or --protected-mode no on a trusted network)",
            addr.ip()
        );
    }
    let threads = config.threads.unwrap_or_else(|| {
        core_affinity::get_core_ids().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |cores| cores.len().max(1),
        )
    });

    // Handlers first: a signal during start-up is then a graceful stop, not a kill.
    let (events_tx, events) = mpsc::channel();
    let signal_events = events_tx.clone();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("seqd-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;

    // Every reservation happens on an event loop (sessions, leases, streams): with one loop,
    // each sequence has a single writer and needs no compare-and-swap.
    let writers = Writers::for_threads(threads);
    let node = cluster.map(ClusterNode::connect).transpose()?;
    let (registry, records, persister) = match &node {
        None => open_sequences(&config, writers)?,
        // A build without cluster mode has no node (ClusterNode::connect refused --etcd).
        #[cfg(not(feature = "cluster"))]
        Some(node) => match *node {},
        #[cfg(feature = "cluster")]
        Some(node) => {
            let standby = server_settings(&config, addr, threads, false, &access);
            let Some(leadership) = stand_by(node, &config, &standby, &events, &events_tx)? else {
                signal_handle.close();
                node.resign();
                tracing::info!("seqd stopped (never led)");
                return Ok(());
            };
            let (registry, records, persister) = seqd::cluster::open_sequences(
                node,
                &leadership,
                config.max_sequences,
                config.initial(),
                WindowPolicy {
                    max_crash_gap: config.max_crash_gap,
                },
                writers,
                config.lease_settings(),
            )?;
            (registry, records, Some(persister))
        }
    };
    if config.lease_reuse {
        tracing::warn!(
            "--lease-reuse: numbers of leases that expire unacknowledged are handed out again; \
             unsafe if a client uses numbers before its ACK is answered (two clients could hold \
             the same number)"
        );
    }

    let settings = server_settings(&config, addr, threads, true, &access);
    // Should this fail, the first windows stay on disk unused: the next start skips them
    // (the safe direction; an event loop that did start may have issued from them).
    let server = Server::start(&settings, registry.clone(), records.clone(), events_tx)?;
    let keeper = LeaseKeeper::spawn(records, registry)?;
    let mut persister = match persister {
        Some(persister) => {
            let wakers = server.wakers();
            Some(persister.spawn(move || wakers.wake_all())?)
        }
        None => None,
    };
    tracing::info!(
        threads,
        pinned = settings.pin,
        max_connections = settings.max_connections,
        busy_poll_us = server.busy_poll().as_micros(),
        io = %server.backend(),
        auth = if password.is_some() { "password" } else { "none" },
        "seqd listening on {}",
        listening(&server)
    );
    if let Some(stream_addr) = server.stream_addr() {
        tracing::info!(
            interval = ?config.stream_interval,
            burst = config.stream_burst,
            "stream protocol (seed 003) listening on {stream_addr}"
        );
    }

    if let Some(addr) = config.metrics_addr {
        let bound = server.serve_metrics(addr)?;
        tracing::info!("metrics (Prometheus) listening on {bound}");
    }

    // systemd's Type=notify: ready once every listener accepts (no-op without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell the service manager seqd is ready: {e}");
    }

    let mut running = threads;
    let mut failure = None;
    let mut stopping = false;
    let mut report = None;
    while running > 0 {
        let event = match &node {
            None => events.recv(),
            Some(node) => match events.recv_timeout(ROLE_CHECK) {
                Ok(event) => Ok(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if node.is_deposed() {
                        // Nothing is issued any more (the deadline is revoked); the clients'
                        // connections close with the process.
                        tracing::error!(
                            "exiting: this node lost leadership ({}); restart it to stand by",
                            node.role()
                        );
                        std::process::exit(EXIT_DEPOSED);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
            },
        };
        match event {
            Ok(Event::Signal(signal)) if !stopping => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("{name} received: shutting down (send it again to exit at once)");
                stopping = true;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                if let Some(node) = &node {
                    node.stop_issuing();
                }
                server.stop();
                if let Some(node) = &node {
                    report = hand_over(node, &server, &mut persister).or(report);
                }
            }
            Ok(Event::Signal(_)) => {
                tracing::warn!("second signal: exiting without waiting for connections");
                std::process::exit(130);
            }
            Ok(Event::LoopExited { index, result }) => {
                running -= 1;
                if let Err(e) = result {
                    tracing::error!(loop_index = index, "event loop failed: {e}; shutting down");
                    failure.get_or_insert(e);
                    stopping = true;
                    server.stop();
                }
            }
            Err(_) => break,
        }
    }
    signal_handle.close();
    server.join();
    keeper.stop();
    // The loops have stopped, so the next numbers are final: record them (in etcd, fenced,
    // in cluster mode), and only then hand leadership over (unless that was done already).
    if let Some(persister) = persister.take() {
        report = Some(persister.shutdown());
        if let Some(node) = &node {
            node.resign();
        }
    }
    if let Some(report) = report.transpose()? {
        log_report(&report);
    }
    match failure {
        Some(e) => anyhow::bail!("stopped after an event loop failed: {e}"),
        None => {
            tracing::info!("seqd stopped");
            Ok(())
        }
    }
}

/// How long a graceful stop waits for every event loop to see it before handing leadership
/// over; past it, the handover waits for the loops to end.
const HANDOVER_WAIT: Duration = Duration::from_millis(500);

/// Cluster mode, a graceful stop: as soon as every event loop has seen the stop (so none
/// issues another number, the deadline being revoked first), records the final next numbers
/// in etcd and gives leadership up, rather than after the loops' connections have lingered
/// out: a standby leads within milliseconds. Returns the persister's report if it did.
fn hand_over(
    node: &ClusterNode,
    server: &Server,
    persister: &mut Option<PersisterHandle>,
) -> Option<anyhow::Result<Report>> {
    if !server.wait_until_draining(HANDOVER_WAIT) {
        tracing::warn!(
            "an event loop has not seen the stop within {HANDOVER_WAIT:?}; leadership is given \
             up once the loops end"
        );
        return None;
    }
    let report = persister.take()?.shutdown();
    node.resign();
    Some(report)
}

/// Who may use the server: the password, and whether protected mode refuses other hosts.
struct Access {
    password: Option<Password>,
    protected_mode: bool,
    /// Serve the plaintext main port (not with `--port 0 --tls-port ...`).
    plaintext: bool,
    tls: Option<seqd::server::TlsPort>,
}

/// Where clients connect: the main port, then the TLS port marked `(TLS)`.
fn listening(server: &Server) -> String {
    let plaintext = server.local_addr().map(|addr| addr.to_string());
    let tls = server.tls_addr().map(|addr| format!("{addr} (TLS)"));
    [plaintext, tls]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
}

fn server_settings(
    config: &Config,
    addr: std::net::SocketAddr,
    threads: usize,
    with_stream: bool,
    access: &Access,
) -> Settings {
    Settings {
        addr: access.plaintext.then_some(addr),
        tls: access.tls.clone(),
        threads,
        pin: config.pin(),
        max_connections: config.max_connections,
        max_stream_connections: config.max_stream_connections,
        busy_poll: config.busy_poll,
        io: config.io,
        limits: Limits {
            max_batch: config.max_batch,
            password: access.password.clone(),
            held_output: config.held_output(),
        },
        protected_mode: access.protected_mode,
        idle_timeout: (config.timeout > 0).then(|| Duration::from_secs(config.timeout)),
        output: config.output_limits(),
        stream: config.stream_port.filter(|_| with_stream).map(|port| {
            (
                std::net::SocketAddr::new(addr.ip(), port),
                config.stream_settings(),
            )
        }),
    }
}

#[cfg(feature = "cluster")]
/// Serves as a standby until this node leads (Some) or a signal asks it to stop first
/// (None). A standby listens on the client port with an empty registry under a follower
/// deadline and no persister: nothing is ever issuable there, and every number or lease
/// request is refused with the leader's address (`NOTLEADER`). Once elected, the standby
/// server is stopped (its clients reconnect) before the leader's sequences are opened.
fn stand_by(
    node: &ClusterNode,
    config: &Config,
    settings: &Settings,
    events: &mpsc::Receiver<Event>,
    events_tx: &mpsc::Sender<Event>,
) -> anyhow::Result<Option<Leadership>> {
    let registry = Registry::durable(config.max_sequences, config.initial())
        .with_writers(Writers::for_threads(settings.threads))
        .with_issue_deadline(node.follower_deadline());
    let registry = Arc::new(registry);
    let records = Arc::new(LeasesAndStreams::empty(
        Commits::memory_only(),
        config.lease_settings(),
    ));
    let server = Server::start(settings, registry, records, events_tx.clone())
        .context("cannot listen as a standby")?;
    tracing::info!(
        "standby listening on {}: number requests are refused with the leader's address",
        listening(&server)
    );
    let outcome = wait_for_leadership(node, events);
    server.stop_closing_connections();
    server.join();
    // The standby loops' exits are not the leader's; a signal that came meanwhile still
    // stops the node.
    let mut signalled = false;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Signal(_) => signalled = true,
            Event::LoopExited { index, result } => {
                if let Err(e) = result {
                    tracing::warn!(loop_index = index, "standby event loop failed: {e}");
                }
            }
        }
    }
    match outcome? {
        Some(_) if signalled => {
            tracing::info!("signal received while taking over: stopping");
            Ok(None)
        }
        leadership => Ok(leadership),
    }
}

#[cfg(feature = "cluster")]
/// Campaigns until this node leads (Some) or a signal asks it to stop first (None).
fn wait_for_leadership(
    node: &ClusterNode,
    events: &mpsc::Receiver<Event>,
) -> anyhow::Result<Option<Leadership>> {
    let settings = node.settings();
    tracing::info!(
        node_id = settings.node_id,
        advertise = settings.advertise,
        ttl = ?settings.timing.ttl,
        "cluster mode: campaigning for leadership in etcd {} under {}",
        settings.endpoints.join(","),
        settings.prefix
    );
    let won = node.start_campaign();
    loop {
        match won.recv_timeout(ROLE_CHECK) {
            Ok(leadership) => {
                tracing::info!(
                    token = leadership.token,
                    "elected leader: serving above the committed ceilings"
                );
                return Ok(Some(leadership));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the election task ended without a result")
            }
        }
        match events.try_recv() {
            Ok(Event::Signal(_)) | Err(mpsc::TryRecvError::Disconnected) => {
                tracing::info!("signal received while standing by: stopping");
                return Ok(None);
            }
            Ok(Event::LoopExited { index, result }) => {
                anyhow::bail!(
                    "a standby event loop ({index}) ended: {}",
                    result.err().map_or("no error".into(), |e| e.to_string())
                )
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
    }
}

/// The sequences, leases and streams to serve: recovered from the data directory (with the
/// persister that keeps them durable, its first windows already written), or fresh in memory.
fn open_sequences(
    config: &Config,
    writers: Writers,
) -> anyhow::Result<(Arc<Registry>, Arc<LeasesAndStreams>, Option<Persister>)> {
    if config.in_memory {
        tracing::info!(
            initial = config.initial(),
            "--in-memory: nothing is persisted; a restart begins every sequence again at \
             --initial"
        );
        let registry = Registry::new(config.max_sequences, config.initial()).with_writers(writers);
        let records = LeasesAndStreams::empty(Commits::memory_only(), config.lease_settings());
        return Ok((Arc::new(registry), Arc::new(records), None));
    }
    let options = recovery::Options {
        max_sequences: config.max_sequences,
        initial: config.initial(),
        initial_explicit: config.initial.is_some(),
        policy: WindowPolicy {
            max_crash_gap: config.max_crash_gap,
        },
        writers,
        leases: config.lease_settings(),
    };
    let durable = recovery::open(&config.data_dir, &options)?;
    tracing::info!(
        max_crash_gap = config.max_crash_gap,
        "durable state in {}: every number is issued below a ceiling already on disk",
        config.data_dir.display()
    );
    Ok((durable.registry, durable.records, Some(durable.persister)))
}

fn log_report(report: &Report) {
    tracing::info!(
        writes = report.writes,
        fsyncs = report.fsyncs,
        fsyncs_per_second = format!("{:.1}", report.fsyncs_per_second()),
        largest_window = report.largest_window,
        failed_writes = report.failed_writes,
        "state persisted: exact next numbers recorded ({} writes, {} fsyncs in {:.1?}; \
         largest window {}, the most a crash could have skipped)",
        report.writes,
        report.fsyncs,
        report.elapsed,
        report.largest_window
    );
}
