//! [`Server`]: serves a [`Registry`] over HTTP/2 (SPEC.md §8).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::{join, receive_into, FrameReceiver, FrameSender};
use super::written::{SendGate, Written};
use super::{Config, Registry};
use futures::StreamExt;

use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Abort, AbortCode, Budget, EncodedFrame, Frame, CONTENT_TYPE};
use crate::Error;

/// An HTTP/2 server (cleartext, prior knowledge) for the objects of a
/// [`Registry`]: `GET /objects/{name}` streams a file, `PUT /objects/{name}`
/// receives one (SPEC.md §8.2, §8.3).
///
/// Every transfer is its own HTTP/2 stream; many share a connection. A
/// sender sends only against the capacity the client grants, so a slow
/// client slows its own transfers and nothing is buffered on its behalf.
///
/// What peers can make it hold is bounded by [`Config`]'s connection,
/// stream, header, timeout and byte-budget fields (SPEC.md §8.7); a failed
/// `accept()` is logged and backed off, never fatal. When it binds, it
/// removes upload files an earlier run left behind.
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

#[derive(Debug)]
struct Shared {
    registry: Registry,
    config: Config,
    stats: Arc<Stats>,
    /// What all connections together may make the server hold.
    budget: Budget,
    /// Open connections per peer address.
    peers: Mutex<HashMap<IpAddr, usize>>,
    /// Files held open by transfers.
    files: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn new(registry: Registry, config: Config) -> Self {
        let budget = Budget::new(config.max_pinned);
        let files = Arc::new(tokio::sync::Semaphore::new(config.max_open_files));
        Shared { registry, config, stats: Arc::default(), budget, peers: Mutex::default(), files }
    }

    /// A place for one more open file, or 503 (SPEC.md §8.5: at capacity).
    fn open_file_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Arc::clone(&self.files).try_acquire_owned().map_err(|_| Error::AtCapacity("files open for transfers"))
    }
}

/// Counters a [`ServerHandle`] reads.
#[derive(Debug, Default)]
struct Stats {
    active: AtomicUsize,
    started: AtomicU64,
    sent: Arc<AtomicU64>,
    connections: AtomicUsize,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    stale_removed: AtomicU64,
    /// Connection and request tasks spawned and not yet reaped.
    tasks: AtomicUsize,
}

/// Stops a running [`Server`] gracefully, and reports on it.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    stats: Arc<Stats>,
    budget: Budget,
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
        self.stats.active.load(Ordering::SeqCst)
    }

    /// Requests accepted since the server started (finished ones included).
    pub fn requests_started(&self) -> u64 {
        self.stats.started.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Connections closed at once because [`Config::max_connections`] or
    /// [`Config::max_connections_per_peer`] was reached.
    pub fn connections_refused(&self) -> u64 {
        self.stats.refused.load(Ordering::SeqCst)
    }

    /// Failed `accept()` calls (out of file descriptors, for one), each
    /// logged and followed by a back-off; the server keeps running.
    pub fn accept_errors(&self) -> u64 {
        self.stats.accept_errors.load(Ordering::SeqCst)
    }

    /// Connection and request tasks the server holds: running ones, and
    /// finished ones not yet reaped (reaping happens as they finish, so this
    /// falls back to the number running).
    pub fn tasks_held(&self) -> usize {
        self.stats.tasks.load(Ordering::SeqCst)
    }

    /// Temporary upload files left by an earlier run that were removed
    /// when the server bound.
    pub fn stale_uploads_removed(&self) -> u64 {
        self.stats.stale_removed.load(Ordering::SeqCst)
    }

    /// Bytes peers make the server hold right now beyond flow-control
    /// windows (partial frames, remembered names, frames being sent), out of
    /// [`Config::max_pinned`].
    pub fn pinned_bytes(&self) -> u64 {
        self.budget.used()
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
        self.stats.sent.load(Ordering::SeqCst)
    }
}

/// Counts a request as active for as long as it lives.
struct ActiveGuard(Arc<Stats>);

