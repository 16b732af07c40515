//! `loadgen`: seqd's load generator. See `loadgen --help` and README.md.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::report::{Machine, RunReport, with_extension, write_files, write_json};
use loadgen::run::{RunSpec, execute, parse_cpus, preflight};
use loadgen::search::{self, Ramp, SearchReport, SearchSettings};
use loadgen::slo::{Slo, parse_duration};
use loadgen::target::{Kind, Protocol};
use loadgen::{baseline, hold, inprocess, merge, plot, verify, zero_work};

/// Exit statuses, documented in `--help`.
mod exit {
    pub const FAILED: u8 = 1;
    pub const UNTRUSTWORTHY: u8 = 3;
    pub const VERIFY_FAILED: u8 = 4;
    pub const SLO_NOT_MET: u8 = 5;
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "seqd's load generator: closed and open loop, coordinated-omission-corrected \
             HDR latency, capacity search, verification.",
    long_about = "seqd's load generator. Drives seqd (binary or text protocol) or Redis INCR over \
many non-blocking connections from a few pinned threads, and reports throughput, latency \
percentiles (HdrHistogram), errors and its own CPU use.

  loadgen run --target binary --addr 127.0.0.1:10001 -c 50 -P 64 -d 10s
  loadgen run --target redis --addr 127.0.0.1:6379 --rate 100000 -d 10s -o results/redis
  loadgen run --target binary --slo 'p99<=1ms'
  loadgen in-process --threads 1 --batch 1
  loadgen plot -o latency.svg results/seqd.json results/redis.json",
    after_help = "Exit status: 0 ok; 1 the run could not be made (bad arguments, nothing \
listening, a file that cannot be written); 2 command-line usage error; 3 the run finished but \
errors make its figures untrustworthy; 4 verification found repeated or out-of-order numbers; \
5 the capacity search found no rate meeting the objective."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a server: closed loop, open loop (--rate), capacity search (--slo) or ramp.
    Run(Box<RunArgs>),
    /// Measure seqd's sequence allocator in this process, without the network.
    InProcess(InProcessArgs),
    /// Check verify files written by `run --verify-file`: every number unique, each
    /// connection increasing. Several files (e.g. before and after a restart) are checked
    /// together.
    Verify(VerifyArgs),
    /// Plot latency by percentile from several results (JSON or .hgrm), overlaid, as SVG.
    Plot(PlotArgs),
    /// Merge the interval logs (.hlog) of several `loadgen run` processes that drove one
    /// server together (on one machine or several) into one result: the latency histograms
    /// summed (never percentiles averaged), the rate summed over the window every process was
    /// measuring. Writes PREFIX.json, PREFIX.hgrm and PREFIX.svg.
    Merge(MergeArgs),
    /// The naive baseline server for benchmarks: blocking, one thread per connection, seqd's
    /// binary protocol, a separate counter per connection (no shared state). It marks what
    /// loopback TCP allows; runs until killed.
    BaselineServer(ListenArgs),
    /// The limit rival for benchmarks: a zero-work io_uring responder (one thread, multishot
    /// recv into a provided buffer ring) that answers each 16-byte binary GETSEQ request with
    /// a number from one counter and does nothing else; any other frame gets an error and the
    /// connection is closed. It marks what an io_uring server with no work achieves; runs
    /// until killed.
    ZeroWorkServer(ZeroWorkArgs),
    /// Open many connections and hold them idle (to measure a server's memory per idle
    /// connection): prints `connected N`; on SIGUSR1 sends one request on each and prints
    /// `answered N`; exits on SIGINT/SIGTERM.
    Hold(HoldArgs),
    /// Blocking clients that follow a seqd cluster's leader ask for numbers until the
    /// duration passes or SIGTERM/SIGINT; prints a JSON report: numbers, duplicates (must be
    /// 0), redirects, and every pause in the replies (bench/failover.sh matches them to the
    /// failovers it caused). Exit 4 if a number repeated or went back.
    Failover(FailoverArgs),
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// Every node of the cluster, comma-separated host:port.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// Client threads (one connection each).
    #[arg(short = 'c', long, default_value_t = 4)]
    clients: usize,
    /// Longest run (SIGTERM/SIGINT ends it earlier).
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "600m")]
    duration: Duration,
    /// Pauses in the replies at least this long are reported.
    #[arg(long, value_parser = parse_duration, default_value = "2ms")]
    min_gap: Duration,
    /// Write the report here (JSON) instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// The listening address of `baseline-server` and `zero-work-server`.
