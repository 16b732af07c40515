//! TLS for seqd's clients (the server's `--tls-port`): the rustls client configurations a
//! client connects with, and the byte stream that carries either TCP or TLS over TCP.
//!
//! ```no_run
//! let config = seqd::client::tls::client_config(std::path::Path::new("ca.crt"))?;
//! let mut client = seqd::client::Client::connect_tls("127.0.0.1:6380", config, "localhost")?;
//! let id = client.get()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use crate::tls::{self, TlsFileError};

/// A client configuration that trusts the certificate authorities in the PEM file `ca` (the
/// server's certificate must chain to one of them and name the host connected to).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsFileError> {
    let roots = tls::trusted_roots(ca)?;
    let config = builder(ca)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Like [`client_config`], presenting the certificate chain in `certificate` with the private
/// key in `key` to a server that requires client certificates (`--tls-ca-cert-file`).
pub fn client_config_with_identity(
    ca: &Path,
    certificate: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let roots = tls::trusted_roots(ca)?;
    let chain = tls::certificates(certificate)?;
    let key_der = tls::private_key(key)?;
    let config = builder(ca)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsFileError::Unusable {
            path: key.to_owned(),
            detail: format!("cannot be used with {}: {e}", certificate.display()),
        })?;
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate: encryption without
/// authentication, for benchmarks against a server with a self-signed certificate. Anyone
/// on the path can impersonate the server; never use it for real traffic.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = tls::provider();
    let verifier = Arc::new(AnyServer(provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    match config {
        Ok(config) => Arc::new(config),
        // The ring provider supports the default versions; nothing a caller controls.
        Err(e) => unreachable!("the ring provider lacks the default TLS versions: {e}"),
    }
}

fn builder(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsFileError> {
    ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Unusable {
            path: ca.to_owned(),
            detail: e.to_string(),
        })
}

/// Verifies the server's handshake signatures, not who the server is.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client's connection: plain TCP, or TLS over TCP.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// TLS over `tcp` to the server `server_name` (the name or IP address its certificate
    /// must carry), with the handshake completed, so that a certificate the client refuses
    /// fails here.
    pub(crate) fn tls(
        mut tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Transport> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a host name or IP address for TLS: {e}"),
            )
        })?;
        let mut connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp)?;
        }
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            connection, tcp,
        ))))
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}
