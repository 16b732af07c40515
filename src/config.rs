//! The command line. The text protocol's original server flags are accepted in its own syntax
//! (`--initial=1000 --port=10002 --host=0.0.0.0 --max-connections=500`).
//!
//! (Over 600 lines: every flag's help text is here, and the last 190 are its tests.)

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

mod file;
pub use file::load;

use crate::sequence::MAX_VALUE;
use crate::server::{BusyPoll, IoChoice, TlsPort};
use crate::service::auth::Password;
use crate::store::window::DEFAULT_MAX_CRASH_GAP;

fn parse_password(value: &str) -> Result<Password, String> {
    Password::new(value).ok_or_else(|| "the password must not be empty".to_owned())
}

/// Redis's spelling of a boolean setting.
fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!("{other:?}: expected yes or no")),
    }
}

/// A size in bytes, with Redis's units: `4096`, `512kb` (1024 bytes each), `4mb`, `1gb`;
/// `k`, `m` and `g` alone are powers of 1000, as in redis.conf.
fn parse_bytes(value: &str) -> Result<u64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        other => {
            return Err(format!(
                "{value:?}: unknown unit {other:?} (use bytes, or kb, mb, gb as in redis.conf)"
            ));
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?}: expected a size such as 4mb, 512kb or 1048576"))?;
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{value:?}: too large"))
}

/// Where numbers are made durable unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./seqd-data";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "seqd",
    version,
    about = "A sequence-number server: unique, increasing 64-bit numbers over TCP.",
    long_about = "seqd hands out unique, strictly increasing 64-bit numbers to many clients over \
TCP, one at a time or in contiguous ranges, from one pinned io_uring event loop per core.

One port speaks two protocols, chosen from the first byte a client sends:
  text    GETSEQ, GETSEQ_BATCH n, CURRENT, PING, QUIT, each with an optional sequence name;
          inline lines (telnet, nc) or RESP arrays (redis-cli, redis-benchmark); and seed
          000's range leases: GET_SEQUENCE_RANGE n [client-id request-id] -> start,end, then
          ACK start,end
  binary  fixed 16-byte frames for the fast path (see docs/PROTOCOL.md, or seqd::client)
With --stream-port, seed 003's stream protocol (CON/NUM/ACK/CHK, resumable by client id) is
served on a port of its own; the seqd-stream command is its client.

Numbers are durable: each one is issued below a ceiling already on disk in --data-dir, so no
number is ever issued twice, across kill -9 and power loss too. A clean shutdown (SIGINT,
SIGTERM) continues with no gap; a crash skips at most --max-crash-gap numbers per sequence.

Try it:
  seqd &
  echo GETSEQ | nc -N 127.0.0.1 10001        # :1
  redis-cli -p 10001 GETSEQ_BATCH 100       # 1) (integer) 2  2) (integer) 101",
    after_help = "Logs go to standard error; set the level with --log-level or SEQD_LOG \
(e.g. `--log-level debug`, or per module: `--log-level seqd::server=debug`)."
)]
pub struct Config {
    /// Read settings from this TOML file: each key is a flag without its dashes
    /// (`max-connections = 500`, `in-memory = true`); the command line and the environment
    /// override it; a key that is no flag is an error.
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,

    /// Interface to listen on (IPv4 or IPv6 address, or a host name).
    #[arg(long, default_value = "0.0.0.0", env = "SEQD_HOST")]
    pub host: String,

    /// TCP port to listen on. 0 picks a free port (it is logged); with --tls-port, 0 serves
    /// no plaintext port at all: TLS only, as Redis's `port 0`.
    #[arg(long, default_value_t = 10001, env = "SEQD_PORT")]
    pub port: u16,

