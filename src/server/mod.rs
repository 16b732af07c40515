//! The server: one pinned, single-threaded event loop per core (io_uring, or epoll where
//! io_uring is blocked), each with its own SO_REUSEPORT listener, sharing nothing but the
//! sequence registry, the lease and stream records and a connection count. The stream
//! protocol's listener, if any, is served by loop 0 alone.
//!
//! A backend (`uring`, `epoll`) moves bytes; the service layer behind [`handler::Service`] decides
//! what they mean (`handler.rs` states the contract, `adapters.rs` implements it).

pub mod accept;
mod adapters;
mod bufring;
pub mod cpu_quota;
mod epoll;
pub mod failure;
pub mod handler;
mod idle;
mod linger;
mod metrics;
mod output;
mod pool;
pub mod probe;
pub mod timers;
pub mod tls;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

pub use self::adapters::{Limits, StreamSettings};
pub use self::output::OutputLimits;
use crate::sequence::Registry;
use crate::state::LeasesAndStreams;

/// How the server is to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the main port listens (None: only the TLS port, `--port 0` with `--tls-port`).
    pub addr: Option<SocketAddr>,
    /// Where `--tls-port` listens, and with which certificate.
    pub tls: Option<TlsPort>,
    pub threads: usize,
    pub pin: bool,
    pub max_connections: usize,
    /// `--max-stream-connections`: the stream port's own budget, so that idle stream
    /// connections cannot lock clients out of the main port (nor the reverse).
    pub max_stream_connections: usize,
    pub limits: Limits,
    /// Where to serve the stream protocol, and how.
    pub stream: Option<(SocketAddr, StreamSettings)>,
    /// How long an idle event loop spins before it sleeps, and when not to.
    pub busy_poll: BusyPoll,
    /// Which I/O backend to serve with.
    pub io: IoChoice,
    /// Protected mode is in force (no password, a non-loopback bind): connections from
    /// other hosts are answered `-DENIED` and closed.
    pub protected_mode: bool,
    /// `--timeout`: main-port connections that send nothing for this long are closed.
    pub idle_timeout: Option<std::time::Duration>,
    /// `--client-output-limit` and `--maxmemory-clients`.
    pub output: OutputLimits,
}

/// The TLS port: the main port's protocols over TLS.
#[derive(Debug, Clone)]
pub struct TlsPort {
    pub addr: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
}

/// The `--busy-poll` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// How long an idle event loop spins before it sleeps (zero: it sleeps at once).
    pub spin: std::time::Duration,
    /// `auto`: no spinning while seqd's cgroup has a CPU quota (the spinning would be charged
    /// to it, and the loop throttled while requests wait).
    pub off_under_cpu_quota: bool,
}

impl std::str::FromStr for BusyPoll {
    type Err = String;

    /// Microseconds (0: none), or `auto`: 50, none while a CPU quota is in force.
    fn from_str(value: &str) -> Result<BusyPoll, String> {
        let micros = std::time::Duration::from_micros;
        match value.trim() {
            "auto" => Ok(BusyPoll {
                spin: micros(50),
                off_under_cpu_quota: true,
            }),
            number => number
                .parse()
                .map(|n| BusyPoll {
                    spin: micros(n),
                    off_under_cpu_quota: false,
                })
                .map_err(|_| format!("{number:?}: expected microseconds (0 for none) or auto")),
        }
    }
}

/// The `--io` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoChoice {
    /// io_uring where it works, epoll otherwise.
    Auto,
    /// io_uring, or refuse to start.
    Uring,
    /// epoll.
    Epoll,
}

/// The I/O backend that serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        })
    }
}

/// The backend `choice` asks for: `auto` takes io_uring if this process can create a ring
/// with what the loops need, and otherwise says once why it serves with epoll.
fn choose_backend(choice: IoChoice) -> Backend {
    match choice {
        IoChoice::Uring => Backend::Uring,
        IoChoice::Epoll => Backend::Epoll,
        IoChoice::Auto => match probe::uring_usable() {
            Ok(()) => Backend::Uring,
            Err(cause) => {
                tracing::warn!(
                    "io_uring is unavailable, serving with epoll instead: {cause}. epoll costs \
                     a system call per read and per write that io_uring batches into one per \
                     turn: fewer requests per second per core and more CPU per request. \
                     (--io epoll silences this; --io uring refuses to start instead)"
                );
                Backend::Epoll
            }
        },
    }
}

