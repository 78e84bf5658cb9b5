//! [`Client`]: pulls and pushes objects over one HTTP/2 connection.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::sync::CancellationToken;

use futures::StreamExt;

use super::body::{join, FileReceive, FrameReceiver, FrameSender, FrameStream, Progress, ProgressFn};
use super::flow::{self, Meter, Windows};
use super::request::{ObjectRequest, Resume, RESUME_HEADER};
use super::server::send_all;
use super::tls::{handshake_error, Cleartext};
use super::{object_path, ClientTls, Config, Endpoint};
use crate::recv::{ContainerFile, ObjectRetriever};
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{DecodeError, EncodedFrame, Frame, Mode, CONTENT_TYPE};
use crate::Error;

/// A client connection: cleartext HTTP/2 with prior knowledge, or TLS 1.3
/// with ALPN `h2` ([`Client::connect_tls`], [`Client::connect_to`]).
///
/// Cheap to clone: clones share the connection, and every transfer is its
/// own stream, so many can run at once. Each transfer is cancelled by
/// dropping its future or through [`TransferOptions::cancel`]; either way
/// the stream is reset (`CANCEL`) and the server stops sending.
///
/// ```no_run
/// use tensorwire::transport::{Client, Config};
/// # async fn run() -> Result<(), tensorwire::Error> {
/// let client = Client::connect("127.0.0.1:7470", Config::default()).await?;
/// let got = client.get_file("llama.safetensors", "/tmp/llama.safetensors").await?;
/// println!("{} bytes, crc {:#010x}", got.len, got.crc);
/// # Ok(())
/// # }
/// # fn main() { let _ = run(); }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<std::sync::Mutex<Arc<Conn>>>,
    /// Held while a replacement connection is being opened.
    reconnecting: Arc<tokio::sync::Mutex<()>>,
    /// Where to reconnect to; `None` for a client made with
    /// [`Client::handshake`] over IO it was given.
    addr: Option<String>,
    /// The server name a TLS connection checks the certificate against;
    /// `None` for cleartext.
    tls_name: Option<String>,
    authority: String,
    config: Arc<Config>,
}

/// One HTTP/2 connection and its flow-control task.
#[derive(Debug)]
struct Conn {
    send: h2::client::SendRequest<EncodedFrame>,
    meter: Arc<Meter>,
    windows: tokio::sync::watch::Receiver<Windows>,
}

/// What a completed transfer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Item data bytes.
    pub len: u64,
    /// Items.
    pub items: u64,
    /// The object's CRC-32 (SPEC.md §4.5).
    pub crc: u32,
}

/// Options of one transfer.
#[derive(Clone, Default)]
pub struct TransferOptions {
    /// Called after each chunk with the bytes done so far.
    pub progress: Option<ProgressFn>,
    /// Cancels the transfer when triggered.
    pub cancel: Option<CancellationToken>,
    /// Asks the server for chunks of at most this size (pulls only).
    pub chunk_size: Option<u32>,
    /// Asks the server to quantize float tensors (container pulls only);
    /// the retriever restores them to their original dtype.
    pub quantize: Option<crate::wire::Scheme>,
    /// File pulls ([`Client::get_file_with`]) and container pulls into a
    /// file ([`Client::get_container_file_with`]): keep a crash-safe ledger
    /// of verified ranges beside `FILE.part` (synced every 200 ms), so that
    /// a process killed mid-transfer resumes when it pulls the same object
    /// from the same server into the same file again.
    pub ledger: bool,
}

impl std::fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .field("chunk_size", &self.chunk_size)
            .field("quantize", &self.quantize)
            .field("ledger", &self.ledger)
            .finish()
    }
}

