//! TLS material shared by the server and the clients: certificates, keys and trusted CAs read
//! from PEM files, with errors that name the file and what is wrong with it, and the one
//! crypto provider every configuration uses (ring, named explicitly so that another
//! provider compiled in by a dependency can never make rustls guess).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that could not be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error(
        "{} holds no {what} (expected a PEM block such as -----BEGIN {marker}-----)",
        path.display()
    )]
    Missing {
        path: PathBuf,
        what: &'static str,
        marker: &'static str,
    },
    #[error("{}: {detail}", path.display())]
    Unusable { path: PathBuf, detail: String },
}

impl TlsFileError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            TlsFileError::Read { path, .. }
            | TlsFileError::Pem { path, .. }
            | TlsFileError::Missing { path, .. }
            | TlsFileError::Unusable { path, .. } => path,
        }
    }
}

/// The crypto provider of every TLS configuration seqd builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`, in order (a chain: the leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certificates.is_empty() {
        return Err(TlsFileError::Missing {
            path: path.to_owned(),
            what: "certificate",
            marker: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsFileError::Missing {
            path: path.to_owned(),
            what: "private key",
            marker: "PRIVATE KEY",
        },
        e => pem_error(path, e),
    })
}

/// The certificate authorities in the PEM file at `path`, as a trust store.
pub fn trusted_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|e| TlsFileError::Unusable {
            path: path.to_owned(),
            detail: format!("a certificate is not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn pem_error(path: &Path, error: pem::Error) -> TlsFileError {
    match error {
        pem::Error::Io(error) => TlsFileError::Read {
            path: path.to_owned(),
            error,
        },
        other => TlsFileError::Pem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
        file
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = Path::new("/nonexistent/seqd-ca.crt");
        let error = trusted_roots(path).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read /nonexistent/seqd-ca.crt"),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_the_block_says_which_block_it_lacks() {
        let empty = file("not a certificate\n");
        let error = certificates(empty.path()).unwrap_err().to_string();
        assert!(error.contains("holds no certificate"), "{error}");
        assert!(error.contains("BEGIN CERTIFICATE"), "{error}");
        let error = private_key(empty.path()).unwrap_err().to_string();
        assert!(error.contains("holds no private key"), "{error}");
    }

    #[test]
    fn broken_pem_is_refused() {
        let broken = file("-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n");
        let error = certificates(broken.path()).unwrap_err().to_string();
        assert!(error.contains("is not valid PEM"), "{error}");
    }
}
