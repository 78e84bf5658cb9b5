//! A real S3 server for the tests: Garage (<https://garagehq.deuxfleurs.fr>),
//! started on loopback ports in a temporary directory, one node with
//! replication factor 1 or three nodes with replication factor 3. Shared by
//! the tests (`tests/common/`) and `examples/store_bench.rs` (which includes
//! this file by path).
//!
//! [`garage_binary`] finds the binary (`TENSORWIRE_GARAGE`, then `garage` on
//! `PATH`, then `/root/.cache/tensorwire/garage/bin/garage`, then
//! `$HOME/.cache/tensorwire/garage/bin/garage`, where `.ci/run` installs it);
//! [`Garage::start`] returns `None` after printing a `SKIPPED` line when there
//! is none, so a test without Garage reports that and passes.
//!
//! Setting the cluster up is Garage's own CLI, the way its quick start does
//! it: write `garage.toml`, run `garage server`, `garage node connect` the
//! other nodes, `garage layout assign` + `layout apply`, `garage key create`,
//! `garage bucket create` and `garage bucket allow`. Every wait is a poll with
//! a deadline; every failure panics with the command's output and the tail of
//! the node logs. The processes are killed when the handle is dropped.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The S3 region the nodes are configured with (`[s3_api] s3_region`).
pub const REGION: &str = "garage";

/// How long a node may take to answer its first CLI call, and a layout to
/// settle so that a bucket can be created.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The Garage binary, if one is installed where the tests look.
pub fn garage_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TENSORWIRE_GARAGE") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("garage");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut candidates = vec![PathBuf::from("/root/.cache/tensorwire/garage/bin/garage")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/tensorwire/garage/bin/garage"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("addr").port()
}

/// One `garage server` process and its configuration.
pub struct Node {
    /// `garage.toml` of this node.
    pub config: PathBuf,
    /// The node's S3 API address.
    pub s3: SocketAddr,
    /// The node's RPC address (`rpc_public_addr`).
    pub rpc: SocketAddr,
    /// The node's full id (hex), known once it answered.
    pub id: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Whether this node's process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running Garage cluster with one bucket and one key allowed on it.
pub struct Garage {
    bin: PathBuf,
    /// The nodes, in the order they were started.
    pub nodes: Vec<Node>,
    /// The bucket the tests use.
    pub bucket: String,
    /// `AWS_ACCESS_KEY_ID` of the key allowed on the bucket.
    pub key_id: String,
    /// `AWS_SECRET_ACCESS_KEY` of that key.
    pub secret: String,
    /// The directory holding the nodes' configs, data and logs (removed
    /// on drop, after the processes are killed).
    dir: PathBuf,
}

impl Garage {
    /// One node, replication factor 1; `None` (after a `SKIPPED` line) when
    /// Garage is not installed.
    pub fn start() -> Option<Garage> {
        Self::cluster(1)
    }

