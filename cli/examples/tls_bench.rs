//! TLS 1.3 against cleartext h2c on loopback, file mode, side by side in one
//! run; and the time a mutual-TLS connection takes to set up.
//!
//! ```text
//! cargo run --release --example tls_bench -- [--gib 1] [--runs 5] [--handshakes 50] [--dir /dev/shm]
//! ```
//!
//! Each transfer is a server process and a client process (one thread each,
//! like `loopback_bench`), pulling one file into a file on the same
//! filesystem. Per run, interleaved: h2c, TLS with aws-lc-rs (the crate's
//! provider), TLS with ring (the other rustls provider, through a rustls
//! config built here: the path for users who bring their own). Both TLS
//! modes use mutual TLS with certificates made by rcgen, ECDSA P-256, and
//! the cipher suite rustls picks first (AES-256-GCM where the CPU has AES
//! instructions). It prints medians and the TLS/h2c ratios of the wall-clock
//! rate and of the CPU time both processes spent (user + system, from
//! `/proc/self/stat`; on a machine shared with other work the CPU time is
//! the steadier of the two), and the median time from `connect` to a client
//! ready to send (TCP + TLS 1.3 with client certificate + HTTP/2 preface),
//! and to the first response.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use tensorwire::rustls;
use tensorwire::transport::{Client, ClientTls, Config, Registry, Server, ServerTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// The same allocator as the `tensorwire` binary (see its docs for why).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MODES: [&str; 3] = ["h2c", "tls-aws-lc-rs", "tls-ring"];

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

fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let gib: f64 = arg(args, "--gib", 1.0);
    let runs: usize = arg(args, "--runs", 5).max(1);
    let handshakes: usize = arg(args, "--handshakes", 50).max(1);
    let dir =
        PathBuf::from(arg(args, "--dir", "/dev/shm".to_string())).join(format!("tw-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    make_pki(&dir)?;
    let len = (gib * (1u64 << 30) as f64) as u64;
    let src = dir.join("source.bin");
    make_file(&src, len)?;
    let out = dir.join("out.bin");
    eprintln!("{gib:.2} GiB in {}, {runs} runs, modes interleaved; load before: {}", dir.display(), loadavg());
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let gib_moved = len as f64 / (1u64 << 30) as f64;
    // One untimed transfer first, so that no mode pays for a cold page cache.
    run_pair("h2c", &dir, &["get", &out.display().to_string()], len)?;
    for run in 0..runs {
        for (i, mode) in MODES.iter().enumerate() {
            let _ = std::fs::remove_file(&out);
            let (s, c) = run_pair(mode, &dir, &["get", &out.display().to_string()], len)?;
            eprintln!("run {run} {mode:<14} {:>6.2} GB/s  {:>5.2} CPU s/GiB", len as f64 / s / 1e9, c / gib_moved);
            secs[i].push(s);
            cpu[i].push(c / gib_moved);
        }
    }
    println!(
        "\n| mode | GB/s median | GB/s min..max | rate vs h2c | CPU s/GiB, both ends (median) | h2c CPU / this CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let rates: Vec<f64> = secs.iter().map(|s| len as f64 / median(s) / 1e9).collect();
    let cpus: Vec<f64> = cpu.iter().map(|c| median(c)).collect();
    for (i, mode) in MODES.iter().enumerate() {
        let lo = len as f64 / secs[i].iter().cloned().fold(0.0, f64::max) / 1e9;
        let hi = len as f64 / secs[i].iter().cloned().fold(f64::MAX, f64::min) / 1e9;
        println!(
            "| {mode} | {:.2} | {lo:.2}..{hi:.2} | {:.2}x | {:.2} | {:.2}x |",
            rates[i],
            rates[i] / rates[0],
            cpus[i],
            cpus[0] / cpus[i]
        );
    }

    println!("\n| mode | connect → ready (ms, median) | connect → first response (ms, median) |");
    println!("|---|---:|---:|");
    for mode in MODES {
        run_pair(mode, &dir, &["handshakes", &handshakes.to_string()], 0)?;
        let text = std::fs::read_to_string(dir.join("handshakes.txt"))?;
        let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("?").to_string();
        println!("| {mode} | {} | {} |", field("ready_ms="), field("first_ms="));
    }
    println!(
        "\n{handshakes} connections per mode; TLS ones are TLS 1.3 with a client certificate (mutual TLS). load after: {}",
        loadavg()
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loadavg() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) -> Result<(), BoxError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "tls_bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (stem, sans) in [("server", vec!["127.0.0.1".to_string()]), ("client", vec!["site-1.example".to_string()])] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, stem);
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem())?;
    }
    Ok(())
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

/// Starts the server child for `mode`, runs the client child with `what`,
/// and returns the client's transfer time and the CPU seconds of both.
fn run_pair(mode: &str, dir: &Path, what: &[&str], len: u64) -> Result<(f64, f64), BoxError> {
    let exe = std::env::current_exe()?;
    let once = if what[0] == "get" { "once" } else { "many" };
    let mut server = Command::new(&exe).args(["child", "serve", mode, once]).arg(dir).stdout(Stdio::piped()).spawn()?;
    let mut server_stdout = std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut server_stdout, &mut line)?;
    let addr = line.trim().to_string();
    let client = Command::new(&exe).args(["child", "client", mode, &addr]).arg(dir).args(what).output();
    if once == "many" {
        let _ = server.kill();
    }
    let client = client?;
    if !client.status.success() {
        let _ = server.kill();
        let _ = server.wait();
        return Err(format!("{mode} client failed: {}", String::from_utf8_lossy(&client.stderr)).into());
    }
    let mut server_report = String::new();
    std::io::Read::read_to_string(&mut server_stdout, &mut server_report)?;
    server.wait()?;
    let report = String::from_utf8_lossy(&client.stdout).to_string();
    let field =
        |r: &str, k: &str| r.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    if what[0] == "get" && field(&report, "bytes=").map(|b| b as u64) != Some(len) {
        return Err(format!("{mode}: moved {:?} bytes, expected {len}", field(&report, "bytes=")).into());
    }
    let cpu = field(&report, "cpu=").unwrap_or(f64::NAN) + field(&server_report, "cpu=").unwrap_or(f64::NAN);
    Ok((field(&report, "secs=").unwrap_or(f64::NAN), cpu))
}

/// User + system CPU seconds of this process, all threads (/proc/self/stat
/// fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest.to_string()).unwrap_or_default();
    let f: Vec<f64> = after.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

/// The ring provider's configs, built with rustls directly: what a user with
/// their own rustls setup puts into `Config::server_tls` / `client_tls`.
fn ring_configs(dir: &Path) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), BoxError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = |f: &str| CertificateDer::pem_file_iter(dir.join(f))?.collect::<Result<Vec<_>, _>>();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("ca.pem")? {
        roots.add(c)?;
    }
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("server.pem")?, PrivateKeyDer::from_pem_file(dir.join("server.key"))?)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs("client.pem")?, PrivateKeyDer::from_pem_file(dir.join("client.key"))?)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}

