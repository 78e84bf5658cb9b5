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

use super::{ObjectRequest, RESUME_HEADER};
use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Abort, AbortCode, EncodedFrame, Frame, Mode, CONTENT_TYPE};
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
    active: Arc<AtomicUsize>,
    started: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
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
        let shared = Arc::new(Shared {
            registry,
            config,
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
        let shared = Shared { registry, config, active: Arc::default(), started: Arc::default(), sent: Arc::default() };
        serve(io, Arc::new(shared), stop).await
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Result<(), Error>
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
    // Adaptive receive windows for pushes, and keep-alive (flow.rs).
    let flow = conn.ping_pong().map(|ping| super::flow::spawn(ping, c));
    let (meter, mut windows, dead) = match flow {
        Some(f) => (Some(f.meter), Some(f.windows), f.dead),
        None => (None, None, tokio_util::sync::CancellationToken::new()),
    };
    let _stop_flow = dead.clone().drop_guard();
    let mut requests = JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let shared = Arc::clone(&shared);
                    let meter = meter.clone();
                    requests.spawn(async move { handle(req, respond, &shared, meter).await });
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
    while requests.join_next().await.is_some() {}
    Ok(())
}

async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse<EncodedFrame>,
    shared: &Shared,
    meter: Option<Arc<super::flow::Meter>>,
) {
    let _active = ActiveGuard::new(&shared.active);
    shared.started.fetch_add(1, Ordering::SeqCst);
    let result = match *req.method() {
        Method::GET => get(&req, &mut respond, shared).await,
        Method::PUT => put(req, &mut respond, shared, meter).await,
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
            Error::InvalidName { .. } | Error::Request(_) => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Tensor { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Safetensors(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Decode(_) | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Reply::status(status, e.to_string())
    }
}

async fn get(
    req: &Request<RecvStream>,
    respond: &mut SendResponse<EncodedFrame>,
    shared: &Shared,
) -> Result<(), Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    let resume = match req.headers().get(RESUME_HEADER) {
        Some(v) => Some(v.to_str().map_err(|_| Reply::status(StatusCode::BAD_REQUEST, "bad tensorwire-resume"))?),
        None => None,
    };
    let request = ObjectRequest::from_query(name, req.uri().query()).and_then(|r| r.with_resume_header(resume));
    let ObjectRequest { name, mode, items, quantize, chunk_size, resume } = request.map_err(Error::from)?;
    let chunk = chunk_size.unwrap_or(shared.config.chunk_size);
    let chunk = chunk.clamp(1, shared.config.limits.max_payload.min(crate::wire::Limits::DEFAULT_MAX_PAYLOAD)) as usize;
    let container = shared.registry.container(&name);
    let mode = mode.unwrap_or(if container.is_some() { Mode::Container } else { Mode::File });
    let (frames, len, count): (Frames, Option<u64>, Option<u64>) = match (mode, container) {
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
    let mut tx = FrameSender::new(stream, &shared.config).counting(Arc::clone(&shared.sent));
    // From here on failures reach the client as an abort frame or a reset.
    let _ = send_all(&mut tx, frames).await;
    Ok(())
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
    meter: Option<Arc<super::flow::Meter>>,
) -> Result<(), Reply> {
    let name = shared.registry.decode_name(req.uri().path())?;
    // SPEC.md §8.1: a pushed body must say what it is.
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some(CONTENT_TYPE) {
        return Err(Reply::status(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("expected {CONTENT_TYPE}")));
    }
    let mut rx = FrameReceiver::new(req.into_body(), &shared.config);
    if let Some(m) = meter {
        rx = rx.metered(m);
    }
    let body = if let Some(handler) = shared.registry.push_handler() {
        handler(name.clone(), ObjectRetriever::new(rx.into_stream())).await?;
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
    Ok(())
}