impl Client {
    /// Connects over TCP (with `TCP_NODELAY`) and completes the HTTP/2
    /// handshake, all within [`Config::connect_timeout`]. A transfer that
    /// fails on a lost connection reconnects to the same address (see
    /// [`Config::retries`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`], [`Error::Timeout`] or [`Error::Http`] when the
    /// connection or the HTTP/2 handshake fails; a peer that accepts TCP but
    /// does not answer in HTTP/2 fails with [`Error::Timeout`].
    pub async fn connect(addr: impl ToSocketAddrs, config: Config) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        let peer = tcp.peer_addr()?.to_string();
        let conn = Self::open_tcp(tcp, &config, deadline).await?;
        Ok(Self::with_conn(conn, Some(peer.clone()), None, peer, config))
    }

    /// Connects to an [`Endpoint`]: over TLS for `https://`, cleartext for
    /// `http://`.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`] and [`Client::connect_tls`].
    pub async fn connect_to(endpoint: &Endpoint, config: Config) -> Result<Self, Error> {
        match endpoint.tls {
            true => Self::connect_tls(endpoint.addr(), &endpoint.host, config).await,
            false => Self::connect(endpoint.addr(), config).await,
        }
    }

    /// Connects over TLS 1.3 (ALPN `h2`) with [`Config::client_tls`] (the
    /// system roots, no client certificate, when unset); the server's
    /// certificate must be valid for `server_name` (a DNS name or an IP
    /// address). TCP, TLS and HTTP/2 handshakes together take at most
    /// [`Config::connect_timeout`]; a lost connection is reconnected the
    /// same way.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the handshake fails (an untrusted or expired
    /// certificate, a name mismatch, a server that does not speak TLS),
    /// [`Error::InvalidUrl`] for a server name that is neither a DNS name
    /// nor an IP address, [`Error::Protocol`] when the server does not
    /// agree on `h2`, and as [`Client::connect`].
    pub async fn connect_tls(addr: impl ToSocketAddrs, server_name: &str, config: Config) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        let peer = tcp.peer_addr()?;
        let authority = Endpoint { tls: true, host: server_name.to_string(), port: peer.port() }.addr();
        let conn = Self::open_tls(tcp, server_name, &config, deadline).await?;
        Ok(Self::with_conn(conn, Some(peer.to_string()), Some(server_name.to_string()), authority, config))
    }

    /// Runs HTTP/2 over any IO (a `tokio::io::duplex` pipe in tests). The
    /// connection is driven by a spawned task, which also runs the adaptive
    /// flow control and keep-alive PINGs (see [`Config::max_window`]).
    /// Returns once the peer has answered a PING, so a peer that does not
    /// speak HTTP/2 fails here. Such a client cannot reconnect: retries
    /// reuse the one connection.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the handshake fails, [`Error::Timeout`] when the
    /// peer does not answer within [`Config::connect_timeout`].
    pub async fn handshake<IO>(io: IO, authority: impl Into<String>, config: Config) -> Result<Self, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let conn = open(io, &config, deadline).await?;
        Ok(Self::with_conn(conn, None, None, authority.into(), config))
    }

    fn with_conn(
        conn: Conn,
        addr: Option<String>,
        tls_name: Option<String>,
        authority: String,
        config: Config,
    ) -> Self {
        Client {
            conn: Arc::new(std::sync::Mutex::new(Arc::new(conn))),
            reconnecting: Arc::default(),
            addr,
            tls_name,
            authority,
            config: Arc::new(config),
        }
    }

    async fn open_tcp(tcp: TcpStream, config: &Config, deadline: tokio::time::Instant) -> Result<Conn, Error> {
        tcp.set_nodelay(true)?;
        // A TLS server's answer to the preface is refused with a message
        // that says so.
        open(Cleartext::client(tcp), config, deadline).await
    }

    async fn open_tls(
        tcp: TcpStream,
        server_name: &str,
        config: &Config,
        deadline: tokio::time::Instant,
    ) -> Result<Conn, Error> {
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|_| Error::InvalidUrl { url: server_name.to_string(), reason: "not a DNS name or IP address" })?;
        let tls = match &config.client_tls {
            Some(tls) => Arc::clone(tls),
            None => ClientTls::new().build()?,
        };
        let stream = tokio::time::timeout_at(deadline, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .map_err(|_| Error::Timeout("TLS handshake"))?
            .map_err(handshake_error)?;
        // SPEC.md §8.1: over TLS the protocol is HTTP/2, agreed by ALPN.
        if stream.get_ref().1.alpn_protocol().is_some_and(|p| p != super::ALPN_H2) {
            return Err(Error::Protocol("the TLS server did not agree on h2 (ALPN)"));
        }
        open(stream, config, deadline).await
    }

    /// `https` over TLS, `http` otherwise.
    fn scheme(&self) -> &'static str {
        if self.tls_name.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The connection in use now.
    fn current(&self) -> Arc<Conn> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc.
        Arc::clone(&self.conn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the connection `failed` with a new one to the same address,
    /// unless another transfer already did.
    async fn reconnect(&self, failed: &Arc<Conn>) -> Result<(), Error> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let Some(addr) = &self.addr else { return Ok(()) };
        if !Arc::ptr_eq(&self.current(), failed) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr.as_str()))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        let conn = match &self.tls_name {
            Some(name) => Self::open_tls(tcp, name, &self.config, deadline).await?,
            None => Self::open_tcp(tcp, &self.config, deadline).await?,
        };
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(conn);
        Ok(())
    }

    /// Waits before retry `attempt` (1, 2, ...): 100 ms, doubling, at most
    /// [`Config::retry_max_wait`].
    async fn backoff(&self, attempt: u32) {
        let wait = RETRY_FIRST_WAIT.saturating_mul(1 << attempt.saturating_sub(1).min(20));
        tokio::time::sleep(wait.min(self.config.retry_max_wait)).await;
    }

    /// The receive window per stream this connection advertises now: it
    /// starts at [`Config::stream_window`] and follows the measured
    /// bandwidth-delay product up to [`Config::max_window`].
    pub fn receive_window(&self) -> u32 {
        self.current().windows.borrow().stream
    }

    /// Pulls object `name` into the file `dest` (SPEC.md §8.2): written to
    /// `<dest>.part`, verified, then renamed. On any failure `dest` is left
    /// as it was.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Status`] for other error statuses,
    /// [`Error::Decode`] for a damaged object, [`Error::Aborted`] when the
    /// server aborts, [`Error::Cancelled`], [`Error::Io`] for the file.
    pub async fn get_file(&self, name: &str, dest: impl AsRef<Path>) -> Result<Transfer, Error> {
        self.get_file_with(name, dest, &TransferOptions::default()).await
    }

    /// [`Client::get_file`] with options.
    ///
    /// # Errors
    ///
    /// As [`Client::get_file`].
    pub async fn get_file_with(
        &self,
        name: &str,
        dest: impl AsRef<Path>,
        opts: &TransferOptions,
    ) -> Result<Transfer, Error> {
        let dest = dest.as_ref();
        cancellable(opts, async {
            let mut req = ObjectRequest::new(name);
            req.chunk_size = opts.chunk_size;
            let mut file = if opts.ledger {
                FileReceive::create_resumable(dest, self.ledger_key(name, &req)).await?
            } else {
                FileReceive::create(dest).await?
            };
            let got = self.pull(req, &mut file, opts).await?;
            Ok(Transfer { len: got.len, items: got.items, crc: got.crc })
        })
        .await
    }

    /// Pulls a container object into a safetensors file `dest`, tensor by
    /// tensor (SPEC.md §8.2, `mode=container`): `items` selects tensors,
    /// [`TransferOptions::quantize`] has the server quantize them (restored
    /// here). Like [`Client::get_file`], it reconnects and resumes after a
    /// cut, up to [`Config::retries`] times, and renames the file into place
    /// only when the whole object is verified. Returns the file's length.
    ///
    /// # Errors
    ///
    /// As [`Client::get_file`].
    pub async fn get_container_file(
        &self,
        name: &str,
        items: Option<&[String]>,
        dest: impl AsRef<Path>,
        opts: &TransferOptions,
    ) -> Result<u64, Error> {
        self.get_container_file_with(name, items, dest, opts, crate::wire::Subnormals::default()).await
    }

    /// [`Client::get_container_file`], choosing how quantized tensors
    /// restore f32-subnormal products (SPEC.md §5.5.2a).
    ///
    /// # Errors
    ///
    /// As [`Client::get_file`].
    pub async fn get_container_file_with(
        &self,
        name: &str,
        items: Option<&[String]>,
        dest: impl AsRef<Path>,
        opts: &TransferOptions,
        subnormals: crate::wire::Subnormals,
    ) -> Result<u64, Error> {
        let req = self.container_request(name, items, opts);
        let file = if opts.ledger {
            let key = self.ledger_key(name, &req);
            let dest = dest.as_ref().to_path_buf();
            tokio::task::spawn_blocking(move || ContainerFile::create_resumable(dest, key)).await.map_err(join)?
        } else {
            ContainerFile::new(dest)
        };
        let mut file = file.with_subnormals(subnormals);
        cancellable(opts, self.pull(req, &mut file, opts)).await
    }

    /// What a ledger records as the request it was written for.
    fn ledger_key(&self, name: &str, req: &ObjectRequest) -> String {
        format!("GET {}://{}{}?{}", self.scheme(), self.authority, object_path(name), req.to_query())
    }

    /// Runs a pull to completion: on a failure worth retrying, waits, gets a
    /// new connection if the old one is gone, and asks again for what `recv`
    /// still needs (SPEC.md §8.4).
    async fn pull<R: Resumable>(
        &self,
        mut req: ObjectRequest,
        recv: &mut R,
        opts: &TransferOptions,
    ) -> Result<R::Output, Error> {
        let mut attempt = 0u32;
        loop {
            let conn = self.current();
            req.resume = recv.resume();
            let result = match self.request_object(&conn, &req).await {
                // A damaged chunk is skipped and asked for again on its own.
                Ok(rx) => recv.take(rx.skipping_damaged_chunks(self.config.limits), opts.progress.as_ref()).await,
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(out) => return Ok(out),
                Err(e) if attempt < self.config.retries && worth_retrying(&e) => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            if matches!(e, Error::Decode(DecodeError::InconsistentItem { .. })) {
                // SPEC.md §8.4: the source changed under a resume: start over.
                tracing::info!(object = %req.name, attempt, error = %e, "the source changed: starting over");
                recv.restart();
            } else {
                let resuming = recv.resume().is_some();
                tracing::info!(object = %req.name, attempt, resuming, error = %e, "retrying");
            }
            self.backoff(attempt).await;
            if needs_new_connection(&e) {
                // A failed reconnect is one more failed attempt.
                while let Err(r) = self.reconnect(&conn).await {
                    if attempt >= self.config.retries || !worth_retrying(&r) {
                        return Err(r);
                    }
                    attempt += 1;
                    self.backoff(attempt).await;
                }
            }
        }
    }

    /// Requests object `name` and returns its frames as they arrive, for
    /// callers that consume objects themselves.
    ///
    /// # Errors
    ///
    /// As [`Client::get_file`], for the request and the response head.
    pub async fn get(&self, name: &str, opts: &TransferOptions) -> Result<FrameReceiver, Error> {
        let mut req = ObjectRequest::new(name);
        req.chunk_size = opts.chunk_size;
        self.get_request(&req).await
    }

    /// Sends a pull request built by hand (options, resume ranges) and
    /// returns the frames of the answer. With [`ObjectRequest::resume`] set,
    /// the frames skip what is not needed and the decoder allows the gaps
    /// (SPEC.md §8.4); the caller checks the assembled items' CRCs (an
    /// [`Assembler`](crate::recv::Assembler) does).
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn get_request(&self, req: &ObjectRequest) -> Result<FrameReceiver, Error> {
        self.request_object(&self.current(), req).await
    }

    async fn request_object(&self, conn: &Conn, req: &ObjectRequest) -> Result<FrameReceiver, Error> {
        if req.name.is_empty() {
            // `/objects/` is the listing (SPEC.md §8.8), not an object.
            return Err(Error::InvalidName { name: String::new(), reason: "empty" });
        }
        let mut path = object_path(&req.name);
        let query = req.to_query();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query);
        }
        let mut request = self.request(Method::GET, &path)?;
        if let Some(resume) = req.resume_header() {
            let value = http::HeaderValue::from_str(&resume).map_err(|_| Error::Protocol("resume header"))?;
            request.headers_mut().insert(RESUME_HEADER, value);
        }
        let mut send = conn.send.clone().ready().await.map_err(not_h2)?;
        let (response, _) = send.send_request(request, true)?;
        // The response head is progress too: no answer within the idle
        // timeout fails the request (retryable).
        let response = tokio::time::timeout(self.config.idle_timeout, response)
            .await
            .map_err(|_| Error::Timeout("response"))?
            .map_err(not_h2)?;
        let (head, body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(status_error(&head, body, &req.name).await);
        }
        let content_type = head.headers.get("content-type").and_then(|v| v.to_str().ok());
        if content_type != Some(CONTENT_TYPE) {
            return Err(Error::Protocol("response is not application/vnd.tensorwire"));
        }
        let rx = FrameReceiver::new(body, &self.config).metered(Arc::clone(&conn.meter));
        Ok(if req.resume.is_some() { rx.allowing_gaps(self.config.limits) } else { rx })
    }

    /// Pushes the file at `path` as object `name` (SPEC.md §8.3); returns
    /// once the server has verified and stored it. A push that fails on a
    /// lost connection is tried again, up to [`Config::retries`] times:
    /// every attempt names the same upload id (`tensorwire-upload`), and
    /// where the server kept what an earlier attempt sent
    /// ([`Config::upload_keep`]), only the chunks it lacks are sent again
    /// (SPEC.md §8.4, push resume).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::Safetensors`] for the local file,
    /// [`Error::Status`] when the server refuses or fails the object,
    /// [`Error::Cancelled`].
    pub async fn put_file(&self, path: impl AsRef<Path>, name: &str) -> Result<Transfer, Error> {
        self.put_file_with(path, name, &TransferOptions::default()).await
    }

    /// [`Client::put_file`] with options.
    ///
    /// # Errors
    ///
    /// As [`Client::put_file`].
    pub async fn put_file_with(
        &self,
        path: impl AsRef<Path>,
        name: &str,
        opts: &TransferOptions,
    ) -> Result<Transfer, Error> {
        let path = path.as_ref().to_path_buf();
        // SPEC.md §8.4, push resume: one id for every attempt of this push.
        let upload = upload_id();
        let mut attempt = 0u32;
        let mut needs: Option<Resume> = None;
        loop {
            let conn = self.current();
            let p = path.clone();
            let streamer = tokio::task::spawn_blocking(move || FileStreamer::open(p)).await.map_err(join)??;
            let streamer = streamer.with_name(name).with_chunk_size(self.config.chunk_size as usize);
            let total = streamer.len();
            // What the server holds verified is left out (SPEC.md §8.4).
            let frames = futures::stream::iter(streamer.frames()).filter(move |f| {
                let keep = match (f, &needs) {
                    (Ok(Frame::Chunk(c)), Some(r)) => r.wants(c.item, c.offset..c.offset + c.data.len() as u64),
                    _ => true,
                };
                std::future::ready(keep)
            });
            let e = match self.push(name, frames, Some(total), opts, Some(&upload)).await {
                Ok(t) => return Ok(t),
                Err(e) if attempt < self.config.retries && e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            self.backoff(attempt).await;
            if needs_new_connection(&e) {
                self.reconnect(&conn).await?;
            }
            needs = self.kept_upload(name, &upload).await;
            let resuming = needs.is_some();
            tracing::info!(object = %name, attempt, resuming, error = %e, "push failed; sending what the server lacks");
        }
    }

    /// What the server still needs of upload `id` (SPEC.md §8.4, push
    /// resume); `None`: it keeps none, send everything.
    async fn kept_upload(&self, name: &str, id: &str) -> Option<Resume> {
        let mut req = self.request(Method::HEAD, &object_path(name)).ok()?;
        req.headers_mut().insert(super::uploads::UPLOAD_HEADER, http::HeaderValue::from_str(id).ok()?);
        let mut send = self.current().send.clone().ready().await.ok()?;
        let (response, _) = send.send_request(req, true).ok()?;
        let response = tokio::time::timeout(self.config.idle_timeout, response).await.ok()?.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        Resume::parse(response.headers().get(RESUME_HEADER)?.to_str().ok()?).ok()
    }

    /// Pushes a container (SPEC.md §8.3): its tensors go out one at a time as
    /// the server's flow control allows, and the server's push handler (or
    /// its root) takes them. Returns once the server has accepted the object.
    ///
    /// # Errors
    ///
    /// As [`Client::put_file`].
    pub async fn put_container(&self, streamer: ContainerStreamer, opts: &TransferOptions) -> Result<Transfer, Error> {
        let header = streamer.object_header();
        let streamer = streamer.with_chunk_size(self.config.chunk_size as usize);
        self.push(&header.name, streamer.frames(), header.total_len, opts, None).await
    }

    /// Pulls a container object as a `Stream` of tensors, each yielded once
    /// verified (SPEC.md §8.2, `mode=container`); `items` selects tensors by
    /// name, in that order. Dropping the retriever cancels the transfer.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn retrieve(
        &self,
        name: &str,
        items: Option<&[String]>,
        opts: &TransferOptions,
    ) -> Result<ObjectRetriever<FrameStream>, Error> {
        let rx = self.get_request(&self.container_request(name, items, opts)).await?;
        Ok(ObjectRetriever::new(rx.into_stream()).with_progress(opts.progress.clone()))
    }

    fn container_request(&self, name: &str, items: Option<&[String]>, opts: &TransferOptions) -> ObjectRequest {
        let mut req = ObjectRequest::new(name);
        req.mode = Some(Mode::Container);
        req.quantize = opts.quantize;
        req.items = items.map(<[String]>::to_vec);
        req.chunk_size = opts.chunk_size;
        req
    }

    async fn push(
        &self,
        name: &str,
        frames: impl futures::Stream<Item = Result<Frame, Error>> + Send,
        total: Option<u64>,
        opts: &TransferOptions,
        upload: Option<&str>,
    ) -> Result<Transfer, Error> {
        cancellable(opts, async {
            let mut req = self.request(Method::PUT, &object_path(name))?;
            req.headers_mut().insert("content-type", http::HeaderValue::from_static(CONTENT_TYPE));
            if let Some(id) = upload {
                let id = http::HeaderValue::from_str(id).map_err(|_| Error::Protocol("upload id"))?;
                req.headers_mut().insert(super::uploads::UPLOAD_HEADER, id);
            }
            let mut send = self.current().send.clone().ready().await.map_err(not_h2)?;
            let (response, stream) = send.send_request(req, false)?;
            let mut tx = FrameSender::new(stream, &self.config);
            let progress = opts.progress.clone();
            let mut done = 0u64;
            let mut sent_end = None;
            let frames = frames.inspect(|f| match f {
                Ok(Frame::Chunk(c)) => {
                    done += c.data.len() as u64;
                    if let Some(p) = &progress {
                        p(Progress { done, total });
                    }
                }
                Ok(Frame::ObjectEnd(end)) => sent_end = Some(*end),
                _ => {}
            });
            let sent = send_all(&mut tx, frames).await;
            // The server may answer before reading everything (a refusal).
            let response = response.await.map_err(not_h2)?;
            let (head, body) = response.into_parts();
            if !head.status.is_success() {
                return Err(status_error(&head, body, name).await);
            }
            sent?;
            let body = read_small(body).await?;
            // What this side sent is what was pushed; where the server echoes
            // what it stored (file pushes do), the two must agree.
            let end = sent_end.ok_or(Error::Protocol("the pushed object had no object end"))?;
            let summary: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let echoed = |k: &str| summary.get(k).and_then(serde_json::Value::as_u64);
            let sent = [("len", end.len), ("items", end.items), ("crc", u64::from(end.crc))];
            if sent.iter().any(|(k, v)| echoed(k).is_some_and(|e| e != *v)) {
                return Err(Error::Protocol("the server stored a different object than the one sent"));
            }
            Ok(Transfer { len: end.len, items: end.items, crc: end.crc })
        })
        .await
    }

    fn request(&self, method: Method, path: &str) -> Result<Request<()>, Error> {
        Request::builder()
            .method(method)
            .uri(format!("{}://{}{path}", self.scheme(), self.authority))
            .header("tensorwire-version", "1")
            .body(())
            .map_err(|_| Error::InvalidName { name: path.to_string(), reason: "not a valid request path" })
    }
}