/// What an event loop reports once it is serving.
struct Ready {
    index: usize,
    /// For the start-up log.
    description: String,
    /// Whether `--busy-poll` works on this loop.
    busy_polls: bool,
    core: Option<usize>,
}

/// Creates the event loop of `backend` on the calling thread, reports on `ready`, and runs it
/// until shutdown (None: it could not be created, and `ready` says why).
fn serve_loop<S: handler::Service>(
    backend: Backend,
    settings: uring::LoopSettings,
    service: S,
    shared: Arc<Shared>,
    core: Option<usize>,
    ready: &mpsc::Sender<Result<Ready, String>>,
) -> Option<io::Result<()>> {
    let index = settings.index;
    let report = |description: String, busy_polls: bool| {
        let _ = ready.send(Ok(Ready {
            index,
            description,
            busy_polls,
            core,
        }));
    };
    let created = match backend {
        Backend::Uring => uring::EventLoop::new(settings, service, shared).map(|event_loop| {
            let features = event_loop.features();
            report(features.to_string(), features.work_pending_flag);
            event_loop.run()
        }),
        Backend::Epoll => epoll::EventLoop::new(settings, service, shared).map(|event_loop| {
            report(epoll::DESCRIPTION.to_string(), true);
            event_loop.run()
        }),
    };
    match created {
        Ok(result) => Some(result),
        Err(e) => {
            let mut message = e.to_string();
            if backend == Backend::Uring {
                message.push_str(" (or serve without io_uring: --io epoll)");
            }
            let _ = ready.send(Err(message));
            None
        }
    }
}

/// State every event loop sees.
#[derive(Debug)]
struct Shared {
    registry: Arc<Registry>,
    records: Arc<LeasesAndStreams>,
    /// Main-port connections, all loops together (`--max-connections`; `INFO` reads the count).
    connections: Budget,
    /// Stream-port connections (`--max-stream-connections`).
    stream_connections: Budget,
    /// `--client-output-limit` and `--maxmemory-clients` (the metrics endpoint shows them).
    output: OutputLimits,
    shutdown: AtomicBool,
    /// Per loop, whether it has seen `shutdown`: each reservation it makes from then on comes
    /// after whatever the caller of [`Server::stop`] did before stopping.
    draining: Box<[AtomicBool]>,
    /// Stop without waiting for connections: close them at once.
    abandon: AtomicBool,
    /// `--busy-poll auto` found a CPU quota: no loop spins.
    busy_poll_off: AtomicBool,
}

impl Shared {
    /// The budget connections of `kind` count against.
    fn budget(&self, kind: handler::Kind) -> &Budget {
        match kind {
            handler::Kind::Session | handler::Kind::TlsSession => &self.connections,
            handler::Kind::Stream => &self.stream_connections,
        }
    }
}

/// `--busy-poll auto`: sets `busy_poll_off` now and whenever a CPU quota appears or goes, on
/// a thread that ends with the server.
fn watch_cpu_quota(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let shared = Arc::downgrade(shared);
    cpu_quota::watch(move |quota| {
        let Some(shared) = shared.upgrade() else {
            return false;
        };
        let off = quota.is_some();
        if shared.busy_poll_off.swap(off, Ordering::Relaxed) != off {
            match quota {
                Some(quota) => tracing::info!(
                    "CPU quota in force ({quota}): event loops do not busy-poll, which would \
                     spend the quota waiting for requests (--busy-poll MICROSECONDS spins \
                     regardless)"
                ),
                None => tracing::info!("no CPU quota any more: event loops busy-poll again"),
            }
        }
        true
    })
    .context("cannot start the CPU quota watcher")
}

/// Connections open at once on one kind of port, across all loops, and their limit.
#[derive(Debug)]
struct Budget {
    /// Open now: a process-wide counter, so that `INFO` and the metrics read it.
    open: &'static AtomicUsize,
    limit: usize,
    /// The flag that sets `limit`, named when a connection is refused.
    flag: &'static str,
}

impl Budget {
    fn new(open: &'static AtomicUsize, limit: usize, flag: &'static str) -> Budget {
        Budget { open, limit, flag }
    }