impl ActiveGuard {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(Arc::clone(stats))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's place in the server's limits, given back on drop.
struct Slot {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl Slot {
    /// Takes a place for a connection from `peer`, if both the total and the
    /// per-peer limit allow it.
    fn take(shared: &Arc<Shared>, peer: IpAddr) -> Option<Slot> {
        let c = &shared.config;
        let mut peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        let total = shared.stats.connections.load(Ordering::SeqCst);
        let from_peer = peers.get(&peer).copied().unwrap_or(0);
        if total >= c.max_connections || from_peer >= c.max_connections_per_peer {
            return None;
        }
        peers.insert(peer, from_peer + 1);
        shared.stats.connections.fetch_add(1, Ordering::SeqCst);
        Some(Slot { shared: Arc::clone(shared), peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut peers = self.shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
        self.shared.stats.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The shortest and longest pause after a failed `accept()`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Whether an `accept()` error concerns only the connection being accepted
/// (retry at once) rather than the process (back off: out of descriptors or
/// memory).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted | WouldBlock)
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
        // Uploads interrupted by a crash or a kill of an earlier run.
        let stale = match shared.registry.remove_stale_uploads() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for temporary upload files left by an earlier run");
                0
            }
        };
        if stale > 0 {
            tracing::info!(removed = stale, "removed temporary upload files left by an earlier run");
        }
        shared.stats.stale_removed.store(stale, Ordering::SeqCst);
        Ok(Server { listener, shared, shutdown })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// A handle that shuts the server down.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: self.shutdown.clone(),
            stats: Arc::clone(&self.shared.stats),
            budget: self.shared.budget.clone(),
        }
    }