#[derive(Debug, Args)]
struct ListenArgs {
    /// Address to listen on; port 0 picks a free one. The address is printed as
    /// `baseline listening on HOST:PORT` (`zero-work listening on ...`) on standard error.
    #[arg(
        long,
        short = 'a',
        default_value = "127.0.0.1:0",
        value_name = "HOST:PORT"
    )]
    addr: String,
}

#[derive(Debug, Args)]
struct ZeroWorkArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// After handling completions, how many microseconds to keep watching for more before
    /// sleeping, or auto: the same choice as seqd's `--busy-poll` (and its default, which
    /// does not spin while the process's cgroup has a CPU quota), so the limit rival does not
    /// pay wake-ups seqd does not pay, nor spend a budget seqd does not spend. 0 sleeps at once.
    #[arg(long, default_value = "auto", value_name = "MICROSECONDS|auto")]
    busy_poll: seqd::server::BusyPoll,
}

#[derive(Debug, Args)]
struct HoldArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 10_000, value_name = "N")]
    connections: usize,
    /// How long to wait for each connection to open, and for each reply.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

/// Which server to talk to, and how; shared by `run` and `hold`.
#[derive(Debug, Args)]
struct ServerArgs {
    /// What to drive: seqd's binary protocol, seqd's text protocol as RESP arrays or inline
    /// lines, or Redis INCR.
    #[arg(long, value_enum, default_value = "binary")]
    target: Kind,

    /// Server address, host:port (IPv4, [IPv6] or a host name). `run` takes several,
    /// comma-separated: the nodes of a seqd cluster, whose leader every connection follows
    /// (NOTLEADER redirects, dropped connections; counted as redirects and reconnects).
    #[arg(
        long,
        short = 'a',
        default_value = "127.0.0.1:10001",
        value_name = "HOST:PORT"
    )]
    addr: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Sequence to draw from (seqd: opened by name; Redis: the key) [default: seqd's
    /// default sequence; Redis key loadgen:seq].
    #[arg(long, value_name = "NAME")]
    sequence: Option<String>,

    /// Numbers per request: GETSEQ_BATCH n (seqd) or INCRBY key n (Redis) when above 1.
    #[arg(long, default_value_t = 1, value_name = "N")]
    batch: u64,

    /// Connections in all, spread over the threads.
    #[arg(long, short = 'c', default_value_t = 50, value_name = "N")]
    connections: usize,

    /// Requests in flight per connection. Closed loop: kept topped up. Open loop: the most
    /// allowed; a due request waits (and that wait counts in its latency).
    #[arg(long, short = 'P', default_value_t = 1, value_name = "N")]
    pipeline: usize,

    /// Load-generating threads, each running its own epoll loop over its connections.
    #[arg(long, short = 't', default_value_t = 1, value_name = "N")]
    threads: usize,

    /// CPUs to pin the threads to, round-robin: `1`, `0,2`, `2-5` [default: the CPUs this
    /// process may run on (see taskset), highest-numbered first, since seqd pins its event
    /// loops from CPU 0 up].
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,

    /// Do not pin threads to CPUs.
    #[arg(long, conflicts_with = "cpus")]
    no_pin: bool,

    /// How long to measure, after the warm-up: 10s, 500ms, 2m.
    #[arg(long, short = 'd', value_name = "DURATION", value_parser = parse_duration,
          conflicts_with = "requests")]
    duration: Option<Duration>,

    /// Measure exactly this many requests (after the warm-up), instead of a duration.
    #[arg(long, short = 'n', value_name = "N")]
    requests: Option<u64>,

    /// Load applied before measuring, then discarded.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    warmup: Duration,

    /// Open loop: total requests per second over all connections, each request sent at its
    /// planned time; latency is measured from that time (coordinated-omission corrected) and
    /// the service time from the actual send is reported beside it.
    #[arg(long, short = 'R', value_name = "REQ/S", conflicts_with = "requests")]
    rate: Option<f64>,

    /// Open loop: sleep at least this long between sends; requests that fall due meanwhile go
    /// out together, up to this late, and their latency (from the planned time) includes it.
    /// Lets one thread keep rates of millions per second that one wake-up per request cannot
    /// (0: wake up for each request's planned time).
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = parse_duration)]
    send_granularity: Duration,

    /// Start at this wall-clock time (the warm-up begins then, once connected), so that runs
    /// in several processes or on several machines line up for `loadgen merge`: Unix
    /// milliseconds (1764684000000) or RFC 3339 in UTC (2026-12-02T14:00:00Z). Give every
    /// process the same time, --warmup and --duration; keep the machines' clocks in sync (NTP).
    #[arg(long, value_name = "TIME", value_parser = parse_start_at,
          conflicts_with_all = ["slo", "ramp"])]
    start_at: Option<SystemTime>,

    /// Capacity search: find the highest open-loop rate meeting this objective with no
    /// errors and >= 95% of the planned rate kept, e.g. 'p99<=1ms' or 'p99<=500us,p99.9<=2ms'.
    #[arg(long, value_name = "OBJECTIVE", conflicts_with_all = ["rate", "requests"])]
    slo: Option<String>,

    /// Length of each probe of the capacity search (the confirmation run lasts --duration).
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration)]
    probe_duration: Duration,

    /// Most probes of the capacity search before it confirms the best rate found.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_probes: usize,

    /// Stepped ramp START:END:STEP:INTERVAL (rates in req/s), one open-loop run and one
    /// result row per step, e.g. 10000:100000:10000:2s. With --slo, each row is judged.
    #[arg(long, value_name = "SPEC", conflicts_with_all = ["rate", "requests"])]
    ramp: Option<String>,

    /// Check every number received: unique across connections, increasing per connection,
    /// batch ranges never overlapping. Exit status 4 on any violation.
    #[arg(long)]
    verify: bool,

    /// Also append the numbers received to this file (implies --verify), to check them
    /// later, across runs and server restarts, with `loadgen verify FILE`.
    #[arg(long, value_name = "PATH")]
    verify_file: Option<PathBuf>,

    #[command(flatten)]
    out: OutputArgs,

    /// How long to wait for replies still in flight once sending has stopped.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Drop a connection (and count an error) when a reply takes longer than this.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    reply_timeout: Duration,

    /// How long to wait for each connection to open.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    tls: loadgen::tls::TlsArgs,
}

