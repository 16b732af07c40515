//! `loadgen hold`: opens many connections and keeps them idle, to measure what idle
//! connections cost a server (its memory per connection) and what they cost the others (the
//! throughput of active connections while they are held).
//!
//! Stages, so a script can read the server's memory between them:
//! 1. connect every connection, then print `connected N`;
//! 2. on SIGUSR1, send one request on each and read its reply (a connection that has been
//!    served once, then went idle, as in a connection pool), then print `answered N`;
//! 3. on SIGINT or SIGTERM, close everything and exit.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::target::{Outcome, Parsed, Protocol};

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Opens `count` connections to `addr`, blocking, each within `timeout`.
pub fn connect_all(addr: SocketAddr, count: usize, timeout: Duration) -> Result<Vec<TcpStream>> {
    let limit = raise_fd_limit().context("cannot read or raise the open-file limit")?;
    if (count as u64).saturating_add(16) > limit {
        bail!(
            "{count} connections need more open files than this process may have ({limit}): \
             raise the hard limit first (`ulimit -n {}` as root)",
            count + 64
        );
    }
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connection {i} of {count} to {addr} failed"))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Sends one request on every connection, then reads every reply (so the server sees
/// `streams.len()` requests at once, as a burst). Fails on the first bad or missing reply.
pub fn request_each(
    streams: &mut [TcpStream],
    protocol: &Protocol,
    timeout: Duration,
) -> Result<()> {
    for (i, stream) in streams.iter_mut().enumerate() {
        stream
            .write_all(protocol.request())
            .with_context(|| format!("cannot send a request on connection {i}"))?;
    }
    let mut buf = vec![0u8; 4096];
    for (i, stream) in streams.iter_mut().enumerate() {
        stream.set_read_timeout(Some(timeout))?;
        let mut len = 0;
        let deadline = Instant::now() + timeout;
        loop {
            match protocol.parse(&buf[..len]) {
                Parsed::Reply {
                    outcome: Outcome::Numbers { .. },
                    ..
                } => break,
                Parsed::Reply {
                    outcome: Outcome::ServerError(message) | Outcome::NotServing { message, .. },
                    ..
                } => bail!(
                    "connection {i}: the server refused the request: {}",
                    String::from_utf8_lossy(message)
                ),
                Parsed::Malformed(why) => bail!("connection {i}: malformed reply: {why}"),
                Parsed::Incomplete => {}
            }
            if len == buf.len() || Instant::now() > deadline {
                bail!("connection {i}: no complete reply within {timeout:?}");
            }
            match stream.read(&mut buf[len..]) {
                Ok(0) => bail!("connection {i}: the server closed the connection"),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("connection {i}: reading the reply"));
                }
            }
        }
    }
    Ok(())
}

/// Signals that move `hold` along.
pub struct Signals {
    pub next_stage: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let next_stage = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, next_stage.clone())
            .context("cannot install the SIGUSR1 handler")?;
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())
                .context("cannot install the SIGINT/SIGTERM handler")?;
        }
        Ok(Signals { next_stage, stop })
    }

    /// Waits for SIGUSR1 (true) or SIGINT/SIGTERM (false).
    pub fn wait_next_stage(&self) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            if self.next_stage.swap(false, Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_stop(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