    /// Accepts connections until shut down, then waits for every connection
    /// to finish its transfers.
    ///
    /// A failed `accept()` (out of file descriptors, say) is logged and
    /// followed by a back-off of 10 ms doubling up to 1 s; it never ends the
    /// server. Connections beyond [`Config::max_connections`] or
    /// [`Config::max_connections_per_peer`] are accepted and closed at once.
    /// Finished connections are reaped as they finish.
    ///
    /// # Errors
    ///
    /// None so far; the `Result` leaves room for failures to come.
    pub async fn run(self) -> Result<(), Error> {
        let mut stop = self.shutdown.subscribe();
        let mut connections = JoinSet::new();
        let mut backoff = Duration::ZERO;
        let mut pause = None;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff = Duration::ZERO;
                        let Some(slot) = Slot::take(&self.shared, peer.ip()) else {
                            self.shared.stats.refused.fetch_add(1, Ordering::SeqCst);
                            tracing::debug!(%peer, "connection limit reached; closing");
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        let shared = Arc::clone(&self.shared);
                        let stop = self.shutdown.subscribe();
                        self.shared.stats.tasks.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(async move {
                            let _slot = slot;
                            if let Err(e) = serve(tcp, shared, stop).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) => {
                        self.shared.stats.accept_errors.fetch_add(1, Ordering::SeqCst);
                        backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                        pause = Some(backoff);
                    }
                },
                // Reaps finished connections as they finish.
                Some(_) = connections.join_next(), if !connections.is_empty() => {
                    self.shared.stats.tasks.fetch_sub(1, Ordering::SeqCst);
                }
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Some(pause) = pause.take() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        while connections.join_next().await.is_some() {
            self.shared.stats.tasks.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Serves one connection over any IO (a `tokio::io::duplex` pipe in
    /// tests), until the client closes it, with the same timeouts and
    /// per-connection bounds as [`Server::run`] gives each connection.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the HTTP/2 handshake or connection fails,
    /// [`Error::Timeout`] when the handshake takes longer than
    /// [`Config::handshake_timeout`].
    pub async fn serve_connection<IO>(io: IO, registry: Registry, config: Config) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (_never, stop) = watch::channel(false);
        serve(io, Arc::new(Shared::new(registry, config)), stop).await
    }
}

/// Drives one connection: the handshake within its timeout, then requests
/// (each its own task, reaped as it finishes) until the peer closes, the
/// server shuts down, or the connection has had no request in flight for
/// [`Config::idle_connection_timeout`].
async fn serve<IO>(io: IO, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = &shared.config;
    // What this connection's streams may leave queued in h2, unwritten: a
    // peer that never reads its socket holds at most this much.
    let gate = SendGate::new(2 * c.max_send_buffer as u64);
    let io = Written::new(io, Arc::clone(&gate));
    let handshake = h2::server::Builder::new()
        .initial_window_size(c.stream_window)
        .initial_connection_window_size(c.connection_window)
        .max_frame_size(c.frame_size())
        .max_send_buffer_size(c.max_send_buffer)
        .max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(c.max_header_list_size)
        .handshake::<_, EncodedFrame>(io);
    let mut conn = tokio::time::timeout(c.handshake_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout("the HTTP/2 handshake"))??;
    // What this connection's streams may make the server hold.
    let budget = shared.budget.child(c.max_pinned_per_connection);
    let mut requests = JoinSet::new();
    let mut stopping = false;
    let idle = tokio::time::sleep(c.idle_connection_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let shared = Arc::clone(&shared);
                    let (budget, gate) = (budget.clone(), Arc::clone(&gate));
                    shared.stats.tasks.fetch_add(1, Ordering::SeqCst);
                    requests.spawn(async move { handle(req, respond, &shared, budget, gate).await });
                }
                Some(Err(e)) => {
                    if e.is_io() || e.is_go_away() { break } else { return Err(e.into()) }
                }
                None => break,
            },
            // Reaps finished requests as they finish; the idle clock starts
            // when the last one is done.
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                shared.stats.tasks.fetch_sub(1, Ordering::SeqCst);
                if requests.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + c.idle_connection_timeout);
                }
            }
            () = &mut idle, if requests.is_empty() => {
                if stopping {
                    // GOAWAY was sent one timeout ago and the peer has not
                    // closed: close it from this side.
                    break;
                }
                stopping = true;
                conn.graceful_shutdown();
                idle.as_mut().reset(tokio::time::Instant::now() + c.handshake_timeout);
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
    while requests.join_next().await.is_some() {
        shared.stats.tasks.fetch_sub(1, Ordering::SeqCst);
    }
    Ok(())
}

async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse<EncodedFrame>,
    shared: &Shared,
    budget: Budget,
    gate: Arc<SendGate>,
) {
    let _active = ActiveGuard::new(&shared.stats);
    shared.stats.started.fetch_add(1, Ordering::SeqCst);
    let result = match *req.method() {
        Method::GET => get(&req, &mut respond, shared, budget, gate).await,
        Method::PUT => put(req, &mut respond, shared, budget).await,
        _ => Err(Reply::status(StatusCode::METHOD_NOT_ALLOWED, "only GET and PUT")),
    };
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

/// An error status with a message, for failures before the body starts.
#[derive(Debug)]
pub(crate) struct Reply {
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
        // SPEC.md §8.5: the status says whose fault it was.
        let status = match &e {
            Error::InvalidName { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Decode(d) if d.is_limit() => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Tensor { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Safetensors(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Decode(_) | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::AtCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Reply::status(status, e.to_string())
    }
}

/// The value of `key` in a query string (the first one).
fn query<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// What a pull asks for (SPEC.md §8.2), parsed from its path and query.
#[derive(Debug)]
pub(crate) struct PullRequest {
    pub(crate) name: String,
    pub(crate) chunk: usize,
    pub(crate) items: Option<Vec<String>>,
    pub(crate) quantize: Option<crate::quant::Scheme>,
    pub(crate) mode: Option<String>,
}

impl PullRequest {
    /// Parses `uri`; nothing is opened.
    pub(crate) fn parse(uri: &http::Uri, registry: &Registry, config: &Config) -> Result<Self, Reply> {
        let name = registry.decode_name(uri.path())?;
        let q = uri.query();
        let chunk = match query(q, "chunk_size") {
            Some(v) => v.parse::<u32>().map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "bad chunk_size"))?,
            None => config.chunk_size,
        };
        // SPEC.md §8.2: the server MAY send smaller chunks than asked for.
        let chunk = chunk.clamp(1, config.limits.max_payload.min(crate::wire::Limits::DEFAULT_MAX_PAYLOAD)) as usize;
        let items = query(q, "items").map(decode_list).transpose()?;
        let quantize = match query(q, "quantize") {
            Some(v) => Some(crate::quant::Scheme::parse(v).ok_or_else(|| {
                Reply::status(
                    StatusCode::BAD_REQUEST,
                    format!("unknown quantization scheme {:?}", crate::wire::meta_truncate(v)),
                )
            })?),
            None => None,
        };
        let mode = query(q, "mode").map(str::to_string);
        Ok(PullRequest { name, chunk, items, quantize, mode })
    }
}

/// Fuzz shim (`fuzz/fuzz_targets/request.rs`): a request line and headers
/// through the server's parsing, which must answer a value or a 4xx, never
/// panic, and accept only names that stay under the root and round-trip
/// through [`object_path`](super::object_path).
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_request(target: &str, headers: &[(&[u8], &[u8])]) {
    let registry = Registry::new();
    let config = Config::default();
    if let Ok(name) = registry.decode_name(target.split('?').next().unwrap_or_default()) {
        assert!(!name.is_empty() && !name.starts_with('/'), "{name:?}");
        assert!(!name.contains('\\') && !name.contains('\0'), "{name:?}");
        assert!(name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{name:?}");
        let again = registry.decode_name(&super::object_path(&name));
        assert_eq!(again.as_deref().ok(), Some(name.as_str()), "{name:?} does not round-trip");
    }
    if let Ok(uri) = target.parse::<http::Uri>() {
        match PullRequest::parse(&uri, &registry, &config) {
            Ok(r) => assert!((1..=config.limits.max_payload as usize).contains(&r.chunk)),
            Err(reply) => assert!(reply.status.is_client_error(), "{}: {}", reply.status, reply.message),
        }
    }
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v)) {
            map.append(k, v);
        }
    }
    let _ = check_push_headers(&map);
}

