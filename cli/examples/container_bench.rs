//! Peak memory of container streaming: a sender serving a Llama-3.2-1B-shaped
//! state dict from memory (147 tensors, 5.7 GB in fp32, the largest tensor
//! 1 GB), and a receiver that takes the tensors one by one as they arrive and
//! drops them (or writes them into a safetensors file), each side its own
//! process.
//!
//! ```text
//! cargo run --release --example container_bench -- [--small] [--file DIR]
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tensorwire::models::LlamaShape;
use tensorwire::tensor::Dtype;
use tensorwire::transport::{Client, Config, Registry, Server, TransferOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// glibc's malloc, tuned as the transport module's docs advise, so that
/// HTTP/2 frame buffers are reused instead of refaulted; large tensors are
/// still mapped and unmapped one by one, so RSS follows what is live.
const GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=536870912";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = if args.iter().any(|a| a == "--small") { LlamaShape::SMALL } else { LlamaShape::LLAMA_3_2_1B };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("serve") => rt.block_on(serve(shape)),
        Some("get") => rt.block_on(get(&args[1], args.get(2).map(String::as_str).filter(|a| !a.starts_with("--")))),
        _ => orchestrate(&args, shape),
    }
}

fn orchestrate(args: &[String], shape: LlamaShape) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let file_dir = args.iter().position(|a| a == "--file").and_then(|i| args.get(i + 1));
    let small = if shape == LlamaShape::SMALL { vec!["--small"] } else { vec![] };
    let mut server = Command::new(&exe)
        .arg("serve")
        .args(&small)
        .env("GLIBC_TUNABLES", GLIBC_TUNABLES)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(server.stdout.take().ok_or("stdout")?);
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut out, &mut addr)?;
    let mut client = Command::new(&exe);
    client.args(["get", addr.trim()]).env("GLIBC_TUNABLES", GLIBC_TUNABLES);
    if let Some(dir) = file_dir {
        client.arg(format!("{dir}/container_bench.safetensors"));
    }
    let client = client.args(&small).output()?;
    let mut server_report = String::new();
    std::io::Read::read_to_string(&mut out, &mut server_report)?;
    server.wait()?;
    print!("{}", String::from_utf8_lossy(&client.stdout));
    eprint!("{}", String::from_utf8_lossy(&client.stderr));
    print!("{server_report}");
    if let Some(dir) = file_dir {
        let _ = std::fs::remove_file(format!("{dir}/container_bench.safetensors"));
    }
    Ok(())
}

async fn serve(shape: LlamaShape) -> Result<(), BoxError> {
    let model = Arc::new(shape.synthetic(Dtype::F32, 1));
    let bytes: u64 = model.values().map(|t| t.data().len() as u64).sum();
    let largest = model.values().map(|t| t.data().len() as u64).max().unwrap_or(0);
    let before = tensorwire_cli::harness::peak_rss_kib();
    let server = Server::bind("127.0.0.1:0", Registry::new().with_container("model", model), Config::default()).await?;
    println!("{}", server.local_addr()?);
    tensorwire_cli::harness::serve_one_transfer(server).await?;
    let peak = tensorwire_cli::harness::peak_rss_kib();
    println!(
        "sender:   container {:.1} MiB (largest tensor {:.1} MiB); peak RSS {:.1} MiB = container + {:.1} MiB (RSS after building the container: {:.1} MiB)",
        mib(bytes),
        mib(largest),
        peak as f64 / 1024.0,
        peak as f64 / 1024.0 - mib(bytes),
        before as f64 / 1024.0
    );
    Ok(())
}

async fn get(addr: &str, file: Option<&str>) -> Result<(), BoxError> {
    let baseline = tensorwire_cli::harness::peak_rss_kib();
    let client = Client::connect(addr, Config::default()).await?;
    let started = Instant::now();
    let mut retriever = client.retrieve("model", None, &TransferOptions::default()).await?;
    let (mut bytes, mut largest, mut count) = (0u64, 0u64, 0);
    let what = match file {
        Some(path) => {
            bytes = retriever.write_safetensors(path).await?;
            "into a safetensors file"
        }
        None => {
            while let Some(t) = retriever.next().await {
                let t = t?;
                bytes += t.data().len() as u64;
                largest = largest.max(t.data().len() as u64);
                count += 1;
                // A lazy consumer: use the tensor, then let it go.
                std::hint::black_box(t.data().first());
            }
            "lazily, dropping each tensor"
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let peak = tensorwire_cli::harness::peak_rss_kib();
    println!(
        "receiver: {count} tensors, {:.1} MiB {what} in {secs:.2} s ({:.2} GB/s); peak RSS {:.1} MiB = largest tensor + {:.1} MiB (startup {:.1} MiB)",
        mib(bytes),
        bytes as f64 / secs / 1e9,
        peak as f64 / 1024.0,
        peak as f64 / 1024.0 - mib(largest),
        baseline as f64 / 1024.0
    );
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}