/// An HTTP/1.x server answers an HTTP/2 preface with a status line, which
/// h2 reads as a frame of invalid size: say what is really wrong.
fn not_h2(e: h2::Error) -> Error {
    if e.is_library() && e.reason() == Some(h2::Reason::FRAME_SIZE_ERROR) {
        return Error::Protocol("the server does not speak HTTP/2 with prior knowledge (an HTTP/1.1 server?)");
    }
    Error::from(e)
}

/// The header naming the item of a 404 for a missing item (SPEC.md §8.5).
pub(crate) const MISSING_ITEM: &str = "tensorwire-missing-item";

/// A receiver that keeps what it verified across streams.
trait Resumable {
    type Output;
    /// What to ask for next; `None`: everything.
    fn resume(&self) -> Option<Resume>;
    /// Forgets everything received.
    fn restart(&mut self);
    /// Takes one stream, to the object's end.
    async fn take(&mut self, rx: FrameReceiver, progress: Option<&ProgressFn>) -> Result<Self::Output, Error>;
}

impl Resumable for FileReceive {
    type Output = super::body::Received;

    fn resume(&self) -> Option<Resume> {
        FileReceive::resume(self)
    }

    fn restart(&mut self) {
        FileReceive::restart(self);
    }

    async fn take(&mut self, rx: FrameReceiver, progress: Option<&ProgressFn>) -> Result<Self::Output, Error> {
        FileReceive::take(self, rx, progress).await
    }
}

