//! seqd-stream: receive a stream of numbers over the stream protocol, resumably, and verify
//! its checksum (what the seed's `cmd/client` does, for seqd's `--stream-port`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use seqd::stream_client::{self, Event, Options, Outcome, StreamError};

#[derive(Debug, Parser)]
#[command(
    name = "seqd-stream",
    version,
    about = "Receive n numbers from seqd's stream protocol (seed 003) and verify the checksum.",
    long_about = "Connects to seqd's --stream-port, asks for n numbers under a client id, \
acknowledges each one once it is written to {state-dir}/{id}.state, and verifies the SHA-1 \
checksum the server sends at the end. Interrupted (Ctrl-C, a lost connection, a server \
restart), it resumes: run it again with the same --id and -n, and only what is missing is \
sent again. Lost connections are resumed by itself (--retries).

Exit status: 0 checksum match; 1 checksum mismatch; 2 bad arguments or state file; 3 the \
server could not be reached or refused the stream; 130 interrupted (state kept for a resume).",
    after_help = "Example (the seed's resume demo):\n  seqd --stream-port 10002 &\n  \
seqd-stream -n 10 --id my-client-id-abc     # Ctrl-C half way\n  \
seqd-stream -n 10 --id my-client-id-abc     # resumes, checksum match"
)]
struct Args {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// The server's --stream-port.
    #[arg(long, default_value_t = 10002)]
    port: u16,

    /// How many numbers to receive.
    #[arg(short = 'n', default_value_t = 10)]
    count: u32,

    /// Client id: resume with the same one [default: a new random id].
    #[arg(long)]
    id: Option<String>,

    /// Where the state file ({id}.state) is kept.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    state_dir: PathBuf,

    /// fsync the state file before each acknowledgement (survives power loss; slower).
    #[arg(long)]
    fsync: bool,

    /// Print only the outcome, not every number.
    #[arg(short, long)]
    quiet: bool,

    /// Times to reconnect and resume after a lost connection before giving up.
    #[arg(long, default_value_t = 10)]
    retries: u32,

    /// Give up on a server silent for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Disconnect after this many new numbers, as a Ctrl-C would (to try resuming).
    #[arg(long, value_name = "K")]
    stop_after: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let client_id = args.id.clone().unwrap_or_else(random_id);
    if let Err(e) = stream_client::validate_client_id(&client_id) {
        eprintln!("seqd-stream: --id: {e}");
        return ExitCode::from(2);
    }
    if args.count == 0 {
        eprintln!("seqd-stream: -n must be at least 1");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("seqd-stream: cannot handle signals: {e}");
            return ExitCode::from(2);
        }
    }
    let options = Options {
        addr: format!("{}:{}", args.host, args.port),
        client_id: client_id.clone(),
        count: args.count,
        state_dir: args.state_dir.clone(),
        sync: args.fsync,
        retries: args.retries,
        timeout: args.timeout,
        stop_after: args.stop_after,
    };
    if args.id.is_none() {
        log(&format!("client id {client_id}"));
    }
    let quiet = args.quiet;
    let result = stream_client::run(&options, &stop, |event| match event {
        Event::Number { .. } if quiet => {}
        event => log(&event.to_string()),
    });
    match result {
        Ok(Outcome::Verified { checksum }) => {
            log("[OK] checksum match");
            if quiet {
                log(&format!("checksum {}", stream_client::hex(&checksum)));
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Interrupted) => {
            log(&format!(
                "exiting; resume with: seqd-stream --port {} -n {} --id {client_id}",
                args.port, args.count
            ));
            ExitCode::from(130)
        }
        Err(e @ StreamError::Mismatch { .. }) => {
            log(&format!("[FAIL] {e}"));
            ExitCode::from(1)
        }
        Err(e @ StreamError::State { .. }) => {
            eprintln!("seqd-stream: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("seqd-stream: {e}");
            ExitCode::from(3)
        }
    }
}

/// A line with a timestamp, like the seed client's log. A closed stdout (`| head`) is not
/// worth dying for: the stream goes on.
fn log(line: &str) {
    use std::io::Write;
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let _ = writeln!(std::io::stdout().lock(), "{now} {line}");
}

/// A client id unlikely to be used before: time and pid.
fn random_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("c-{:x}-{:x}", nanos, std::process::id())
}
