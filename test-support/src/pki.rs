//! Certificates for the TLS tests, made fresh in a temporary directory: a certificate
//! authority, a server certificate it signed for `localhost` and `127.0.0.1`, a client
//! certificate it signed, and a second, unrelated authority with a client certificate of its
//! own (one the server must refuse).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files in a directory removed with this value.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Generates every file (a few milliseconds).
    pub fn new() -> Pki {
        let dir = crate::temp_dir();
        let ca = authority("seqd test CA");
        write(dir.path(), "ca.crt", &ca.0);
        leaf(
            &ca.1,
            ExtendedKeyUsagePurpose::ServerAuth,
            dir.path(),
            "server",
        );
        leaf(
            &ca.1,
            ExtendedKeyUsagePurpose::ClientAuth,
            dir.path(),
            "client",
        );
        let other = authority("another CA");
        write(dir.path(), "other-ca.crt", &other.0);
        leaf(
            &other.1,
            ExtendedKeyUsagePurpose::ClientAuth,
            dir.path(),
            "stranger",
        );
        Pki { dir }
    }

    /// A file of the set: `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`,
    /// `other-ca.crt`, `stranger.crt`, `stranger.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// [`Pki::path`] as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// The server flags that serve TLS on a free port with this set's server certificate.
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-port=0".to_string(),
            format!("--tls-cert-file={}", self.arg("server.crt")),
            format!("--tls-key-file={}", self.arg("server.key")),
        ]
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

/// A self-signed authority: its certificate (PEM) and what signs with it.
fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a key pair");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let certificate = params.self_signed(&key).expect("a CA certificate");
    (certificate.pem(), Issuer::new(params, key))
}

/// `NAME.crt` and `NAME.key`: a certificate for localhost and 127.0.0.1 signed by `issuer`.
fn leaf(issuer: &Issuer<'_, KeyPair>, usage: ExtendedKeyUsagePurpose, dir: &Path, name: &str) {
    let key = KeyPair::generate().expect("a key pair");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let certificate = params
        .signed_by(&key, issuer)
        .expect("a signed certificate");
    write(dir, &format!("{name}.crt"), &certificate.pem());
    write(dir, &format!("{name}.key"), &key.serialize_pem());
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).expect("write a PEM file");
}