impl Resumable for ContainerFile {
    type Output = u64;

    fn resume(&self) -> Option<Resume> {
        let missing = self.missing()?;
        let mut r = Resume::default();
        for (item, ranges) in missing {
            r.need(item, ranges);
        }
        Some(r)
    }

    fn restart(&mut self) {
        ContainerFile::restart(self);
    }

    async fn take(&mut self, rx: FrameReceiver, progress: Option<&ProgressFn>) -> Result<u64, Error> {
        self.set_progress(progress.cloned());
        self.tolerating_damaged_chunks(crate::recv::MAX_DAMAGED_CHUNKS);
        ContainerFile::take(self, &mut rx.into_stream()).await
    }
}

/// A fresh upload id (SPEC.md §8.4): 32 hex digits from the standard
/// library's randomly seeded hasher, the time, the process and a counter.
/// Not a secret: the server binds it to the pusher's identity.
fn upload_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for (i, h) in halves.iter_mut().enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(now);
        hasher.write_u64(n);
        hasher.write_u32(std::process::id());
        hasher.write_usize(i);
        *h = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

/// The first wait between retries; it doubles each time.
const RETRY_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a failed pull is worth asking again: the connection or the
/// stream failed, nothing arrived in time, or the bytes arrived damaged (a
/// decode error: what was verified is kept, the rest is asked for again).
fn worth_retrying(e: &Error) -> bool {
    e.is_retryable() || matches!(e, Error::Decode(_))
}

