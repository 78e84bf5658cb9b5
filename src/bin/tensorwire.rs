//! The `tensorwire` command-line tool.
//!
//! ```text
//! tensorwire serve --root DIR [--addr 127.0.0.1:7470]   serve files under DIR (and accept pushes);
//!                  [--max-connections N ...]            bounds on what peers may hold (README "Security")
//! tensorwire get URL -o FILE                            pull an object into FILE
//! tensorwire put FILE URL                               push FILE as an object
//! tensorwire inspect FILE                               summarize a safetensors file
//! tensorwire frames OBJECT                              decode and verify a framed object body
//! ```
//!
//! Errors print one line to stderr and exit non-zero. With
//! `TENSORWIRE_REPORT_PEAK=1` the process prints its peak resident memory to
//! stderr at exit (used by the benchmark harness).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use tensorwire::transport::{Client, Config, Progress, Registry, Server, TransferOptions};
use tensorwire::wire::{Frame, FrameDecoder};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "tensorwire", version, about = "Stream models and tensors over HTTP/2")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the files under a directory: GET and PUT /objects/{name}.
    Serve {
        /// The directory to serve; nothing outside it is ever read or written.
        #[arg(long)]
        root: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7470")]
        addr: String,
        /// Refuse pushes.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        bounds: ServerBounds,
    },
    /// Pull an object into a file (written as FILE.part, renamed when verified).
    Get {
        /// http://HOST:PORT/objects/NAME
        url: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// `file`: the object's bytes as they are; `container`: tensor by
        /// tensor, written into a safetensors file as they arrive.
        #[arg(long, value_enum, default_value_t = GetMode::File)]
        mode: GetMode,
        /// Container mode: only these tensors, in this order (comma-separated).
        #[arg(long, value_delimiter = ',')]
        items: Option<Vec<String>>,
        /// Container mode: the server quantizes float tensors with this
        /// scheme (fp16, bf16, blockwise8, fp4, nf4, fp4-nested, nf4-nested);
        /// they are restored to their original dtype here.
        #[arg(long, value_parser = parse_scheme)]
        quantize: Option<tensorwire::quant::Scheme>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Push a file as an object.
    Put {
        /// The file to send.
        file: PathBuf,
        /// http://HOST:PORT/objects/NAME
        url: String,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Summarize a safetensors file: tensors, dtypes, shapes, bytes.
    Inspect {
        /// The safetensors file.
        file: PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// A one-minute tour on loopback: a few hundred MB model sent every way,
    /// verified, with memory and time per mode.
    Demo {
        /// Where the model and outputs go (default: /dev/shm, else the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    #[command(name = "__harness-child", hide = true)]
    HarnessChild {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Decode a framed object body (SPEC.md), verify it, and list its frames.
    Frames {
        /// A file holding the object body, or `-` for standard input.
        object: String,
        /// List every chunk, not only item and object frames.
        #[arg(long)]
        chunks: bool,
    },
}

/// What `bench` measures.
#[derive(Subcommand)]
enum BenchWhat {
    /// Peak memory and time of every way of sending a model, each side its
    /// own process on loopback, beside NVFlare 2.6's published numbers.
    Memory {
        /// `small` (120 MiB), `demo` (374 MiB) or `llama-3.2-1b` (5.7 GB).
        #[arg(long, default_value = "small")]
        shape: String,
        /// Where the model and outputs go (default: /dev/shm, else the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
        /// Also check every result against the source.
        #[arg(long)]
        verify: bool,
        /// Only these modes (comma-separated): regular, container,
        /// container-file, file, fp16, bf16, blockwise8, fp4, nf4, ...
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
    },
}

/// How `get` asks for an object.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GetMode {
    /// The object's bytes.
    File,
    /// One tensor at a time, into a safetensors file.
    Container,
}

/// What peers may make `serve` hold (README "Security"); defaults in
/// brackets are `Config::default()`'s.
#[derive(clap::Args)]
struct ServerBounds {
    /// Most connections at once; more are closed at once [1024, lowered to
    /// half the open-file limit].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most connections at once from one IP address [128].
    #[arg(long)]
    max_connections_per_peer: Option<usize>,
    /// Most files open for transfers at once (pulls from disk, pushes);
    /// more are answered 503 [512, lowered to fit the open-file limit].
    #[arg(long)]
    max_open_files: Option<usize>,
    /// Most concurrent streams (transfers) per connection [64].
    #[arg(long)]
    max_concurrent_streams: Option<u32>,
    /// Largest request header block, bytes [65536].
    #[arg(long)]
    max_header_list_size: Option<u32>,
    /// Seconds a new connection may take to finish the HTTP/2 handshake [10].
    #[arg(long, value_parser = parse_secs)]
    handshake_timeout: Option<std::time::Duration>,
    /// Seconds a connection may stay open with no request in flight [120].
    #[arg(long, value_parser = parse_secs)]
    idle_connection_timeout: Option<std::time::Duration>,
    /// Seconds a transfer may make no progress (no frame completed and
    /// under 64 KiB received, or no window) [60].
    #[arg(long, value_parser = parse_secs)]
    idle_timeout: Option<std::time::Duration>,
    /// Bytes one connection may make the server hold in partial frames and
    /// item names beyond its window [67108864].
    #[arg(long)]
    max_pinned_per_connection: Option<u64>,
    /// The same for all connections together, plus frames being sent
    /// [268435456].
    #[arg(long)]
    max_pinned: Option<u64>,
}

impl ServerBounds {
    fn apply(&self, mut c: Config) -> Config {
        // Half the open-file limit for connections, half for their files.
        c.max_connections = self.max_connections.unwrap_or_else(|| c.max_connections.min(half_the_open_files()));
        c.max_open_files = self.max_open_files.unwrap_or_else(|| c.max_open_files.min(half_the_open_files()));
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            max_connections_per_peer,
            max_concurrent_streams,
            max_header_list_size,
            handshake_timeout,
            idle_connection_timeout,
            idle_timeout,
            max_pinned_per_connection,
            max_pinned
        );
        c
    }
}

/// Half of the open-file limit, less a few spare: connections get one half
/// and the files transfers open the other, so `accept()` and `open()` never
/// run out.
fn half_the_open_files() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    limit.map_or(usize::MAX, |n| (n.saturating_sub(64) / 2).max(1) as usize)
}

fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Transfer tuning shared by the network commands.
#[derive(clap::Args)]
struct Tuning {
    /// Chunk size in bytes for what this side sends (or asks for).
    #[arg(long)]
    chunk_size: Option<u32>,
    /// HTTP/2 receive window per stream, bytes.
    #[arg(long)]
    window: Option<u32>,
    /// Largest HTTP/2 DATA frame to accept, bytes.
    #[arg(long)]
    frame_size: Option<u32>,
}

impl Tuning {
    fn config(&self) -> Config {
        let mut c = Config::default();
        if let Some(n) = self.chunk_size {
            c.chunk_size = n;
        }
        if let Some(w) = self.window {
            c.stream_window = w;
            c.connection_window = w.saturating_mul(2);
            c.max_send_buffer = w as usize;
        }
        if let Some(f) = self.frame_size {
            c.max_frame_size = f;
        }
        c
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// mimalloc rather than glibc's malloc. Receiving over HTTP/2 allocates a
/// buffer per DATA frame (1 MiB by default); glibc hands such buffers back to
/// the kernel when they are freed and faults fresh pages in for the next one
/// (about 100,000 minor faults per GiB received), which made writing h2 data
/// into a file much slower than a raw TCP copy. mimalloc reuses them: about
/// 200 faults per GiB. Measured with `examples/loopback_bench.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Harness children run their own runtime.
    if let Command::HarnessChild { args } = &cli.command {
        return match tensorwire::harness::child_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tensorwire: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // A server spreads connections over both cores; a single transfer runs
    // best on one thread (no cross-thread wake-ups between the connection
    // and the consumer), with file writes on tokio's blocking pool.
    let runtime = match &cli.command {
        // File writes run on the blocking pool: a server bounds it (tokio's
        // default is 512 threads, each with its own allocator heap, which
        // hundreds of pushes arriving at once would all start).
        Command::Serve { .. } => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(16).enable_all().build()
        }
        Command::Bench { .. } | Command::Demo { .. } => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tensorwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    report_peak();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tensorwire: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Serve { root, addr, read_only, tuning, bounds } => {
            serve(root, addr, read_only, bounds.apply(tuning.config())).await
        }
        Command::Get { url, output, mode, items, quantize, tuning } => {
            get(&url, output, mode, items, quantize, tuning).await
        }
        Command::Put { file, url, tuning } => put(file, &url, tuning).await,
        Command::Inspect { file } => inspect(file),
        Command::Bench { what: BenchWhat::Memory { shape, dir, json, verify, modes } } => {
            bench_memory(&shape, dir, json, verify, modes, false)
        }
        Command::Demo { dir } => bench_memory("demo", dir, false, true, None, true),
        Command::HarnessChild { args } => Ok(tensorwire::harness::child_main(&args)?),
        Command::Frames { object, chunks } => frames(&object, chunks),
    }
}

async fn serve(root: PathBuf, addr: String, read_only: bool, config: Config) -> Result<(), BoxError> {
    let registry = Registry::root(&root).map_err(|e| format!("{}: {e}", root.display()))?.accept_pushes(!read_only);
    // Warnings (accept failures, for one) and notes go to stderr.
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::INFO).try_init();
    let server = Server::bind(&addr, registry, config).await.map_err(|e| format!("{addr}: {e}"))?;
    eprintln!("tensorwire: serving {} on http://{}/objects/", root.display(), server.local_addr()?);
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("tensorwire: shutting down after the transfers in flight");
        handle.shutdown();
    });
    server.run().await?;
    Ok(())
}

