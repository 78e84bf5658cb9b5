//! Pull throughput from a real S3 server on loopback: tensorwire's lazy,
//! verified pulls (file mode and container mode) against `object_store`'s
//! own plain `get` of the same object, side by side.
//!
//! A one-node Garage (`tests/common/garage.rs`, found as the tests find it)
//! holds a safetensors model pushed with `tensorwire::store::put_file`. Each
//! measurement runs in a child process of this example, so each side's peak
//! resident set (VmHWM) is its own; the sides alternate within every run and
//! the table shows medians. Then a selected-tensor pull goes through the
//! request-counting proxy (`tests/common/counting_proxy.rs`) and its requests
//! are counted.
//!
//! ```text
//! cargo run --release --example store_bench                # 1 GiB, 16 tensors, 5 runs
//! cargo run --release --example store_bench -- --small     # 64 MiB, 1 run (CI)
//! cargo run --release --example store_bench -- --mib 512 --tensors 8 --runs 3 --concurrency 8
//! ```
//!
//! Sides (each one GET stream or ranged reads of the same object):
//!
//! | side | what |
//! |---|---|
//! | `object_store get → file` | `store.get(key)` streamed into a file |
//! | `tensorwire file mode` | `StoreObject::write_file` (ranged reads, CRC-checked, `.part` renamed) |
//! | `object_store get → sink` | `store.get(key)` streamed into a discarding sink |
//! | `tensorwire container mode` | `StoreObject::tensors(None)`, each verified tensor dropped |
#![allow(clippy::print_stdout)]

#[path = "../tests/common/counting_proxy.rs"]
mod counting_proxy;
#[path = "../tests/common/garage.rs"]
mod garage;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tensorwire::store::{self, ObjectStore, PullOptions, PushOptions, StoreObject};

const SIDES: [&str; 4] = ["plain-file", "tw-file", "plain-sink", "tw-container"];

fn label(side: &str) -> &'static str {
    match side {
        "plain-file" => "object_store get → file",
        "tw-file" => "tensorwire file mode",
        "plain-sink" => "object_store get → sink",
        _ => "tensorwire container mode",
    }
}

struct Args {
    mib: usize,
    tensors: usize,
    runs: usize,
    concurrency: usize,
    range_size: u64,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mib: 1024,
        tensors: 16,
        runs: 5,
        concurrency: store::DEFAULT_CONCURRENCY,
        range_size: store::DEFAULT_RANGE_BYTES,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--small" => {
                a.mib = 64;
                a.tensors = 8;
                a.runs = 1;
            }
            "--mib" => a.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--tensors" => a.tensors = value()?.parse().map_err(|e| format!("--tensors: {e}"))?,
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--concurrency" => a.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--range-size" => a.range_size = value()?.parse().map_err(|e| format!("--range-size: {e}"))?,
            "--dir" => a.dir = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.tensors == 0 || a.mib < a.tensors || a.runs == 0 || a.concurrency == 0 {
        return Err("need --tensors ≥ 1, --mib ≥ --tensors, --runs ≥ 1, --concurrency ≥ 1".into());
    }
    Ok(a)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        child(&argv[2..]);
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("store_bench: {e}");
            std::process::exit(2);
        }
    };
    let Some(g) = garage::Garage::start() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = args.dir.join(format!("tw-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("mkdir");
    let model = work.join("model.safetensors");
    let largest = write_model(&model, args.mib, args.tensors);
    let size = std::fs::metadata(&model).expect("stat").len();
    let url = format!("s3://{}/bench/model.safetensors", g.bucket);
    let endpoint = g.endpoint(0);
    for (k, v) in g.env(&endpoint) {
        std::env::set_var(k, v);
    }
    let (s, key) = store::open_url(&url, Some(&endpoint)).expect("open store");
    let started = Instant::now();
    rt.block_on(store::put_file(Arc::clone(&s), &key, &model, &PushOptions::default())).expect("push the model");
    println!(
        "pushed {:.0} MiB ({} tensors of {:.0} MiB) into Garage in {:.1} s",
        size as f64 / (1 << 20) as f64,
        args.tensors,
        largest as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&model).expect("rm model");

    let mut results: Vec<Vec<(f64, u64)>> = vec![Vec::new(); SIDES.len()];
    for run in 0..args.runs {
        // Alternate the order from run to run.
        for k in 0..SIDES.len() {
            let i = (k + run) % SIDES.len();
            let (secs, hwm) = run_child(SIDES[i], &url, &endpoint, &work, &args);
            results[i].push((secs, hwm));
        }
    }

    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "\nPull of a {mib:.0} MiB safetensors object from a one-node Garage on loopback \
         (medians of {} alternating runs; concurrency {}, range {} MiB):\n",
        args.runs,
        args.concurrency,
        args.range_size >> 20
    );
    println!("| side | MiB/s median (min..max) | vs object_store | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|");
    let mut rates = [0.0f64; 4];
    for (i, side) in SIDES.iter().enumerate() {
        let mut secs: Vec<f64> = results[i].iter().map(|r| r.0).collect();
        let mut hwm: Vec<f64> = results[i].iter().map(|r| r.1 as f64).collect();
        let (fastest, slowest) = secs.iter().fold((f64::MAX, 0.0f64), |(a, b), &s| (a.min(s), b.max(s)));
        rates[i] = mib / median(&mut secs);
        let base = if i < 2 { rates[0] } else { rates[2] };
        println!(
            "| {} | {:.0} ({:.0}..{:.0}) | {:.2}× | {:.0} |",
            label(side),
            rates[i],
            mib / slowest,
            mib / fastest,
            rates[i] / base,
            median(&mut hwm) / 1024.0
        );
    }
    if let Some(pid) = g.nodes[0].pid() {
        println!("\nGarage node peak RSS: {} MiB", hwm_kib(&format!("/proc/{pid}/status")) / 1024);
    }

    // A selected-tensor pull through the counting proxy.
    let proxy = rt.block_on(counting_proxy::CountingProxy::start(g.s3_addrs()));
    let (s, key) = store::open_url(&url, Some(&proxy.endpoint())).expect("open store");
    let name = format!("layer{}.weight", args.tensors / 2);
    let options = PullOptions { concurrency: args.concurrency, range_size: args.range_size, ..PullOptions::default() };
    let got = rt.block_on(async {
        let object = StoreObject::open(s, key, options).await.expect("open object");
        let mut tensors = object.tensors(Some(std::slice::from_ref(&name))).expect("tensors");
        let mut n = 0u64;
        while let Some(t) = tensors.next().await {
            n += t.expect("tensor").data().len() as u64;
        }
        n
    });
    let reqs = proxy.requests();
    let ranged = reqs.iter().filter(|r| r.range.is_some()).count();
    println!(
        "\nselected-tensor pull ({name}, {:.0} MiB of {mib:.0} MiB): {} requests ({} ranged GETs, the manifest GET and the header read included)",
        got as f64 / (1 << 20) as f64,
        reqs.len(),
        ranged
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Writes `tensors` F32 tensors totalling `mib` MiB; returns the largest
/// tensor's length.
fn write_model(path: &Path, mib: usize, tensors: usize) -> u64 {
    let count = (mib << 20) / tensors / 4;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let blob: Vec<u8> = (0..count)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
        })
        .collect();
    let names: Vec<String> = (0..tensors).map(|i| format!("layer{i}.weight")).collect();
    let views = names.iter().map(|n| {
        (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![count], &blob).expect("view"))
    });
    safetensors::serialize_to_file(views, None, path).expect("write model");
    blob.len() as u64
}

