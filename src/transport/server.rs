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

use super::body::{join, receive_file, FrameReceiver, FrameSender};
use super::{Config, Registry};
use futures::StreamExt;

use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Abort, AbortCode, EncodedFrame, Frame, CONTENT_TYPE};
use crate::Error;

/// An HTTP/2 server (cleartext, prior knowledge) for the objects of a
/// [`Registry`]: `GET /objects/{name}` streams a file, `PUT /objects/{name}`
/// receives one (SPEC.md §8.2, §8.3).
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

#[derive(Debug)]
struct Shared {
    registry: Registry,
    config: Config,
    metrics: super::metrics::Metrics,
    draining: Arc<std::sync::atomic::AtomicBool>,
    active: Arc<AtomicUsize>,
    started: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

/// Stops a running [`Server`] gracefully, and reports on it.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    active: Arc<AtomicUsize>,
    started: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl ServerHandle {
    /// Stops accepting connections and asks every connection to close once
    /// its transfers are done (HTTP/2 GOAWAY).
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Whether [`ServerHandle::shutdown`] was called: `/healthz` answers
    /// 503 from then on.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
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
        let shared = Arc::new(Shared {
            registry,
            config,
            metrics: super::metrics::Metrics::new(),
            draining: Arc::default(),
            active: Arc::default(),
            started: Arc::default(),
            sent: Arc::default(),
        });
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
            draining: Arc::clone(&self.shared.draining),
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
                    let (tcp, _) = accepted?;
                    let _ = tcp.set_nodelay(true);
                    let shared = Arc::clone(&self.shared);
                    let stop = self.shutdown.subscribe();
                    connections.spawn(async move { serve(tcp, shared, stop).await });
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
        let shared = Shared {
            registry,
            config,
            metrics: super::metrics::Metrics::new(),
            draining: Arc::default(),
            active: Arc::default(),
            started: Arc::default(),
            sent: Arc::default(),
        };
        serve(io, Arc::new(shared), stop).await
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = GaugeGuard::new(&shared.metrics.active_connections);
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
                    requests.spawn(async move { handle(req, respond, &shared).await });
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

async fn handle(req: Request<RecvStream>, mut respond: SendResponse<EncodedFrame>, shared: &Shared) {
    let _active = ActiveGuard::new(&shared.active);
    shared.started.fetch_add(1, Ordering::SeqCst);
    let _streams = GaugeGuard::new(&shared.metrics.active_streams);
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let direction = if method == Method::PUT { "push" } else { "pull" };
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => Ok(health(&mut respond, shared)),
        (&Method::GET, "/metrics") => {
            Ok(small_reply(&mut respond, StatusCode::OK, METRICS_TYPE, shared.metrics.render()))
        }
        (&Method::GET | &Method::HEAD, "/objects" | "/objects/") => {
            listing(&mut respond, shared, method == Method::HEAD).await
        }
        (&Method::GET, _) => get(&req, &mut respond, shared).await,
        (&Method::HEAD, _) => head(&req, &mut respond, shared).await,
        (&Method::PUT, _) => put(req, &mut respond, shared).await,
        _ => {
            Err(Reply::status(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not served here; allowed: {ALLOW}"))
                .with_body(req.into_body()))
        }
    };
    let (status, outcome) = match result {
        Ok(outcome) => (StatusCode::OK, outcome),
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
    // One structured line per request (fields, not a formatted string).
    tracing::info!(
        target: "tensorwire::request",
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

/// `GET /healthz`: 200 while serving, 503 once draining (SPEC.md §8.7).
fn health(respond: &mut SendResponse<EncodedFrame>, shared: &Shared) -> Outcome {
    if shared.draining.load(Ordering::SeqCst) {
        small_reply(respond, StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "draining\n".into())
    } else {
        small_reply(respond, StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
    }
}

/// `GET /objects`: the objects the registry serves, as JSON.
async fn listing(respond: &mut SendResponse<EncodedFrame>, shared: &Shared, head_only: bool) -> Result<Outcome, Reply> {
    let registry = shared.registry.clone();
    let entries = blocking(move || Ok(registry.list())).await?;
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
) -> Result<Outcome, Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
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

/// An error status with a message, for failures before the body starts.
struct Reply {
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
        let status = match &e {
            Error::InvalidName { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } | Error::ItemNotFound { .. } => StatusCode::NOT_FOUND,
            Error::Tensor { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Safetensors(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Decode(_) | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut reply = Reply::status(status, e.to_string());
        if let Error::ItemNotFound { item, .. } = &e {
            reply.missing_item = Some(item.clone());
        }
        reply
    }
}

fn query<'a>(req: &'a Request<RecvStream>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn get(
    req: &Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
) -> Result<Outcome, Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    let asked = match query(req, "chunk_size") {
        Some(v) => Some(v.parse::<u32>().map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "bad chunk_size"))?),
        None => None,
    };
    let chunk = shared.config.served_chunk_size(asked) as usize;
    let items = match query(req, "items") {
        Some(list) => Some(decode_list(list)?),
        None => None,
    };
    let quantize = match query(req, "quantize") {
        Some(q) => Some(
            crate::wire::Scheme::parse(q)
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
    let sent = send_all(&mut tx, frames).await;
    shared.metrics.bytes_sent.inc_by(tx.sent());
    Ok(Outcome {
        mode: if mode == "file" { "file" } else { "container" },
        quantize: quantize.map(|q| q.to_string()),
        wire_bytes: tx.sent(),
        object_bytes: len,
        error: sent.err().map(|e| e.to_string()),
    })
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
) -> Result<Outcome, Reply> {
    let name = match shared.registry.decode_name(req.uri().path()) {
        Ok(name) => name,
        Err(e) => return Err(Reply::from(e).with_body(req.into_body())),
    };
    // SPEC.md §8.1: a pushed body must say what it is.
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some(CONTENT_TYPE) {
        let reply = Reply::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a push body must be a framed object (content-type: {CONTENT_TYPE}, SPEC.md §8.3); push files with `tensorwire put FILE URL`"),
        );
        return Err(reply.with_body(req.into_body()));
    }
    let mut rx = FrameReceiver::new(req.into_body(), &shared.config);
    let received = rx.counter();
    let stored = if let Some(handler) = shared.registry.push_handler() {
        handler(name.clone(), ObjectRetriever::new(rx.into_stream())).await.map(|()| None)
    } else {
        match shared.registry.resolve_for_write(&name) {
            Ok(dest) => receive_file(&mut rx, &dest, None).await.map(Some),
            Err(e) => Err(e),
        }
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
    Ok(Outcome { mode: "push", wire_bytes: wire, ..Outcome::default() })
}