/// Splits `http://host:port/objects/name` into an address and a name.
fn parse_url(url: &str) -> Result<(String, String), BoxError> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs are supported (cleartext HTTP/2)").into());
    }
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?;
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(7470));
    let name = Registry::new().decode_name(uri.path())?;
    Ok((addr, name))
}

/// Options with a progress bar (when stderr is a terminal) and Ctrl-C.
fn options(what: &str) -> (TransferOptions, Option<indicatif::ProgressBar>) {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    let mut opts = TransferOptions { cancel: Some(cancel), ..TransferOptions::default() };
    if !std::io::stderr().is_terminal() {
        return (opts, None);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    let b = bar.clone();
    opts.progress = Some(Arc::new(move |p: Progress| {
        if let Some(total) = p.total {
            b.set_length(total);
        }
        b.set_position(p.done);
    }));
    (opts, Some(bar))
}

fn parse_scheme(s: &str) -> Result<tensorwire::quant::Scheme, String> {
    tensorwire::quant::Scheme::parse(s).ok_or_else(|| format!("unknown scheme {s:?}"))
}

async fn get(
    url: &str,
    output: PathBuf,
    mode: GetMode,
    items: Option<Vec<String>>,
    quantize: Option<tensorwire::quant::Scheme>,
    tuning: Tuning,
) -> Result<(), BoxError> {
    let (addr, name) = parse_url(url)?;
    let client = Client::connect(&addr, tuning.config()).await.map_err(|e| format!("{addr}: {e}"))?;
    let (mut opts, bar) = options(&name);
    opts.chunk_size = tuning.chunk_size;
    opts.quantize = quantize;
    let started = std::time::Instant::now();
    let result = match mode {
        GetMode::File if items.is_some() || quantize.is_some() => {
            Err("--items and --quantize need --mode container".into())
        }
        GetMode::File => client.get_file_with(&name, &output, &opts).await.map(|got| got.len).map_err(BoxError::from),
        GetMode::Container => {
            let cancel = opts.cancel.clone().unwrap_or_default();
            let work = async {
                let retriever = client.retrieve(&name, items.as_deref(), &opts).await?;
                retriever.write_safetensors(&output).await
            };
            tokio::select! {
                r = work => r.map_err(BoxError::from),
                _ = cancel.cancelled() => Err("cancelled".into()),
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let len = result?;
    summary("received", len, started, &output.display().to_string());
    Ok(())
}

async fn put(file: PathBuf, url: &str, tuning: Tuning) -> Result<(), BoxError> {
    let (addr, name) = parse_url(url)?;
    let client = Client::connect(&addr, tuning.config()).await.map_err(|e| format!("{addr}: {e}"))?;
    let (opts, bar) = options(&name);
    let started = std::time::Instant::now();
    let result = client.put_file_with(&file, &name, &opts).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let got = result.map_err(|e| format!("{}: {e}", file.display()))?;
    summary("sent", got.len, started, url);
    Ok(())
}

fn summary(what: &str, len: u64, started: std::time::Instant, target: &str) {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { len as f64 / secs / 1e9 } else { 0.0 };
    eprintln!("tensorwire: {what} {len} bytes in {secs:.2} s ({rate:.2} GB/s), verified: {target}");
}

fn inspect(file: PathBuf) -> Result<(), BoxError> {
    let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let meta = tensorwire::recv::validate_safetensors(&f).map_err(|e| format!("{}: {e}", file.display()))?;
    let tensors = meta.tensors();
    let mut total = 0u64;
    let mut params = 0u64;
    println!("{:<60} {:>8} {:>20} {:>14}", "tensor", "dtype", "shape", "bytes");
    for name in meta.offset_keys() {
        let Some(info) = tensors.get(&name) else { continue };
        let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
        total += bytes;
        params += info.shape.iter().product::<usize>() as u64;
        println!("{:<60} {:>8} {:>20} {:>14}", name, info.dtype.to_string(), format!("{:?}", info.shape), bytes);
    }
    if let Some(m) = meta.metadata() {
        let mut keys: Vec<_> = m.iter().collect();
        keys.sort();
        for (k, v) in keys {
            println!("metadata {k} = {v}");
        }
    }
    println!(
        "{} tensors, {params} parameters, {total} bytes of data ({:.2} MiB)",
        tensors.len(),
        total as f64 / 1048576.0
    );
    Ok(())
}

/// Reads the object in 1 MiB pieces, so memory stays at about one frame.
fn frames(path: &str, list_chunks: bool) -> Result<(), BoxError> {
    let mut input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?)
    };
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut piece = vec![0u8; 1 << 20];
    let (mut chunks, mut bytes) = (0u64, 0u64);
    loop {
        let n = input.read(&mut piece)?;
        buf.extend_from_slice(&piece[..n]);
        loop {
            let next = if n == 0 { dec.decode_frame_eof(&mut buf)? } else { dec.decode_frame(&mut buf)? };
            let Some(f) = next else { break };
            match &f {
                Frame::Chunk(c) => {
                    chunks += 1;
                    bytes += c.data.len() as u64;
                    if list_chunks {
                        println!(
                            "  chunk     item {} offset {} len {} crc {:#010x}",
                            c.item,
                            c.offset,
                            c.data.len(),
                            c.crc
                        );
                    }
                }
                Frame::ObjectHeader(h) => println!(
                    "object    {:?} mode {} items {} total {}",
                    h.name,
                    h.mode.as_str(),
                    h.items.map_or("?".into(), |n| n.to_string()),
                    h.total_len.map_or("?".into(), |n| n.to_string())
                ),
                Frame::ItemHeader(h) => println!(
                    "item {:<4} {:?} {} {:?} len {} encoding {}",
                    h.item,
                    h.name,
                    h.dtype.map_or("bytes", |d| d.as_str()),
                    h.shape.clone().unwrap_or_default(),
                    h.len,
                    h.encoding.scheme()
                ),
                Frame::ItemEnd(e) => println!("  end      item {} len {} crc {:#010x}", e.item, e.len, e.crc),
                Frame::ObjectEnd(e) => println!("end       items {} len {} crc {:#010x}", e.items, e.len, e.crc),
                Frame::Abort(a) => println!("abort     {} {:?}", a.code, a.message),
            }
        }
        if n == 0 {
            break;
        }
    }
    println!("verified: {chunks} chunks, {bytes} data bytes; every CRC and ordering rule checked");
    Ok(())
}

/// NVFlare 2.6's published Table 2 for Llama-3.2-1B: peak memory of the
/// whole machine (MB) and job time (s).
const NVFLARE: [(&str, f64, f64); 3] = [
    ("regular transmission", 42_427.0, 47.0),
    ("container streaming", 23_265.0, 50.0),
    ("file streaming", 19_176.0, 170.0),
];

fn bench_memory(
    shape_name: &str,
    dir: Option<PathBuf>,
    json: bool,
    verify: bool,
    modes: Option<Vec<String>>,
    demo: bool,
) -> Result<(), BoxError> {
    use tensorwire::harness::{self, BenchMode, Options};
    let shape = harness::shape_named(shape_name).ok_or_else(|| format!("unknown shape {shape_name:?}"))?;
    let modes = match modes {
        Some(names) => names
            .iter()
            .map(|n| BenchMode::parse(n).ok_or_else(|| format!("unknown mode {n:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => BenchMode::all(),
    };
    let base = dir.unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let dir = base.join(format!("tensorwire-bench-{}", std::process::id()));
    // Ctrl-C: stop the children, remove the files, leave.
    let cleanup_dir = dir.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            harness::kill_children();
            let _ = std::fs::remove_dir_all(&cleanup_dir);
            eprintln!("\ntensorwire: interrupted; children stopped, {} removed", cleanup_dir.display());
            std::process::exit(130);
        }
    });
    let opts = Options { shape, shape_name: shape_name.into(), dir: dir.clone(), modes, verify };
    let exe = std::env::current_exe()?;
    let started = std::time::Instant::now();
    let progress = |s: &str| eprintln!("tensorwire: {s}");
    let result = std::thread::scope(|scope| scope.spawn(|| harness::run(&exe, &opts, &progress)).join());
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result.map_err(|_| "the harness panicked")??;
    let model_mib = shape.parameters() as f64 * 4.0 / 1048576.0;
    if json {
        let v = serde_json::json!({ "shape": shape_name, "model_mib": model_mib, "rows": rows });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "\n{} model: {} tensors, {} parameters, {:.1} MiB in fp32; each side its own process on loopback\n",
        shape_name,
        shape.tensors().len(),
        shape.parameters(),
        model_mib
    );
    println!("| mode | time (s) | wire GB/s | sender peak RSS (MiB) | receiver peak RSS (MiB) | receiver anon / file at end (MiB) | bytes sent |{}", if verify { " verified |" } else { "" });
    println!("|---|---:|---:|---:|---:|---:|---:|{}", if verify { "---|" } else { "" });
    for r in &rows {
        let rate = r.wire_bytes as f64 / r.secs / 1e9;
        print!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} / {:.1} | {} |",
            r.mode,
            r.secs,
            rate,
            mib(r.sender.hwm_kib),
            mib(r.receiver.hwm_kib),
            mib(r.receiver.anon_kib),
            mib(r.receiver.file_kib),
            r.wire_bytes
        );
        if verify {
            print!(" {} |", r.verified.as_deref().unwrap_or("-"));
        }
        println!();
    }
    let find = |m: BenchMode| rows.iter().find(|r| r.mode == m.label());
    let ours = |m: BenchMode| find(m).map(|r| (mib(r.sender.hwm_kib) + mib(r.receiver.hwm_kib), r.secs));
    println!(
        "\nNVFlare 2.6's published Table 2 (Llama-3.2-1B, whole machine) beside tensorwire's (both processes added):\n"
    );
    println!("| setting | NVFlare peak (MB) | NVFlare time (s) | tensorwire peak (MiB) | tensorwire time (s) | peak ratio | time ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ours = [ours(BenchMode::Regular), ours(BenchMode::ContainerLazy), ours(BenchMode::File)];
    for ((name, mb, secs), ours) in NVFLARE.iter().zip(ours) {
        if let Some((peak, t)) = ours {
            println!(
                "| {name} | {mb:.0} | {secs:.0} | {peak:.1} | {t:.2} | {:.0}x less | {:.0}x faster |",
                mb / (peak * 1.048576),
                secs / t
            );
        }
    }
    if shape_name != "llama-3.2-1b" {
        println!("\n(this model is {:.1}% of Llama-3.2-1B; `tensorwire bench memory --shape llama-3.2-1b` runs the full comparison)", model_mib / 5716.26 * 100.0);
    }
    eprintln!(
        "tensorwire: done in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if demo { "; temporary files removed" } else { "" }
    );
    Ok(())
}

/// Prints VmHWM (peak resident set) and its file/anon split when asked to.
fn report_peak() {
    if std::env::var_os("TENSORWIRE_REPORT_PEAK").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?").to_string()
    };
    eprintln!(
        "tensorwire-peak: VmHWM_kB={} VmRSS_kB={} RssAnon_kB={} RssFile_kB={}",
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    );
}