    /// Takes a place for a new connection; false, taking nothing, when all are in use.
    fn take(&self) -> bool {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// A connection that took a place is gone.
    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Something the process's main thread should know about.
#[derive(Debug)]
pub enum Event {
    /// A signal arrived (SIGINT, SIGTERM).
    Signal(i32),
    /// An event loop stopped: with `Ok` after a requested shutdown, `Err` when it failed.
    LoopExited {
        index: usize,
        result: Result<(), String>,
    },
}

/// Wakes event loops from other threads (shutdown, a raised durable ceiling).
#[derive(Debug, Clone)]
pub struct Wakers(Arc<Vec<OwnedFd>>);

impl Wakers {
    pub fn wake_all(&self) {
        for fd in self.0.iter() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes from a live buffer to an eventfd we own. An eventfd write
            // only fails if the counter would overflow, which leaves the loop awake anyway.
            unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
}

pub struct Server {
    local_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    stream_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    wakers: Wakers,
    threads: Vec<JoinHandle<()>>,
    busy_poll: std::time::Duration,
    backend: Backend,
}

impl Server {
    /// Binds the listeners, starts the event loops and returns once all are serving.
    /// Loop exits are reported on `events`.
    pub fn start(
        settings: &Settings,
        registry: Arc<Registry>,
        records: Arc<LeasesAndStreams>,
        events: mpsc::Sender<Event>,
    ) -> anyhow::Result<Server> {
        let stream_connections = match settings.stream {
            Some(_) => settings.max_stream_connections,
            None => 0,
        };
        ensure_fd_limit(
            settings.max_connections + stream_connections,
            settings.threads,
        );
        pool::return_freed_memory();
        let backend = choose_backend(settings.io);
        let (mut listeners, local_addr) = match settings.addr {
            Some(addr) => bind_listeners(addr, settings.threads, "--port")?,
            None => (Vec::new(), None),
        };
        let (mut tls_listeners, tls_addr) = match &settings.tls {
            Some(tls) => bind_listeners(tls.addr, settings.threads, "--tls-port")?,
            None => (Vec::new(), None),
        };
        let tls_config = settings.tls.as_ref().map(|tls| tls.config.clone());
        let mut stream = match &settings.stream {
            Some((addr, stream_settings)) => {
                let listener = bind_stream_listener(*addr)?;
                let bound = listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .context("stream listener has no address")?;
                Some((
                    std::net::TcpListener::from(listener),
                    stream_settings.clone(),
                    bound,
                ))
            }
            None => None,
        };
        let stream_addr = stream.as_ref().map(|(_, _, bound)| *bound);
        let shared = Arc::new(Shared {
            registry,
            records,
            connections: Budget::new(
                &crate::service::counters::CONNECTED,
                settings.max_connections,
                "--max-connections",
            ),
            stream_connections: Budget::new(
                &crate::service::counters::STREAM_CONNECTED,
                stream_connections,
                "--max-stream-connections",
            ),
            output: settings.output,
            shutdown: AtomicBool::new(false),
            draining: (0..settings.threads)
                .map(|_| AtomicBool::new(false))
                .collect(),
            abandon: AtomicBool::new(false),
            busy_poll_off: AtomicBool::new(false),
        });
        if settings.busy_poll.off_under_cpu_quota && !settings.busy_poll.spin.is_zero() {
            watch_cpu_quota(&shared)?;
        }
        let cores = if settings.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        if settings.pin && cores.is_empty() {
            tracing::warn!(
                "cannot read the CPUs this process may use; event loops will not be pinned"
            );
        } else if settings.pin && settings.threads > cores.len() {
            tracing::warn!(
                threads = settings.threads,
                cpus = cores.len(),
                "more event loops than CPUs: some loops share a CPU"
            );
        }

        let mut eventfds = Vec::with_capacity(settings.threads);
        for _ in 0..settings.threads {
            // SAFETY: plain syscall; the returned descriptor is checked and then owned.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("cannot create an eventfd");
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            eventfds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let wake_fds: Vec<i32> = eventfds.iter().map(|fd| fd.as_raw_fd()).collect();
        let wakers = Wakers(Arc::new(eventfds));

        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(settings.threads);
        for index in 0..settings.threads {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let mut loop_listeners = Vec::new();
            if let Some(listener) = listeners.pop() {
                loop_listeners.push((listener.into(), handler::Kind::Session));
            }
            if let Some(listener) = tls_listeners.pop() {
                loop_listeners.push((listener.into(), handler::Kind::TlsSession));
            }
            let mut stream_settings = None;
            if index == 0
                && let Some((listener, s, _)) = stream.take()
            {
                loop_listeners.push((listener, handler::Kind::Stream));
                stream_settings = Some(s);
            }
            let loop_settings = uring::LoopSettings {
                index,
                listeners: loop_listeners,
                wake_fd: wake_fds[index],
                busy_poll: settings.busy_poll.spin,
                output: settings.output,
                loops: settings.threads,
            };
            let limits = settings.limits.clone();
            // Every loop's main port refuses the stream sequence, not only the stream loop's.
            let stream_sequence = settings.stream.as_ref().map(|(_, s)| s.sequence.clone());
            let protected_mode = settings.protected_mode;
            let idle_timeout = settings.idle_timeout;
            let tls_config = tls_config.clone();
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let events = events.clone();
            let thread = std::thread::Builder::new()
                .name(format!("seqd-loop-{index}"))
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::warn!(
                            loop_index = index,
                            core = core.id,
                            "could not pin event loop"
                        );
                    }
                    // Built in the loop's own (pinned) thread, like everything the loop owns.
                    let sessions = adapters::Services::new(
                        shared.registry.clone(),
                        shared.records.clone(),
                        limits,
                        adapters::Admission {
                            max_connections: shared.connections.limit,
                            protected_mode,
                            idle_timeout,
                        },
                        stream_settings,
                        stream_sequence.as_deref(),
                    );
                    let service = tls::Tls::new(sessions, tls_config);
                    let core = core.map(|c| c.id);
                    if let Some(result) =
                        serve_loop(backend, loop_settings, service, shared, core, &ready)
                    {
                        let result = result.map_err(|e| e.to_string());
                        let _ = events.send(Event::LoopExited { index, result });
                    }
                })
                .context("cannot start an event loop thread")?;
            threads.push(thread);
        }
        drop(ready_tx);

        let mut server = Server {
            local_addr,
            tls_addr,
            stream_addr,
            shared,
            wakers,
            threads,
            busy_poll: settings.busy_poll.spin,
            backend,
        };
        for _ in 0..settings.threads {
            match ready_rx.recv() {
                Ok(Ok(Ready {
                    index,
                    description,
                    busy_polls,
                    core,
                })) => {
                    let core = core.map_or_else(|| "unpinned".to_string(), |c| format!("cpu {c}"));
                    tracing::debug!(loop_index = index, %core, "event loop ready: {description}");
                    if !busy_polls {
                        server.busy_poll = std::time::Duration::ZERO;
                    }
                    if index == 0 {
                        tracing::info!(
                            "{backend}: {description} (kernel {})",
                            probe::kernel_release()
                        );
                    }
                }
                Ok(Err(e)) => {
                    server.stop();
                    return Err(anyhow::anyhow!(e));
                }
                Err(_) => {
                    server.stop();
                    anyhow::bail!("an event loop exited during start-up");
                }
            }
        }
        Ok(server)
    }

    /// Where the main port listens (None: TLS only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Where the TLS port listens, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// How long an idle loop busy-polls now: `Settings::busy_poll`, or zero where the kernel
    /// lacks the flag it watches (see `uring::EventLoop::wait_for_completions`) or while
    /// `--busy-poll auto` sees a CPU quota.
    pub fn busy_poll(&self) -> std::time::Duration {
        if self.shared.busy_poll_off.load(Ordering::Relaxed) {
            return std::time::Duration::ZERO;
        }
        self.busy_poll
    }

    /// The I/O backend that serves.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the stream protocol is served, if it is.
    pub fn stream_addr(&self) -> Option<SocketAddr> {
        self.stream_addr
    }

    /// Wakes every event loop (they re-check shutdown and waiting requests).
    pub fn wakers(&self) -> Wakers {
        self.wakers.clone()
    }

    /// Serves the Prometheus endpoint on `addr` (its own thread); returns where it listens.
    pub fn serve_metrics(&self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        metrics::spawn(addr, self.shared.clone())
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.open()
    }

    /// Asks every loop to stop accepting, answer what it has received, and close.
    pub fn stop(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.wakers.wake_all();
    }

    /// Stops at once: like [`Server::stop`], but every connection is closed without waiting
    /// for its replies to be taken (a standby's, which hold nothing but refusals, so that
    /// its clients reconnect to the leader it is becoming without a linger's delay).
    pub fn stop_closing_connections(&self) {
        self.shared.abandon.store(true, Ordering::Release);
        self.stop();
    }

    /// Waits, at most `limit`, until every event loop has seen [`Server::stop`] (or ended);
    /// whether they all did. A loop sees it between two events, never in the middle of a
    /// request, so anything the caller did before `stop` (cluster mode: revoking the issuing
    /// deadline) holds for every reservation from then on, while the loops still linger to
    /// hand their last replies over.
    pub fn wait_until_draining(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            let all = self.threads.iter().enumerate().all(|(index, thread)| {
                thread.is_finished()
                    || self
                        .shared
                        .draining
                        .get(index)
                        .is_some_and(|seen| seen.load(Ordering::Acquire))
            });
            if all {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Waits for every event loop thread to end.
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Descriptors the process needs besides client connections: per loop a listener, an eventfd
/// and an io_uring; the state directory; connections refused over the limit while their
/// refusal is sent; standard streams and slack.
const FDS_BESIDES_CONNECTIONS: u64 = 128;

/// Raises the soft limit on open files so that `--max-connections` clients fit (the default
/// soft limit is often 1024), and warns if the hard limit does not allow it.
fn ensure_fd_limit(max_connections: usize, threads: usize) {
    let needed = max_connections as u64 + 3 * threads as u64 + FDS_BESIDES_CONNECTIONS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            "cannot read the open-file limit: {}",
            io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
    // limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!(
            "cannot raise the open-file limit: {}",
            io::Error::last_os_error()
        );
        return;
    }
    if raised.rlim_cur < needed {
        tracing::warn!(
            needed,
            hard_limit = limit.rlim_max,
            "--max-connections={max_connections} needs about {needed} open files but the hard \
             limit is {}: connections beyond about {} will be refused by the kernel; raise the \
             limit (`ulimit -Hn`, LimitNOFILE= in a systemd unit) or lower --max-connections",
            limit.rlim_max,
            limit
                .rlim_max
                .saturating_sub(needed - max_connections as u64),
        );
    } else {
        tracing::debug!(
            from = limit.rlim_cur,
            to = raised.rlim_cur,
            "raised the open-file limit"
        );
    }
}

/// Binds `count` SO_REUSEPORT listeners to `addr` (the port of `flag`), and says where they
/// listen. The port must not already be served by another process: SO_REUSEPORT would
/// otherwise let two servers share it silently, and two sequencers on one port would hand out
/// the same numbers.
fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    flag: &str,
) -> anyhow::Result<(Vec<Socket>, Option<SocketAddr>)> {
    let new_socket = |reuse_port| new_socket(addr, reuse_port);
    let in_use = |e, addr| in_use(e, addr, flag);

    // Exclusive probe: fails if anything listens on the port, reuseport group or not.
    let probe = new_socket(false).context("cannot create a socket")?;
    bind_retrying(&probe, addr).map_err(|e| in_use(e, addr))?;
    let addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .context("bound socket has no address")?;
    drop(probe);

    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = new_socket(true).context("cannot create a socket")?;
        socket.bind(&addr.into()).map_err(|e| in_use(e, addr))?;
        socket.listen(4096).map_err(|e| in_use(e, addr))?;
        listeners.push(socket);
    }
    Ok((listeners, Some(addr)))
}

