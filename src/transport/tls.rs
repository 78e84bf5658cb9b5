//! TLS 1.3 for [`Server`](super::Server) and [`Client`](super::Client)
//! (SPEC.md §8.1): [`ServerTls`] and [`ClientTls`] build rustls configs from
//! PEM files; users with their own rustls configs put them into
//! [`Config::server_tls`](super::Config::server_tls) /
//! [`Config::client_tls`](super::Config::client_tls) directly.
//!
//! # Crypto provider: aws-lc-rs
//!
//! rustls runs on [`aws_lc_rs`](rustls::crypto::aws_lc_rs), its default
//! provider. Bulk data is AES-GCM (or ChaCha20-Poly1305 where the CPU lacks
//! AES instructions), and aws-lc carries the assembly that OpenSSL and
//! BoringSSL use for it: AES-NI + PCLMULQDQ and AVX2/AVX-512 VAES on
//! x86-64, the ARMv8 crypto extensions (and the Neoverse-tuned unrolled
//! GCM) on aarch64. ring, the other provider, has the AES-NI/ARMv8 paths
//! but fewer of the wide-vector ones, slower RSA/ECDSA signing in the
//! handshake, and no post-quantum hybrid key exchange (X25519MLKEM768,
//! which rustls negotiates first with aws-lc-rs). `examples/tls_bench.rs
//! --provider ring` measures the difference on a given machine.
//!
//! Only TLS 1.3 is offered, with ALPN `h2` (RFC 9113 §3.2).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Error;

