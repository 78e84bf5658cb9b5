//! An HTTP/1.1 proxy on loopback that records every request (method, target,
//! `Range` header) on its way to an S3 server, so tests can assert which
//! ranges a pull asked for. Shared by the tests (`tests/common/`) and
//! `examples/store_bench.rs` (which includes this file by path).
//!
//! The client → server direction is parsed with `httparse`, one request
//! after another on a keep-alive connection: the head is recorded, then the
//! body is relayed as it comes (`Content-Length` bytes, or `chunked` chunk by
//! chunk), never buffered whole. The server → client direction is a plain
//! copy: a keep-alive client sends its next request only after the response
//! to the last one, so requests and responses cannot interleave.
//!
//! It can also stand in front of several servers (the nodes of a Garage
//! cluster, which all answer S3): each new connection goes to the next
//! server that accepts a TCP connection, so a stopped node is skipped.
//! And it can slow requests down ([`CountingProxy::set_delay`]) or refuse
//! the ones a predicate picks ([`CountingProxy::reject_when`]) with a
//! non-retryable `403`, which cuts an upload midway.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head the proxy accepts.
const MAX_HEAD: usize = 64 << 10;

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `HEAD`, `POST`, `DELETE`…
    pub method: String,
    /// The request target: path and query (`/bucket/key?partNumber=2&uploadId=…`).
    pub target: String,
    /// The `Range` header, if any (`bytes=0-7`).
    pub range: Option<String>,
    /// Which accepted connection carried it (0, 1, …).
    pub connection: usize,
    /// Which upstream (index into the list given to `start`) it went to.
    pub upstream: usize,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Whether the query names `param` (`uploads`, `partNumber`, …).
    pub fn has_query(&self, param: &str) -> bool {
        self.target.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(param)))
    }

    /// `(first, last)` of a `bytes=first-last` range.
    pub fn byte_range(&self) -> Option<(u64, u64)> {
        let r = self.range.as_deref()?.strip_prefix("bytes=")?;
        let (a, b) = r.split_once('-')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    }
}

type Reject = Box<dyn Fn(&Request) -> bool + Send + Sync>;

#[derive(Default)]
struct Shared {
    upstreams: Vec<SocketAddr>,
    next_upstream: AtomicUsize,
    connections: AtomicUsize,
    log: Mutex<Vec<Request>>,
    delay: Mutex<Duration>,
    reject: Mutex<Option<Reject>>,
}

/// A running proxy; stops accepting and cuts its connections when dropped.
pub struct CountingProxy {
    /// Where clients connect (`http://{addr}` as the S3 endpoint).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl CountingProxy {
    /// Listens on 127.0.0.1:0 in front of `upstreams` (at least one).
    pub async fn start(upstreams: Vec<SocketAddr>) -> Self {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared { upstreams, ..Shared::default() });
        let stop = CancellationToken::new();
        let (s, token) = (Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = token.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { return };
                let (s, token) = (Arc::clone(&s), token.child_token());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(client, &s) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        CountingProxy { addr, shared, stop }
    }

    /// `http://ADDR`, the endpoint URL a client should use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request seen so far, in the order their heads arrived.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().expect("log").clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.shared.log.lock().expect("log").clear();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Holds every later request this long before relaying it.
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().expect("delay") = d;
    }

    /// Answers the requests `pick` chooses with `403 AccessDenied` (which S3
    /// clients do not retry) and closes their connection, instead of
    /// relaying them. Rejected requests are still recorded.
    pub fn reject_when(&self, pick: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        *self.shared.reject.lock().expect("reject") = Some(Box::new(pick));
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects to the next upstream that accepts, round robin.
async fn connect(s: &Shared) -> Option<(usize, TcpStream)> {
    let n = s.upstreams.len();
    let first = s.next_upstream.fetch_add(1, Ordering::SeqCst);
    for k in 0..n {
        let i = (first + k) % n;
        let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(s.upstreams[i])).await;
        if let Ok(Ok(stream)) = attempt {
            let _ = stream.set_nodelay(true);
            return Some((i, stream));
        }
    }
    None
}

