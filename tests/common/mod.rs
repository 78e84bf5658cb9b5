//! Fixtures for transport tests: temporary directories, a loopback server
//! with a shutdown guard, and an in-memory (duplex) connection.
#![allow(dead_code)]

pub mod counting_proxy;
pub mod garage;
pub mod wan;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tensorwire::transport::{Client, Config, Registry, Server, ServerHandle};

pub mod pki;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tw-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Writes `data` to `name` and returns the path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, data).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A server on 127.0.0.1:0, shut down when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(registry: Registry, config: Config) -> Self {
        Self::run(Server::bind("127.0.0.1:0", registry, config).await.expect("bind"))
    }

    /// Runs a server built by the caller (with events, say).
    pub fn run(server: Server) -> Self {
        let addr = server.local_addr().expect("addr");
        let handle = server.handle();
        let task = tokio::spawn(async move {
            server.run().await.expect("server run");
        });
        TestServer { addr, handle, task: Some(task) }
    }

    pub async fn client(&self, config: Config) -> Client {
        Client::connect(self.addr, config).await.expect("connect")
    }

    /// Shuts down and waits (bounded) for the server to finish.
    pub async fn stop(mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("server shut down in time")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A client and server joined by an in-memory pipe.
pub async fn duplex(registry: Registry, config: Config) -> Client {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server_config = config.clone();
    tokio::spawn(async move {
        let _ = Server::serve_connection(b, registry, server_config).await;
    });
    Client::handshake(a, "duplex", config).await.expect("handshake")
}

/// Small windows and chunks, so that tests exercise flow control.
pub fn small_config() -> Config {
    Config {
        stream_window: 256 << 10,
        connection_window: 512 << 10,
        max_frame_size: 64 << 10,
        max_send_buffer: 256 << 10,
        chunk_size: 100_000,
        // Small chunks on small test objects: several chunks per tensor.
        min_chunk_size: 1,
        idle_timeout: std::time::Duration::from_secs(20),
        ..Config::default()
    }
}