#[derive(Debug, Args)]
struct InProcessArgs {
    /// Threads reserving numbers from one shared sequence. One thread reserves as seqd with
    /// one event loop does (a single writer: a load and a store); more, as several loops do
    /// (compare-and-swap).
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Numbers per reservation (1: GETSEQ; more: GETSEQ_BATCH).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    #[arg(long, short = 'd', default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// CPUs to pin the threads to, round-robin [default: the CPUs this process may use,
    /// highest-numbered first].
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

/// Where results go; shared by `run` and `in-process`.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Write PREFIX.json and (`run`) PREFIX.hgrm (latency percentile distribution,
    /// milliseconds), PREFIX.hlog (per-second interval log) and, open loop,
    /// PREFIX.service.hgrm.
    #[arg(long, short = 'o', value_name = "PREFIX")]
    output: Option<PathBuf>,

    /// Name of this run in summaries and plots [default: what was measured, and how].
    #[arg(long)]
    label: Option<String>,

    /// Print the JSON result on standard output instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Files written by `run --verify-file`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// Interval logs written by `loadgen run -o PREFIX` (PREFIX.hlog), one per process.
    #[arg(required = true, value_name = "HLOG")]
    inputs: Vec<PathBuf>,
    /// Write PREFIX.json, PREFIX.hgrm and PREFIX.svg.
    #[arg(long, short = 'o', value_name = "PREFIX", default_value = "merged")]
    output: PathBuf,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// Results to overlay: loadgen JSON results or .hgrm files (milliseconds, as loadgen and
    /// wrk2 write them), each optionally PATH=LABEL.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// The SVG file to write.
    #[arg(long, short = 'o', default_value = "latency.svg")]
    output: PathBuf,
    #[arg(long, default_value = "Latency by percentile")]
    title: String,
    /// Logarithmic latency axis (for curves of very different heights).
    #[arg(long)]
    log_y: bool,
}

