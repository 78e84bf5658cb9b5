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

use super::auth::{KeyedLimiter, KeyedPermit};
use super::body::{join, receive_into, FrameReceiver, FrameSender, Received};
use super::tls::{handshake_error, Cleartext};
use super::written::{SendGate, Written};
use super::{Config, EventFn, Identity, Peer, Registry, ServerEvent};
use futures::StreamExt;

use super::{ObjectRequest, RESUME_HEADER};
use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Abort, AbortCode, Budget, EncodedFrame, Frame, Mode, CONTENT_TYPE};
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

struct Shared {
    registry: Registry,
    config: Config,
    stats: Arc<Stats>,
    metrics: super::metrics::Metrics,
    /// What all connections together may make the server hold.
    budget: Budget,
    /// Open connections per peer address.
    peers: Mutex<HashMap<IpAddr, usize>>,
    events: Option<EventFn>,
    identity_connections: KeyedLimiter,
    identity_streams: KeyedLimiter,
    /// Files held open by transfers.
    files: Arc<tokio::sync::Semaphore>,
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
            budget: Budget::new(config.max_pinned),
            metrics: super::metrics::Metrics::new(),
            files: Arc::new(tokio::sync::Semaphore::new(config.max_open_files)),
            registry,
            config,
            stats: Arc::default(),
            peers: Mutex::default(),
            events: None,
            identity_connections: KeyedLimiter::default(),
            identity_streams: KeyedLimiter::default(),
        }
    }

    /// A place for one more open file, or 503 (SPEC.md §8.5: at capacity).
    fn open_file_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Arc::clone(&self.files).try_acquire_owned().map_err(|_| Error::AtCapacity("files open for transfers"))
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