    /// Also serve the main port's protocols (binary, text, RESP) over TLS on this port, on
    /// --host (Redis's tls-port; `redis-cli --tls`); 0 picks a free port (it is logged).
    /// Needs --tls-cert-file and --tls-key-file. Add --port 0 to serve TLS only.
    #[arg(
        long,
        value_name = "PORT",
        requires_all = ["tls_cert_file", "tls_key_file"]
    )]
    pub tls_port: Option<u16>,

    /// The certificate --tls-port presents (PEM; a chain: the server's certificate first,
    /// then the intermediates).
    #[arg(long, value_name = "PATH", requires = "tls_port")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// The private key of --tls-cert-file (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC). Keep it
    /// readable by seqd alone.
    #[arg(long, value_name = "PATH", requires = "tls_port")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Require every TLS client to present a certificate signed by one of the certificate
    /// authorities in this PEM file (Redis's tls-ca-cert-file with tls-auth-clients yes); a
    /// client without one, or with another, fails the handshake. Without it, any TLS client
    /// is served (the password, if set, still applies).
    #[arg(long, value_name = "PATH", requires = "tls_port")]
    pub tls_ca_cert_file: Option<std::path::PathBuf>,

    /// First number a new sequence issues [default: 1]. Sequences recovered from the data
    /// directory continue where they were; a value below one of them is refused.
    #[arg(long, value_name = "NUMBER")]
    pub initial: Option<u64>,

    /// Directory holding the durable state (created if missing; one seqd at a time).
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "SEQD_DATA_DIR", value_name = "PATH")]
    pub data_dir: std::path::PathBuf,

    /// Keep sequences in memory only: nothing is written, a restart begins again at
    /// --initial. For benchmarks and throwaway use.
    #[arg(long, conflicts_with = "data_dir")]
    pub in_memory: bool,

    /// Most numbers a crash may skip, per sequence: the bound on how far the durable ceiling
    /// runs ahead of the numbers issued. Smaller means more state writes.
    #[arg(long, default_value_t = DEFAULT_MAX_CRASH_GAP, value_name = "N")]
    pub max_crash_gap: u64,

    /// Most client connections served at once; the next one is refused with an error reply.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_connections: usize,

    /// Most sequences (the default one included); clients create them by naming them.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_sequences: u32,

    /// Largest count one GETSEQ_BATCH may ask for.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_batch: u64,

    /// How long a range lease (GET_SEQUENCE_RANGE) may stay unacknowledged before it
    /// expires; also how long a finished lease is remembered for retries and repeated ACKs.
    /// An expired lease is retired: its numbers are never issued again (see --lease-reuse).
    #[arg(
        long,
        default_value = "30s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub lease_timeout: Duration,

    /// Return the numbers of leases that expired unacknowledged to a pool, and hand them out
    /// again, instead of retiring them: fewer gaps, but UNSAFE when a client may use numbers
    /// before its ACK is answered (the seed's client stores them first): two clients may then
    /// hold the same number. Leases from the pool are also lower than numbers issued before.
    #[arg(long)]
    pub lease_reuse: bool,

    /// Most unacknowledged leases one client id may hold.
    #[arg(long, default_value_t = crate::lease::DEFAULT_MAX_PER_CLIENT, value_name = "N")]
    pub max_leases_per_client: u32,

    /// Most leases the server remembers at once (unacknowledged ones, and finished ones kept
    /// for retries); the state file, rewritten at each journal compaction, grows with this.
    #[arg(long, default_value_t = crate::lease::DEFAULT_MAX_TRACKED, value_name = "N")]
    pub max_leases: usize,

    /// Most unacknowledged leases one peer (client IP address, plaintext and TLS together)
    /// may hold, whatever client ids it uses; beyond, GET_SEQUENCE_RANGE is refused with
    /// -LIMIT. The default, a quarter of --max-leases, means no single host can fill the
    /// table and lock others out. Clients behind one address (NAT, a proxy) share it: raise
    /// it for them, or 0 for no per-address bound [default: --max-leases / 4]
    #[arg(long, value_name = "N")]
    pub max_leases_per_peer: Option<usize>,

    /// Serve the stream protocol of seed 003 (CON/NUM/ACK/CHK, resumable by client id) on
    /// this TCP port, on --host; 0 picks a free port (it is logged). Off unless given.
    #[arg(long, value_name = "PORT")]
    pub stream_port: Option<u16>,

    /// Time between two sends of a stream (the seed's "server tick" was one second).
    #[arg(
        long,
        default_value = "1ms",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub stream_interval: Duration,

    /// Messages a stream sends at each --stream-interval.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub stream_burst: u32,

    /// A stream whose client is not heard from (no CON, no ACK) for this long is forgotten;
    /// its numbers are never issued again.
    #[arg(
        long,
        default_value = "10m",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub stream_ttl: Duration,

    /// Most connections to --stream-port at once, a budget of its own: stream connections
    /// never take the main port's places (--max-connections), nor the reverse. The next one
    /// is closed at once (the stream protocol has no error reply).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_stream_connections: usize,

    /// Most streams at once (finished streams do not count).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_streams: usize,

    /// Most streams one peer (client IP address) may hold at once, whatever client ids it
    /// uses; its next new stream's CON is refused (the connection closed, with a log line).
    /// The default, a quarter of --max-streams, means no single host can fill the table and
    /// lock others out for --stream-ttl. Clients behind one address (NAT, a proxy) share it:
    /// raise it for them, or 0 for no per-address bound [default: --max-streams / 4]
    #[arg(long, value_name = "N")]
    pub max_streams_per_peer: Option<usize>,

    /// Largest n a stream's CON may ask for.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_stream_numbers: u32,

    /// The sequence stream numbers come from (created if missing). Its numbers must fit 32
    /// bits, the protocol's size: a CON whose numbers would not is refused.
    #[arg(long, default_value = "stream", value_name = "NAME")]
    pub stream_sequence: String,

    /// Event loops to run [default: one per CPU this process may use; see `taskset`].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Pin each event loop to its own CPU (the default).
    #[arg(long, overrides_with = "no_pin")]
    pub pin: bool,

    /// Let the scheduler move event loops between CPUs.
    #[arg(long, overrides_with = "pin")]
    pub no_pin: bool,

    /// After handling traffic, how many microseconds an event loop keeps watching for more
    /// before it sleeps, or auto. Spinning spares the wake-up a sleeping thread needs (tens
    /// of microseconds on virtual machines: one client doing one request at a time got 25-40%
    /// more answers per second, measured) at the price of CPU while traffic is sparse; 0 sleeps
    /// at once (for hosts shared with other work). auto is 50, except while seqd's cgroup has a
    /// CPU quota (systemd CPUQuota=, docker --cpus, a Kubernetes CPU limit; checked every
    /// second): the spinning would be charged to the quota and the loop throttled while
    /// requests wait, so it sleeps at once. An idle server sleeps either way. With `--io
    /// epoll` the loop spins on epoll_wait with a zero timeout instead.
    #[arg(long, default_value = "auto", value_name = "MICROSECONDS|auto")]
    pub busy_poll: BusyPoll,

    /// The I/O backend. io_uring serves the most requests per core: a whole turn's receives
    /// and sends cost one system call. epoll needs one per read and per write, so it serves
    /// fewer per core and spends more CPU per request, but runs where io_uring is blocked
    /// (Docker's and containerd's default seccomp profiles, kernel.io_uring_disabled, gVisor,
    /// kernels before 6.0). auto takes io_uring when this process can use it, and otherwise
    /// serves with epoll after one warning that names the cause; uring refuses to start
    /// without it.
    #[arg(long, value_enum, default_value_t = IoChoice::Auto, value_name = "BACKEND")]
    pub io: IoChoice,

    /// Cluster mode: the etcd endpoints (comma-separated URLs, e.g.
    /// http://h1:2379,http://h2:2379). The node campaigns for leadership and serves only
    /// while it leads; ceilings live in etcd and no data directory is used (docs/HA.md).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URLS",
        conflicts_with_all = ["in_memory", "data_dir"],
        requires_all = ["node_id", "advertise"]
    )]
    pub etcd: Vec<String>,

    /// Cluster mode: this node's id (unique in the cluster; logged and in the leader key).
    #[arg(long, value_name = "N", requires = "etcd")]
    pub node_id: Option<u64>,

    /// Cluster mode: the address clients reach this node at (host:port), published in the
    /// leader key while it leads.
    #[arg(long, value_name = "HOST:PORT", requires = "etcd")]
    pub advertise: Option<String>,

    /// Cluster mode: the etcd key prefix of this cluster (several clusters may share an etcd).
    #[arg(long, default_value = "/seqd", value_name = "PREFIX")]
    pub etcd_prefix: String,

    /// Cluster mode: TTL of the leader's lease, in whole seconds. A crashed leader is
    /// replaced after about this long (plus up to 0.5 s, etcd's expiry check); the leader
    /// renews every third of it and stops issuing a quarter of it before its lease could have
    /// expired. etcd raises a TTL below 1.5 x its --election-timeout to that minimum: the
    /// default 1s needs etcd run with --heartbeat-interval=50 --election-timeout=500
    /// (docs/HA.md); with etcd's defaults it becomes 2 s.
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub leader_ttl: Duration,

    /// Require clients to authenticate with this password first (Redis's `AUTH password`,
    /// `AUTH default password`, `HELLO 3 AUTH default password`; the binary protocol's AUTH
    /// frame). Never logged, but visible to local users in the process list: prefer
    /// --password-file.
    #[arg(
        long,
        value_name = "PASSWORD",
        value_parser = parse_password,
        conflicts_with = "password_file"
    )]
    pub requirepass: Option<Password>,

    /// Read the password of --requirepass from this file (its first line; a trailing newline
    /// is not part of it). How secrets reach services: systemd credentials, Kubernetes secrets.
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<std::path::PathBuf>,

    /// Serve --stream-port on a non-loopback --host although a password is set. The stream
    /// protocol has no credentials: with a password, seqd refuses to start a stream port that
    /// other hosts can reach unless this says the network in front of it is trusted.
    #[arg(long, requires = "stream_port")]
    pub stream_port_insecure: bool,

    /// Serve Prometheus metrics (text exposition, GET /metrics) on this address, e.g.
    /// 127.0.0.1:9121, from a thread of its own. Off unless given. It has no password: bind it
    /// where only the scraper reaches it.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Close a main-port connection after it sent nothing for this many seconds (Redis's
    /// `timeout`); 0 never closes idle connections. Checked about once a second.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub timeout: u64,

    /// Close a client whose queued replies hold this much memory (Redis's
    /// client-output-buffer-limit), logged with its address. A client that sends without
    /// reading is paused before this (its requests no longer decoded, its input no longer
    /// read once 128kb of replies waits, until it has read them), so the limit closes only
    /// what one request or one receive produces past the pause; a limit below 128kb closes
    /// such clients instead of pausing them. 0: no limit (paused clients stay paused).
    /// Units as in redis.conf: 512kb, 4mb, 1gb.
    #[arg(long, default_value = "4mb", value_parser = parse_bytes, value_name = "BYTES")]
    pub client_output_limit: u64,

    /// The memory all clients' queued replies hold together (Redis 7's maxmemory-clients):
    /// once over it, the clients holding the most are closed (and logged) until the total is
    /// under it again. 0: no cap (each client is still bounded by the pause and
    /// --client-output-limit).
    #[arg(long, default_value = "256mb", value_parser = parse_bytes, value_name = "BYTES")]
    pub maxmemory_clients: u64,

    /// Redis's protected mode: while no password is set and --host is not a loopback address,
    /// clients from other hosts are answered `-DENIED ...` (why, and the fixes) and closed;
    /// clients on this host are served. `no` serves everyone who can reach the port.
    #[arg(
        long,
        default_value = "yes",
        action = clap::ArgAction::Set,
        value_parser = parse_yes_no,
        value_name = "yes|no"
    )]
    pub protected_mode: bool,

    /// Log filter: error, warn, info, debug or trace, or per-module directives.
    #[arg(long, default_value = "info", env = "SEQD_LOG", value_name = "FILTER")]
    pub log_level: String,
}