async fn serve(client: TcpStream, s: &Shared) {
    let _ = client.set_nodelay(true);
    let connection = s.connections.fetch_add(1, Ordering::SeqCst);
    let Some((upstream, server)) = connect(s).await else { return };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let rejected = {
        let down = async {
            let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            let _ = client_tx.shutdown().await;
        };
        let up = async {
            let mut buf = Vec::with_capacity(8 << 10);
            let rejected = loop {
                match relay_request(&mut client_rx, &mut server_tx, &mut buf, s, connection, upstream).await {
                    Ok(Step::Next) => {}
                    Ok(Step::Rejected) => break true,
                    Ok(Step::Closed) | Err(_) => break false,
                }
            };
            let _ = server_tx.shutdown().await;
            rejected
        };
        tokio::pin!(down);
        tokio::pin!(up);
        tokio::select! {
            rejected = &mut up => {
                if !rejected {
                    // The client stopped sending; let the last response finish.
                    let _ = tokio::time::timeout(Duration::from_secs(30), &mut down).await;
                }
                rejected
            }
            _ = &mut down => false,
        }
    };
    if rejected {
        // No response is in flight: a keep-alive client sent this request
        // only after the previous response ended.
        write_rejection(&mut client_tx).await;
    }
}

enum Step {
    Next,
    Closed,
    Rejected,
}

/// Reads one request head into `buf` (which may already hold bytes), records
/// it and relays it with its body.
async fn relay_request<R, W>(
    rx: &mut R,
    tx: &mut W,
    buf: &mut Vec<u8>,
    s: &Shared,
    connection: usize,
    upstream: usize,
) -> std::io::Result<Step>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The head.
    let (head_len, req, body) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let body = if chunked {
                    Body::Chunked
                } else {
                    Body::Length(header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
                };
                let req = Request {
                    method: parsed.method.unwrap_or_default().to_string(),
                    target: parsed.path.unwrap_or_default().to_string(),
                    range: header("range"),
                    connection,
                    upstream,
                };
                break (n, req, body);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                if read_more(rx, buf).await? == 0 {
                    return Ok(Step::Closed);
                }
            }
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad request head")),
        }
    };
    let reject = s.reject.lock().expect("reject").as_ref().is_some_and(|pick| pick(&req));
    s.log.lock().expect("log").push(req);
    if reject {
        return Ok(Step::Rejected);
    }
    let delay = *s.delay.lock().expect("delay");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    tx.write_all(&buf[..head_len]).await?;
    buf.drain(..head_len);
    match body {
        Body::Length(n) => copy_exact(rx, tx, buf, n).await?,
        Body::Chunked => loop {
            let line = read_line(rx, buf).await?;
            let size_text = String::from_utf8_lossy(&line);
            let size_hex = size_text.trim().split(';').next().unwrap_or_default().trim().to_string();
            let size = u64::from_str_radix(&size_hex, 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
            tx.write_all(&line).await?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let t = read_line(rx, buf).await?;
                    tx.write_all(&t).await?;
                    if t == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            copy_exact(rx, tx, buf, size + 2).await?;
        },
    }
    tx.flush().await?;
    Ok(Step::Next)
}

/// Writes the proxy's refusal of a request.
async fn write_rejection<W: AsyncWrite + Unpin>(tx: &mut W) {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
                <Message>refused by the test proxy</Message></Error>";
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tx.write_all(head.as_bytes()).await;
    let _ = tx.write_all(body.as_bytes()).await;
    let _ = tx.shutdown().await;
}

enum Body {
    Length(u64),
    Chunked,
}

async fn read_more<R: AsyncRead + Unpin>(rx: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut tmp = [0u8; 16 << 10];
    let n = rx.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// Relays `n` body bytes: first those already in `buf`, then from `rx`.
async fn copy_exact<R, W>(rx: &mut R, tx: &mut W, buf: &mut Vec<u8>, mut n: u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let have = (buf.len() as u64).min(n) as usize;
    tx.write_all(&buf[..have]).await?;
    buf.drain(..have);
    n -= have as u64;
    let mut tmp = vec![0u8; 64 << 10];
    while n > 0 {
        let want = (tmp.len() as u64).min(n) as usize;
        let got = rx.read(&mut tmp[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        tx.write_all(&tmp[..got]).await?;
        n -= got as u64;
    }
    Ok(())
}

/// Takes one `\r\n`-terminated line off the front of `buf`, reading more as
/// needed.
async fn read_line<R: AsyncRead + Unpin>(rx: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(buf.drain(..i + 2).collect());
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
        }
        if read_more(rx, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