fn failover(args: FailoverArgs) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let spec = loadgen::failover::FailoverSpec {
        endpoints: args.addr,
        clients: args.clients.max(1),
        duration: args.duration,
        min_gap: args.min_gap,
    };
    let report = loadgen::failover::run(&spec, stop)?;
    let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
    match &args.output {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    eprintln!(
        "loadgen failover: {} numbers, {} duplicates, {} out of order, {} redirects, {} \
         reconnects, {} failed requests, {} pauses >= {:?}",
        report.numbers,
        report.duplicates,
        report.out_of_order,
        report.redirects,
        report.reconnects,
        report.failed,
        report.gaps.len(),
        spec.min_gap
    );
    Ok(if report.duplicates > 0 || report.out_of_order > 0 {
        exit::VERIFY_FAILED
    } else {
        0
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command: Vec<String> = std::env::args().collect();
    let result = match cli.command {
        Command::Run(args) => run(*args, &command),
        Command::InProcess(args) => in_process(args, &command),
        Command::Verify(args) => verify_files(args),
        Command::Plot(args) => plot_results(args),
        Command::Merge(args) => merge_logs(args),
        Command::BaselineServer(args) => baseline_server(args),
        Command::ZeroWorkServer(args) => zero_work_server(args),
        Command::Hold(args) => hold(args),
        Command::Failover(args) => failover(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve --addr {addr:?}: write HOST:PORT, e.g. 127.0.0.1:10001 or [::1]:6379")
        })?
        .next()
        .with_context(|| format!("--addr {addr:?} resolves to no address"))
}

fn cpus(list: Option<&str>, no_pin: bool) -> Result<Vec<usize>> {
    if no_pin {
        return Ok(Vec::new());
    }
    match list {
        Some(list) => parse_cpus(list),
        // Highest-numbered first: seqd pins its event loops from the lowest CPU up, so on a
        // small machine the two stay apart unless told otherwise.
        None => Ok(core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|c| c.id)
            .collect()),
    }
}

/// Ctrl-C stops the run early; the results so far are still reported.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

fn run(args: RunArgs, command: &[String]) -> Result<u8> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.pipeline == 0 {
        bail!("--pipeline must be at least 1");
    }
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if args.threads > args.connections {
        eprintln!(
            "loadgen: note: {} threads for {} connections; using {} (a thread needs a connection)",
            args.threads, args.connections, args.connections
        );
    }
    // Parse everything the user typed before touching the network.
    let slo = args.slo.as_deref().map(Slo::parse).transpose()?;
    let ramp = args.ramp.as_deref().map(Ramp::parse).transpose()?;
    let cluster = args
        .server
        .addr
        .split(',')
        .map(|a| resolve(a.trim()))
        .collect::<Result<Vec<_>>>()?;
    let addr = cluster[0];
    let connect_timeout = args.connect_timeout.max(Duration::from_millis(1));
    preflight(&cluster, connect_timeout)?;
    // Every node's certificate must name the host of the first address (or use --tls-insecure).
    let first_host = args
        .server
        .addr
        .split(',')
        .next()
        .unwrap_or_default()
        .trim();
    let tls = args.tls.target(loadgen::tls::host_of(first_host))?;
    let sequence_id = match (&args.sequence, args.server.target) {
        (Some(name), Kind::Binary) => {
            let client = match &tls {
                None => seqd::client::Client::connect(addr),
                Some(tls) => seqd::client::Client::connect_tls(
                    addr,
                    tls.config.clone(),
                    &tls.server_name.to_str(),
                ),
            };
            let mut client =
                client.with_context(|| format!("cannot connect to {addr} to OPEN {name:?}"))?;
            client.set_timeout(Some(connect_timeout.max(Duration::from_secs(1))))?;
            client
                .open(name)
                .with_context(|| format!("cannot OPEN sequence {name:?} on {addr}"))?
        }
        _ => 0,
    };
    let protocol = Protocol::new(
        args.server.target,
        args.batch,
        args.sequence.as_deref(),
        sequence_id,
    )?;
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    if duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be longer than 0");
    }
    let spec = RunSpec {
        addr,
        cluster: if cluster.len() > 1 {
            cluster
        } else {
            Vec::new()
        },
        protocol,
        connections: args.connections,
        pipeline: args.pipeline,
        threads: args.threads,
        cpus: cpus(args.cpus.as_deref(), args.no_pin)?,
        rate: args.rate,
        duration,
        requests: args.requests,
        warmup: args.warmup,
        drain_timeout: args.drain_timeout,
        reply_timeout: args.reply_timeout.max(Duration::from_millis(1)),
        connect_timeout,
        tls,
        verify: args.verify || args.verify_file.is_some(),
        send_granularity: args.send_granularity,
        start_at: args.start_at,
    };
    if let Some(rate) = spec.rate {
        loadgen::schedule::Schedule::new(rate, spec.connections)?;
    }
    let label = args.out.label.clone().unwrap_or_else(|| {
        let batch = if args.batch > 1 {
            format!(" batch {}", args.batch)
        } else {
            String::new()
        };
        match args.rate {
            Some(rate) => format!(
                "{} {}x{}{batch} at {rate} req/s",
                args.server.target.describe(),
                args.connections,
                args.pipeline
            ),
            None => format!(
                "{} {}x{}{batch}",
                args.server.target.describe(),
                args.connections,
                args.pipeline
            ),
        }
    });
    let stop = stop_flag()?;

    if slo.is_some() || ramp.is_some() {
        return search_or_ramp(&args, slo, ramp, &spec, &label, command, &stop);
    }

    let measured = execute(&spec, stop)?;
    let report = RunReport::build(&spec, &measured, &label, command);
    let mut report = report;
    report.config.sequence = args.sequence.clone();
    if args.out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the JSON result")?
        );
    } else {
        print!("{}", report.summary());
    }
    if let Some(prefix) = &args.out.output {
        let files = write_files(prefix, &report, &measured)?;
        eprintln!(
            "  wrote {}, {}, {}{}",
            files.json.display(),
            files.hgrm.display(),
            files.hlog.display(),
            files
                .service_hgrm
                .map(|p| format!(", {}", p.display()))
                .unwrap_or_default()
        );
    }
    if let Some(path) = &args.verify_file {
        let run_id = seqd::clock::unix_ms() & 0xff_ffff_ffff;
        verify::append_to_file(path, run_id, &measured.streams)?;
        eprintln!("  appended the numbers received to {}", path.display());
    }
    if report.verify.as_ref().is_some_and(|v| !v.ok()) {
        return Ok(exit::VERIFY_FAILED);
    }
    if !report.trustworthy {
        return Ok(exit::UNTRUSTWORTHY);
    }
    Ok(0)
}