/// Binds the stream protocol's listener: one socket, no SO_REUSEPORT group, because one
/// event loop serves every stream (so one client id never has two writers).
fn bind_stream_listener(addr: SocketAddr) -> anyhow::Result<Socket> {
    let socket = new_socket(addr, false).context("cannot create a socket")?;
    bind_retrying(&socket, addr).map_err(|e| in_use(e, addr, "--stream-port"))?;
    socket
        .listen(1024)
        .map_err(|e| in_use(e, addr, "--stream-port"))?;
    Ok(socket)
}

/// How long a port that is in use is retried before giving up: a seqd killed a moment ago
/// may still hold its listeners, because the kernel tears an io_uring (and the sockets its
/// pending accepts hold) down asynchronously after the process is gone.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

fn bind_retrying(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    loop {
        match socket.bind(&addr.into()) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    // Accepted sockets inherit these.
    socket.set_tcp_nodelay(true)?;
    socket.set_keepalive(true)?;
    Ok(socket)
}

fn in_use(e: io::Error, addr: SocketAddr, flag: &str) -> anyhow::Error {
    let hint = if e.kind() == io::ErrorKind::AddrInUse {
        format!(" (is another seqd or service on that port? choose another with {flag})")
    } else {
        String::new()
    };
    anyhow::anyhow!("cannot listen on {addr}: {e}{hint}")
}