fn config(mode: &str, dir: &Path, server: bool) -> Result<Config, BoxError> {
    let mut c = Config::default();
    match (mode, server) {
        ("h2c", _) => {}
        ("tls-ring", true) => c.server_tls = Some(ring_configs(dir)?.0),
        ("tls-ring", false) => c.client_tls = Some(ring_configs(dir)?.1),
        (_, true) => {
            let tls = ServerTls::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?;
            c.server_tls = Some(tls.with_client_ca_file(dir.join("ca.pem"))?.build()?);
        }
        (_, false) => {
            let tls = ClientTls::new().with_ca_file(dir.join("ca.pem"))?;
            c.client_tls = Some(tls.with_identity_files(dir.join("client.pem"), dir.join("client.key"))?.build()?);
        }
    }
    Ok(c)
}

/// `serve MODE once|many DIR` or `client MODE ADDR DIR get OUT|handshakes N`.
fn child(args: &[String]) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let get = |i: usize| args.get(i).map(String::as_str).ok_or("missing child argument");
    let (role, mode) = (get(0)?, get(1)?);
    rt.block_on(async {
        if role == "serve" {
            let dir = Path::new(get(3)?);
            let registry = Registry::new().with_file("source", dir.join("source.bin"));
            let server = Server::bind("127.0.0.1:0", registry, config(mode, dir, true)?).await?;
            println!("{}", server.local_addr()?);
            if get(2)? == "once" {
                tensorwire_cli::harness::serve_one_transfer(server).await?;
                println!("cpu={}", cpu_secs());
            } else {
                server.run().await?;
            }
            return Ok(());
        }
        let (addr, dir) = (get(2)?, Path::new(get(3)?));
        let config = config(mode, dir, false)?;
        let connect = |config: Config| async move {
            if mode == "h2c" {
                Client::connect(addr, config).await
            } else {
                Client::connect_tls(addr, "127.0.0.1", config).await
            }
        };
        match get(4)? {
            "get" => {
                let client = connect(config).await?;
                let started = Instant::now();
                let got = client.get_file("source", get(5)?).await?;
                println!("secs={} bytes={} cpu={}", started.elapsed().as_secs_f64(), got.len, cpu_secs());
            }
            _ => {
                let n: usize = get(5)?.parse()?;
                let (mut ready, mut first) = (Vec::new(), Vec::new());
                for _ in 0..n {
                    let started = Instant::now();
                    let client = connect(config.clone()).await?;
                    ready.push(started.elapsed().as_secs_f64() * 1e3);
                    // A 404 is the cheapest full round trip.
                    let _ = client.get_file("nothing-here", dir.join("never")).await;
                    first.push(started.elapsed().as_secs_f64() * 1e3);
                }
                let text = format!("ready_ms={:.2} first_ms={:.2}", median(&ready), median(&first));
                std::fs::write(dir.join("handshakes.txt"), text)?;
                println!("secs=0");
            }
        }
        Ok(())
    })
}
