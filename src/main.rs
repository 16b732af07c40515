//! seqd: parse the command line, build the sequences, start the event loops, wait for a
//! signal, shut down gracefully.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};

use anyhow::Context;
use clap::Parser;
use seqd::config::Config;
use seqd::sequence::Registry;
use seqd::server::{Event, Server, Settings};
use seqd::session::Limits;
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    let config = Config::parse();
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

fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let addr = config.listen_addr()?;
    let threads = config.threads.unwrap_or_else(|| {
        core_affinity::get_core_ids().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |cores| cores.len().max(1),
        )
    });

    let registry = Arc::new(Registry::new(config.max_sequences, config.initial));
    tracing::info!(
        initial = config.initial,
        "sequences are kept in memory only: a restart begins again at --initial"
    );

    let settings = Settings {
        addr,
        threads,
        pin: config.pin(),
        max_connections: config.max_connections,
        limits: Limits {
            max_batch: config.max_batch,
        },
    };
    let (events_tx, events) = mpsc::channel();
    let server = Server::start(&settings, registry, events_tx.clone())?;
    tracing::info!(
        threads,
        pinned = settings.pin,
        max_connections = settings.max_connections,
        "seqd listening on {}",
        server.local_addr()
    );

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("seqd-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events_tx.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;

    let mut running = threads;
    let mut failure = None;
    let mut stopping = false;
    while running > 0 {
        match events.recv() {
            Ok(Event::Signal(signal)) if !stopping => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("{name} received: shutting down (send it again to exit at once)");
                stopping = true;
                server.stop();
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
    match failure {
        Some(e) => anyhow::bail!("stopped after an event loop failed: {e}"),
        None => {
            tracing::info!("seqd stopped");
            Ok(())
        }
    }
}
