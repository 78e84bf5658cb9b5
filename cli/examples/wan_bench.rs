//! Throughput across an emulated WAN: tensorwire with default settings
//! against a raw TCP copy of the same file, both through the same emulated
//! link (`tests/common/wan.rs`: one-way delay each direction, a rate cap
//! behind a link queue of one bandwidth-delay product).
//!
//! ```text
//! cargo run --release --example wan_bench -- [--rtt 0,20,50,100,200] [--mbit 1000] [--runs 3] [--model demo]
//! ```
//!
//! For every link and mode the runs alternate raw, tensorwire, raw, ...;
//! each receiver is its own process and reports its wall time (from the
//! request, after connecting) and its peak resident set (VmHWM). The table
//! shows medians and the tensorwire/raw ratio.
//!
//! Modes: `file` (the safetensors file, byte for byte), `container`
//! (tensor by tensor, written as a safetensors file), `nf4` (container
//! mode quantized to NF4 on the wire and restored to fp32 on arrival).

#[path = "../../tests/common/wan.rs"]
mod wan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tensorwire::send::FileStreamer;
use tensorwire::transport::{Client, Config, Registry, Server, TransferOptions};
use tensorwire::wire::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wan::{Link, WanProxy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// The same allocator as the `tensorwire` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAME: &str = "model.safetensors";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(orchestrate(&args)),
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn list(s: &str) -> Vec<u64> {
    s.split(',').filter_map(|v| v.trim().parse().ok()).collect()
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    kib: u64,
}

async fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let rtts = list(&arg(args, "--rtt", "0,20,50,100,200"));
    let rates = list(&arg(args, "--mbit", "1000"));
    let runs: usize = arg(args, "--runs", "3").parse()?;
    let modes: Vec<String> = arg(args, "--modes", "file,container,nf4").split(',').map(str::to_string).collect();
    let shape = tensorwire_cli::harness::shape_named(&arg(args, "--model", "demo")).ok_or("unknown --model")?;
    let dir = PathBuf::from(arg(args, "--dir", &std::env::temp_dir().display().to_string()))
        .join(format!("tw-wan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let src = dir.join(NAME);
    tensorwire_cli::harness::write_model(&shape, &src)?;
    let len = std::fs::metadata(&src)?.len();
    let out = dir.join("out.safetensors");

    let server = Server::bind("127.0.0.1:0", Registry::new().with_file(NAME, &src), Config::default()).await?;
    let h2_addr = server.local_addr()?;
    tokio::spawn(server.run());
    let raw_addr = serve_raw(src.clone()).await?;

    eprintln!("{:.0} MiB safetensors, {runs} runs per row, load before: {}", len as f64 / 1048576.0, loadavg());
    println!("| link | mode | raw TCP s | tensorwire s | ratio | raw rx peak RSS MiB | tensorwire rx peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for &mbit in &rates {
        for &rtt in &rtts {
            let link = Link::new(mbit, Duration::from_millis(rtt));
            let h2_proxy = WanProxy::start(h2_addr, link).await;
            let raw_proxy = WanProxy::start(raw_addr, link).await;
            for mode in &modes {
                let (mut raw, mut tw) = (Vec::new(), Vec::new());
                for _ in 0..runs {
                    raw.push(run_child(&["get-raw", &raw_proxy.addr.to_string()], &out, len).await?);
                    tw.push(run_child(&["get-tw", &h2_proxy.addr.to_string(), mode], &out, len).await?);
                }
                let (r, t) = (median(&raw), median(&tw));
                let peak = |v: &[Sample]| v.iter().map(|s| s.kib).max().unwrap_or(0) as f64 / 1024.0;
                println!(
                    "| {mbit} Mbit/s, {rtt} ms | {mode} | {r:.2} | {t:.2} | {:.2}× | {:.0} | {:.0} |",
                    r / t,
                    peak(&raw),
                    peak(&tw)
                );
            }
        }
    }
    eprintln!("load after: {}", loadavg());
    Ok(())
}

fn median(v: &[Sample]) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|x| x.secs).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
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

/// Accepts connections and sends the file over each, as fast as TCP takes it.
async fn serve_raw(path: PathBuf) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let path = path.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(streamer) = FileStreamer::open(&path) else { return };
                for frame in streamer.frames() {
                    if let Ok(Frame::Chunk(c)) = frame {
                        if tcp.write_all(&c.data).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn run_child(args: &[&str], out: &Path, len: u64) -> Result<Sample, BoxError> {
    let _ = std::fs::remove_file(out);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("child").args(args).arg(out);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !output.status.success() {
        return Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    let field = |k: &str| report.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    let bytes = field("bytes=").unwrap_or(0.0) as u64;
    let whole_file = args[0] == "get-raw" || args.get(2) == Some(&"file");
    if whole_file && (bytes != len || std::fs::metadata(out)?.len() != len) {
        return Err(format!("{args:?}: got {bytes} bytes, expected {len}").into());
    }
    Ok(Sample { secs: field("secs=").unwrap_or(f64::NAN), kib: field("hwm_kib=").unwrap_or(0.0) as u64 })
}

fn child(args: &[String]) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (secs, bytes) = rt.block_on(async {
        match args {
            [kind, addr, sink] if kind == "get-raw" => get_raw(addr, sink).await,
            [kind, addr, mode, sink] if kind == "get-tw" => get_tw(addr, mode, sink).await,
            _ => Err("unknown child".into()),
        }
    })?;
    println!("secs={secs} bytes={bytes} hwm_kib={}", tensorwire_cli::harness::peak_rss_kib());
    Ok(())
}

async fn get_raw(addr: &str, sink: &str) -> Result<(f64, u64), BoxError> {
    use std::io::Write;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let started = Instant::now();
    let mut file = std::fs::File::create(sink)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        file.write_all(&buf[..n])?;
    }
    Ok((started.elapsed().as_secs_f64(), total))
}

async fn get_tw(addr: &str, mode: &str, sink: &str) -> Result<(f64, u64), BoxError> {
    let client = Client::connect(addr, Config::default()).await?;
    let started = Instant::now();
    let len = match mode {
        "file" => client.get_file(NAME, sink).await?.len,
        "container" | "nf4" => {
            let opts = TransferOptions {
                quantize: (mode == "nf4").then(|| tensorwire::quant::Scheme::parse("nf4")).flatten(),
                ..TransferOptions::default()
            };
            client.get_container_file(NAME, None, sink, &opts).await?
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    Ok((started.elapsed().as_secs_f64(), len))
}