    /// `n` nodes on loopback with replication factor `n` (1 or 3), connected,
    /// with a layout applied, a key and a bucket; `None` (after a `SKIPPED`
    /// line) when Garage is not installed.
    pub fn cluster(n: usize) -> Option<Garage> {
        let Some(bin) = garage_binary() else {
            println!("SKIPPED: garage not installed (see .ci/run)");
            return None;
        };
        assert!(n >= 1, "a cluster has at least one node");
        // The ports were free when picked; another test may take one before
        // Garage binds it. Then the node exits, and the cluster starts over
        // on new ports (three times at most).
        let mut attempt = 0;
        let mut g = loop {
            attempt += 1;
            let dir = std::env::temp_dir().join(format!("tw-garage-{}-{}", std::process::id(), next_cluster()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create garage dir");
            let secret = rpc_secret();
            let nodes = (0..n).map(|i| write_node(&dir, i, n, &secret)).collect();
            let mut g = Garage {
                bin: bin.clone(),
                nodes,
                bucket: "tw-test".into(),
                key_id: String::new(),
                secret: String::new(),
                dir,
            };
            for i in 0..n {
                g.spawn(i);
            }
            // Garage keeps running when its S3 port is taken (it logs the
            // error), so the logs are checked as well.
            if (0..n).all(|i| g.wait_answering(i, attempt < 3)) && (attempt == 3 || !g.port_taken()) {
                break g;
            }
        };
        for i in 0..n {
            let out = g.cli_ok(i, &["node", "id", "-q"]);
            let full = out.trim().lines().last().unwrap_or_default().to_string();
            let id = full.split('@').next().unwrap_or_default().to_string();
            assert!(id.len() >= 16, "garage node id: unexpected output {full:?}");
            g.nodes[i].id = id;
        }
        for i in 1..n {
            let target = format!("{}@{}", g.nodes[i].id, g.nodes[i].rpc);
            g.cli_ok(0, &["node", "connect", &target]);
        }
        for i in 0..n {
            let id = g.nodes[i].id.clone();
            g.cli_ok(0, &["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        }
        g.cli_ok(0, &["layout", "apply", "--version", "1"]);
        // The layout reaches the other nodes asynchronously; a bucket can be
        // created once a quorum of them has it.
        let bucket = g.bucket.clone();
        g.retry_ok(0, &["bucket", "create", &bucket]);
        let out = g.cli_ok(0, &["key", "create", "tw-test-key"]);
        g.key_id = field(&out, "Key ID").unwrap_or_else(|| panic!("no Key ID in `garage key create`:\n{out}"));
        g.secret = field(&out, "Secret key").unwrap_or_else(|| panic!("no Secret key in `garage key create`:\n{out}"));
        let key = g.key_id.clone();
        g.retry_ok(0, &["bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key]);
        for i in 0..n {
            g.wait_s3(i);
        }
        assert!(!g.port_taken(), "a garage node could not bind a port (taken by another process)\n{}", g.logs());
        Some(g)
    }

    /// Whether a node logged that one of its ports was taken.
    fn port_taken(&self) -> bool {
        self.nodes.iter().any(|n| {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            log.contains("Address already in use") || log.contains("os error 98")
        })
    }

    /// The S3 endpoint of node `i`, as `AWS_ENDPOINT_URL` wants it.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].s3)
    }

    /// The S3 addresses of all nodes (for a proxy in front of them).
    pub fn s3_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.s3).collect()
    }

    /// The environment a `tensorwire` child needs to reach the bucket through
    /// `endpoint` (object_store's `AWS_*` variables; plain HTTP on loopback).
    pub fn env(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Kills node `i` (SIGKILL), as a crash would.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Runs `garage -c <node i's config> args…` and returns its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// [`Garage::cli`] that must succeed; returns stdout.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        if !out.status.success() {
            self.fail(&format!("`garage {}` failed ({})", args.join(" "), out.status), &out);
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `garage bucket info <bucket>` on node 0, stdout.
    pub fn bucket_info(&self) -> String {
        self.cli_ok(0, &["bucket", "info", &self.bucket])
    }

    /// Unfinished multipart uploads in the bucket, counted by aborting them:
    /// `garage bucket cleanup-incomplete-uploads --older-than 0s BUCKET`
    /// scans the bucket's objects for versions still being uploaded and
    /// prints `N uploads deleted` or `no uploads deleted`. (`object_store`
    /// cannot list multipart uploads; `garage bucket info` shows only a
    /// counter, updated asynchronously, and only when it is not zero.)
    pub fn unfinished_uploads(&self) -> u64 {
        let out = self.cli_ok(0, &["bucket", "cleanup-incomplete-uploads", "--older-than", "0s", &self.bucket]);
        if out.contains("no uploads deleted") {
            return 0;
        }
        count_after(&out, "uploads deleted")
            .unwrap_or_else(|| panic!("unexpected `garage bucket cleanup-incomplete-uploads` output:\n{out}"))
    }

    fn retry_ok(&self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.cli(i, args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                self.fail(&format!("`garage {}` kept failing for {READY_TIMEOUT:?}", args.join(" ")), &out);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log).expect("create garage log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn,garage_api_s3=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} server: {e}", self.bin.display()));
        node.child = Some(child);
    }

    /// Waits until node `i` answers `garage status`. Returns `false` when
    /// it exited because a port was taken and `may_retry`; panics on any
    /// other failure.
    fn wait_answering(&mut self, i: usize, may_retry: bool) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.nodes[i].running() {
                if may_retry && self.port_taken() {
                    return false;
                }
                let out = self.cli(i, &["status"]);
                self.fail(&format!("garage node {i} exited during start"), &out);
            }
            let out = self.cli(i, &["status"]);
            if out.status.success() {
                return true;
            }
            if Instant::now() > deadline {
                self.fail(&format!("garage node {i} did not answer `garage status` in {READY_TIMEOUT:?}"), &out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_s3(&self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&self.nodes[i].s3, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "garage node {i}: S3 port {} never opened\n{}",
                self.nodes[i].s3,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            s.push_str(&format!("--- garage node {i} log ({}) ---\n{}\n", n.log.display(), tail.join("\n")));
        }
        s
    }

    fn fail(&self, what: &str, out: &Output) -> ! {
        panic!(
            "{what}\nstdout:\n{}\nstderr:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        )
    }

    /// The temporary directory holding the nodes' data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_node(dir: &Path, i: usize, n: usize, secret: &str) -> Node {
    let root = dir.join(format!("node{i}"));
    std::fs::create_dir_all(root.join("meta")).expect("mkdir meta");
    std::fs::create_dir_all(root.join("data")).expect("mkdir data");
    let rpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let s3: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let toml = format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = {n}
rpc_bind_addr = "{rpc}"
rpc_public_addr = "{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3}"
root_domain = ".s3.garage.localhost"
"#,
        meta = root.join("meta").display(),
        data = root.join("data").display(),
    );
    let config = root.join("garage.toml");
    std::fs::write(&config, toml).expect("write garage.toml");
    Node { config, s3, rpc, id: String::new(), log: root.join("garage.log"), child: None }
}

/// A number for this process's next cluster directory.
fn next_cluster() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// 32 random bytes in hex, as `rpc_secret` wants them (`openssl rand -hex 32`).
fn rpc_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut s = String::with_capacity(64);
    for _ in 0..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

/// The value after `name:` on a line of CLI output (`Key ID: GK…`).
fn field(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string()).filter(|v| !v.is_empty())
    })
}

/// The number just before `what` on the line that mentions it
/// (`8bf9cff442b35647: 2 uploads deleted` → 2).
fn count_after(out: &str, what: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let (before, _) = l.split_once(what)?;
        before.split_whitespace().last()?.parse().ok()
    })
}