/// Whether the connection itself should be replaced before retrying.
fn needs_new_connection(e: &Error) -> bool {
    !matches!(e, Error::Decode(_) | Error::Aborted { .. } | Error::Status { .. })
}

/// Opens HTTP/2 over `io`: handshake, flow-control task, driver; returns
/// once the peer answered a PING, or fails at `deadline`.
async fn open<IO>(io: IO, config: &Config, deadline: tokio::time::Instant) -> Result<Conn, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::client::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.frame_size())
        .max_send_buffer_size(config.max_send_buffer)
        .handshake::<_, EncodedFrame>(io);
    let (send, mut conn) =
        tokio::time::timeout_at(deadline, handshake).await.map_err(|_| Error::Timeout("HTTP/2 handshake"))??;
    let ping = conn.ping_pong().ok_or(Error::Protocol("h2 connection without a PING handle"))?;
    let flow = flow::spawn(ping, config);
    let (meter, dead, windows) = (Arc::clone(&flow.meter), flow.dead.clone(), flow.windows.clone());
    let (failed_tx, failed) = tokio::sync::oneshot::channel();
    tokio::spawn(drive(conn, flow.windows, flow.dead, failed_tx));
    match tokio::time::timeout_at(deadline, flow.ready).await {
        Ok(Ok(_rtt)) => Ok(Conn { send, meter, windows }),
        // The flow task ended: the connection failed before any answer. Say
        // why (a TLS alert, an HTTP/1.1 server), as the connection saw it.
        Ok(Err(_)) => {
            dead.cancel();
            match tokio::time::timeout(std::time::Duration::from_millis(200), failed).await {
                Ok(Ok(e)) => Err(not_h2(e)),
                _ => Err(Error::Protocol("connection closed during the HTTP/2 handshake")),
            }
        }
        Err(_) => {
            dead.cancel();
            Err(Error::Timeout("HTTP/2 handshake"))
        }
    }
}

