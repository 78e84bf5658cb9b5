//! The memory-peak harness behind `tensorwire bench memory` and
//! `tensorwire demo`: every way of sending a model, each side its own
//! process on loopback, with peak resident memory, time and bytes.
//!
//! [`run`] orchestrates; it starts the program at `exe` (the `tensorwire`
//! binary) as sender and receiver children, which call [`child_main`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use tensorwire::models::LlamaShape;
use tensorwire::quant::Scheme;
use tensorwire::send::ContainerStreamer;
use tensorwire::tensor::{Dtype, TensorMap};
use tensorwire::transport::{Client, Config, Registry, Server, ServerEvent, ServerHandle, TransferOptions};
use tensorwire::wire::{crc::Combined, EncodedFrame, FrameDecoder, CONTENT_TYPE};
use tensorwire::Error;

/// Why the harness failed: a transfer's own [`Error`], a child or a file
/// that misbehaved, or a received copy that is not the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A transfer (or building the model) failed.
    #[error(transparent)]
    Transfer(#[from] Error),
    /// The regular transmission's own HTTP/2 server failed.
    #[error(transparent)]
    Http(#[from] h2::Error),
    /// A file or a child process failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// With verification on, the received copy differs from the source.
    #[error("the received copy differs from the source: {0}")]
    Mismatch(&'static str),
    /// The receiver of the regular transmission closed its stream while
    /// the body was being sent.
    #[error("the receiver closed the stream before the body was sent")]
    StreamClosed,
    /// A receiver child exited with a failure (its stderr says why).
    #[error("the {0} receiver failed")]
    ReceiverFailed(String),
    /// A child was started without its stdout piped.
    #[error("the {0} child has no stdout")]
    NoStdout(&'static str),
    /// A child was asked for a shape the harness does not know.
    #[error("unknown shape {0:?}")]
    UnknownShape(String),
    /// A child was asked for a role the harness does not know.
    #[error("unknown harness role {0:?}")]
    UnknownRole(String),
}

/// The child subcommand the harness starts (hidden in the CLI).
pub const CHILD: &str = "__harness-child";

/// A way of sending the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// The whole object serialized in memory, sent, and received whole
    /// before it is decoded: what NVFlare calls regular transmission.
    Regular,
    /// Container streaming into a receiver that takes each tensor as it
    /// completes and drops it.
    ContainerLazy,
    /// Container streaming into a safetensors file.
    ContainerFile,
    /// File streaming of the safetensors file.
    File,
    /// Container streaming, quantized, into a lazy receiver that restores
    /// each tensor's dtype.
    Quantized(Scheme),
}

impl BenchMode {
    /// Every mode, the quantized ones last.
    pub fn all() -> Vec<BenchMode> {
        let mut v = vec![BenchMode::Regular, BenchMode::ContainerLazy, BenchMode::ContainerFile, BenchMode::File];
        v.extend([Scheme::Fp16, Scheme::Blockwise8, Scheme::Fp4, Scheme::Nf4].map(BenchMode::Quantized));
        v
    }

    /// Parses `regular`, `container`, `container-file`, `file`, or a
    /// quantization scheme (container streaming, quantized).
    pub fn parse(s: &str) -> Option<BenchMode> {
        Some(match s {
            "regular" => BenchMode::Regular,
            "container" => BenchMode::ContainerLazy,
            "container-file" => BenchMode::ContainerFile,
            "file" => BenchMode::File,
            other => BenchMode::Quantized(Scheme::parse(other)?),
        })
    }

    /// A short label.
    pub fn label(&self) -> String {
        match self {
            BenchMode::Regular => "regular (whole object)".into(),
            BenchMode::ContainerLazy => "container -> lazy consumer".into(),
            BenchMode::ContainerFile => "container -> file".into(),
            BenchMode::File => "file -> file".into(),
            BenchMode::Quantized(s) => format!("container, {s} -> lazy consumer"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model's shape (its fp32 weights are synthetic).
    pub shape: LlamaShape,
    /// A name for the shape, as the children understand it.
    pub shape_name: String,
    /// Where the model file and outputs go (tmpfs by default).
    pub dir: PathBuf,
    /// The modes, in order.
    pub modes: Vec<BenchMode>,
    /// Check every result against the source (the demo does).
    pub verify: bool,
}

/// Peak memory of one process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Peak {
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Anonymous resident memory at the end of the transfer, KiB.
    pub anon_kib: u64,
    /// File-backed resident memory at the end of the transfer, KiB.
    pub file_kib: u64,
}

/// One mode's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The mode.
    pub mode: String,
    /// The sender process.
    pub sender: Peak,
    /// The receiver process.
    pub receiver: Peak,
    /// Wall time of the transfer, seconds (the receiver's view).
    pub secs: f64,
    /// Response-body bytes that crossed the connection.
    pub wire_bytes: u64,
    /// What verification found, if asked.
    pub verified: Option<String>,
}

/// Children started and not yet reaped, so that Ctrl-C can stop them.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every running child (for a Ctrl-C handler).
pub fn kill_children() {
    if let Ok(pids) = CHILDREN.lock() {
        for pid in pids.iter() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

struct Reaped(Child);

/// The `tensorwire` binary allocates with mimalloc. Processes that hold
/// whole tensors (container senders and receivers) run with these settings,
/// which make mimalloc return freed memory to the OS at once and commit its
/// arenas lazily, so that their peak is what they hold rather than what the
/// allocator keeps around (about 100 MiB more for a lazy receiver of 1 GB
/// tensors). File streaming holds no large buffers and keeps the defaults,
/// which are faster.
fn allocator_env(mode: BenchMode) -> Vec<(&'static str, &'static str)> {
    match mode {
        BenchMode::File => Vec::new(),
        _ => vec![("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ARENA_EAGER_COMMIT", "0")],
    }
}

impl Reaped {
    fn spawn(cmd: &mut Command) -> Result<Self, HarnessError> {
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.push(child.id());
        }
        Ok(Reaped(child))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.retain(|&p| p != self.0.id());
        }
    }
}

/// Runs every mode with `exe` as the child program; `progress` hears about
/// each step.
///
/// # Errors
///
/// [`HarnessError::Io`] when a child cannot be started,
/// [`HarnessError::ReceiverFailed`] when one fails, [`HarnessError::Mismatch`]
/// when a received copy is not the source, [`HarnessError::Transfer`] for
/// the model file.
pub fn run(exe: &Path, opts: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Row>, HarnessError> {
    std::fs::create_dir_all(&opts.dir)?;
    let model = opts.dir.join("model.safetensors");
    progress(&format!("writing the {} model ({:.0} MiB)", opts.shape_name, mib(opts.shape.parameters() * 4)));
    write_model(&opts.shape, &model)?;
    let mut rows = Vec::new();
    for (i, mode) in opts.modes.iter().enumerate() {
        // Regular transmission holds twice the model in each of two
        // processes; skip it rather than let the kernel kill something.
        let need = opts.shape.parameters() * 4 * 4 + (1 << 30);
        if *mode == BenchMode::Regular && available_memory().is_some_and(|a| a < need) {
            progress(&format!(
                "[{}/{}] skipping {}: it needs about {:.1} GiB, {:.1} GiB are available",
                i + 1,
                opts.modes.len(),
                mode.label(),
                need as f64 / (1u64 << 30) as f64,
                available_memory().unwrap_or(0) as f64 / (1u64 << 30) as f64
            ));
            continue;
        }
        progress(&format!("[{}/{}] {}", i + 1, opts.modes.len(), mode.label()));
        rows.push(run_mode(exe, opts, &model, *mode)?);
    }
    Ok(rows)
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_mode(exe: &Path, opts: &Options, model: &Path, mode: BenchMode) -> Result<Row, HarnessError> {
    let out = opts.dir.join("received.safetensors");
    let _ = std::fs::remove_file(&out);
    let (serve, get) = match mode {
        BenchMode::Regular => ("serve-regular", "get-regular"),
        BenchMode::ContainerLazy | BenchMode::Quantized(_) => ("serve-container", "get-lazy"),
        BenchMode::ContainerFile => ("serve-container", "get-container-file"),
        BenchMode::File => ("serve-file", "get-file"),
    };
    let env = allocator_env(mode);
    let mut sender =
        Reaped::spawn(Command::new(exe).envs(env.iter().copied()).args([CHILD, serve, &opts.shape_name]).arg(model))?;
    let mut sender_out = BufReader::new(sender.0.stdout.take().ok_or(HarnessError::NoStdout("sender"))?);
    let mut addr = String::new();
    sender_out.read_line(&mut addr)?;
    let quant = match mode {
        BenchMode::Quantized(s) => s.as_str().to_string(),
        _ => "-".into(),
    };
    let verify = if opts.verify { "verify" } else { "-" };
    let receiver = Command::new(exe)
        .envs(env.iter().copied())
        .args([CHILD, get, &opts.shape_name, addr.trim(), &quant, verify])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    let report = String::from_utf8_lossy(&receiver.stdout).to_string();
    if !receiver.status.success() {
        // The sender may still wait for a request: it is killed on drop.
        return Err(HarnessError::ReceiverFailed(mode.label()));
    }
    let mut sender_report = String::new();
    sender_out.read_to_string(&mut sender_report)?;
    drop(sender);
    let mut verified = field_str(&report, "verified=");
    if opts.verify && matches!(mode, BenchMode::File | BenchMode::ContainerFile) {
        verified = Some(compare_files(model, &out, mode == BenchMode::File)?);
    }
    let _ = std::fs::remove_file(&out);
    Ok(Row {
        mode: mode.label(),
        sender: peak_of(&sender_report),
        receiver: peak_of(&report),
        secs: field(&report, "secs=").unwrap_or(f64::NAN),
        wire_bytes: field(&sender_report, "sent=").unwrap_or(0.0) as u64,
        verified,
    })
}

fn field(s: &str, key: &str) -> Option<f64> {
    s.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
}

fn field_str(s: &str, key: &str) -> Option<String> {
    s.lines().find_map(|l| l.find(key).map(|i| l[i + key.len()..].trim().replace('_', " ")))
}

fn peak_of(report: &str) -> Peak {
    Peak {
        hwm_kib: field(report, "hwm_kib=").unwrap_or(0.0) as u64,
        anon_kib: field(report, "anon_kib=").unwrap_or(0.0) as u64,
        file_kib: field(report, "file_kib=").unwrap_or(0.0) as u64,
    }
}

/// Byte for byte (file streaming), or tensor by tensor (a safetensors file
/// rewritten by the receiver, whose header may be laid out differently).
fn compare_files(a: &Path, b: &Path, bytewise: bool) -> Result<String, HarnessError> {
    if bytewise {
        let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
        let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let n = fa.read(&mut ba)?;
            fb.read_exact(&mut bb[..n]).map_err(|_| HarnessError::Mismatch("the received file is shorter"))?;
            if ba[..n] != bb[..n] {
                return Err(HarnessError::Mismatch("the received file has other bytes"));
            }
            if n == 0 {
                return if fb.read(&mut bb)? == 0 {
                    Ok("byte-identical".into())
                } else {
                    Err(HarnessError::Mismatch("the received file is longer"))
                };
            }
        }
    }
    let crcs = |p: &Path| -> Result<std::collections::BTreeMap<String, u32>, HarnessError> {
        let mut out = std::collections::BTreeMap::new();
        let frames = ContainerStreamer::open_safetensors(p)?.frames();
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        rt.block_on(async {
            let mut frames = std::pin::pin!(frames);
            let mut name = String::new();
            let mut crc = Combined::new();
            while let Some(f) = frames.next().await {
                match f? {
                    tensorwire::wire::Frame::ItemHeader(h) => {
                        name = h.name;
                        crc = Combined::new();
                    }
                    tensorwire::wire::Frame::Chunk(c) => crc.push(c.crc, c.data.len() as u64),
                    tensorwire::wire::Frame::ItemEnd(_) => {
                        out.insert(std::mem::take(&mut name), crc.crc());
                    }
                    _ => {}
                }
            }
            Ok::<_, Error>(())
        })?;
        Ok(out)
    };
    if crcs(a)? == crcs(b)? {
        Ok("every tensor identical".into())
    } else {
        Err(HarnessError::Mismatch("a received tensor has other values"))
    }
}

/// Writes the shape's synthetic fp32 model as a safetensors file, one
/// tensor at a time.
pub fn write_model(shape: &LlamaShape, path: &Path) -> Result<(), HarnessError> {
    let tensors = shape.tensors();
    let mut entries = Vec::new();
    let mut at = 0usize;
    for (name, dims) in &tensors {
        let len = dims.iter().product::<u64>() as usize * 4;
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        entries.push((
            name.clone(),
            safetensors::tensor::TensorInfo { dtype: safetensors::Dtype::F32, shape, data_offsets: (at, at + len) },
        ));
        at += len;
    }
    let meta = safetensors::tensor::Metadata::new(None, entries).map_err(Error::from)?;
    let mut header = serde_json::to_vec(&meta).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&(header.len() as u64).to_le_bytes())?;
    f.write_all(&header)?;
    for (n, (_, dims)) in tensors.iter().enumerate() {
        let numel = dims.iter().product::<u64>() as usize;
        f.write_all(&tensorwire::models::weights_for_tests(numel, Dtype::F32, SEED.wrapping_add(n as u64)))?;
    }
    f.flush()?;
    Ok(())
}

/// The seed of the synthetic model (as `LlamaShape::synthetic` takes it).
const SEED: u64 = 42;

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// A shape by the name the harness passes to children.
pub fn shape_named(name: &str) -> Option<LlamaShape> {
    Some(match name {
        "llama-3.2-1b" => LlamaShape::LLAMA_3_2_1B,
        "small" => LlamaShape::SMALL,
        "demo" => DEMO,
        "tiny" => LlamaShape { layers: 2, hidden: 128, intermediate: 256, heads: 4, kv_heads: 2, vocab: 1000 },
        _ => return None,
    })
}

/// The demo's model: Llama-shaped, 357.0 MiB in fp32.
pub const DEMO: LlamaShape =
    LlamaShape { layers: 4, hidden: 1024, intermediate: 4096, heads: 16, kv_heads: 4, vocab: 16_000 };

/// This process's peak resident set (VmHWM) in KiB, 0 where unknown.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn report_peak(extra: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("0").to_string()
    };
    println!("{extra} hwm_kib={} anon_kib={} file_kib={}", kib("VmHWM:"), kib("RssAnon:"), kib("RssFile:"));
}

/// A child's work: `args` are what [`run`] passed after [`CHILD`].
///
/// # Errors
///
/// [`HarnessError::Transfer`] for what the role's transfer returns,
/// [`HarnessError::UnknownShape`] / [`HarnessError::UnknownRole`] for
/// arguments [`run`] does not pass.
pub fn child_main(args: &[String]) -> Result<(), HarnessError> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("-");
    let shape = shape_named(arg(1)).ok_or_else(|| HarnessError::UnknownShape(arg(1).to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match arg(0) {
            "serve-file" => serve(Registry::new().with_file("model", arg(2))).await,
            "serve-container" => {
                let model = Arc::new(shape.synthetic(Dtype::F32, SEED));
                serve(Registry::new().with_container("model", model)).await
            }
            "serve-regular" => serve_regular(shape).await,
            "get-file" => get_file(arg(2), Path::new(arg(5))).await,
            "get-container-file" => get_container_file(arg(2), Path::new(arg(5))).await,
            "get-lazy" => get_lazy(shape, arg(2), Scheme::parse(arg(3)), arg(4) == "verify").await,
            "get-regular" => get_regular(arg(2)).await,
            other => Err(HarnessError::UnknownRole(other.to_string())),
        }
    })
}

