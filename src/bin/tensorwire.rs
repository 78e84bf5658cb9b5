//! The `tensorwire` command-line tool.
//!
//! ```text
//! tensorwire serve --root DIR [--addr 127.0.0.1:7470]   serve files under DIR (read-only unless --allow-push)
//!     [--tls-cert CERT.pem --tls-key KEY.pem [--client-ca CA.pem]]   TLS 1.3, mutual with --client-ca
//!     [--allow-push [PATTERN[=PREFIX]]]... [--allow-get PATTERN[=PREFIX]]...
//!     [--max-connections N ...]                         bounds on what peers may hold (README "Security")
//! tensorwire get URL -o FILE [--ca CA.pem] [--cert C.pem --key K.pem]   pull an object into FILE
//! tensorwire put FILE URL [--ca CA.pem] [--cert C.pem --key K.pem]      push FILE as an object
//! tensorwire get s3://BUCKET/KEY -o FILE [--endpoint URL] [--mode container [--items a,b]]   pull from a store
//! tensorwire put FILE s3://BUCKET/KEY [--endpoint URL] [--mode container [--quantize nf4]]  push into a store
//! tensorwire serve --store s3://BUCKET[/PREFIX] [--endpoint URL] [--allow-push]   serve objects held in a store
//! tensorwire inspect FILE                               summarize a safetensors file
//! tensorwire frames OBJECT                              decode and verify a framed object body
//! ```
//!
//! Errors print one line to stderr and exit non-zero. With
//! `TENSORWIRE_REPORT_PEAK=1` the process prints its peak resident memory to
//! stderr at exit (used by the benchmark harness).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use tensorwire::recv::{Assembler, Event, FileSink};
use tensorwire::transport::{
    Access, Client, ClientTls, Config, Progress, Registry, Server, ServerEvent, ServerTls, TransferOptions,
};
use tensorwire::wire::{Frame, FrameDecoder, Mode};
use tensorwire::Error;
use tokio_util::sync::CancellationToken;

#[path = "tensorwire/exit.rs"]
mod exit;
#[path = "tensorwire/nonfinite.rs"]
mod nonfinite;
#[path = "tensorwire/store.rs"]
mod store;
#[path = "tensorwire/target.rs"]
mod target;

use exit::Failure;
use target::{Output, Target};

#[derive(Parser)]
#[command(name = "tensorwire", version, about = "Stream models and tensors over HTTP/2")]
#[command(after_help = "Exit codes: 0 ok, 1 local failure, 2 usage, 3 connection, 4 integrity, \
5 refused by the server (4xx), 6 server error (5xx or server abort), 130 interrupted.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// `tracing` directive such as `tensorwire=debug`); RUST_LOG also works.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log lines as text or as JSON objects (one per line), on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines look.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable, one line per event.
    Text,
    /// One JSON object per line, fields as keys.
    Json,
}