/// Runs one side in a child process; returns (seconds, VmHWM KiB).
fn run_child(side: &str, url: &str, endpoint: &str, work: &Path, args: &Args) -> (f64, u64) {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--child", side, url, endpoint])
        .arg(work)
        .args([args.concurrency.to_string(), args.range_size.to_string()])
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{side} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("result ")).unwrap_or_else(|| panic!("{side}: no result: {text}"));
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("{side}: no {k} in {line:?}"))
            .to_string()
    };
    (field("secs=").parse().expect("secs"), field("hwm_kib=").parse().expect("hwm"))
}

/// One side, in the child: `--child SIDE URL ENDPOINT WORKDIR CONCURRENCY RANGE`.
fn child(a: &[String]) {
    let [side, url, endpoint, work, concurrency, range] = a else { panic!("child arguments: {a:?}") };
    let options = PullOptions {
        concurrency: concurrency.parse().expect("concurrency"),
        range_size: range.parse().expect("range"),
        ..PullOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (s, key) = store::open_url(url, Some(endpoint)).expect("open store");
    let dest = Path::new(work).join(format!("{side}.out"));
    let started = Instant::now();
    let bytes = rt.block_on(async {
        match side.as_str() {
            "plain-file" | "plain-sink" => plain_get(&s, &key, (side == "plain-file").then_some(&dest)).await,
            "tw-file" => {
                let object = StoreObject::open(s, key, options).await.expect("open");
                object.write_file(&dest).await.expect("write_file")
            }
            "tw-container" => {
                let object = StoreObject::open(s, key, options).await.expect("open");
                let mut tensors = object.tensors(None).expect("tensors");
                let mut n = 0u64;
                while let Some(t) = tensors.next().await {
                    n += t.expect("tensor").data().len() as u64;
                }
                n
            }
            other => panic!("unknown side {other}"),
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&dest);
    println!("result side={side} bytes={bytes} secs={secs:.4} hwm_kib={}", hwm_kib("/proc/self/status"));
}

/// `object_store`'s own `get`, streamed into `dest` or discarded.
async fn plain_get(s: &Arc<dyn ObjectStore>, key: &store::Key, dest: Option<&PathBuf>) -> u64 {
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncWriteExt;
    let mut stream = s.get(key).await.expect("get").into_stream();
    let mut file = match dest {
        Some(p) => Some(tokio::fs::File::create(p).await.expect("create")),
        None => None,
    };
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        n += chunk.len() as u64;
        if let Some(f) = file.as_mut() {
            f.write_all(&chunk).await.expect("write");
        }
    }
    if let Some(mut f) = file {
        f.flush().await.expect("flush");
    }
    n
}

/// VmHWM from a `/proc/*/status` file, KiB (0 where unknown).
fn hwm_kib(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