/// The ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every config built here uses (see the module docs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server's TLS settings: its certificate chain and key, and optionally
/// the CA that client certificates must chain to (mutual TLS).
///
/// ```no_run
/// use tensorwire::transport::{Config, Registry, Server, ServerTls};
/// # async fn run() -> Result<(), tensorwire::Error> {
/// let tls = ServerTls::from_pem_files("server.pem", "server.key")?.with_client_ca_file("ca.pem")?;
/// let config = Config { server_tls: Some(tls.build()?), ..Config::default() };
/// let server = Server::bind("0.0.0.0:7470", Registry::root("/srv/fl")?, config).await?;
/// # drop(server);
/// # Ok(())
/// # }
/// # fn main() { let _ = run(); }
/// ```
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<RootCertStore>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.certs.len())
            .field("client_roots", &self.client_roots.as_ref().map(RootCertStore::len))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A certificate chain (leaf first) and its private key, from PEM files.
    ///
    /// # Errors
    ///
    /// [`Error::Pem`] when a file cannot be read or holds no certificate /
    /// no key.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let certs = read_certs(cert.as_ref())?;
        let key = PrivateKeyDer::from_pem_file(key.as_ref()).map_err(pem_error(key.as_ref()))?;
        Ok(ServerTls { certs, key, client_roots: None })
    }

    /// Requires every client to present a certificate that chains to a CA
    /// in this PEM file; a client without one fails the handshake.
    ///
    /// # Errors
    ///
    /// [`Error::Pem`] when the file cannot be read or holds no certificate;
    /// [`Error::Tls`] when a certificate in it is not a usable trust anchor.
    pub fn with_client_ca_file(self, ca: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(self.with_client_roots(read_roots(ca.as_ref())?))
    }

    /// Requires client certificates that chain to one of `roots`.
    pub fn with_client_roots(mut self, roots: RootCertStore) -> Self {
        self.client_roots = Some(roots);
        self
    }

    /// The rustls config: TLS 1.3 only, ALPN `h2`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the key does not fit the certificate or is of an
    /// unsupported kind.
    pub fn build(self) -> Result<Arc<ServerConfig>, Error> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match self.client_roots {
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(self.certs, self.key)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client's TLS settings: which CAs it trusts for the server's
/// certificate (the system's roots unless told otherwise), and optionally a
/// certificate of its own to present (mutual TLS).
///
/// ```no_run
/// use tensorwire::transport::{Client, ClientTls, Config};
/// # async fn run() -> Result<(), tensorwire::Error> {
/// let tls = ClientTls::new().with_ca_file("ca.pem")?.with_identity_files("site-1.pem", "site-1.key")?;
/// let config = Config { client_tls: Some(tls.build()?), ..Config::default() };
/// let client = Client::connect_tls("aggregator.example.org:7470", "aggregator.example.org", config).await?;
/// # drop(client);
/// # Ok(())
/// # }
/// # fn main() { let _ = run(); }
/// ```
#[derive(Default)]
pub struct ClientTls {
    roots: Option<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.as_ref().map(RootCertStore::len))
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trusts the system's root certificates, presents no certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts only the CAs in this PEM file, instead of the system roots.
    ///
    /// # Errors
    ///
    /// As [`ServerTls::with_client_ca_file`].
    pub fn with_ca_file(self, ca: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(self.with_roots(read_roots(ca.as_ref())?))
    }

    /// Trusts only `roots`.
    pub fn with_roots(mut self, roots: RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Presents this certificate chain (leaf first) and key to servers
    /// that ask for one.
    ///
    /// # Errors
    ///
    /// [`Error::Pem`] when a file cannot be read or holds no certificate /
    /// no key.
    pub fn with_identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let certs = read_certs(cert.as_ref())?;
        let key = PrivateKeyDer::from_pem_file(key.as_ref()).map_err(pem_error(key.as_ref()))?;
        self.identity = Some((certs, key));
        Ok(self)
    }

    /// The rustls config: TLS 1.3 only, ALPN `h2`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the client key does not fit its certificate.
    pub fn build(self) -> Result<Arc<ClientConfig>, Error> {
        let roots = match self.roots {
            Some(roots) => roots,
            None => {
                let mut roots = RootCertStore::empty();
                // Unreadable system certificates are skipped: the handshake
                // then fails with "unknown issuer", which names the problem.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> Error + '_ {
    move |source| Error::Pem { path: path.to_path_buf(), source }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(Error::Pem { path: path.to_path_buf(), source: rustls::pki_types::pem::Error::NoItemsFound });
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Turns a failed TLS handshake into the crate's error: the rustls error
/// when there is one (its message names the cause: an unknown issuer, an
/// expired certificate, a name mismatch, an alert from the peer), and a
/// hint when the peer closed or answered without speaking TLS at all.
pub(crate) fn handshake_error(e: io::Error) -> Error {
    if let Some(tls) = tls_alert(&e) {
        return Error::Tls(tls);
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the peer closed the connection during the TLS handshake ({NOT_TLS_HINT})"),
        ));
    }
    Error::Io(e)
}

pub(crate) use crate::error::{tls_alert, NOT_TLS_HINT};

/// Wraps a cleartext connection: when the peer's first byte opens a TLS
/// record (a handshake, 0x16, or an alert, 0x15), the read fails with a
/// message that says so, instead of HTTP/2's "invalid frame". An HTTP/2
/// client preface starts with `P`, and a server's first frame (SETTINGS)
/// with a length byte of 0, so neither is ever mistaken for TLS.
#[derive(Debug)]
pub(crate) struct Cleartext<IO> {
    io: IO,
    checked: bool,
    message: &'static str,
}

impl<IO> Cleartext<IO> {
    /// On the server: a TLS client on a cleartext port.
    pub(crate) fn server(io: IO) -> Self {
        Cleartext { io, checked: false, message: "a TLS client on this cleartext (h2c) port: connect with http://, or serve with --tls-cert and --tls-key" }
    }

    /// On the client: a TLS server answered the cleartext preface.
    pub(crate) fn client(io: IO) -> Self {
        Cleartext { io, checked: false, message: "the server speaks TLS on this port: use an https:// URL" }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Cleartext<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if !self.checked {
            if let Some(&first) = buf.filled().get(before) {
                self.checked = true;
                // TLS record content types: 0x15 alert, 0x16 handshake (RFC 8446 §5.1).
                if first == 0x15 || first == 0x16 {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, self.message)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Cleartext<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn cleartext_refuses_a_tls_record() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await.expect("write");
        let mut wrapped = Cleartext::server(a);
        let err = wrapped.read(&mut [0u8; 16]).await.expect_err("a TLS record must be refused");
        assert!(err.to_string().contains("TLS client on this cleartext"), "{err}");
    }

    #[tokio::test]
    async fn cleartext_passes_an_h2_preface() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"PRI * HTTP/2.0").await.expect("write");
        let mut wrapped = Cleartext::client(a);
        let mut buf = [0u8; 14];
        wrapped.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"PRI * HTTP/2.0");
    }

    #[test]
    fn tls_alert_is_found_again_in_h2s_text() {
        let original = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired);
        // What h2 hands back: the kind and the text, not the error.
        let flattened = io::Error::new(io::ErrorKind::InvalidData, original.to_string());
        assert_eq!(tls_alert(&flattened), Some(original));
        assert_eq!(tls_alert(&io::Error::other("received fatal alert: NoSuchAlert")), None);
        assert_eq!(tls_alert(&io::Error::other("connection reset")), None);
    }

    #[test]
    fn missing_pem_file_is_a_pem_error() {
        let err = ServerTls::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").expect_err("no file");
        assert!(matches!(err, Error::Pem { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn empty_ca_file_is_refused() {
        let path = std::env::temp_dir().join(format!("tw-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, b"").expect("write");
        let err = ClientTls::new().with_ca_file(&path).expect_err("no certificates");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, Error::Pem { source: rustls::pki_types::pem::Error::NoItemsFound, .. }), "{err}");
    }
}