/// Sets up `tracing`: `--log-level`, else RUST_LOG, else `info`.
fn init_logs(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Serve the files under a directory: GET and PUT /objects/{name}.
    /// Read-only unless --allow-push is given.
    Serve {
        /// The directory to serve; nothing outside it is ever read or written.
        #[arg(long, required_unless_present = "store")]
        root: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7470")]
        addr: String,
        /// Refuse pushes (the default; kept for scripts that say so).
        #[arg(long, conflicts_with = "allow_push")]
        read_only: bool,
        /// On SIGTERM or the first Ctrl-C the server stops accepting new
        /// transfers and lets those in flight finish for at most this many
        /// seconds (a second Ctrl-C stops at once).
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        drain_timeout: u64,
        #[command(flatten)]
        access: AccessArgs,
        #[command(flatten)]
        tls: ServeTls,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        bounds: ServerBounds,
        #[command(flatten)]
        store: Box<store::StoreServe>,
    },
    /// Pull an object into a file (written as FILE.part, renamed when verified).
    Get {
        /// [http://|https://]HOST[:PORT]/objects/NAME[?mode=..&items=..&quantize=..&chunk_size=..]
        /// (no scheme means http://), or an object store: s3://BUCKET/KEY,
        /// file:///DIR/KEY (README "Object storage")
        url: String,
        /// The file to write; `-` for standard output (file mode); an
        /// existing directory to write the object's name inside it.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write to a file named like the object (its last path segment), in
        /// the current directory.
        #[arg(short = 'O', long)]
        remote_name: bool,
        /// `file`: the object's bytes as they are; `container`: tensor by
        /// tensor, written into a safetensors file as they arrive (the
        /// default when --items or --quantize is given).
        #[arg(long, value_enum)]
        mode: Option<GetMode>,
        /// Only these tensors, in this order (comma-separated); implies
        /// container mode.
        #[arg(long, value_delimiter = ',')]
        items: Option<Vec<String>>,
        /// The server quantizes float tensors with this scheme (fp16, bf16,
        /// blockwise8, fp4, nf4, fp4-nested, nf4-nested); they are restored
        /// to their original dtype here. Implies container mode.
        #[arg(long, value_parser = target::parse_scheme)]
        quantize: Option<tensorwire::quant::Scheme>,
        /// Keep f32-subnormal products when restoring quantized tensors, as
        /// bitsandbytes' CPU path does; by default they are flushed to zero
        /// as its CUDA kernels (and so NVFlare peers) do (SPEC.md §5.5).
        #[arg(long)]
        keep_subnormals: bool,
        #[command(flatten)]
        report: Report,
        #[command(flatten)]
        tls: PeerTls,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        retry: Retry,
        #[command(flatten)]
        store: store::StoreGet,
    },
    /// Push a file as an object.
    Put {
        /// The file to send.
        file: PathBuf,
        /// [http://|https://]HOST[:PORT]/objects/NAME (no scheme means
        /// http://), or an object store: s3://BUCKET/KEY, file:///DIR/KEY
        url: String,
        #[command(flatten)]
        report: Report,
        #[command(flatten)]
        tls: PeerTls,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        retry: Retry,
        #[command(flatten)]
        store: store::StorePut,
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
    /// Fails (exit 4) on a damaged body and on one that ends in an abort.
    Frames {
        /// A file holding the object body, or `-` for standard input.
        object: String,
        /// List every chunk, not only item and object frames.
        #[arg(long)]
        chunks: bool,
        /// Write a file-mode body's bytes into this file (via OUT.part,
        /// renamed only once the whole object verified), e.g. to turn a body
        /// fetched with curl back into the file.
        #[arg(long, value_name = "OUT")]
        extract: Option<PathBuf>,
    },
}

/// What `bench` measures.
#[derive(Subcommand)]
enum BenchWhat {
    /// Peak memory and time of every way of sending a model, each side its
    /// own process on loopback, beside NVFlare 2.6's published numbers.
    Memory {
        /// `tiny` (2.1 MiB), `small` (120.5 MiB), `demo` (357.0 MiB) or `llama-3.2-1b`
        /// (5,716.3 MiB), sizes in fp32.
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

/// How a transfer reports what it did.
#[derive(clap::Args)]
struct Report {
    /// Print nothing on success (errors still go to stderr).
    #[arg(short, long)]
    quiet: bool,
    /// Say more: the request, the mode and the options used.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Print a machine-readable summary (JSON, one line) to stdout, or to
    /// stderr when the object itself goes to stdout.
    #[arg(long)]
    json: bool,
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
    /// Largest receive window a push connection may grow to, bytes
    /// [8388608: no growth]; each connection may then hold this much unread
    /// data, so memory is bounded by --max-connections times this.
    #[arg(long)]
    max_push_window: Option<u32>,
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
            max_pinned,
            max_push_window
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

/// Who may push and pull (SPEC.md §8.9).
#[derive(clap::Args)]
struct AccessArgs {
    /// Accept pushes. Bare: from anyone (loopback, tests). With
    /// PATTERN[=PREFIX] (repeatable): only from clients whose certificate
    /// CN or a SAN matches the glob PATTERN, and with PREFIX only for
    /// object names that start with it, e.g. 'site-*=updates/'.
    #[arg(long, value_name = "PATTERN[=PREFIX]", num_args = 0..=1, default_missing_value = "")]
    allow_push: Vec<String>,
    /// Serve pulls only to clients whose certificate CN or a SAN matches
    /// PATTERN (repeatable; =PREFIX scopes it to names under PREFIX).
    /// Without it anyone may pull.
    #[arg(long, value_name = "PATTERN[=PREFIX]")]
    allow_get: Vec<String>,
    /// Most connections at once per verified client identity.
    #[arg(long)]
    max_connections_per_identity: Option<usize>,
    /// Most requests at once per verified client identity, all its
    /// connections together.
    #[arg(long)]
    max_streams_per_identity: Option<usize>,
}

impl AccessArgs {
    /// `(push, get)`: bare `--allow-push` anywhere means anyone.
    fn access(&self) -> Result<(Access, Access), BoxError> {
        let push = if self.allow_push.is_empty() {
            Access::Nobody
        } else if self.allow_push.iter().any(String::is_empty) {
            Access::Anyone
        } else {
            Access::only(&self.allow_push)?
        };
        let get = if self.allow_get.is_empty() { Access::Anyone } else { Access::only(&self.allow_get)? };
        Ok((push, get))
    }
}

/// The server's TLS files.
#[derive(clap::Args)]
struct ServeTls {
    /// Serve TLS 1.3 with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key", value_name = "CERT.pem")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "KEY.pem")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every client must present a certificate that chains to
    /// a CA in this file (PEM).
    #[arg(long, requires = "tls_cert", value_name = "CA.pem")]
    client_ca: Option<PathBuf>,
}

impl ServeTls {
    fn config(&self) -> Result<Option<Arc<tensorwire::rustls::ServerConfig>>, BoxError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut tls = ServerTls::from_pem_files(cert, key)?;
        if let Some(ca) = &self.client_ca {
            tls = tls.with_client_ca_file(ca)?;
        }
        Ok(Some(tls.build()?))
    }
}

/// A client's TLS files (https:// URLs only).
#[derive(clap::Args)]
struct PeerTls {
    /// Trust the CA(s) in this PEM file instead of the system roots.
    #[arg(long, value_name = "CA.pem")]
    ca: Option<PathBuf>,
    /// Present this client certificate (PEM, leaf first) for mutual TLS.
    #[arg(long, requires = "key", value_name = "CERT.pem")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, requires = "cert", value_name = "KEY.pem")]
    key: Option<PathBuf>,
}

impl PeerTls {
    /// Connects to the target's server; the TLS files need an https:// URL.
    async fn connect(&self, t: &Target, mut config: Config) -> Result<Client, Failure> {
        let any = self.ca.is_some() || self.cert.is_some();
        if any && !t.endpoint.tls {
            return Err(Failure::usage(format!("{}: --ca, --cert and --key need an https:// URL", t.endpoint)));
        }
        if t.endpoint.tls {
            let mut tls = ClientTls::new();
            if let Some(ca) = &self.ca {
                tls = tls.with_ca_file(ca).map_err(|e| Failure::usage(format!("{}: {e}", ca.display())))?;
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls
                    .with_identity_files(cert, key)
                    .map_err(|e| Failure::usage(format!("{}: {e}", cert.display())))?;
            }
            config.client_tls = Some(tls.build().map_err(|e| Failure::usage(e.to_string()))?);
        }
        Client::connect_to(&t.endpoint, config).await.map_err(|e| Failure::transfer(&t.party(), None, e))
    }
}

/// Transfer tuning shared by the network commands.
#[derive(clap::Args)]
struct Tuning {
    /// Chunk size in bytes for what this side sends (or asks for):
    /// 65536 ..= 16777216.
    #[arg(long, value_parser = clap::value_parser!(u32).range(MIN_CHUNK..=MAX_CHUNK))]
    chunk_size: Option<u32>,
    /// HTTP/2 receive window per stream, bytes.
    #[arg(long)]
    window: Option<u32>,
    /// Largest HTTP/2 DATA frame to accept, bytes.
    #[arg(long)]
    frame_size: Option<u32>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MIN_CHUNK: i64 = tensorwire::wire::MIN_CHUNK_BYTES as i64;
const MAX_CHUNK: i64 = tensorwire::wire::MAX_CHUNK_BYTES as i64;

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

/// What to do when a connection is cut, stalls or delivers damaged bytes.
#[derive(clap::Args)]
struct Retry {
    /// Attempts after the first: a pull reconnects and resumes from what it
    /// verified (SPEC.md §8.4); a push starts over. 0 fails at once.
    #[arg(long, default_value_t = Config::default().retries)]
    retries: u32,
    /// Longest wait between attempts, seconds (waits start at 0.1 s and
    /// double).
    #[arg(long, default_value_t = Config::default().retry_max_wait.as_secs_f64())]
    retry_max_wait: f64,
}

impl Retry {
    fn apply(&self, mut c: Config) -> Result<Config, Failure> {
        c.retries = self.retries;
        c.retry_max_wait = std::time::Duration::try_from_secs_f64(self.retry_max_wait)
            .map_err(|_| Failure::usage("--retry-max-wait must be a number of seconds, 0 or more"))?;
        Ok(c)
    }
}
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
    init_logs(cli.log_level.as_deref(), cli.log_format);
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
        Err(f) => {
            eprintln!("tensorwire: {f}");
            ExitCode::from(f.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve { root, addr, read_only, drain_timeout, access, tls, tuning, bounds, store } => {
            let config = bounds.apply(tuning.config());
            let root = match (store.registry()?, root) {
                (Some(registry), _) => Served::Store(Box::new(registry), store.store.clone().unwrap_or_default()),
                (None, Some(root)) => Served::Root(root),
                (None, None) => return Err(Failure::usage("say what to serve: --root DIR or --store URL")),
            };
            serve(root, addr, read_only, Duration::from_secs(drain_timeout), &access, &tls, config).await
        }
        Command::Get {
            url,
            output,
            remote_name,
            mode,
            items,
            quantize,
            keep_subnormals,
            report,
            tls,
            tuning,
            retry,
            store,
        } => {
            if tensorwire::store::is_store_url(&url) {
                let req = store::StoreGetRequest { url, output, remote_name, mode, items, quantize, keep_subnormals };
                return store::get(req, &store, &report).await;
            }
            let target = target::parse_url(&url)?;
            let output = target::resolve_output(output.as_deref(), remote_name, &target.name)?;
            let config = retry.apply(tuning.config())?;
            get(GetRequest { target, output, mode, items, quantize, keep_subnormals }, report, &tls, &tuning, config)
                .await
        }
        Command::Put { file, url, report, tls, tuning, retry, store } => {
            if tensorwire::store::is_store_url(&url) {
                return store::put(&file, &url, &store, &report).await;
            }
            if store.store_only_flags() {
                return Err(Failure::usage(format!(
                    "{url}: --mode and --quantize on put need an s3:// or file:// URL"
                )));
            }
            put(file, &url, report, &tls, retry.apply(tuning.config())?).await
        }
        Command::Inspect { file } => inspect(file),
        Command::Bench { what: BenchWhat::Memory { shape, dir, json, verify, modes } } => {
            Ok(bench_memory(&shape, dir, json, verify, modes, false)?)
        }
        Command::Demo { dir } => Ok(bench_memory("demo", dir, false, true, None, true)?),
        Command::HarnessChild { args } => Ok(tensorwire::harness::child_main(&args)?),
        Command::Frames { object, chunks, extract } => frames(&object, chunks, extract),
    }
}

/// Waits for SIGTERM or Ctrl-C (SIGINT).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// What `serve` serves: a directory, or a store (README "Object storage").
enum Served {
    Root(PathBuf),
    Store(Box<Registry>, String),
}

async fn serve(
    root: Served,
    addr: String,
    read_only: bool,
    drain: Duration,
    access: &AccessArgs,
    tls: &ServeTls,
    mut config: Config,
) -> Result<(), Failure> {
    let (push, get) = access.access().map_err(|e| Failure::usage(e.to_string()))?;
    // --read-only wins over --allow-push (scripts that said it keep their meaning).
    let push = if read_only { Access::Nobody } else { push };
    let (registry, shown) = match root {
        Served::Root(root) => {
            let registry = Registry::root(&root).map_err(|e| Failure::usage(format!("{}: {e}", root.display())))?;
            (registry, root.display().to_string())
        }
        Served::Store(registry, url) => (*registry, url),
    };
    let registry = registry.allow_push(push.clone()).allow_get(get.clone());
    config.server_tls = tls.config().map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(n) = access.max_connections_per_identity {
        config.max_connections_per_identity = n;
    }
    if let Some(n) = access.max_streams_per_identity {
        config.max_streams_per_identity = n;
    }
    let scheme = if config.server_tls.is_some() { "https" } else { "http" };
    let mutual = tls.client_ca.is_some();
    // Requests are logged by the server's structured `tensorwire::request`
    // line (with the peer's identity); connection events go here.
    let log = Arc::new(|event: &ServerEvent| {
        if !matches!(event, ServerEvent::Request { .. }) {
            log_line(&event.to_string())
        }
    });
    let server = Server::bind(&addr, registry, config).await.map_err(|e| Failure::usage(format!("{addr}: {e}")))?;
    let server = server.with_events(log);
    eprintln!("tensorwire: serving {shown} on {scheme}://{}/objects/", server.local_addr()?);
    let mode = if mutual {
        "mutual TLS"
    } else if scheme == "https" {
        "TLS, no client certificates"
    } else {
        "cleartext h2c"
    };
    log_line(&format!("{mode}; pushes from {push}; pulls by {get}"));
    let rules = matches!(push, Access::Only(_)) || matches!(get, Access::Only(_));
    if rules && !mutual {
        log_line(
            "warning: PATTERN rules match client certificates, which only --client-ca asks for: they allow nobody",
        );
    }
    let handle = server.handle();
    tokio::spawn(async move {
        signal().await;
        eprintln!(
            "tensorwire: draining: no new transfers; {} in flight may finish within {} s (Ctrl-C again stops now)",
            handle.active_requests(),
            drain.as_secs()
        );
        handle.shutdown();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("tensorwire: stopped with transfers in flight");
                std::process::exit(exit::INTERRUPTED.into());
            }
            _ = tokio::time::sleep(drain) => {
                eprintln!("tensorwire: drain timeout: stopped with {} transfers in flight", handle.active_requests());
                std::process::exit(exit::LOCAL.into());
            }
        }
    });
    server.run().await?;
    eprintln!("tensorwire: drained, every transfer finished");
    Ok(())
}

/// One line to stderr; a closed stderr (a parent that read only the
/// banner) must not stop the server, so errors are ignored.
fn log_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tensorwire: {line}");
}

/// Options with a progress bar (when stderr is a terminal and not quiet),
/// Ctrl-C, and a counter of the object's data bytes as they travel.
fn options(what: &str, quiet: bool) -> (TransferOptions, Option<indicatif::ProgressBar>, Arc<AtomicU64>) {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    let wire = Arc::new(AtomicU64::new(0));
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} on the wire {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar
    });
    let (b, w) = (bar.clone(), Arc::clone(&wire));
    let progress = Arc::new(move |p: Progress| {
        w.store(p.done, Ordering::Relaxed);
        if let Some(b) = &b {
            if let Some(total) = p.total {
                b.set_length(total);
            }
            b.set_position(p.done);
        }
    });
    let opts = TransferOptions { cancel: Some(cancel), progress: Some(progress), ..TransferOptions::default() };
    (opts, bar, wire)
}

