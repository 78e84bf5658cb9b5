//! [`Server`]: serves a [`Registry`] over HTTP/2 (SPEC.md §8).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::auth::{KeyedLimiter, KeyedPermit};
use super::body::{join, receive_file, FrameReceiver, FrameSender};
use super::tls::{handshake_error, Cleartext};
use super::{Config, EventFn, Identity, Peer, Registry, ServerEvent};
use futures::StreamExt;

use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Abort, AbortCode, EncodedFrame, Frame, CONTENT_TYPE};
use crate::Error;

/// An HTTP/2 server for the objects of a [`Registry`]: `GET
/// /objects/{name}` streams a file, `PUT /objects/{name}` receives one
/// (SPEC.md §8.2, §8.3). Cleartext with prior knowledge (h2c), or TLS 1.3
/// with ALPN `h2` when [`Config::server_tls`] is set; with a client CA in
/// that config the client's verified [`Identity`] is each request's
/// [`Peer`], which the registry's access rules check (SPEC.md §8.9).
///
/// Every transfer is its own HTTP/2 stream; many share a connection. A
/// sender sends only against the capacity the client grants, so a slow
/// client slows its own transfers and nothing is buffered on its behalf.
///
/// ```no_run
/// use tensorwire::transport::{Config, Registry, Server};
/// # async fn run() -> Result<(), tensorwire::Error> {
/// let server = Server::bind("127.0.0.1:7470", Registry::root("/srv/models")?, Config::default()).await?;
/// let handle = server.handle();
/// tokio::spawn(async move { tokio::signal::ctrl_c().await.ok(); handle.shutdown() });
/// server.run().await?; // returns once shut down and every transfer has ended
/// # Ok(())
/// # }
/// # fn main() { let _ = run(); }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

struct Shared {
    registry: Registry,
    config: Config,
    active: Arc<AtomicUsize>,
    started: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    events: Option<EventFn>,
    identity_connections: KeyedLimiter,
    identity_streams: KeyedLimiter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("registry", &self.registry)
            .field("config", &self.config)
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(registry: Registry, config: Config) -> Self {
        Shared {
            registry,
            config,
            active: Arc::default(),
            started: Arc::default(),
            sent: Arc::default(),
            events: None,
            identity_connections: KeyedLimiter::default(),
            identity_streams: KeyedLimiter::default(),
        }
    }

    fn event(&self, event: ServerEvent) {
        if let Some(f) = &self.events {
            f(&event);
        }
    }
}

/// One connection's peer, and whether its identity is over its bound.
struct Connection {
    peer: Peer,
    over_limit: bool,
}

/// Stops a running [`Server`] gracefully, and reports on it.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    active: Arc<AtomicUsize>,
    started: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl ServerHandle {
    /// Stops accepting connections and asks every connection to close once
    /// its transfers are done (HTTP/2 GOAWAY).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Requests being handled right now (a cancelled transfer stops counting
    /// as soon as the server has noticed the reset).
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Requests accepted since the server started (finished ones included).
    pub fn requests_started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Waits until at least one request has been handled and none is in
    /// flight (polling every millisecond): for tools that serve one
    /// transfer and stop.
    pub async fn first_transfers_done(&self) {
        while self.requests_started() == 0 || self.active_requests() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Response-body bytes handed to HTTP/2 so far, all transfers together:
    /// only what receivers granted flow-control capacity for.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Counts a request as active for as long as it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(Arc::clone(counter))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Binds a listener.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs, registry: Registry, config: Config) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared::new(registry, config));
        Ok(Server { listener, shared, shutdown })
    }

    /// Sends the server's [`ServerEvent`]s (each request with its peer and
    /// status; refused connections) to `events`, for a log.
    pub fn with_events(mut self, events: EventFn) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.events = Some(events);
        }
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// A handle that shuts the server down.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: self.shutdown.clone(),
            active: Arc::clone(&self.shared.active),
            started: Arc::clone(&self.shared.started),
            sent: Arc::clone(&self.shared.sent),
        }
    }

    /// Accepts connections until shut down, then waits for every connection
    /// to finish its transfers.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when accepting fails.
    pub async fn run(self) -> Result<(), Error> {
        let mut stop = self.shutdown.subscribe();
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (tcp, addr) = accepted?;
                    let _ = tcp.set_nodelay(true);
                    let shared = Arc::clone(&self.shared);
                    let stop = self.shutdown.subscribe();
                    connections.spawn(async move { accept(tcp, addr, shared, stop).await });
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        while connections.join_next().await.is_some() {}
        Ok(())
    }

    /// Serves one connection over any IO (a `tokio::io::duplex` pipe in
    /// tests), until the client closes it.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the HTTP/2 handshake or connection fails.
    pub async fn serve_connection<IO>(io: IO, registry: Registry, config: Config) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (_never, stop) = watch::channel(false);
        let conn = Connection { peer: Peer::anonymous(None), over_limit: false };
        serve(io, Arc::new(Shared::new(registry, config)), stop, Arc::new(conn)).await
    }
}

