//! TLS on `--tls-port`: a [`Service`] that sits between the backend's bytes and the service
//! behind it. For a connection accepted on a [`Kind::TlsSession`] listener it feeds the
//! received ciphertext to a rustls server connection, hands the plaintext to the inner
//! service, and encrypts what the inner service appends to the output queue before the
//! backend sees it. Other connections pass through untouched, so the backends, the sessions
//! and the codecs know nothing of TLS.
//!
//! The inner service appends its replies after the ciphertext already queued and they are
//! encrypted in place, so the length of the queue it sees — what its backpressure counts — is
//! still the bytes not yet sent.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection};

use super::handler::{ConnKey, Kind, Next, Service};
use crate::tls::{self, TlsFileError};

/// The first byte of every TLS record a client opens with (a handshake record).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The server's TLS configuration: the certificate chain in `certificate` with the private key
/// in `key`, and with `client_ca` the authorities a client's certificate must chain to (every
/// client must then present one).
pub fn server_config(
    certificate: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let chain = tls::certificates(certificate)?;
    let key_der = tls::private_key(key)?;
    let provider = tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Unusable {
            path: certificate.to_owned(),
            detail: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(tls::trusted_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsFileError::Unusable {
                    path: ca.to_owned(),
                    detail: format!("cannot verify client certificates with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsFileError::Unusable {
            path: key.to_owned(),
            detail: format!(
                "cannot serve {} with this key: {e} (is it the certificate's own key?)",
                certificate.display()
            ),
        })?;
    Ok(Arc::new(config))
}

/// The services of one event loop, with TLS for the connections of `--tls-port`.
pub struct Tls<S> {
    inner: S,
    config: Option<Arc<ServerConfig>>,
    /// Decrypted input on its way to the inner service (one loop, one buffer).
    plaintext: Vec<u8>,
}

/// One connection: the inner service's state, and its TLS state.
pub struct Conn<C> {
    inner: C,
    tls: Layer,
}

enum Layer {
    /// Not from the TLS port: bytes pass through.
    Plain,
    Tls(Box<TlsState>),
    /// From the TLS port, but no TLS session could be started: closed at its first input,
    /// never served in plaintext.
    Broken,
}

struct TlsState {
    connection: ServerConnection,
    peer: Option<IpAddr>,
    /// What the inner service last answered, repeated while only TLS records arrive.
    last: Next,
    /// The inner service was told the input ended (close_notify, or EOF).
    input_ended: bool,
    /// Our close_notify is queued.
    closing: bool,
    /// Nothing was received yet (a plaintext client is told apart by its first byte).
    fresh: bool,
}

impl<S> Tls<S> {
    /// `inner`, with TLS by `config` on `--tls-port` (None: no TLS port).
    pub fn new(inner: S, config: Option<Arc<ServerConfig>>) -> Tls<S> {
        Tls {
            inner,
            config,
            plaintext: Vec::new(),
        }
    }
}

impl<S: Service> Tls<S> {
    fn receive_tls(
        &mut self,
        inner: &mut S::Conn,
        tls: &mut TlsState,
        key: ConnKey,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Next {
        if tls.closing {
            return Next::Close;
        }
        let plaintext_client = tls.fresh && data.first() != Some(&HANDSHAKE_RECORD);
        tls.fresh &= data.is_empty();
        let mut rest = data;
        while !rest.is_empty() {
            let read = tls.connection.read_tls(&mut rest);
            let processed = match read {
                // After the peer's close_notify nothing more is read.
                Ok(0) => break,
                Ok(_) => tls.connection.process_new_packets(),
                Err(e) => Err(rustls::Error::General(e.to_string())),
            };
            let state = match processed {
                Ok(state) => state,
                Err(e) => {
                    let hint = if plaintext_client {
                        " (the client does not speak TLS: a plaintext client on --tls-port?)"
                    } else {
                        ""
                    };
                    let peer = tls
                        .peer
                        .map_or_else(|| "unknown".into(), |ip| ip.to_string());
                    tracing::info!(%peer, "TLS connection refused: {e}{hint}");
                    // rustls queued the alert that tells the client why.
                    tls.closing = true;
                    flush(tls, out);
                    return Next::Close;
                }
            };
            let pending = state.plaintext_bytes_to_read();
            if pending > 0 {
                self.plaintext.resize(pending, 0);
                if std::io::Read::read_exact(&mut tls.connection.reader(), &mut self.plaintext)
                    .is_err()
                {
                    // rustls said this much plaintext is ready; nothing a client controls.
                    tls.closing = true;
                    return Next::Close;
                }
                let data = std::mem::take(&mut self.plaintext);
                let next = through(tls, out, |out| self.inner.receive(inner, key, &data, out));
                self.plaintext = data;
                if next == Next::Close {
                    return close(tls, out);
                }
            }
            if state.peer_has_closed() && !tls.input_ended {
                tls.input_ended = true;
                through(tls, out, |out| self.inner.end_of_input(inner, key, out));
            }
        }
        settle(tls, out)
    }
}

/// Runs `call` on the output queue, then encrypts what it appended, in place.
fn through(tls: &mut TlsState, out: &mut Vec<u8>, call: impl FnOnce(&mut Vec<u8>) -> Next) -> Next {
    let start = out.len();
    let next = call(out);
    if out.len() > start {
        // The buffer limit is lifted (see `open`): the writer takes everything.
        let _ = tls.connection.writer().write_all(&out[start..]);
        out.truncate(start);
    }
    flush(tls, out);
    tls.last = next;
    next
}

/// Queues every TLS record rustls has to send.
fn flush(tls: &mut TlsState, out: &mut Vec<u8>) {
    while tls.connection.wants_write() {
        // Writing into a Vec cannot fail.
        if tls.connection.write_tls(out).is_err() {
            break;
        }
    }
}

/// What the backend is told after the inner service answered `tls.last`: a session that is
/// done, or that reads on after its input ended (the peer's close_notify: a TCP connection
/// may stay open after it, and clients such as Python's asyncio wait for ours), is closed.
fn settle(tls: &mut TlsState, out: &mut Vec<u8>) -> Next {
    match tls.last {
        Next::Close => close(tls, out),
        Next::Read if tls.input_ended => close(tls, out),
        next => {
            flush(tls, out);
            next
        }
    }
}

/// Ends the TLS session: close_notify after the replies, then the backend closes.
fn close(tls: &mut TlsState, out: &mut Vec<u8>) -> Next {
    if !tls.closing {
        tls.closing = true;
        tls.connection.send_close_notify();
    }
    flush(tls, out);
    tls.last = Next::Close;
    Next::Close
}

impl<S: Service> Service for Tls<S> {
    type Conn = Conn<S::Conn>;

    fn open(&mut self, kind: Kind, key: ConnKey, peer: Option<IpAddr>) -> Conn<S::Conn> {
        let tls = match (kind, &self.config) {
            (Kind::TlsSession, Some(config)) => match ServerConnection::new(config.clone()) {
                Ok(mut connection) => {
                    // What is written is taken out at once (`through`): the limit would only
                    // make a large reply fail.
                    connection.set_buffer_limit(None);
                    Layer::Tls(Box::new(TlsState {
                        connection,
                        peer,
                        last: Next::Read,
                        input_ended: false,
                        closing: false,
                        fresh: true,
                    }))
                }
                Err(e) => {
                    tracing::error!(?peer, "cannot start a TLS session: {e}");
                    Layer::Broken
                }
            },
            (Kind::TlsSession, None) => Layer::Broken,
            _ => Layer::Plain,
        };
        let inner = self.inner.open(kind, key, peer);
        Conn { inner, tls }
    }

    fn refusal(&self, kind: Kind) -> Option<&[u8]> {
        self.inner.refusal(kind)
    }

    #[inline]
    fn receive(
        &mut self,
        conn: &mut Conn<S::Conn>,
        key: ConnKey,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Next {
        match &mut conn.tls {
            Layer::Plain => self.inner.receive(&mut conn.inner, key, data, out),
            Layer::Tls(tls) => self.receive_tls(&mut conn.inner, tls, key, data, out),
            Layer::Broken => Next::Close,
        }
    }

    fn end_of_input(&mut self, conn: &mut Conn<S::Conn>, key: ConnKey, out: &mut Vec<u8>) -> Next {
        let tls = match &mut conn.tls {
            Layer::Tls(tls) => tls,
            Layer::Plain => return self.inner.end_of_input(&mut conn.inner, key, out),
            Layer::Broken => return Next::Close,
        };
        if tls.closing || tls.input_ended {
            return tls.last;
        }
        tls.input_ended = true;
        let inner = &mut conn.inner;
        through(tls, out, |out| self.inner.end_of_input(inner, key, out));
        settle(tls, out)
    }

    fn resume(&mut self, conn: &mut Conn<S::Conn>, key: ConnKey, out: &mut Vec<u8>) -> Next {
        let tls = match &mut conn.tls {
            Layer::Tls(tls) => tls,
            Layer::Plain => return self.inner.resume(&mut conn.inner, key, out),
            Layer::Broken => return Next::Close,
        };
        if tls.closing {
            return Next::Close;
        }
        let inner = &mut conn.inner;
        through(tls, out, |out| self.inner.resume(inner, key, out));
        settle(tls, out)
    }

    fn close(&mut self, conn: &mut Conn<S::Conn>, key: ConnKey) {
        self.inner.close(&mut conn.inner, key);
    }

    #[inline]
    fn take_housekeeping(&mut self) -> bool {
        self.inner.take_housekeeping()
    }

    fn released(&mut self) -> Vec<ConnKey> {
        self.inner.released()
    }

    fn next_tick(&self) -> Option<Duration> {
        self.inner.next_tick()
    }

    fn tick(&mut self) -> Vec<ConnKey> {
        self.inner.tick()
    }

    fn fill(&mut self, conn: &mut Conn<S::Conn>, key: ConnKey, out: &mut Vec<u8>) {
        let tls = match &mut conn.tls {
            Layer::Tls(tls) => tls,
            Layer::Plain => return self.inner.fill(&mut conn.inner, key, out),
            Layer::Broken => return,
        };
        if tls.closing {
            return;
        }
        let last = tls.last;
        let inner = &mut conn.inner;
        through(tls, out, |out| {
            self.inner.fill(inner, key, out);
            last
        });
    }

    #[inline]
    fn held_input(&self, conn: &Conn<S::Conn>) -> usize {
        // rustls's own buffers are bounded by the TLS record size, not by what a client sends.
        self.inner.held_input(&conn.inner)
    }
}

#[cfg(test)]
mod tests {
    //! The layer alone, over an in-memory rustls client and a stand-in for the sessions.
    use std::io::Read;

    use super::*;
    use crate::server::handler::Until;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// Echoes what it receives; remembers how long the output queue was when it was called.
    #[derive(Default)]
    struct Echo {
        queue_seen: usize,
        received: usize,
        answer: Option<Next>,
        ended: bool,
    }

    impl Service for Echo {
        type Conn = ();
        fn open(&mut self, _: Kind, _: ConnKey, _: Option<IpAddr>) {}
        fn refusal(&self, _: Kind) -> Option<&[u8]> {
            None
        }
        fn receive(&mut self, _: &mut (), _: ConnKey, data: &[u8], out: &mut Vec<u8>) -> Next {
            self.queue_seen = out.len();
            self.received += 1;
            out.extend_from_slice(data);
            self.answer.unwrap_or(Next::Read)
        }
        fn end_of_input(&mut self, _: &mut (), _: ConnKey, _: &mut Vec<u8>) -> Next {
            self.ended = true;
            Next::Read
        }
        fn resume(&mut self, _: &mut (), _: ConnKey, out: &mut Vec<u8>) -> Next {
            out.extend_from_slice(b"resumed");
            Next::Read
        }
        fn close(&mut self, _: &mut (), _: ConnKey) {}
        fn take_housekeeping(&mut self) -> bool {
            false
        }
        fn released(&mut self) -> Vec<ConnKey> {
            Vec::new()
        }
        fn next_tick(&self) -> Option<Duration> {
            None
        }
        fn tick(&mut self) -> Vec<ConnKey> {
            Vec::new()
        }
        fn fill(&mut self, _: &mut (), _: ConnKey, _: &mut Vec<u8>) {}
        fn held_input(&self, _: &()) -> usize {
            0
        }
    }

    struct Pair {
        service: Tls<Echo>,
        conn: Conn<()>,
        client: ClientConnection,
        _files: tempfile::TempDir,
    }

    /// A server layer and a client with the handshake done.
    fn pair() -> Pair {
        let files = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (files.path().join("c.pem"), files.path().join("k.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let config = server_config(&cert, &key, None).unwrap();
        let mut service = Tls::new(Echo::default(), Some(config));
        let conn = service.open(Kind::TlsSession, 0, None);
        let mut roots = RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let trusting = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().unwrap();
        let client = ClientConnection::new(Arc::new(trusting), name).unwrap();
        let mut pair = Pair {
            service,
            conn,
            client,
            _files: files,
        };
        while pair.client.is_handshaking() {
            pair.send();
        }
        pair
    }

    impl Pair {
        /// What the client has to send.
        fn records(&mut self) -> Vec<u8> {
            let mut records = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut records).unwrap();
            }
            records
        }

        /// Feeds `bytes` to the layer and the layer's answer to the client; the plaintext.
        fn feed(&mut self, bytes: &[u8]) -> (Next, Vec<u8>) {
            let mut out = Vec::new();
            let next = self.service.receive(&mut self.conn, 0, bytes, &mut out);
            (next, self.deliver(&out))
        }

        fn send(&mut self) -> (Next, Vec<u8>) {
            let records = self.records();
            self.feed(&records)
        }

        /// Hands the layer's `out` to the client; the plaintext it decrypts.
        fn deliver(&mut self, mut out: &[u8]) -> Vec<u8> {
            while !out.is_empty() {
                self.client.read_tls(&mut out).unwrap();
                self.client.process_new_packets().unwrap();
            }
            let mut plaintext = Vec::new();
            let _ = self.client.reader().read_to_end(&mut plaintext);
            plaintext
        }
    }

    #[test]
    fn replies_are_encrypted_after_what_is_already_queued() {
        let mut pair = pair();
        pair.client.writer().write_all(b"GETSEQ\r\n").unwrap();
        let records = pair.records();
        let mut out = b"earlier".to_vec();
        let next = pair.service.receive(&mut pair.conn, 0, &records, &mut out);
        assert_eq!(next, Next::Read);
        assert_eq!(
            pair.service.inner.queue_seen, 7,
            "the session sees the unsent bytes already queued (its backpressure counts them)"
        );
        assert!(out.starts_with(b"earlier") && !out[7..].windows(6).any(|w| w == b"GETSEQ"));
        assert_eq!(pair.deliver(&out[7..]), b"GETSEQ\r\n");
    }

    #[test]
    fn a_hold_stands_while_only_part_of_a_record_arrives() {
        let mut pair = pair();
        let held = Next::Hold {
            until: Until::Woken,
            keep_reading: true,
        };
        pair.service.inner.answer = Some(held);
        pair.client.writer().write_all(b"GETSEQ\r\n").unwrap();
        let records = pair.records();
        assert_eq!(pair.feed(&records).0, held);
        pair.client.writer().write_all(b"PING\r\n").unwrap();
        let records = pair.records();
        assert_eq!(pair.feed(&records[..3]), (held, Vec::new()));
        assert_eq!(pair.feed(&records[3..]), (held, b"PING\r\n".to_vec()));
        let mut out = Vec::new();
        assert_eq!(pair.service.resume(&mut pair.conn, 0, &mut out), Next::Read);
        assert_eq!(pair.deliver(&out), b"resumed");
    }

    #[test]
    fn close_notify_ends_the_input_and_is_answered() {
        let mut pair = pair();
        pair.client.send_close_notify();
        let (next, _) = pair.send();
        assert_eq!(next, Next::Close);
        assert!(pair.service.inner.ended);
        let state = pair.client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "the server's close_notify arrived");
    }

    #[test]
    fn garbage_is_refused_with_an_alert_and_never_reaches_the_session() {
        let mut pair = pair();
        let mut out = Vec::new();
        let next = pair
            .service
            .receive(&mut pair.conn, 0, b"\x17\x03\x03\x00\x05hello", &mut out);
        assert_eq!(next, Next::Close);
        assert!(!out.is_empty(), "an alert says why");
        assert_eq!(pair.service.inner.received, 0);
        assert_eq!(
            pair.service.receive(&mut pair.conn, 0, b"more", &mut out),
            Next::Close
        );
    }
}