fn search_or_ramp(
    args: &RunArgs,
    slo: Option<Slo>,
    ramp: Option<Ramp>,
    spec: &RunSpec,
    label: &str,
    command: &[String],
    stop: &Arc<AtomicBool>,
) -> Result<u8> {
    let started = std::time::SystemTime::now();
    search::print_header();
    let mut report = SearchReport {
        schema: loadgen::report::SCHEMA.into(),
        kind: String::new(),
        label: label.to_string(),
        command: command.to_vec(),
        machine: Machine::probe(started),
        slo: slo.as_ref().map(|s| s.to_string()),
        steps: Vec::new(),
        capacity_rps: None,
        method: String::new(),
        confirmation: None,
    };
    let mut code = 0;
    let mut confirmation_measured = None;
    if let Some(ramp) = &ramp {
        report.kind = "ramp".into();
        report.method = format!(
            "open-loop runs from {} to {} req/s in steps of {}, {} each",
            ramp.start,
            ramp.end,
            ramp.step,
            humantime::format_duration(ramp.interval)
        );
        report.steps = search::ramp(spec, ramp, slo.as_ref(), stop, search::print_step)?;
    } else if let Some(slo) = &slo {
        report.kind = "capacity-search".into();
        let settings = SearchSettings {
            probe: args.probe_duration,
            confirm: spec.duration.unwrap_or(Duration::from_secs(10)),
            precision: 0.05,
            max_probes: args.max_probes.max(1),
        };
        let capacity = search::capacity(spec, slo, &settings, stop, search::print_step)?;
        report.steps = capacity.steps;
        report.method = capacity.method;
        match capacity.found {
            Some((rate, confirm_spec, measured)) => {
                report.capacity_rps = Some(rate.round());
                let mut run = RunReport::build(
                    &confirm_spec,
                    &measured,
                    &format!("{label} at capacity"),
                    command,
                );
                run.config.sequence = args.sequence.clone();
                report.confirmation = Some(run);
                confirmation_measured = Some(measured);
                eprintln!(
                    "capacity: {} req/s meets {slo}\n  how: {}",
                    loadgen::report::group(rate),
                    report.method
                );
            }
            None => {
                eprintln!("capacity: NOT FOUND: {}", report.method);
                code = exit::SLO_NOT_MET;
            }
        }
    }
    if args.out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the JSON result")?
        );
    }
    if let Some(prefix) = &args.out.output {
        let path = write_json(prefix, &report)?;
        eprintln!("  wrote {}", path.display());
        if let (Some(run), Some(measured)) = (&report.confirmation, &confirmation_measured) {
            let files = write_files(&with_extension(prefix, ".confirm"), run, measured)?;
            eprintln!(
                "  wrote {}, {}, {}",
                files.json.display(),
                files.hgrm.display(),
                files.hlog.display()
            );
        }
    }
    Ok(code)
}