/// Counters a [`ServerHandle`] reads.
#[derive(Debug, Default)]
struct Stats {
    /// Set by [`ServerHandle::shutdown`]: `/healthz` answers 503.
    draining: std::sync::atomic::AtomicBool,
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
        self.stats.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Whether [`ServerHandle::shutdown`] was called: `/healthz` answers
    /// 503 from then on.
    pub fn is_draining(&self) -> bool {
        self.stats.draining.load(Ordering::SeqCst)
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
                            accept(tcp, peer, shared, stop).await;
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
            match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
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

/// Drives one connection: the handshake within its timeout, then requests
/// (each its own task, reaped as it finishes) until the peer closes, the
/// server shuts down, or the connection has had no request in flight for
/// [`Config::idle_connection_timeout`].
async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    conn_info: Arc<Connection>,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = GaugeGuard::new(&shared.metrics.active_connections);
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
    // Adaptive receive windows for pushes, and keep-alive (flow.rs).
    let flow = conn.ping_pong().map(|ping| {
        // SPEC.md §8.7: a server's windows are memory its peers can pin.
        let capped = Config { max_window: c.max_push_window.max(c.connection_window), ..c.clone() };
        super::flow::spawn(ping, &capped)
    });
    let (meter, mut windows, dead) = match flow {
        Some(f) => (Some(f.meter), Some(f.windows), f.dead),
        None => (None, None, tokio_util::sync::CancellationToken::new()),
    };
    let _stop_flow = dead.clone().drop_guard();
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
                    let conn_info = Arc::clone(&conn_info);
                    let meter = meter.clone();
                    shared.stats.tasks.fetch_add(1, Ordering::SeqCst);
                    requests.spawn(async move { handle(req, respond, &shared, budget, gate, &conn_info, meter).await });
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
            Some(w) = super::flow::next_windows(windows.as_mut()) => {
                conn.set_target_window_size(w.connection);
                let _ = conn.set_initial_window_size(w.stream);
            }
            _ = dead.cancelled() => {
                // The peer stopped answering PINGs: close the connection so
                // that its transfers fail now, not at their idle timeouts.
                drop(conn);
                break;
            }
        }
    }
    // The connection is over: streams still waiting to send fail now rather
    // than at their idle timeouts (the peer is gone, or was told GOAWAY and
    // the last request has ended).
    gate.close();
    while requests.join_next().await.is_some() {
        shared.stats.tasks.fetch_sub(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Holds a gauge up by one for as long as it lives.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a request did, for its log line and the metrics.
#[derive(Debug, Default)]
struct Outcome {
    /// The status answered (200 unless said otherwise).
    status: StatusCode,
    mode: &'static str,
    quantize: Option<String>,
    /// Body bytes sent (pulls) or received (pushes).
    wire_bytes: u64,
    /// Item data bytes of the object, when known.
    object_bytes: Option<u64>,
    /// A failure after the response head was sent (the body was aborted).
    error: Option<String>,
}

/// The methods `/objects/{name}` answers; anything else is a 405.
const ALLOW: &str = "GET, HEAD, PUT";
async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse<EncodedFrame>,
    shared: &Shared,
    budget: Budget,
    gate: Arc<SendGate>,
    conn: &Connection,
    meter: Option<Arc<super::flow::Meter>>,
) {
    let _active = ActiveGuard::new(&shared.stats);
    shared.stats.started.fetch_add(1, Ordering::SeqCst);
    let _streams = GaugeGuard::new(&shared.metrics.active_streams);
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let direction = if method == Method::PUT { "push" } else { "pull" };
    let peer = &conn.peer;
    // SPEC.md §8.9: one identity's requests are bounded across its connections.
    let _permit;
    let result = match bounded(shared, conn) {
        Err(reply) => Err(reply.with_body(req.into_body())),
        Ok(permit) => {
            _permit = permit;
            match (&method, path.as_str()) {
                (&Method::GET, "/healthz") => Ok(health(&mut respond, shared)),
                (&Method::GET, "/metrics") => {
                    Ok(small_reply(&mut respond, StatusCode::OK, METRICS_TYPE, shared.metrics.render()))
                }
                (&Method::GET | &Method::HEAD, "/objects" | "/objects/") => {
                    listing(&mut respond, shared, peer, method == Method::HEAD).await
                }
                (&Method::GET, _) => get(&req, &mut respond, shared, budget, gate, peer).await,
                (&Method::HEAD, _) => head(&req, &mut respond, shared, peer).await,
                (&Method::PUT, _) => put(req, &mut respond, shared, budget, peer, meter).await,
                _ => Err(Reply::status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not served here; allowed: {ALLOW}"),
                )
                .with_body(req.into_body())),
            }
        }
    };
    let (status, outcome) = match result {
        Ok(outcome) => (outcome.status, outcome),
        Err(mut reply) => {
            let status = reply.status;
            let message = reply.message.clone();
            let body = reply.body.take();
            send_reply(&mut respond, reply, method == Method::HEAD);
            if let Some(body) = body {
                drain(body).await;
            }
            (status, Outcome { mode: "none", error: Some(message), ..Outcome::default() })
        }
    };
    let labels = super::metrics::Transfer::new(outcome.mode, direction);
    let transfer = matches!(outcome.mode, "file" | "container" | "push");
    let ok = status.is_success() && outcome.error.is_none();
    if transfer {
        shared.metrics.started.get_or_create(&labels).inc();
        let done = if ok { &shared.metrics.completed } else { &shared.metrics.failed };
        done.get_or_create(&labels).inc();
        shared.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    } else if !ok && path.starts_with(super::OBJECTS_PATH) {
        shared.metrics.failed.get_or_create(&labels).inc();
    }
    if shared.events.is_some() {
        let name = path.strip_prefix(super::OBJECTS_PATH).unwrap_or(&path).to_string();
        let message = outcome.error.clone();
        let (peer, method) = (peer.clone(), method.to_string());
        shared.event(ServerEvent::Request { peer, method, name, status: status.as_u16(), message });
    }
    // One structured line per request (fields, not a formatted string).
    tracing::info!(
        target: "tensorwire::request",
        peer = %peer,
        method = %method,
        path = %path,
        mode = outcome.mode,
        quantize = outcome.quantize.as_deref().unwrap_or("none"),
        status = status.as_u16(),
        wire_bytes = outcome.wire_bytes,
        object_bytes = outcome.object_bytes,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        outcome = if ok { "ok" } else { "failed" },
        error = outcome.error.as_deref().unwrap_or(""),
        "request"
    );
}

const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sends a complete small response.
fn small_reply(
    respond: &mut SendResponse<EncodedFrame>,
    status: StatusCode,
    content_type: &str,
    body: String,
) -> Outcome {
    let resp = Response::builder().status(status).header("content-type", content_type).body(()).unwrap_or_default();
    if let Ok(mut stream) = respond.send_response(resp, false) {
        let _ = stream.send_data(EncodedFrame::from_bytes(Bytes::from(body)), true);
    }
    Outcome { mode: "other", ..Outcome::default() }
}