impl Config {
    /// Checks values clap cannot check alone.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.initial() > MAX_VALUE {
            bail!(
                "--initial={} is above the largest number seqd issues ({MAX_VALUE})",
                self.initial()
            );
        }
        if self.max_crash_gap == 0 {
            bail!("--max-crash-gap must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > u64::from(u32::MAX) {
            bail!("--max-batch must be between 1 and {}", u32::MAX);
        }
        if self.max_sequences == 0 || self.max_sequences > 1_000_000 {
            bail!("--max-sequences must be between 1 and 1000000");
        }
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.lease_timeout < Duration::from_millis(1)
            || self.lease_timeout > Duration::from_secs(30 * 24 * 3600)
        {
            bail!("--lease-timeout must be between 1ms and 30 days");
        }
        if self.max_leases_per_client == 0 || self.max_leases == 0 {
            bail!("--max-leases-per-client and --max-leases must be at least 1");
        }
        if self.max_leases > 10_000_000 {
            bail!("--max-leases must be at most 10000000");
        }
        if self.stream_interval < Duration::from_micros(100)
            || self.stream_interval > Duration::from_secs(3600)
        {
            bail!("--stream-interval must be between 100us and 1h");
        }
        if self.stream_burst == 0 || self.stream_burst > 65_536 {
            bail!("--stream-burst must be between 1 and 65536");
        }
        if self.stream_ttl < Duration::from_millis(100) {
            bail!("--stream-ttl must be at least 100ms");
        }
        if self.max_stream_connections == 0 {
            bail!("--max-stream-connections must be at least 1");
        }
        if self.max_streams == 0 || self.max_streams > 1_000_000 {
            bail!("--max-streams must be between 1 and 1000000");
        }
        if self.max_stream_numbers == 0 || self.max_stream_numbers > 100_000_000 {
            bail!("--max-stream-numbers must be between 1 and 100000000");
        }
        crate::sequence::validate_name(self.stream_sequence.as_bytes())
            .map_err(|e| anyhow::anyhow!("--stream-sequence: {e}"))?;
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if self.client_output_limit != 0 && self.client_output_limit < 64 << 10 {
            bail!(
                "--client-output-limit {} is below 64kb: replies to one receive of pipelined \
                 requests can be that large, so every pipelining client would be closed. Use \
                 64kb or more, or 0 to hold non-reading clients instead",
                self.client_output_limit
            );
        }
        if self.maxmemory_clients != 0 && self.maxmemory_clients < 1 << 20 {
            bail!(
                "--maxmemory-clients {} is below 1mb; use 1mb or more, or 0 for no cap",
                self.maxmemory_clients
            );
        }
        if self.timeout > 365 * 24 * 3600 {
            bail!("--timeout must be at most a year (31536000 seconds); 0 is off");
        }
        let has_password = self.requirepass.is_some() || self.password_file.is_some();
        if has_password && self.stream_port.is_some() && !self.stream_port_insecure {
            let addr = self.listen_addr()?;
            if !addr.ip().is_loopback() {
                bail!(
                    "--stream-port on {} with a password set: the stream protocol has no \
                     credentials, so anyone who reaches the port could take numbers. Bind \
                     --host to a loopback address (127.0.0.1, ::1), or pass \
                     --stream-port-insecure if the network in front of it is trusted",
                    addr.ip()
                );
            }
        }
        Ok(())
    }

    /// Whether the plaintext main port is served: always, but with --tls-port and --port 0.
    pub fn serves_plaintext(&self) -> bool {
        !(self.port == 0 && self.tls_port.is_some())
    }

    /// The TLS port's address and configuration, its files read and checked (None: no
    /// --tls-port).
    pub fn tls_port(&self, host: std::net::IpAddr) -> anyhow::Result<Option<TlsPort>> {
        let (Some(port), Some(certificate), Some(key)) =
            (self.tls_port, &self.tls_cert_file, &self.tls_key_file)
        else {
            return Ok(None);
        };
        let ca = self.tls_ca_cert_file.as_deref();
        let config = crate::server::tls::server_config(certificate, key, ca).map_err(|e| {
            let flag = if e.path() == certificate.as_path() {
                "--tls-cert-file"
            } else if e.path() == key.as_path() {
                "--tls-key-file"
            } else {
                "--tls-ca-cert-file"
            };
            anyhow::anyhow!("cannot serve --tls-port: {flag}: {e}")
        })?;
        Ok(Some(TlsPort {
            addr: SocketAddr::new(host, port),
            config,
        }))
    }

    /// The password clients must give: --requirepass, or the first line of --password-file.
    pub fn password(&self) -> anyhow::Result<Option<Password>> {
        if let Some(password) = &self.requirepass {
            return Ok(Some(password.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let contents = std::fs::read(path)
            .with_context(|| format!("--password-file: cannot read {}", path.display()))?;
        let line = contents.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match Password::new(line) {
            Some(password) => Ok(Some(password)),
            None => bail!("--password-file: {} holds no password", path.display()),
        }
    }

    pub fn pin(&self) -> bool {
        !self.no_pin
    }

    /// Cluster mode's settings (None: a single node, as without --etcd).
    pub fn cluster(&self) -> anyhow::Result<Option<crate::cluster::ClusterSettings>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let timing = crate::cluster::timing::LeaseTiming::for_ttl(self.leader_ttl)?;
        if let Some(bad) = self
            .etcd
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            bail!("--etcd: {bad:?} is not an http:// or https:// URL");
        }
        let prefix = self.etcd_prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 {
            bail!(
                "--etcd-prefix must start with / and name something, got {:?}",
                self.etcd_prefix
            );
        }
        let (Some(node_id), Some(advertise)) = (self.node_id, self.advertise.clone()) else {
            bail!("--etcd needs --node-id and --advertise");
        };
        if advertise.contains(char::is_whitespace) || !advertise.contains(':') {
            bail!("--advertise must be host:port, got {advertise:?}");
        }
        Ok(Some(crate::cluster::ClusterSettings {
            endpoints: self.etcd.clone(),
            prefix: prefix.to_owned(),
            node_id,
            advertise,
            timing,
        }))
    }

    /// What the lease table enforces.
    pub fn lease_settings(&self) -> crate::lease::LeaseSettings {
        crate::lease::LeaseSettings {
            timeout: self.lease_timeout,
            max_size: self.max_batch,
            max_per_client: self.max_leases_per_client,
            max_tracked: self.max_leases,
            max_per_peer: self
                .max_leases_per_peer
                .unwrap_or_else(|| crate::lease::default_per_peer(self.max_leases)),
            reuse: self.lease_reuse,
        }
    }

    /// How the stream protocol is served.
    pub fn stream_settings(&self) -> crate::service::stream_hub::StreamSettings {
        crate::service::stream_hub::StreamSettings {
            interval: self.stream_interval,
            burst: self.stream_burst,
            ttl: self.stream_ttl,
            max_streams: self.max_streams,
            max_per_peer: self
                .max_streams_per_peer
                .unwrap_or_else(|| crate::lease::default_per_peer(self.max_streams)),
            max_count: self.max_stream_numbers,
            sequence: self.stream_sequence.clone(),
        }
    }

    /// Where new sequences begin.
    pub fn initial(&self) -> u64 {
        self.initial.unwrap_or(1)
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        // A bare IPv6 address needs brackets to be joined with a port.
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (host, self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve --host={}", self.host))?
            .next()
            .with_context(|| format!("--host={} resolves to no address", self.host))
    }
}

impl Config {
    /// `--client-output-limit` and `--maxmemory-clients` for the server (0 is none).
    pub fn output_limits(&self) -> crate::server::OutputLimits {
        let bytes = |n: u64| (n > 0).then(|| usize::try_from(n).unwrap_or(usize::MAX));
        crate::server::OutputLimits {
            per_connection: bytes(self.client_output_limit),
            total: bytes(self.maxmemory_clients),
        }
    }

    /// How much unsent output a session accumulates before it stops decoding (and the
    /// backend stops reading it), with or without a per-connection limit: the limit closes
    /// only what gets past the pause.
    pub fn held_output(&self) -> usize {
        crate::service::OUTPUT_HIGH_WATER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("seqd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cluster_flags_make_cluster_settings() {
        assert_eq!(parse(&[]).cluster().unwrap(), None);
        let c = parse(&[
            "--etcd",
            "http://127.0.0.1:2379,http://127.0.0.1:2380",
            "--node-id",
            "2",
            "--advertise",
            "10.0.0.2:10001",
            "--etcd-prefix",
            "/orders/",
            "--leader-ttl",
            "3s",
        ])
        .cluster()
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!((c.node_id, c.prefix.as_str()), (2, "/orders"));
        assert_eq!(c.timing.ttl, Duration::from_secs(3));
        let default = parse(&["--etcd=http://h:2379", "--node-id=1", "--advertise=h:1"]);
        assert_eq!(
            default.cluster().unwrap().unwrap().timing.ttl,
            crate::cluster::timing::DEFAULT_TTL
        );
    }

    #[test]
    fn bad_cluster_flags_are_refused() {
        let with = |extra: &[&str]| {
            let mut args = vec!["--etcd=http://h:2379", "--node-id=1", "--advertise=h:1"];
            args.extend_from_slice(extra);
            parse(&args).cluster()
        };
        assert!(with(&["--leader-ttl=1500ms"]).is_err());
        assert!(with(&["--leader-ttl=0s"]).is_err());
        assert!(with(&["--etcd-prefix=seqd"]).is_err());
        assert!(
            parse(&["--etcd=h:2379", "--node-id=1", "--advertise=h:1"])
                .cluster()
                .is_err()
        );
        let missing = Config::try_parse_from(["seqd", "--etcd=http://h:2379", "--node-id=1"]);
        assert!(missing.is_err(), "--advertise is required with --etcd");
        let both = Config::try_parse_from([
            "seqd",
            "--etcd=http://h:2379",
            "--node-id=1",
            "--advertise=h:1",
            "--data-dir=/tmp/x",
        ]);
        assert!(both.is_err(), "cluster mode keeps no data directory");
    }

    #[test]
    fn original_flags_in_their_own_syntax() {
        let c = parse(&[
            "--initial=1000000",
            "--port=10002",
            "--host=0.0.0.0",
            "--max-connections=5",
        ]);
        assert_eq!(
            (c.initial(), c.port, c.host.as_str(), c.max_connections),
            (1_000_000, 10002, "0.0.0.0", 5)
        );
        c.validate().unwrap();
    }

    #[test]
    fn defaults_follow_the_original_server() {
        let c = parse(&[]);
        assert_eq!(
            (c.initial(), c.port, c.host.as_str(), c.max_connections),
            (1, 10001, "0.0.0.0", 1000)
        );
        assert_eq!(
            c.initial, None,
            "not given: not checked against recovered state"
        );
        assert!(c.pin());
        assert!(!parse(&["--no-pin"]).pin());
        assert!(parse(&["--no-pin", "--pin"]).pin());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = parse(&["--initial=9223372036854775807"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--initial"));
        assert!(
            parse(&["--max-batch=0"])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--max-batch")
        );
        assert!(Config::try_parse_from(["seqd", "--port=70000"]).is_err());
    }

    #[test]
    fn durability_flags() {
        let c = parse(&[]);
        assert_eq!(c.data_dir, std::path::Path::new(DEFAULT_DATA_DIR));
        assert!(!c.in_memory);
        assert_eq!(c.max_crash_gap, DEFAULT_MAX_CRASH_GAP);
        let c = parse(&["--data-dir=/var/lib/seqd", "--max-crash-gap=10"]);
        assert_eq!(
            (c.data_dir.to_str(), c.max_crash_gap),
            (Some("/var/lib/seqd"), 10)
        );
        assert!(parse(&["--in-memory"]).in_memory);
        assert!(Config::try_parse_from(["seqd", "--in-memory", "--data-dir=x"]).is_err());
        let err = parse(&["--max-crash-gap=0"]).validate().unwrap_err();
        assert!(err.to_string().contains("--max-crash-gap"));
    }

    #[test]
    fn lease_flags() {
        let c = parse(&[]);
        assert_eq!(c.lease_timeout, crate::lease::DEFAULT_TIMEOUT);
        assert!(!c.lease_reuse);
        let c = parse(&["--lease-timeout=250ms", "--lease-reuse", "--max-leases=5"]);
        let settings = c.lease_settings();
        assert_eq!(settings.timeout, Duration::from_millis(250));
        assert!(settings.reuse);
        assert_eq!(settings.max_tracked, 5);
        assert_eq!(
            settings.max_size, 1_000_000,
            "leases are capped like batches"
        );
        assert!(Config::try_parse_from(["seqd", "--lease-timeout=soon"]).is_err());
        let err = parse(&["--lease-timeout=0s"]).validate().unwrap_err();
        assert!(err.to_string().contains("--lease-timeout"));
    }

    #[test]
    fn per_peer_bounds_default_to_a_quarter_of_the_table_and_zero_is_none() {
        let c = parse(&[]);
        assert_eq!(c.lease_settings().max_per_peer, 2_500);
        assert_eq!(c.stream_settings().max_per_peer, 256);
        let c = parse(&["--max-leases=100", "--max-streams=10"]);
        assert_eq!(c.lease_settings().max_per_peer, 25);
        assert_eq!(c.stream_settings().max_per_peer, 3);
        let c = parse(&["--max-leases-per-peer=0", "--max-streams-per-peer=7"]);
        c.validate().unwrap();
        assert_eq!(c.lease_settings().max_per_peer, 0);
        assert_eq!(c.stream_settings().max_per_peer, 7);
    }

    #[test]
    fn stream_flags() {
        let c = parse(&[]);
        assert_eq!(c.stream_port, None, "off unless asked for");
        let s = c.stream_settings();
        assert_eq!(
            (
                s.interval,
                s.burst,
                s.ttl,
                s.max_streams,
                s.max_count,
                s.sequence.as_str()
            ),
            (
                Duration::from_millis(1),
                64,
                Duration::from_secs(600),
                1024,
                100_000,
                "stream"
            )
        );
        let c = parse(&[
            "--stream-port=9000",
            "--stream-interval=1s",
            "--stream-burst=1",
        ]);
        assert_eq!(c.stream_port, Some(9000));
        c.validate().unwrap();
        assert!(parse(&["--stream-burst=0"]).validate().is_err());
        let err = parse(&["--stream-sequence=a b"]).validate().unwrap_err();
        assert!(err.to_string().contains("--stream-sequence"));
    }

    #[test]
    fn ipv6_hosts() {
        let c = parse(&["--host=::1", "--port=5"]);
        assert_eq!(c.listen_addr().unwrap(), "[::1]:5".parse().unwrap());
        let c = parse(&["--host=[::1]", "--port=5"]);
        assert_eq!(c.listen_addr().unwrap(), "[::1]:5".parse().unwrap());
    }

    #[test]
    fn output_limits_take_redis_units_and_zero_is_none() {
        assert_eq!(parse_bytes("4mb"), Ok(4 << 20));
        assert_eq!(parse_bytes("512KB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1g"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert!(parse_bytes("4mib").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("mb").is_err());
        let c = parse(&[]);
        assert_eq!(c.output_limits().per_connection, Some(4 << 20));
        assert_eq!(c.output_limits().total, Some(256 << 20));
        assert_eq!(
            c.held_output(),
            crate::service::OUTPUT_HIGH_WATER,
            "paused before the limit closes"
        );
        let c = parse(&["--client-output-limit=0", "--maxmemory-clients=0"]);
        assert_eq!(c.output_limits().per_connection, None);
        assert_eq!(c.output_limits().total, None);
        assert_eq!(c.held_output(), crate::service::OUTPUT_HIGH_WATER);
        c.validate().unwrap();
        let err = parse(&["--client-output-limit=1kb"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("64kb"), "{err}");
    }
}