/// One accepted TCP connection: the TLS handshake when the server has TLS
/// (the client's certificate verified there becomes the peer's identity),
/// the identity's connection bound, then HTTP/2. A connection that fails
/// before its first request is reported as [`ServerEvent::ConnectionFailed`].
async fn accept(tcp: tokio::net::TcpStream, addr: SocketAddr, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let result = match shared.config.server_tls.clone() {
        Some(tls) => {
            let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).into_fallible();
            match tokio::time::timeout(shared.config.connect_timeout, handshake).await {
                Err(_) => Err(Error::Timeout("TLS handshake")),
                Ok(Err((e, tcp))) => {
                    linger(tcp).await;
                    Err(handshake_error(e))
                }
                Ok(Ok(stream)) => match peer_of(&stream, addr) {
                    Ok(peer) => serve_peer(stream, peer, &shared, stop).await,
                    Err(e) => Err(e),
                },
            }
        }
        None => serve_peer(Cleartext::server(tcp), Peer::anonymous(Some(addr)), &shared, stop).await,
    };
    if let Err(e) = result {
        shared.event(ServerEvent::ConnectionFailed { addr, error: e.to_string() });
    }
}

/// Closes a connection whose TLS handshake failed so that the client reads
/// the alert that says why. A TLS 1.3 client sends its first requests right
/// behind its certificate; closing with those unread would reset the
/// connection (RST), and the client would see "connection reset" instead
/// of the alert. So: send FIN, then read and drop what the client still
/// sends, for at most a second and 1 MiB.
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 16 << 10];
        let mut left = 1usize << 20;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// The peer of a TLS connection: its verified client certificate's names.
fn peer_of(stream: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>, addr: SocketAddr) -> Result<Peer, Error> {
    // SPEC.md §8.1: over TLS the protocol MUST be HTTP/2 (ALPN "h2"); a
    // client that offered no ALPN at all is taken as h2 with prior knowledge.
    let session = stream.get_ref().1;
    if session.alpn_protocol().is_some_and(|p| p != super::ALPN_H2) {
        return Err(Error::Protocol("TLS client negotiated a protocol other than h2"));
    }
    match session.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => Ok(Peer::verified(Some(addr), Identity::from_der(leaf)?)),
        None => Ok(Peer::anonymous(Some(addr))),
    }
}

async fn serve_peer<IO>(io: IO, peer: Peer, shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // SPEC.md §8.9: connections are bounded per verified identity.
    let permit: Option<KeyedPermit> = match peer.identity() {
        Some(id) => shared.identity_connections.try_acquire(id, shared.config.max_connections_per_identity),
        None => None,
    };
    let over_limit = peer.identity().is_some() && permit.is_none();
    if over_limit {
        shared.event(ServerEvent::IdentityOverLimit { peer: peer.clone() });
    }
    let conn = Arc::new(Connection { peer, over_limit });
    let result = serve(io, Arc::clone(shared), stop, conn).await;
    drop(permit);
    result
}

async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    conn_info: Arc<Connection>,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = &shared.config;
    let mut conn = h2::server::Builder::new()
        .initial_window_size(c.stream_window)
        .initial_connection_window_size(c.connection_window)
        .max_frame_size(c.frame_size())
        .max_send_buffer_size(c.max_send_buffer)
        .max_concurrent_streams(c.max_concurrent_streams)
        .handshake::<_, EncodedFrame>(io)
        .await?;
    let mut requests = JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let shared = Arc::clone(&shared);
                    let conn_info = Arc::clone(&conn_info);
                    requests.spawn(async move { handle(req, respond, &shared, &conn_info).await });
                }
                Some(Err(e)) => {
                    if e.is_io() || e.is_go_away() { break } else { return Err(e.into()) }
                }
                None => break,
            },
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
    while requests.join_next().await.is_some() {}
    Ok(())
}