/// `GET /healthz`: 200 while serving, 503 once draining (SPEC.md §8.8).
fn health(respond: &mut SendResponse<EncodedFrame>, shared: &Shared) -> Outcome {
    if shared.stats.draining.load(Ordering::SeqCst) {
        small_reply(respond, StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "draining\n".into())
    } else {
        small_reply(respond, StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
    }
}

/// `GET /objects`: the objects the registry serves, as JSON.
async fn listing(
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    peer: &Peer,
    head_only: bool,
) -> Result<Outcome, Reply> {
    let registry = shared.registry.clone();
    let mut entries = blocking(move || Ok(registry.list())).await?;
    // SPEC.md §8.9: a peer sees only the names it may pull.
    entries.retain(|e| shared.registry.authorize_get(peer, &e.name).is_ok());
    let body = serde_json::to_string(&serde_json::json!({ "objects": entries }))
        .map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if head_only {
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(())
            .unwrap_or_default();
        let _ = respond.send_response(resp, true);
        return Ok(Outcome { mode: "other", ..Outcome::default() });
    }
    Ok(small_reply(respond, StatusCode::OK, "application/json", body))
}

/// `HEAD /objects/{name}`: the status and lengths a GET would give, no body.
async fn head(
    req: &Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    peer: &Peer,
) -> Result<Outcome, Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    shared.registry.authorize_get(peer, &name)?;
    let (len, items) = match shared.registry.container(&name) {
        Some(model) => (model.values().map(|t| t.data().len() as u64).sum::<u64>(), model.len() as u64),
        None => {
            let path = shared.registry.resolve(&name)?;
            let len = blocking(move || Ok(std::fs::metadata(path)?.len())).await?;
            (len, 1)
        }
    };
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", CONTENT_TYPE)
        .header("tensorwire-version", "1")
        .header("tensorwire-length", len)
        .header("tensorwire-items", items)
        .body(())
        .map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    respond.send_response(resp, true).map_err(Error::from)?;
    Ok(Outcome { mode: "other", object_bytes: Some(len), ..Outcome::default() })
}

/// Sends an error reply: the status, and the message as the body (none for
/// HEAD, where a body is not allowed).
fn send_reply(respond: &mut SendResponse<EncodedFrame>, reply: Reply, head_only: bool) {
    let mut resp = Response::builder().status(reply.status).header("content-type", "text/plain; charset=utf-8");
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        resp = resp.header("allow", ALLOW);
    }
    if let Some(item) = &reply.missing_item {
        let encoded = percent_encoding::utf8_percent_encode(item, percent_encoding::NON_ALPHANUMERIC);
        resp = resp.header(super::client::MISSING_ITEM, encoded.to_string());
    }
    let resp = resp.body(()).unwrap_or_default();
    if let Ok(mut stream) = respond.send_response(resp, head_only) {
        if !head_only {
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
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    message: String,
    missing_item: Option<String>,
    /// The request body, when the reply refuses a request whose body may
    /// still be arriving (see [`drain`]).
    body: Option<RecvStream>,
}

impl Reply {
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Reply { status, message: message.into(), missing_item: None, body: None }
    }

    fn with_body(mut self, body: RecvStream) -> Self {
        self.body = Some(body);
        self
    }
}

/// After an early reply, reads and discards what remains of the request body
/// for a short, bounded while, so the reply reaches the client: dropping an
/// unfinished body makes h2 reset the stream with CANCEL, which curl reports
/// as an error instead of showing the reply (a 415 for `curl -T`).
async fn drain(mut body: RecvStream) {
    const MAX_BYTES: usize = 16 << 20;
    let work = async {
        let mut seen = 0;
        while let Some(Ok(data)) = body.data().await {
            seen += data.len();
            let _ = body.flow_control().release_capacity(data.len());
            if seen > MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), work).await;
}

