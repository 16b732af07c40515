//! `loadgen run --tls`: the options, and a non-blocking TLS stream for the workers' edge-
//! triggered loops (the handshake is done blocking, before the stream joins a loop).

use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use seqd::client::tls::{client_config, insecure_client_config};

/// How to reach a TLS port (seqd's `--tls-port`, or Redis's).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Connect with TLS (seqd's --tls-port, Redis's tls-port). Needs --tls-ca-cert-file, or
    /// --tls-insecure for a benchmark against a self-signed certificate.
    #[arg(long)]
    pub tls: bool,

    /// Trust the certificate authorities in this PEM file (redis-cli's --cacert).
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls",
        conflicts_with = "tls_insecure"
    )]
    pub tls_ca_cert_file: Option<PathBuf>,

    /// Accept any server certificate: encrypted but unauthenticated, for benchmarks only.
    #[arg(long, requires = "tls")]
    pub tls_insecure: bool,

    /// The name the server's certificate must carry [default: the host of --addr]
    /// (redis-cli's --sni).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
}

/// Where and whom a TLS connection goes to.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsArgs {
    /// The TLS target these options describe (None without --tls); `host` is --addr's host.
    pub fn target(&self, host: &str) -> Result<Option<TlsTarget>> {
        if !self.tls {
            return Ok(None);
        }
        let config = match (&self.tls_ca_cert_file, self.tls_insecure) {
            (Some(ca), _) => client_config(ca).context("--tls-ca-cert-file")?,
            (None, true) => insecure_client_config(),
            (None, false) => bail!(
                "--tls needs --tls-ca-cert-file (the CA that signed the server's certificate), \
                 or --tls-insecure to skip verification in a benchmark"
            ),
        };
        let name = self.tls_server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name:?} is not a host name or IP address for TLS"))?;
        Ok(Some(TlsTarget {
            config,
            server_name,
        }))
    }
}

/// The host part of `HOST:PORT`.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// A worker's connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
}

impl Stream {
    /// Completes the TLS handshake on the blocking `tcp`, then makes it non-blocking.
    pub fn tls(mut tcp: StdTcpStream, target: &TlsTarget) -> io::Result<TlsStream> {
        let mut tls = ClientConnection::new(target.config.clone(), target.server_name.clone())
            .map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        tcp.set_nonblocking(true)?;
        Ok(TlsStream {
            tcp: TcpStream::from_std(tcp),
            tls,
        })
    }

    /// Encrypted bytes wait for the socket: flush on the next writable edge.
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.tls.wants_write(),
        }
    }
}

impl TlsStream {
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Sends queued TLS records until done or the socket is full.
    fn send_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.send_records(),
        }
    }
}

impl Read for TlsStream {
    /// Fills `buf` with plaintext until it is full or the socket has nothing more, so that a
    /// short read means the socket is drained, as the edge-triggered loop expects.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                Ok(0) if filled < buf.len() => return Ok(filled), // close_notify
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if filled == buf.len() {
                return Ok(filled);
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(filled),
                Ok(_) => {
                    self.tls
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    // Key updates and alerts the server asked for.
                    self.send_records()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => {
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    /// Takes `buf` only once earlier records are on their way: bytes taken are then sent or
    /// wait in rustls for the next writable edge ([`Stream::wants_write`]).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_records()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        self.send_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records()
    }
}