/// Serves one transfer of `model`, then reports what it sent.
async fn serve(registry: Registry) -> Result<(), HarnessError> {
    let server = Server::bind("127.0.0.1:0", registry, Config::default()).await?;
    println!("{}", server.local_addr()?);
    let handle = serve_one_transfer(server).await?;
    report_peak(&format!("sent={}", handle.bytes_sent()));
    Ok(())
}

/// Runs `server` until its first request has been answered, then shuts it
/// down (GOAWAY: a transfer in flight still finishes) and returns its handle
/// for the counters. For tools that move one object.
///
/// The server's [`ServerEvent::Request`] (sent once a request is answered,
/// its body included) is the signal: nothing polls. It takes the server's
/// events for that ([`Server::with_events`]), replacing any set before.
///
/// # Errors
///
/// [`HarnessError::Transfer`] for what [`Server::run`] returns.
pub async fn serve_one_transfer(server: Server) -> Result<ServerHandle, HarnessError> {
    let (done, answered) = tokio::sync::oneshot::channel::<()>();
    let done = Mutex::new(Some(done));
    let server = server.with_events(Arc::new(move |event: &ServerEvent| {
        if matches!(event, ServerEvent::Request { .. }) {
            if let Some(done) = done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                let _ = done.send(());
            }
        }
    }));
    let handle = server.handle();
    let mut run = tokio::spawn(server.run());
    tokio::select! {
        // The server ended on its own (it failed): report that.
        ended = &mut run => {
            ended.map_err(|e| Error::Io(std::io::Error::other(e)))??;
            return Ok(handle);
        }
        _ = answered => {}
    }
    handle.shutdown();
    run.await.map_err(|e| Error::Io(std::io::Error::other(e)))??;
    Ok(handle)
}

