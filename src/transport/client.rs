//! [`Client`]: pulls and pushes objects over one HTTP/2 connection.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::sync::CancellationToken;

use futures::StreamExt;

use super::body::{join, receive_file, FrameReceiver, FrameSender, FrameStream, Progress, ProgressFn};
use super::server::send_all;
use super::tls::{handshake_error, Cleartext};
use super::{object_path, ClientTls, Config, Endpoint};
use crate::recv::ObjectRetriever;
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{EncodedFrame, Frame, CONTENT_TYPE};
use crate::Error;

/// A client connection: cleartext HTTP/2 with prior knowledge
/// ([`Client::connect`]), or TLS 1.3 with ALPN `h2` ([`Client::connect_tls`];
/// [`Client::connect_to`] picks by the URL's scheme).
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
    send: h2::client::SendRequest<EncodedFrame>,
    authority: String,
    scheme: &'static str,
    config: Arc<Config>,
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
}

impl std::fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .field("chunk_size", &self.chunk_size)
            .field("quantize", &self.quantize)
            .finish()
    }
}

impl Client {
    /// Connects over TCP (with `TCP_NODELAY`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`], [`Error::Timeout`] or [`Error::Http`] when the
    /// connection or the HTTP/2 handshake fails.
    pub async fn connect(addr: impl ToSocketAddrs, config: Config) -> Result<Self, Error> {
        let tcp = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        tcp.set_nodelay(true)?;
        let authority = tcp.peer_addr()?.to_string();
        // A TLS server's answer to the preface is refused with a message
        // that says so.
        Self::handshake(Cleartext::client(tcp), authority, config).await
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
    /// address).
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the handshake fails (an untrusted or expired
    /// certificate, a name mismatch, a server that does not speak TLS),
    /// [`Error::InvalidUrl`] for a server name that is neither a DNS name
    /// nor an IP address, [`Error::Protocol`] when the server does not
    /// agree on `h2`, and as [`Client::connect`].
    pub async fn connect_tls(addr: impl ToSocketAddrs, server_name: &str, config: Config) -> Result<Self, Error> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|_| Error::InvalidUrl { url: server_name.to_string(), reason: "not a DNS name or IP address" })?;
        let tls = match &config.client_tls {
            Some(tls) => Arc::clone(tls),
            None => ClientTls::new().build()?,
        };
        let started = tokio::time::Instant::now();
        let tcp = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        tcp.set_nodelay(true)?;
        let port = tcp.peer_addr()?.port();
        let authority = Endpoint { tls: true, host: server_name.to_string(), port }.addr();
        let left = config.connect_timeout.saturating_sub(started.elapsed());
        let stream = tokio::time::timeout(left, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .map_err(|_| Error::Timeout("TLS handshake"))?
            .map_err(handshake_error)?;
        // SPEC.md §8.1: over TLS the protocol is HTTP/2, agreed by ALPN.
        if stream.get_ref().1.alpn_protocol().is_some_and(|p| p != super::ALPN_H2) {
            return Err(Error::Protocol("the TLS server did not agree on h2 (ALPN)"));
        }
        let mut client = Self::handshake(stream, authority, config).await?;
        client.scheme = "https";
        Ok(client)
    }

    /// Runs HTTP/2 over any IO (a `tokio::io::duplex` pipe in tests). The
    /// connection is driven by a spawned task.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the handshake fails.
    pub async fn handshake<IO>(io: IO, authority: impl Into<String>, config: Config) -> Result<Self, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window)
            .max_frame_size(config.frame_size())
            .max_send_buffer_size(config.max_send_buffer)
            .handshake::<_, EncodedFrame>(io)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { send, authority: authority.into(), scheme: "http", config: Arc::new(config) })
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
            let mut rx = self.get(name, opts).await?;
            let got = receive_file(&mut rx, dest, opts.progress.as_ref()).await?;
            Ok(Transfer { len: got.len, items: got.items, crc: got.crc })
        })
        .await
    }

    /// Requests object `name` and returns its frames as they arrive, for
    /// callers that consume objects themselves.
    ///
    /// # Errors
    ///
    /// As [`Client::get_file`], for the request and the response head.
    pub async fn get(&self, name: &str, opts: &TransferOptions) -> Result<FrameReceiver, Error> {
        self.request_object(name, &[], opts).await
    }

    async fn request_object(
        &self,
        name: &str,
        query: &[String],
        opts: &TransferOptions,
    ) -> Result<FrameReceiver, Error> {
        if name.is_empty() {
            // `/objects/` is the listing (SPEC.md §8.8), not an object.
            return Err(Error::InvalidName { name: String::new(), reason: "empty" });
        }
        let mut query = query.to_vec();
        if let Some(chunk) = opts.chunk_size {
            query.push(format!("chunk_size={chunk}"));
        }
        let mut path = object_path(name);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let req = self.request(Method::GET, &path)?;
        let mut send = self.send.clone().ready().await.map_err(not_h2)?;
        let (response, _) = send.send_request(req, true)?;
        let response = response.await.map_err(not_h2)?;
        let (head, body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(status_error(&head, body, name).await);
        }
        let content_type = head.headers.get("content-type").and_then(|v| v.to_str().ok());
        if content_type != Some(CONTENT_TYPE) {
            return Err(Error::Protocol("response is not application/vnd.tensorwire"));
        }
        Ok(FrameReceiver::new(body, &self.config))
    }

    /// Pushes the file at `path` as object `name` (SPEC.md §8.3); returns
    /// once the server has verified and stored it.
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
        let streamer = tokio::task::spawn_blocking(move || FileStreamer::open(path)).await.map_err(join)??;
        let streamer = streamer.with_name(name).with_chunk_size(self.config.chunk_size as usize);
        let total = streamer.len();
        self.push(name, futures::stream::iter(streamer.frames()), Some(total), opts).await
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
        self.push(&header.name, streamer.frames(), header.total_len, opts).await
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
        let mut query = vec!["mode=container".to_string()];
        if let Some(scheme) = opts.quantize {
            query.push(format!("quantize={scheme}"));
        }
        if let Some(items) = items {
            let encoded: Vec<String> =
                items.iter().map(|n| percent_encoding::utf8_percent_encode(n, QUERY_VALUE).to_string()).collect();
            query.push(format!("items={}", encoded.join(",")));
        }
        let rx = self.request_object(name, &query, opts).await?;
        let frames = rx.into_stream();
        let Some(progress) = opts.progress.clone() else {
            return Ok(ObjectRetriever::new(frames));
        };
        // Progress counts item data on the wire (quantized bytes when the
        // server quantizes), out of the object header's total.
        let (mut done, mut total) = (0u64, None);
        let frames = frames.inspect(move |f| match f {
            Ok(Frame::ObjectHeader(h)) => total = h.total_len,
            Ok(Frame::Chunk(c)) => {
                done += c.data.len() as u64;
                progress(Progress { done, total });
            }
            _ => {}
        });
        Ok(ObjectRetriever::new(Box::pin(frames)))
    }

    async fn push(
        &self,
        name: &str,
        frames: impl futures::Stream<Item = Result<Frame, Error>> + Send,
        total: Option<u64>,
        opts: &TransferOptions,
    ) -> Result<Transfer, Error> {
        cancellable(opts, async {
            let mut req = self.request(Method::PUT, &object_path(name))?;
            req.headers_mut().insert("content-type", http::HeaderValue::from_static(CONTENT_TYPE));
            let mut send = self.send.clone().ready().await.map_err(not_h2)?;
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
            .uri(format!("{}://{}{path}", self.scheme, self.authority))
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

/// Characters escaped in a query value: everything but unreserved ones.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

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
