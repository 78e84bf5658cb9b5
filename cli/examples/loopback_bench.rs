//! Loopback throughput and peak memory: tensorwire over HTTP/2 against a raw
//! tokio TCP copy of the same file, each side its own process.
//!
//! ```text
//! cargo run --release --example loopback_bench -- [--gib 4] [--runs 5] [--dir /dev/shm]
//! ```
//!
//! For each run, interleaved: raw TCP to a discarding sink, tensorwire to a
//! discarding sink, raw TCP into a file, tensorwire into a file (on the same
//! filesystem as the source, tmpfs by default). Every child reports its peak
//! resident set (VmHWM) and the client its wall time; the harness prints
//! medians and the tensorwire/raw ratios. The raw sender uses the same
//! memory-mapped, page-releasing chunks as tensorwire's FileStreamer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tensorwire::send::FileStreamer;
use tensorwire::transport::{Client, Config, Registry, Server, TransferOptions};
use tensorwire::wire::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// The same allocator as the `tensorwire` binary (see its docs for why).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        _ => orchestrate(&args),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Default, Clone)]
struct Sample {
    secs: f64,
    server_kib: u64,
    client_kib: u64,
    client_faults: u64,
}

fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let gib: f64 = arg(args, "--gib", 4.0);
    let runs: usize = arg(args, "--runs", 5);
    let dir =
        PathBuf::from(arg(args, "--dir", "/dev/shm".to_string())).join(format!("tw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let len = (gib * (1u64 << 30) as f64) as u64;
    let src = dir.join("source.bin");
    make_file(&src, len)?;
    let out = dir.join("out.bin");
    let modes = ["raw-discard", "h2-discard", "raw-file", "h2-file"];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
    eprintln!("{:.2} GiB in {}, {runs} runs, modes interleaved; load before: {}", gib, dir.display(), loadavg());
    for run in 0..runs {
        for (i, mode) in modes.iter().enumerate() {
            let _ = std::fs::remove_file(&out);
            let s = run_pair(mode, &src, &out, len)?;
            eprintln!(
                "run {run} {mode:<12} {:>6.2} GB/s  server {:>6} KiB  client {:>6} KiB  client minor faults {}",
                len as f64 / s.secs / 1e9,
                s.server_kib,
                s.client_kib,
                s.client_faults
            );
            samples[i].push(s);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("\n| mode | GB/s median | GB/s min..max | server peak RSS MiB (max) | client peak RSS MiB (max) |");
    println!("|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (mode, s) in modes.iter().zip(&samples) {
        let mut r: Vec<f64> = s.iter().map(|x| len as f64 / x.secs / 1e9).collect();
        let (lo, hi) = (r.iter().cloned().fold(f64::MAX, f64::min), r.iter().cloned().fold(0.0, f64::max));
        let m = median(&mut r);
        rates.push(m);
        let srv = s.iter().map(|x| x.server_kib).max().unwrap_or(0) as f64 / 1024.0;
        let cli = s.iter().map(|x| x.client_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!("| {mode} | {m:.2} | {lo:.2}..{hi:.2} | {srv:.1} | {cli:.1} |");
    }
    println!(
        "\ntensorwire / raw TCP: discarding sink {:.2}x, into a file {:.2}x (medians of {runs}); load after: {}",
        rates[1] / rates[0],
        rates[3] / rates[2],
        loadavg()
    );
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn make_file(path: &Path, len: u64) -> Result<(), BoxError> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Starts the server child, runs the client child, collects both reports.
fn run_pair(mode: &str, src: &Path, out: &Path, len: u64) -> Result<Sample, BoxError> {
    let exe = std::env::current_exe()?;
    let kind = if mode.starts_with("raw") { "raw" } else { "h2" };
    let mut server =
        Command::new(&exe).args(["child", &format!("serve-{kind}")]).arg(src).stdout(Stdio::piped()).spawn()?;
    let mut server_stdout = std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut server_stdout, &mut line)?;
    let addr = line.trim().to_string();
    let sink = if mode.ends_with("file") { out.display().to_string() } else { "-".to_string() };
    let client = Command::new(&exe).args(["child", &format!("get-{kind}"), &addr, &sink]).output()?;
    if !client.status.success() {
        let _ = server.kill();
        return Err(format!("{mode} client failed: {}", String::from_utf8_lossy(&client.stderr)).into());
    }
    let report = String::from_utf8_lossy(&client.stdout).to_string();
    let mut server_report = String::new();
    std::io::Read::read_to_string(&mut server_stdout, &mut server_report)?;
    server.wait()?;
    let field =
        |s: &str, k: &str| s.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    let bytes = field(&report, "bytes=").unwrap_or(0.0) as u64;
    if bytes != len {
        return Err(format!("{mode}: moved {bytes} bytes, expected {len}").into());
    }
    if mode.ends_with("file") && std::fs::metadata(out)?.len() != len {
        return Err(format!("{mode}: output has the wrong length").into());
    }
    Ok(Sample {
        secs: field(&report, "secs=").unwrap_or(f64::NAN),
        client_kib: field(&report, "hwm_kib=").unwrap_or(0.0) as u64,
        client_faults: field(&report, "minflt=").unwrap_or(0.0) as u64,
        server_kib: field(&server_report, "hwm_kib=").unwrap_or(0.0) as u64,
    })
}

/// Minor page faults of this process so far (/proc/self/stat field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; minflt is the 10th field overall.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok()).unwrap_or(0)
}

/// The transport settings, with `TW_WINDOW`, `TW_MAX_WINDOW` (the adaptive
/// windows' cap; equal to the window turns growth off), `TW_FRAME` and
/// `TW_CHUNK` overrides (bytes) for experiments.
fn config() -> Config {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    let mut c = Config::default();
    if let Some(w) = env("TW_WINDOW") {
        c.stream_window = w;
        c.connection_window = w.saturating_mul(2);
        c.max_send_buffer = w as usize;
    }
    if let Some(w) = env("TW_MAX_WINDOW") {
        c.max_window = w;
    }
    if let Some(f) = env("TW_FRAME") {
        c.max_frame_size = f;
    }
    if let Some(n) = env("TW_CHUNK") {
        c.chunk_size = n;
    }
    c
}

fn child(args: &[String]) -> Result<(), BoxError> {
    // TW_RT=mt runs each child on two worker threads instead of one.
    let rt = if std::env::var("TW_RT").as_deref() == Ok("mt") {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    let (secs, bytes) = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("serve-raw") => serve_raw(&args[1]).await.map(|_| (0.0, 0)),
            Some("serve-h2") => serve_h2(&args[1]).await.map(|_| (0.0, 0)),
            Some("get-raw") => get_raw(&args[1], &args[2]).await,
            Some("get-h2") => get_h2(&args[1], &args[2]).await,
            _ => Err("unknown child".into()),
        }
    })?;
    println!("secs={secs} bytes={bytes} hwm_kib={} minflt={}", tensorwire_cli::harness::peak_rss_kib(), minor_faults());
    Ok(())
}

async fn serve_raw(path: &str) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let (mut tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let streamer = FileStreamer::open(path)?;
    for frame in streamer.frames() {
        if let Frame::Chunk(c) = frame? {
            tcp.write_all(&c.data).await?;
        }
    }
    tcp.shutdown().await?;
    Ok(())
}

async fn serve_h2(path: &str) -> Result<(), BoxError> {
    let registry = Registry::new().with_file("source", path);
    let server = Server::bind("127.0.0.1:0", registry, config()).await?;
    println!("{}", server.local_addr()?);
    tensorwire_cli::harness::serve_one_transfer(server).await?;
    Ok(())
}

async fn get_raw(addr: &str, sink: &str) -> Result<(f64, u64), BoxError> {
    use std::io::Write;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let started = Instant::now();
    let mut file = if sink == "-" { None } else { Some(std::fs::File::create(sink)?) };
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        match &mut file {
            Some(f) => f.write_all(&buf[..n])?,
            None => {
                std::hint::black_box(&buf[..n]);
            }
        }
    }
    Ok((started.elapsed().as_secs_f64(), total))
}

async fn get_h2(addr: &str, sink: &str) -> Result<(f64, u64), BoxError> {
    let client = Client::connect(addr, config()).await?;
    let started = Instant::now();
    if sink != "-" {
        let got = client.get_file("source", sink).await?;
        return Ok((started.elapsed().as_secs_f64(), got.len));
    }
    let mut rx = client.get("source", &TransferOptions::default()).await?;
    let mut total = 0u64;
    while let Some(frame) = rx.next_frame().await? {
        if let Frame::Chunk(c) = frame {
            total += c.data.len() as u64;
        }
    }
    Ok((started.elapsed().as_secs_f64(), total))
}