/// Regular transmission: the whole object serialized in memory first, then
/// sent as one body.
async fn serve_regular(shape: LlamaShape) -> Result<(), HarnessError> {
    let model = Arc::new(shape.synthetic(Dtype::F32, SEED));
    // Sized first, so the serialized copy is exactly one object, not a
    // doubling buffer's worth.
    let mut size = 0;
    let mut sizing = std::pin::pin!(ContainerStreamer::from_map("model", Arc::clone(&model)).frames());
    while let Some(f) = sizing.next().await {
        size += f?.encoded_len();
    }
    let mut whole = BytesMut::with_capacity(size);
    let mut frames = std::pin::pin!(ContainerStreamer::from_map("model", Arc::clone(&model)).frames());
    while let Some(f) = frames.next().await {
        f?.encode(&mut whole);
    }
    let whole = whole.freeze();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let config = Config::default();
    let mut conn = h2::server::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.max_frame_size)
        .max_send_buffer_size(config.max_send_buffer)
        .handshake::<_, tensorwire::wire::EncodedFrame>(tcp)
        .await?;
    let sent = whole.len() + tensorwire::wire::PREAMBLE_LEN;
    if let Some(Ok((_req, mut respond))) = conn.accept().await {
        let resp =
            http::Response::builder().status(200).header("content-type", CONTENT_TYPE).body(()).unwrap_or_default();
        let stream = respond.send_response(resp, false)?;
        let mut body = BytesMut::with_capacity(tensorwire::wire::PREAMBLE_LEN);
        body.extend_from_slice(&tensorwire::wire::preamble());
        let send = send_whole(stream, body.freeze(), whole, config.idle_timeout);
        // The connection must be driven while the body goes out.
        let drive = async { while conn.accept().await.is_some() {} };
        tokio::select! {
            r = send => r?,
            _ = drive => {}
        }
        // Let the connection flush and close.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(30), async { while conn.accept().await.is_some() {} })
                .await;
    }
    drop(model);
    report_peak(&format!("sent={sent}"));
    Ok(())
}