/// SPEC.md §8.1: a pushed body must say what it is.
fn check_push_headers(headers: &http::HeaderMap) -> Result<(), Reply> {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some(CONTENT_TYPE) {
        return Err(Reply::status(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("expected {CONTENT_TYPE}")));
    }
    Ok(())
}

async fn get(
    req: &Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    budget: Budget,
    gate: Arc<SendGate>,
) -> Result<(), Reply> {
    let PullRequest { name, chunk, items, quantize, mode } =
        PullRequest::parse(req.uri(), &shared.registry, &shared.config)?;
    let container = shared.registry.container(&name);
    // Held while the transfer lasts when it reads a file.
    let _file = if container.is_none() { Some(shared.open_file_slot()?) } else { None };
    let mode = mode.as_deref().unwrap_or(if container.is_some() { "container" } else { "file" });
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
    let mut tx = FrameSender::new(stream, &shared.config).counting(Arc::clone(&shared.stats.sent)).gated(gate);
    // Quantized frames are new buffers (others are slices of a mapping or of
    // tensors in memory): one is produced only once the budget has room for
    // it, and counts until it is handed to HTTP/2, so readers that do not
    // read cannot make the server quantize without bound.
    let frames = match quantize {
        Some(_) => gated(frames, budget, chunk as u64 + 4096),
        None => frames,
    };
    // From here on failures reach the client as an abort frame or a reset.
    let _ = send_all(&mut tx, frames).await;
    Ok(())
}

/// `frames`, each pulled only after `estimate` bytes were taken from
/// `budget`, and counted (its encoded length) until the next one is asked
/// for, that is until it has been handed to HTTP/2, or the stream ends.
///
/// A stream holds budget only while it produces or sends one frame, and
/// sending fails after the idle timeout without window: the holders make
/// progress or let go, so a pull waiting its turn never deadlocks and needs
/// no deadline of its own. (What h2 then buffers is bounded by its send
/// buffer per stream.)
fn gated(frames: Frames, budget: Budget, estimate: u64) -> Frames {
    struct Gate {
        frames: Frames,
        budget: Budget,
        held: u64,
    }
    impl Drop for Gate {
        fn drop(&mut self) {
            self.budget.give(self.held);
        }
    }
    let gate = Gate { frames, budget, held: 0 };
    futures::stream::unfold(gate, move |mut g| async move {
        g.budget.give(std::mem::take(&mut g.held));
        while !g.budget.try_take(estimate) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let next = g.frames.next().await;
        let len = match &next {
            Some(Ok(f)) => (f.encoded_len() as u64).min(estimate),
            _ => 0,
        };
        g.budget.give(estimate - len);
        g.held = len;
        Some((next?, g))
    })
    .boxed()
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
    budget: Budget,
) -> Result<(), Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    check_push_headers(req.headers())?;
    let mut rx = FrameReceiver::new(req.into_body(), &shared.config).with_budget(budget);
    let body = if let Some(handler) = shared.registry.push_handler() {
        handler(name.clone(), ObjectRetriever::new(rx.into_stream())).await?;
        format!(r#"{{"name":{}}}"#, serde_json::Value::from(name))
    } else {
        // SPEC.md §8.3: each push into a file of its own, renamed into
        // place once verified; the last verified push wins.
        // The upload's file is opened when its first verified data arrive.
        let registry = shared.registry.clone();
        let files = Arc::clone(&shared.files);
        let safetensors = name.ends_with(".safetensors");
        let open = move || {
            // SPEC.md §8.5: 503 at capacity.
            let slot = files.try_acquire_owned().map_err(|_| Error::AtCapacity("files open for transfers"))?;
            Ok(registry.create_upload(&name)?.holding(slot))
        };
        let got = receive_into(&mut rx, open, safetensors, None).await?;
        format!(r#"{{"items":{},"len":{},"crc":{}}}"#, got.items, got.len, got.crc)
    };
    let resp = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(())
        .map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut stream = respond.send_response(resp, false).map_err(Error::from)?;
    stream.send_data(EncodedFrame::from_bytes(Bytes::from(body)), true).map_err(Error::from)?;
    Ok(())
}