/// Drives an h2 client connection: applies the windows the flow task
/// proposes, and drops the connection when the peer is found dead. The
/// connection ends by itself once every handle and stream is gone; the flow
/// task is then stopped.
async fn drive<T>(
    conn: h2::client::Connection<T, EncodedFrame>,
    windows: tokio::sync::watch::Receiver<Windows>,
    dead: CancellationToken,
    failed: tokio::sync::oneshot::Sender<h2::Error>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let _stop_flow = dead.clone().drop_guard();
    drive_until_dead(conn, windows, dead, failed).await;
}

async fn drive_until_dead<T>(
    mut conn: h2::client::Connection<T, EncodedFrame>,
    mut windows: tokio::sync::watch::Receiver<Windows>,
    dead: CancellationToken,
    failed: tokio::sync::oneshot::Sender<h2::Error>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            ended = &mut conn => {
                // Whoever opened the connection may want to know why.
                if let Err(e) = ended {
                    let _ = failed.send(e);
                }
                return;
            }
            _ = dead.cancelled() => return,
            changed = windows.changed() => {
                if changed.is_err() {
                    break;
                }
                let w = *windows.borrow_and_update();
                conn.set_target_window_size(w.connection);
                if conn.set_initial_window_size(w.stream).is_err() {
                    return;
                }
            }
        }
    }
    tokio::select! {
        _ = conn => {}
        _ = dead.cancelled() => {}
    }
}

