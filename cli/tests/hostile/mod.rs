//! Small hostile clients for `tests/hostile_server.rs`, and the stock
//! `tensorwire serve` they attack, run as a child process so that a crash,
//! its resident memory and its file descriptors are its own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use tensorwire::transport::{object_path, Client, Config};
use tensorwire::wire::{preamble, FrameHeader, FrameKind, ItemHeader, Mode, ObjectEncoder, ObjectHeader, CONTENT_TYPE};

/// A `tensorwire serve` child process, killed on drop.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `tensorwire serve --root ROOT ARGS...` on 127.0.0.1 and waits
    /// for its banner.
    pub fn start(root: &Path, args: &[&str]) -> Served {
        Self::start_limited(root, args, None)
    }

    /// The same with the open-file limit set to `nofile` in the child
    /// (`sh -c 'ulimit -n N; exec ...'`).
    pub fn start_limited(root: &Path, args: &[&str], nofile: Option<u64>) -> Served {
        // TENSORWIRE_BIN runs the suite against another build (an older
        // release, to see the findings reproduce).
        let bin = std::env::var("TENSORWIRE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tensorwire").to_string());
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--allow-push", "--root"]).arg(root).args(args);
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn tensorwire serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("on http://").nth(1) {
                    let _ = tx.send(url.trim_end_matches("/objects/").to_string());
                }
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("serve printed its address");
        Served { child, addr: addr.parse().expect("address"), log }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its resident anonymous memory now, in MiB: what peers can pin. (Pages
    /// of served files mapped for reading are page cache, counted apart.)
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "RssAnon:") as f64 / 1024.0
    }

    /// Its resident memory including mapped file pages, in MiB.
    pub fn rss_total_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmRSS:") as f64 / 1024.0
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Kills it with SIGKILL (a crash) and waits.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A raw h2 client connection with the given stream window (0: the peer
/// never lets the server send DATA).
pub async fn h2_connect(addr: SocketAddr, window: u32) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .max_concurrent_reset_streams(4096)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.expect("ready")
}

/// Starts a PUT of `name`: the response future and the body stream.
pub async fn start_put(send: &mut SendRequest<Bytes>, name: &str) -> (ResponseFuture, SendStream<Bytes>) {
    let req = http::Request::put(object_path(name)).header("content-type", CONTENT_TYPE).body(()).expect("request");
    let mut ready = send.clone().ready().await.expect("ready");
    let out = ready.send_request(req, false).expect("send request");
    *send = ready;
    out
}

/// Starts a GET of `path` (with query).
pub async fn start_get(send: &mut SendRequest<Bytes>, path: &str) -> ResponseFuture {
    let req = http::Request::get(path).body(()).expect("request");
    let mut ready = send.clone().ready().await.expect("ready");
    let (resp, _) = ready.send_request(req, true).expect("send request");
    *send = ready;
    resp
}

/// The status and body of a response (body read to its end, bounded).
pub async fn response_text(resp: ResponseFuture) -> (u16, String) {
    let resp = tokio::time::timeout(Duration::from_secs(30), resp).await.expect("response in time").expect("response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
        if text.len() > 1 << 16 {
            break;
        }
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Sends `data` on `stream`, as fast as h2 allows (the test process buffers).
pub fn send(stream: &mut SendStream<Bytes>, data: impl Into<Bytes>, end: bool) {
    let data = data.into();
    stream.reserve_capacity(data.len());
    let _ = stream.send_data(data, end);
}

/// A whole file-mode object holding `data`, in chunks of `chunk` bytes.
pub fn file_object(name: &str, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut enc = ObjectEncoder::new();
    let mut out = BytesMut::from(&preamble()[..]);
    let header = ObjectHeader::new(name, Mode::File).with_items(1);
    enc.object_header(header).expect("header").encode(&mut out);
    enc.item_header(ItemHeader::bytes(0, name, data.len() as u64)).expect("item").encode(&mut out);
    for piece in data.chunks(chunk.max(1)) {
        enc.chunk(Bytes::copy_from_slice(piece)).expect("chunk").encode(&mut out);
    }
    enc.item_end().expect("item end").encode(&mut out);
    enc.object_end().expect("object end").encode(&mut out);
    out.to_vec()
}

/// The start of a file-mode object whose one chunk header declares `len`
/// payload bytes (none of which follow).
pub fn declared_chunk(len: u32) -> Vec<u8> {
    let mut enc = ObjectEncoder::new();
    let mut out = BytesMut::from(&preamble()[..]);
    enc.object_header(ObjectHeader::new("x", Mode::File)).expect("header").encode(&mut out);
    enc.item_header(ItemHeader::bytes(0, "x", u64::from(len))).expect("item").encode(&mut out);
    let mut head = Vec::new();
    FrameHeader::new(FrameKind::Chunk, 0, 0, len, 0).encode(&mut head);
    out.extend_from_slice(&head);
    out.to_vec()
}

/// Pulls `name` with the library client into `dir` and returns its bytes:
/// what a well-behaved peer does.
pub async fn well_behaved_get(addr: SocketAddr, name: &str, dir: &Path) -> Result<Vec<u8>, tensorwire::Error> {
    let config =
        Config { connect_timeout: Duration::from_secs(5), idle_timeout: Duration::from_secs(10), ..Config::default() };
    let client = Client::connect(addr, config).await?;
    let out = dir.join(format!("well-behaved-{}", next_id()));
    client.get_file(name, &out).await?;
    let bytes = std::fs::read(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(bytes)
}

/// Retries [`well_behaved_get`] until it succeeds or `within` has passed.
pub async fn get_eventually(addr: SocketAddr, name: &str, dir: &Path, within: Duration) -> Vec<u8> {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), well_behaved_get(addr, name, dir)).await {
            Ok(Ok(bytes)) => return bytes,
            other if start.elapsed() > within => panic!("no successful get within {within:?}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Files under `dir` whose name starts with `prefix`.
pub fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
                .collect()
        })
        .unwrap_or_default()
}

/// Raises this process's open-file limit to `want` if the hard limit
/// allows; returns whether it now is at least `want`.
pub fn raise_nofile(want: u64) -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c >= want) {
        return true;
    }
    if lim.maximum.is_some_and(|m| m < want) {
        return false;
    }
    lim.current = Some(want);
    setrlimit(Resource::Nofile, lim).is_ok()
}

/// One raw HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A raw connection that opens the largest windows, sends `count` GETs of
/// `path`, and then never reads the socket: the server may send all it
/// likes, and nothing it sends is ever taken.
pub async fn gets_never_read(addr: SocketAddr, path: &str, count: u32) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1, and the connection window too.
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(h2_frame(0x4, 0, 0, &settings));
    out.extend(h2_frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    for i in 0..count {
        // :method GET, :scheme http (static table), :path and :authority literal.
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        out.extend(h2_frame(0x1, 0x5, 2 * i + 1, &block));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("requests");
    s
}