impl From<Error> for Reply {
    fn from(e: Error) -> Self {
        // SPEC.md §8.5: the status says whose fault it was.
        let status = match &e {
            Error::InvalidName { .. } | Error::Request(_) => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } | Error::ItemNotFound { .. } => StatusCode::NOT_FOUND,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::Decode(d) if d.is_limit() => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Tensor { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Safetensors(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Decode(_) | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::AtCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut reply = Reply::status(status, e.to_string());
        if let Error::ItemNotFound { item, .. } = &e {
            reply.missing_item = Some(item.clone());
        }
        reply
    }
}

/// What a pull asks for (SPEC.md §8.2, §8.4): the typed [`ObjectRequest`]
/// from its path, query and `tensorwire-resume` header, with the chunk size
/// clamped into what this server sends.
#[derive(Debug)]
pub(crate) struct PullRequest {
    pub(crate) name: String,
    pub(crate) chunk: usize,
    pub(crate) items: Option<Vec<String>>,
    pub(crate) quantize: Option<crate::wire::Scheme>,
    pub(crate) mode: Option<Mode>,
    pub(crate) resume: Option<super::Resume>,
}

impl PullRequest {
    /// Parses `uri` and `headers`; nothing is opened.
    pub(crate) fn parse(
        uri: &http::Uri,
        headers: &http::HeaderMap,
        registry: &Registry,
        config: &Config,
    ) -> Result<Self, Reply> {
        let name = registry.decode_name(uri.path())?;
        let resume = match headers.get(RESUME_HEADER) {
            Some(v) => Some(v.to_str().map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "bad tensorwire-resume"))?),
            None => None,
        };
        let request = ObjectRequest::from_query(name, uri.query()).and_then(|r| r.with_resume_header(resume));
        let ObjectRequest { name, mode, items, quantize, chunk_size, resume } = request.map_err(Error::from)?;
        // SPEC.md §8.2: clamped into the server's range, never refused.
        let chunk = config.served_chunk_size(chunk_size) as usize;
        Ok(PullRequest { name, chunk, items, quantize, mode, resume })
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
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v)) {
            map.append(k, v);
        }
    }
    if let Ok(uri) = target.parse::<http::Uri>() {
        match PullRequest::parse(&uri, &map, &registry, &config) {
            Ok(r) => assert!((1..=config.limits.max_payload as usize).contains(&r.chunk)),
            Err(reply) => assert!(reply.status.is_client_error(), "{}: {}", reply.status, reply.message),
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
    peer: &Peer,
) -> Result<Outcome, Reply> {
    let PullRequest { name, chunk, items, quantize, mode, resume } =
        PullRequest::parse(req.uri(), req.headers(), &shared.registry, &shared.config)?;
    // SPEC.md §8.9: a pull is checked against the pull rules before the
    // object is looked up, so a refused peer learns nothing about it.
    shared.registry.authorize_get(peer, &name)?;
    if let Some(source) = shared.registry.source() {
        let _slot = shared.open_file_slot()?;
        let pull = super::SourcePull { name, mode, items, quantize, chunk };
        let got = source.pull(pull).await?;
        return send_pull(respond, shared, budget, gate, got, (resume, quantize, chunk)).await;
    }
    let container = shared.registry.container(&name);
    // Held while the transfer lasts when it reads a file.
    let _file = if container.is_none() { Some(shared.open_file_slot()?) } else { None };
    let mode = mode.unwrap_or(if container.is_some() { Mode::Container } else { Mode::File });
    let (frames, len, count): (futures::stream::BoxStream<'static, Result<Frame, Error>>, Option<u64>, Option<u64>) =
        match (mode, container) {
            (Mode::Container, Some(model)) => {
                container_frames(ContainerStreamer::from_map(name, model), chunk, items, quantize)?
            }
            (Mode::Container, None) => {
                let path = shared.registry.resolve(&name)?;
                let streamer = blocking(move || ContainerStreamer::open_safetensors(path)).await?.with_name(name);
                container_frames(streamer, chunk, items, quantize)?
            }
            (Mode::File, None) if items.is_none() && quantize.is_none() => {
                let path = shared.registry.resolve(&name)?;
                let streamer = blocking(move || FileStreamer::open(path)).await?;
                let streamer = streamer.with_name(name).with_chunk_size(chunk);
                let len = streamer.len();
                (futures::stream::iter(streamer.frames()).boxed(), Some(len), Some(1))
            }
            _ => {
                return Err(Reply::status(
                    StatusCode::BAD_REQUEST,
                    format!("mode {:?} with these options is not served for this object", mode.as_str()),
                ))
            }
        };
    let got = super::SourceFrames { frames, mode, len, items: count };
    send_pull(respond, shared, budget, gate, got, (resume, quantize, chunk)).await
}

/// Answers a pull with `got`'s frames: headers, then every frame against
/// flow control (the part of [`get`] that does not depend on where the
/// object is).
async fn send_pull(
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
    budget: Budget,
    gate: Arc<SendGate>,
    got: super::SourceFrames,
    (resume, quantize, chunk): (Option<super::Resume>, Option<crate::wire::Scheme>, usize),
) -> Result<Outcome, Reply> {
    let super::SourceFrames { frames, mode, len, items: count } = got;
    // SPEC.md §8.4: resuming, the sender leaves out the chunks of which the
    // receiver needs nothing; every other frame goes as usual.
    let frames = match resume {
        Some(resume) => frames
            .filter(move |f| {
                let keep = match f {
                    Ok(Frame::Chunk(c)) => resume.wants(c.item, c.offset..c.offset + c.data.len() as u64),
                    _ => true,
                };
                std::future::ready(keep)
            })
            .boxed(),
        None => frames,
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
    let sent = send_all(&mut tx, frames).await;
    shared.metrics.bytes_sent.inc_by(tx.sent());
    Ok(Outcome {
        mode: if mode == Mode::File { "file" } else { "container" },
        quantize: quantize.map(|q| q.to_string()),
        wire_bytes: tx.sent(),
        object_bytes: len,
        error: sent.err().map(|e| e.to_string()),
        ..Outcome::default()
    })
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
    quantize: Option<crate::wire::Scheme>,
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
    peer: &Peer,
    meter: Option<Arc<super::flow::Meter>>,
) -> Result<Outcome, Reply> {
    let name = match shared.registry.decode_name(req.uri().path()) {
        Ok(name) => name,
        Err(e) => return Err(Reply::from(e).with_body(req.into_body())),
    };
    // SPEC.md §8.9: a push MUST be authorized before any byte of its body
    // is read or anything is written.
    if let Err(e) = shared.registry.authorize_push(peer, &name) {
        return Err(Reply::from(e).with_body(req.into_body()));
    }
    if let Err(reply) = check_push_headers(req.headers()) {
        return Err(reply.with_body(req.into_body()));
    }
    let mut rx = FrameReceiver::new(req.into_body(), &shared.config).with_budget(budget);
    if let Some(m) = meter {
        rx = rx.metered(m);
    }
    let received = rx.counter();
    let stored = if let Some(source) = shared.registry.source() {
        // SPEC.md §8.5: 503 at capacity, as for a push into a file.
        let _slot =
            shared.files.clone().try_acquire_owned().map_err(|_| Error::AtCapacity("files open for transfers"))?;
        source
            .push(name.clone(), rx.into_stream())
            .await
            .map(|t| Some(Received { len: t.len, items: t.items, crc: t.crc }))
    } else if let Some(handler) = shared.registry.push_handler() {
        handler(name.clone(), peer.clone(), ObjectRetriever::new(rx.into_stream())).await.map(|()| None)
    } else {
        // SPEC.md §8.3: each push into a file of its own, renamed into
        // place once verified; the last verified push wins.
        // The upload's file is opened when its first verified data arrive.
        let registry = shared.registry.clone();
        let files = Arc::clone(&shared.files);
        let safetensors = name.ends_with(".safetensors");
        let upload = name.clone();
        let open = move || {
            // SPEC.md §8.5: 503 at capacity.
            let slot = files.try_acquire_owned().map_err(|_| Error::AtCapacity("files open for transfers"))?;
            Ok(registry.create_upload(&upload)?.holding(slot))
        };
        receive_into(&mut rx, open, safetensors, None).await.map(Some)
    };
    let wire = received.load(Ordering::Relaxed);
    shared.metrics.bytes_received.inc_by(wire);
    let got = match stored {
        Ok(got) => got,
        Err(e) => {
            if matches!(&e, Error::Decode(d) if d.is_retryable()) {
                shared.metrics.crc_failures.inc();
            }
            return Err(e.into());
        }
    };
    let body = match got {
        None => format!(r#"{{"name":{}}}"#, serde_json::Value::from(name)),
        Some(got) => {
            shared.metrics.push_bytes.inc_by(got.len);
            format!(r#"{{"items":{},"len":{},"crc":{}}}"#, got.items, got.len, got.crc)
        }
    };
    let resp = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(())
        .map_err(|e| Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut stream = respond.send_response(resp, false).map_err(Error::from)?;
    stream.send_data(EncodedFrame::from_bytes(Bytes::from(body)), true).map_err(Error::from)?;
    Ok(Outcome { status: StatusCode::CREATED, mode: "push", wire_bytes: wire, ..Outcome::default() })
}