fn in_process(args: InProcessArgs, command: &[String]) -> Result<u8> {
    let settings = inprocess::Settings {
        threads: args.threads,
        batch: args.batch,
        duration: args.duration,
        cpus: cpus(args.cpus.as_deref(), false)?,
    };
    let label =
        args.out.label.clone().unwrap_or_else(|| {
            format!("in-process {} thread(s) batch {}", args.threads, args.batch)
        });
    let report = inprocess::run(&settings, &label, command)?;
    if args.out.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    if let Some(prefix) = &args.out.output {
        let path = write_json(prefix, &report)?;
        eprintln!("  wrote {}", path.display());
    }
    Ok(if report.contiguous {
        0
    } else {
        exit::VERIFY_FAILED
    })
}

fn verify_files(args: VerifyArgs) -> Result<u8> {
    let mut streams = Vec::new();
    for path in &args.files {
        streams.extend(verify::read_file(path)?);
    }
    let report = verify::check(&streams);
    println!(
        "verify {}: {} numbers in {} ranges on {} connections; {} duplicates, {} out of order; \
         lowest {}, highest {}",
        if report.ok() { "OK" } else { "FAILED" },
        report.numbers,
        report.ranges,
        report.streams,
        report.duplicates,
        report.non_increasing,
        report.lowest.map_or("-".into(), |v| v.to_string()),
        report.highest.map_or("-".into(), |v| v.to_string()),
    );
    Ok(if report.ok() { 0 } else { exit::VERIFY_FAILED })
}

fn plot_results(args: PlotArgs) -> Result<u8> {
    let curves = args
        .inputs
        .iter()
        .map(|i| plot::load(i))
        .collect::<Result<Vec<_>>>()?;
    plot::draw(&curves, &args.title, &args.output, args.log_y)?;
    eprintln!("wrote {}", args.output.display());
    Ok(0)
}

fn baseline_server(args: ListenArgs) -> Result<u8> {
    let addr = resolve(&args.addr)?;
    let listener = baseline::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("the listener has no address")?;
    eprintln!("baseline listening on {local}");
    baseline::serve(listener).context("accepting connections failed")?;
    Ok(0)
}

fn merge_logs(args: MergeArgs) -> Result<u8> {
    let logs = args
        .inputs
        .iter()
        .map(|p| merge::Log::read(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge::merge(&logs)?;
    print!("{}", merge::summary(&merged));
    let files = merge::write(&args.output, &merged, &logs)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("wrote {}", names.join(", "));
    Ok(0)
}

/// `--start-at`: Unix milliseconds, or RFC 3339 (UTC); a time already past is refused.
fn parse_start_at(text: &str) -> std::result::Result<SystemTime, String> {
    let at = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = text
            .parse()
            .map_err(|_| format!("{text:?} is too large for Unix milliseconds"))?;
        UNIX_EPOCH + Duration::from_millis(ms)
    } else {
        humantime::parse_rfc3339_weak(text).map_err(|e| {
            format!(
                "{text:?} is neither Unix milliseconds nor an RFC 3339 time such as \
                 2026-12-02T14:00:00Z ({e})"
            )
        })?
    };
    if let Err(past) = at.duration_since(SystemTime::now()) {
        return Err(format!(
            "{text:?} was {:.3} s ago: give a time far enough ahead for every process to start \
             and connect (e.g. `date -d '+10 seconds' +%s%3N`)",
            past.duration().as_secs_f64()
        ));
    }
    Ok(at)
}

fn zero_work_server(args: ZeroWorkArgs) -> Result<u8> {
    let addr = resolve(&args.listen.addr)?;
    let listener = zero_work::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("the listener has no address")?;
    eprintln!("zero-work listening on {local}");
    zero_work::serve(listener, args.busy_poll)
        .context("the io_uring event loop failed (io_uring needs Linux 6.0 or later, not blocked by seccomp)")?;
    Ok(0)
}

fn hold(args: HoldArgs) -> Result<u8> {
    use std::io::Write as _;
    let addr = resolve(&args.server.addr)?;
    let protocol = Protocol::new(args.server.target, 1, None, 0)?;
    let signals = hold::Signals::install()?;
    let mut streams = hold::connect_all(addr, args.connections, args.timeout)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "connected {}", streams.len())?;
    stdout.flush()?;
    if signals.wait_next_stage() {
        hold::request_each(&mut streams, &protocol, args.timeout)?;
        writeln!(stdout, "answered {}", streams.len())?;
        stdout.flush()?;
        signals.wait_stop();
    }
    drop(streams);
    Ok(0)
}