/// Sends `preamble` then `frames` as one response body, never handing h2
/// more than the capacity it granted (SPEC.md §8.1).
async fn send_whole(
    mut stream: h2::SendStream<EncodedFrame>,
    preamble: Bytes,
    mut frames: Bytes,
    idle: std::time::Duration,
) -> Result<(), HarnessError> {
    stream.send_data(EncodedFrame::from_bytes(preamble), frames.is_empty())?;
    while !frames.is_empty() {
        stream.reserve_capacity(frames.len());
        let granted = tokio::time::timeout(idle, async {
            loop {
                if stream.capacity() > 0 {
                    return Ok(stream.capacity());
                }
                match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(HarnessError::from(Error::from(e))),
                    None => return Err(HarnessError::StreamClosed),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout("send capacity"))??;
        let part = frames.split_to(granted.min(frames.len()));
        stream.send_data(EncodedFrame::from_bytes(part), frames.is_empty())?;
    }
    Ok(())
}

async fn client(addr: &str) -> Result<Client, HarnessError> {
    Ok(Client::connect(addr, Config::default()).await?)
}

async fn get_file(addr: &str, out: &Path) -> Result<(), HarnessError> {
    let c = client(addr).await?;
    let started = Instant::now();
    c.get_file("model", out).await?;
    report_peak(&format!("secs={}", started.elapsed().as_secs_f64()));
    Ok(())
}

async fn get_container_file(addr: &str, out: &Path) -> Result<(), HarnessError> {
    let c = client(addr).await?;
    let started = Instant::now();
    c.retrieve("model", None, &TransferOptions::default()).await?.write_safetensors(out).await?;
    report_peak(&format!("secs={}", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Takes each tensor as it completes and drops it; with `verify`, compares
/// it with the source tensor regenerated from the seed.
async fn get_lazy(shape: LlamaShape, addr: &str, scheme: Option<Scheme>, verify: bool) -> Result<(), HarnessError> {
    let c = client(addr).await?;
    let started = Instant::now();
    let opts = TransferOptions { quantize: scheme, ..TransferOptions::default() };
    let mut tensors = c.retrieve("model", None, &opts).await?;
    let index: std::collections::HashMap<String, usize> =
        shape.tensors().into_iter().enumerate().map(|(i, (n, _))| (n, i)).collect();
    let (mut count, mut max_err, mut sq_err, mut sq_ref, mut identical) = (0usize, 0f64, 0f64, 0f64, true);
    while let Some(t) = tensors.next().await {
        let t = t?;
        count += 1;
        if verify {
            let n = index.get(t.name()).copied().ok_or(HarnessError::Mismatch("a tensor the source does not hold"))?;
            let numel = t.meta().numel().unwrap_or(0) as usize;
            let expected = tensorwire::models::weights_for_tests(numel, Dtype::F32, SEED.wrapping_add(n as u64));
            identical &= expected == *t.data();
            for (a, b) in expected.chunks_exact(4).zip(t.data().chunks_exact(4)) {
                let (a, b) = (
                    f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                );
                max_err = max_err.max((a - b).abs());
                sq_err += (a - b) * (a - b);
                sq_ref += a * a;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let verified = match (verify, identical) {
        (false, _) => String::new(),
        (true, true) => format!("verified={count}_tensors_identical"),
        (true, false) => format!(
            "verified=max_abs_error_{max_err:.2e},_relative_RMS_error_{:.2e}",
            (sq_err / sq_ref.max(1e-300)).sqrt()
        ),
    };
    report_peak(&format!("secs={secs}"));
    if !verified.is_empty() {
        println!("{verified}");
    }
    Ok(())
}

/// Regular transmission's receiver: the whole body in memory, then decoded
/// into a map of tensors.
async fn get_regular(addr: &str) -> Result<(), HarnessError> {
    let c = client(addr).await?;
    let started = Instant::now();
    let mut rx = c.get("model", &TransferOptions::default()).await?;
    // Frames arrive in order; keep the whole object as received, in a
    // buffer sized from the object header's total.
    let mut whole = BytesMut::from(&tensorwire::wire::preamble()[..]);
    while let Some(f) = rx.next_frame().await? {
        if let tensorwire::wire::Frame::ObjectHeader(h) = &f {
            let items = h.items.unwrap_or(0) as usize;
            whole.reserve(h.total_len.unwrap_or(0) as usize + items * 256 + 4096);
        }
        f.encode(&mut whole);
    }
    let map = decode_whole(whole)?;
    let secs = started.elapsed().as_secs_f64();
    report_peak(&format!("secs={secs} tensors={}", map.len()));
    Ok(())
}

fn decode_whole(mut whole: BytesMut) -> Result<TensorMap, HarnessError> {
    let mut dec = FrameDecoder::new();
    let mut map = TensorMap::new();
    let mut current: Option<(tensorwire::wire::ItemHeader, Vec<u8>)> = None;
    // Each tensor is copied out of the received object: the whole object
    // and the whole map are held at once, as a regular receiver does.
    while let Some(f) = dec.decode_frame_eof(&mut whole).map_err(Error::from)? {
        match f {
            tensorwire::wire::Frame::ItemHeader(h) => {
                let len = h.len as usize;
                current = Some((h, Vec::with_capacity(len)));
            }
            tensorwire::wire::Frame::Chunk(c) => {
                if let Some((_, d)) = current.as_mut() {
                    d.extend_from_slice(&c.data);
                }
            }
            tensorwire::wire::Frame::ItemEnd(_) => {
                if let Some((h, d)) = current.take() {
                    let meta = tensorwire::tensor::TensorMeta::new(
                        h.name.clone(),
                        h.dtype.unwrap_or(Dtype::U8),
                        h.shape.unwrap_or_default(),
                    );
                    map.insert(h.name, tensorwire::tensor::Tensor::from_meta(meta, Bytes::from(d))?);
                }
            }
            _ => {}
        }
    }
    Ok(map)
}