/// What a finished transfer did, for the summary line or `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    direction: &'static str,
    object: String,
    mode: &'static str,
    quantize: Option<String>,
    /// Item data bytes that crossed the connection (quantized size).
    wire_bytes: u64,
    /// Bytes written locally (restored size; the file's length).
    restored_bytes: u64,
    seconds: f64,
    gb_per_s: f64,
    /// The object's CRC-32, when known.
    crc: Option<String>,
    /// Bytes that a resumed transfer did not have to send again.
    resumed_bytes: u64,
    target: String,
}

impl Summary {
    fn print(&self, report: &Report, to_stdout: bool) -> Result<(), Failure> {
        if report.json {
            let line = serde_json::to_string(self)?;
            if to_stdout {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        } else if !report.quiet {
            let saving = if self.wire_bytes != self.restored_bytes && self.restored_bytes > 0 {
                format!(
                    " ({} bytes on the wire, {:.1}% of the restored size)",
                    self.wire_bytes,
                    self.wire_bytes as f64 / self.restored_bytes as f64 * 100.0
                )
            } else {
                String::new()
            };
            eprintln!(
                "tensorwire: {} {} bytes{saving} in {:.2} s ({:.2} GB/s), verified: {}",
                self.direction, self.restored_bytes, self.seconds, self.gb_per_s, self.target
            );
        }
        Ok(())
    }
}

/// What `get` was asked for, after the URL's query and the flags are merged.
struct GetRequest {
    target: Target,
    output: Output,
    mode: Option<GetMode>,
    items: Option<Vec<String>>,
    quantize: Option<tensorwire::quant::Scheme>,
    keep_subnormals: bool,
}

async fn get(
    req: GetRequest,
    report: Report,
    tls: &PeerTls,
    tuning: &Tuning,
    mut config: Config,
) -> Result<(), Failure> {
    let GetRequest { target: t, output, mode, items, quantize, keep_subnormals } = req;
    let subnormals =
        if keep_subnormals { tensorwire::quant::Subnormals::Keep } else { tensorwire::quant::Subnormals::Flush };
    let items = items.or_else(|| t.items.clone());
    let quantize = quantize.or(t.quantize);
    let url_mode = match t.mode.as_deref() {
        Some("container") => Some(GetMode::Container),
        Some(_) => Some(GetMode::File),
        None => None,
    };
    // --items and --quantize only mean something tensor by tensor.
    let implied = (items.is_some() || quantize.is_some()).then_some(GetMode::Container);
    let mode = mode.or(url_mode).or(implied).unwrap_or(GetMode::File);
    if mode == GetMode::File && implied.is_some() {
        return Err(Failure::usage("--items and --quantize work tensor by tensor: they need --mode container"));
    }
    if mode == GetMode::Container && output == Output::Stdout {
        return Err(Failure::usage("container mode writes a safetensors file: give -o FILE, not -o -"));
    }
    if let Some(c) = t.chunk_size {
        config.chunk_size = c;
    }
    let party = t.party();
    let client = tls.connect(&t, config).await?;
    let (mut opts, bar, wire) = options(&t.name, report.quiet);
    opts.chunk_size = tuning.chunk_size.or(t.chunk_size);
    opts.quantize = quantize;
    // A killed `get` run again resumes from the ledger beside FILE.part.
    opts.ledger = true;
    let mut resumed = 0;
    if let (Output::File(path), GetMode::File) = (&output, mode) {
        if let Some(l) = tensorwire::recv::PartLedger::load(path) {
            resumed = l.chunks.iter().map(|c| c.2).sum();
            tracing::info!(file = %path.display(), verified_bytes = resumed, "resuming a transfer an earlier run left");
            if !report.quiet {
                eprintln!("tensorwire: resuming {}.part: {resumed} bytes verified by an earlier run", path.display());
            }
        }
    }
    if report.verbose {
        eprintln!(
            "tensorwire: GET {} from {} (mode {}, items {:?}, quantize {:?})",
            t.name,
            t.endpoint,
            if mode == GetMode::File { "file" } else { "container" },
            items,
            quantize.map(|q| q.as_str())
        );
    }
    let started = Instant::now();
    let local = match &output {
        Output::File(p) => Some(p.clone()),
        Output::Stdout => None,
    };
    let fail = |e: Error| Failure::transfer(&party, local.as_deref(), e);
    let result: Result<(u64, Option<u32>), Failure> = match (&output, mode) {
        (Output::File(path), GetMode::File) => {
            client.get_file_with(&t.name, path, &opts).await.map(|got| (got.len, Some(got.crc))).map_err(fail)
        }
        (Output::Stdout, _) => to_stdout(&client, &t.name, &opts).await.map_err(|e| e.named(&party)),
        (Output::File(path), GetMode::Container) => {
            // Retried and resumed after a cut (SPEC.md §8.4).
            let got = client.get_container_file_with(&t.name, items.as_deref(), path, &opts, subnormals).await;
            got.map(|len| (len, None)).map_err(fail)
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (restored, crc) = result?;
    let seconds = started.elapsed().as_secs_f64();
    if let (Some(scheme), Some(path)) = (quantize, &local) {
        warn_nonfinite(path, scheme);
    }
    let wire = match mode {
        GetMode::File => restored,
        GetMode::Container => wire.load(Ordering::Relaxed),
    };
    let summary = Summary {
        direction: "received",
        object: t.name.clone(),
        mode: if mode == GetMode::File { "file" } else { "container" },
        quantize: quantize.map(|q| q.to_string()),
        wire_bytes: wire,
        restored_bytes: restored,
        seconds,
        gb_per_s: rate(wire, seconds),
        crc: crc.map(|c| format!("{c:#010x}")),
        // What an earlier run verified (resumes within this run are not
        // counted here).
        resumed_bytes: resumed,
        target: local.map_or_else(|| "standard output".to_string(), |p| p.display().to_string()),
    };
    summary.print(&report, output == Output::Stdout)
}

/// Warns, with counts, when a quantized pull restored NaN or ±inf values.
fn warn_nonfinite(path: &std::path::Path, scheme: tensorwire::quant::Scheme) {
    match nonfinite::count(path) {
        Ok(found) if !found.is_empty() => {
            let total: u64 = found.iter().map(|(_, n)| n).sum();
            let names: Vec<String> = found.iter().take(5).map(|(t, n)| format!("{t} ({n})")).collect();
            eprintln!(
                "tensorwire: warning: {total} non-finite values (NaN or ±inf) in {} tensor(s) restored from {scheme}: {}{}",
                found.len(),
                names.join(", "),
                if found.len() > 5 { ", ..." } else { "" }
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("tensorwire: warning: could not check {} for non-finite values: {e}", path.display()),
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// Why writing to standard output failed: the transfer, or the output.
enum StdoutError {
    Transfer(Error),
    Output(std::io::Error),
}

impl StdoutError {
    fn named(self, party: &str) -> Failure {
        match self {
            StdoutError::Transfer(e) => Failure::transfer(party, None, e),
            StdoutError::Output(e) => Failure::new(exit::LOCAL, format!("standard output: {e}")),
        }
    }
}

impl From<Error> for StdoutError {
    fn from(e: Error) -> Self {
        StdoutError::Transfer(e)
    }
}

/// Streams a file-mode object's bytes to standard output as they arrive and
/// verify. Standard output cannot be taken back: a transfer that fails late
/// has written a prefix, and the exit code says it failed.
async fn to_stdout(client: &Client, name: &str, opts: &TransferOptions) -> Result<(u64, Option<u32>), StdoutError> {
    let cancel = opts.cancel.clone().unwrap_or_default();
    let work = async {
        let mut rx = client.get(name, opts).await?;
        let mut asm = Assembler::new();
        let mut out = std::io::stdout().lock();
        let (mut written, mut total) = (0u64, None);
        while let Some(frame) = rx.next_frame().await? {
            asm.handle_frame(frame).map_err(Error::from)?;
            while let Some(event) = asm.poll_event() {
                match event {
                    Event::Object(h) if h.mode != Mode::File => {
                        return Err(Error::Protocol("not a file-mode object").into())
                    }
                    Event::Object(h) => total = h.total_len,
                    // Standard output takes the bytes in order only.
                    Event::Data { position, .. } if position != written => {
                        return Err(Error::Protocol("chunks out of order cannot go to standard output").into())
                    }
                    Event::Data { data, .. } => {
                        out.write_all(&data).map_err(StdoutError::Output)?;
                        written += data.len() as u64;
                        if let Some(p) = &opts.progress {
                            p(Progress { done: written, total });
                        }
                    }
                    Event::Aborted(a) => return Err(Error::Aborted { code: a.code, message: a.message }.into()),
                    Event::Done(end) => {
                        out.flush().map_err(StdoutError::Output)?;
                        return Ok((end.len, Some(end.crc)));
                    }
                    _ => {}
                }
            }
        }
        Err(Error::Protocol("object ended without an object end").into())
    };
    tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Err(Error::Cancelled.into()),
    }
}

async fn put(file: PathBuf, url: &str, report: Report, tls: &PeerTls, config: Config) -> Result<(), Failure> {
    let t = target::parse_url(url)?;
    if t.mode.is_some() || t.items.is_some() || t.quantize.is_some() {
        return Err(Failure::usage(format!("{url}: a push takes no mode, items or quantize parameters")));
    }
    if !file.is_file() {
        return Err(Failure::usage(format!("{}: not a readable file", file.display())));
    }
    let party = t.party();
    let client = tls.connect(&t, config).await?;
    let (opts, bar, _) = options(&t.name, report.quiet);
    if report.verbose {
        eprintln!("tensorwire: PUT {} as {} to {}", file.display(), t.name, t.endpoint);
    }
    let started = Instant::now();
    let result = client.put_file_with(&file, &t.name, &opts).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let got = result.map_err(|e| Failure::transfer(&party, Some(&file), e))?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        direction: "sent",
        object: t.name.clone(),
        mode: "file",
        quantize: None,
        wire_bytes: got.len,
        restored_bytes: got.len,
        seconds,
        gb_per_s: rate(got.len, seconds),
        crc: Some(format!("{:#010x}", got.crc)),
        resumed_bytes: 0,
        target: url.to_string(),
    };
    summary.print(&report, false)
}

fn inspect(file: PathBuf) -> Result<(), Failure> {
    let f = std::fs::File::open(&file).map_err(|e| Failure::local(&file, e))?;
    let meta = tensorwire::recv::validate_safetensors(&f)
        .map_err(|e| Failure::new(exit::INTEGRITY, format!("{}: {e}", file.display())))?;
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
/// With `extract`, a file-mode body's bytes go to `extract` through a
/// `.part` file that is renamed only once the object end verified.
fn frames(path: &str, list_chunks: bool, extract: Option<PathBuf>) -> Result<(), Failure> {
    let mut input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| Failure::local(std::path::Path::new(path), e))?)
    };
    let damaged = |e: Error| Failure::new(exit::classify(&e), format!("{path}: {e}"));
    let mut sink = match &extract {
        Some(out) => Some(FileSink::create(out).map_err(|e| Failure::local(out, e))?),
        None => None,
    };
    let mut asm = Assembler::new();
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut piece = vec![0u8; 1 << 20];
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let mut aborted = None;
    loop {
        let n = input.read(&mut piece).map_err(|e| Failure::local(std::path::Path::new(path), e))?;
        buf.extend_from_slice(&piece[..n]);
        loop {
            let next = if n == 0 { dec.decode_frame_eof(&mut buf) } else { dec.decode_frame(&mut buf) };
            let Some(f) = next.map_err(|e| damaged(e.into()))? else { break };
            print_frame(&f, list_chunks);
            match &f {
                Frame::Chunk(c) => {
                    chunks += 1;
                    bytes += c.data.len() as u64;
                }
                Frame::ObjectHeader(h) if sink.is_some() && h.mode != Mode::File => {
                    return Err(Failure::usage(format!(
                        "{path}: --extract takes a file-mode body; this one is {} mode",
                        h.mode.as_str()
                    )))
                }
                Frame::Abort(a) => aborted = Some(a.clone()),
                _ => {}
            }
            asm.handle_frame(f).map_err(|e| damaged(e.into()))?;
            while let Some(event) = asm.poll_event() {
                match (event, &sink) {
                    (Event::Data { position, data, .. }, Some(s)) => {
                        s.write_at(position, &data).map_err(|e| Failure::transfer(path, extract.as_deref(), e))?
                    }
                    (Event::Done(end), _) => {
                        if let (Some(s), Some(out)) = (sink.take(), &extract) {
                            let safetensors = out.extension().is_some_and(|e| e == "safetensors");
                            s.commit(end.len, safetensors).map_err(|e| Failure::transfer(path, Some(out), e))?;
                        }
                    }
                    _ => {}
                }
            }
        }
        if n == 0 {
            break;
        }
    }
    // SPEC.md §4.6: an object that ends in an abort is a failed transfer.
    if let Some(a) = aborted {
        return Err(Failure::new(
            exit::INTEGRITY,
            format!("{path}: the object ends in an abort ({}): {}", a.code, a.message),
        ));
    }
    println!("verified: {chunks} chunks, {bytes} data bytes; every CRC and ordering rule checked");
    if let Some(out) = extract {
        println!("extracted: {} ({bytes} bytes)", out.display());
    }
    Ok(())
}

fn print_frame(f: &Frame, list_chunks: bool) {
    match f {
        Frame::Chunk(c) if list_chunks => {
            println!("  chunk     item {} offset {} len {} crc {:#010x}", c.item, c.offset, c.data.len(), c.crc)
        }
        Frame::Chunk(_) => {}
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
    let full = shape_name == "llama-3.2-1b";
    println!(
        "\nNVFlare 2.6's published Table 2 (Llama-3.2-1B, 5,716.3 MiB in fp32, whole machine) beside tensorwire's (both processes added):\n"
    );
    if full {
        println!("| setting | NVFlare peak (MB) | NVFlare time (s) | tensorwire peak (MiB) | tensorwire time (s) | peak ratio | time ratio |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
    } else {
        println!("| setting | NVFlare peak (MB), 5.7 GB model | NVFlare time (s), 5.7 GB model | tensorwire peak (MiB), this model | tensorwire time (s), this model |");
        println!("|---|---:|---:|---:|---:|");
    }
    let ours = [ours(BenchMode::Regular), ours(BenchMode::ContainerLazy), ours(BenchMode::File)];
    for ((name, mb, secs), ours) in NVFLARE.iter().zip(ours) {
        match ours {
            // Like with like: ratios only when both sent the same model.
            Some((peak, t)) if full => println!(
                "| {name} | {mb:.0} | {secs:.0} | {peak:.1} | {t:.2} | {:.0}x less | {:.0}x faster |",
                mb / (peak * 1.048576),
                secs / t
            ),
            Some((peak, t)) => println!("| {name} | {mb:.0} | {secs:.0} | {peak:.1} | {t:.2} |"),
            None => {}
        }
    }
    if !full {
        println!("\n(this model is {model_mib:.1} MiB, {:.1}% of Llama-3.2-1B, so no ratios are shown: NVFlare's figures are for the full model; `tensorwire bench memory --shape llama-3.2-1b` runs the like-for-like comparison)", model_mib / 5716.26 * 100.0);
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