async fn handle(req: Request<RecvStream>, mut respond: SendResponse<EncodedFrame>, shared: &Shared, conn: &Connection) {
    let _active = ActiveGuard::new(&shared.active);
    shared.started.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let result = match bounded(shared, conn) {
        Err(reply) => Err(reply),
        Ok(_permit) => match *req.method() {
            Method::GET => get(&req, &mut respond, shared, &conn.peer).await,
            Method::PUT => put(req, &mut respond, shared, &conn.peer).await,
            _ => Err(Reply::status(StatusCode::METHOD_NOT_ALLOWED, "only GET and PUT")),
        },
    };
    if shared.events.is_some() {
        let name = path.strip_prefix(super::OBJECTS_PATH).unwrap_or(&path).to_string();
        let (status, message) = match &result {
            Ok(status) => (status.as_u16(), None),
            Err(reply) => (reply.status.as_u16(), Some(reply.message.clone())),
        };
        shared.event(ServerEvent::Request { peer: conn.peer.clone(), method, name, status, message });
    }
    if let Err(reply) = result {
        let resp = Response::builder()
            .status(reply.status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(())
            .unwrap_or_default();
        if let Ok(mut stream) = respond.send_response(resp, false) {
            let _ = stream.send_data(EncodedFrame::from_bytes(Bytes::from(reply.message + "\n")), true);
        }
    }
}

/// SPEC.md §8.9: requests are bounded per verified identity, across its
/// connections; a connection over its identity's bound gets only `503`s.
fn bounded(shared: &Shared, conn: &Connection) -> Result<Option<KeyedPermit>, Reply> {
    let busy = |what: &str| {
        Reply::status(StatusCode::SERVICE_UNAVAILABLE, format!("{}: too many {what} for this identity", conn.peer))
    };
    if conn.over_limit {
        return Err(busy("connections"));
    }
    match conn.peer.identity() {
        Some(id) => shared
            .identity_streams
            .try_acquire(id, shared.config.max_streams_per_identity)
            .map(Some)
            .ok_or_else(|| busy("concurrent requests")),
        None => Ok(None),
    }
}

/// An error status with a message, for failures before the body starts.
struct Reply {
    status: StatusCode,
    message: String,
}

impl Reply {
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Reply { status, message: message.into() }
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidName { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::Tensor { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Safetensors(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Decode(_) | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Reply::status(status, e.to_string())
    }
}

fn query<'a>(req: &'a Request<RecvStream>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn get(
    req: &Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    peer: &Peer,
) -> Result<StatusCode, Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    // SPEC.md §8.9: a pull is checked against the pull rules before the
    // object is looked up, so a refused peer learns nothing about it.
    shared.registry.authorize_get(peer, &name)?;
    let chunk = match query(req, "chunk_size") {
        Some(v) => v.parse::<u32>().map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "bad chunk_size"))?,
        None => shared.config.chunk_size,
    };
    let chunk = chunk.clamp(1, shared.config.limits.max_payload.min(crate::wire::Limits::DEFAULT_MAX_PAYLOAD)) as usize;
    let items = match query(req, "items") {
        Some(list) => Some(decode_list(list)?),
        None => None,
    };
    let quantize = match query(req, "quantize") {
        Some(q) => Some(
            crate::quant::Scheme::parse(q)
                .ok_or_else(|| Reply::status(StatusCode::BAD_REQUEST, format!("unknown quantization scheme {q:?}")))?,
        ),
        None => None,
    };
    let container = shared.registry.container(&name);
    let mode = query(req, "mode").unwrap_or(if container.is_some() { "container" } else { "file" });
    let (frames, len, count): (futures::stream::BoxStream<'static, Result<Frame, Error>>, Option<u64>, Option<u64>) =
        match (mode, container) {
            ("container", Some(model)) => {
                container_frames(ContainerStreamer::from_map(name, model), chunk, items, quantize)?
            }
            ("container", None) => {
                let path = shared.registry.resolve(&name)?;
                let streamer = blocking(move || ContainerStreamer::open_safetensors(path)).await?.with_name(name);
                container_frames(streamer, chunk, items, quantize)?
            }
            ("file", None) if items.is_none() && quantize.is_none() => {
                let path = shared.registry.resolve(&name)?;
                let streamer = blocking(move || FileStreamer::open(path)).await?;
                let streamer = streamer.with_name(name).with_chunk_size(chunk);
                let len = streamer.len();
                (futures::stream::iter(streamer.frames()).boxed(), Some(len), Some(1))
            }
            _ => {
                return Err(Reply::status(
                    StatusCode::BAD_REQUEST,
                    format!("mode {mode:?} with these options is not served for this object"),
                ))
            }
        };
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", CONTENT_TYPE)
        .header("tensorwire-version", "1");
    if let Some(n) = count {
        resp = resp.header("tensorwire-items", n);
    }
    if let Some(n) = len {
        resp = resp.header("tensorwire-length", n);
    }
    let resp = resp.body(()).map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let stream = respond.send_response(resp, false).map_err(Error::from)?;
    let mut tx = FrameSender::new(stream, &shared.config).counting(Arc::clone(&shared.sent));
    // From here on failures reach the client as an abort frame or a reset.
    let _ = send_all(&mut tx, frames).await;
    Ok(StatusCode::OK)
}

type Frames = futures::stream::BoxStream<'static, Result<Frame, Error>>;

fn container_frames(
    streamer: ContainerStreamer,
    chunk: usize,
    items: Option<Vec<String>>,
    quantize: Option<crate::quant::Scheme>,
) -> Result<(Frames, Option<u64>, Option<u64>), Reply> {
    let mut streamer = streamer.with_chunk_size(chunk);
    if let Some(items) = items {
        streamer = streamer.select(&items)?;
    }
    if let Some(scheme) = quantize {
        streamer = streamer.quantize(scheme);
    }
    let header = streamer.object_header();
    Ok((streamer.frames().boxed(), header.total_len, header.items))
}

/// A comma-separated list of percent-encoded names.
fn decode_list(list: &str) -> Result<Vec<String>, Reply> {
    list.split(',')
        .map(|n| {
            percent_encoding::percent_decode_str(n)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "item names must be UTF-8"))
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(join)?
}

/// Sends every frame and ends the stream; a local failure becomes an abort
/// frame (or a reset, if even that cannot be sent).
pub(crate) async fn send_all(
    tx: &mut FrameSender,
    frames: impl futures::Stream<Item = Result<Frame, Error>>,
) -> Result<(), Error> {
    let mut result = Ok(());
    let mut frames = std::pin::pin!(frames);
    while let Some(frame) = frames.next().await {
        let sent = match frame {
            Ok(f) => tx.send_frame(f).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => tx.finish().await,
        // The stream itself failed (a reset by the peer): nothing to tell it.
        Err(Error::Http(e)) => Err(Error::Http(e)),
        Err(e) => {
            let abort = Frame::Abort(Abort::new(AbortCode::INTERNAL, e.to_string()));
            if tx.send_frame(abort).await.is_err() || tx.finish().await.is_err() {
                tx.reset(h2::Reason::INTERNAL_ERROR);
            }
            Err(e)
        }
    }
}

async fn put(
    req: Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    peer: &Peer,
) -> Result<StatusCode, Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    // SPEC.md §8.9: a push MUST be authorized before any byte of its body
    // is read or anything is written.
    shared.registry.authorize_push(peer, &name)?;
    // SPEC.md §8.1: a pushed body must say what it is.
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some(CONTENT_TYPE) {
        return Err(Reply::status(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("expected {CONTENT_TYPE}")));
    }
    let mut rx = FrameReceiver::new(req.into_body(), &shared.config);
    let body = if let Some(handler) = shared.registry.push_handler() {
        handler(name.clone(), peer.clone(), ObjectRetriever::new(rx.into_stream())).await?;
        format!(r#"{{"name":{}}}"#, serde_json::Value::from(name))
    } else {
        let dest = shared.registry.resolve_for_write(&name)?;
        let got = receive_file(&mut rx, &dest, None).await?;
        format!(r#"{{"items":{},"len":{},"crc":{}}}"#, got.items, got.len, got.crc)
    };
    let resp = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(())
        .map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut stream = respond.send_response(resp, false).map_err(Error::from)?;
    stream.send_data(EncodedFrame::from_bytes(Bytes::from(body)), true).map_err(Error::from)?;
    Ok(StatusCode::CREATED)
}