/// Runs `fut` unless the options' token is cancelled first; dropping `fut`
/// drops its streams, which resets them with `CANCEL`.
async fn cancellable<T>(
    opts: &TransferOptions,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match &opts.cancel {
        Some(token) => tokio::select! {
            r = fut => r,
            _ = token.cancelled() => Err(Error::Cancelled),
        },
        None => fut.await,
    }
}

async fn status_error(head: &http::response::Parts, body: h2::RecvStream, name: &str) -> Error {
    let status = head.status;
    if status == StatusCode::NOT_FOUND {
        // SPEC.md §8.5: a missing item is named in a header.
        let item = head.headers.get(MISSING_ITEM).and_then(|v| v.to_str().ok());
        return match item.and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok()) {
            Some(item) => Error::ItemNotFound { object: name.to_string(), item: item.into_owned() },
            None => Error::NotFound { name: name.to_string() },
        };
    }
    let body = read_small(body).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_string();
    Error::Status { status: status.as_u16(), message }
}

/// Reads a short response body (at most 64 KiB).
async fn read_small(mut body: h2::RecvStream) -> Result<Bytes, Error> {
    let mut out = Vec::new();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        if out.len() + data.len() > 64 << 10 {
            return Err(Error::Protocol("response body too long"));
        }
        out.extend_from_slice(&data);
    }
    Ok(out.into())
}
