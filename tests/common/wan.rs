//! A WAN emulator on loopback: a TCP proxy that delays each direction, caps
//! its rate behind a link queue, and can cut, stall or corrupt a connection
//! at a chosen byte offset. Shared by the tests (`tests/common/`) and
//! `cli/examples/wan_bench.rs` (which includes this file by path).
//!
//! Each direction is a reader task and a writer task. The reader takes bytes
//! as they come, computes when they leave the link (`rate`: one byte after
//! another) and when they arrive (`+ delay`), and stops reading while more
//! than `queue` bytes wait for the link, so the sender's TCP feels the
//! back-pressure of a full link. The writer delivers each piece at its
//! arrival time. A raw TCP copy and an HTTP/2 transfer through the proxy
//! see the same link.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The emulated link, the same in both directions.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Bytes per second; `None` for no cap.
    pub rate: Option<u64>,
    /// One-way delay (half the round trip).
    pub delay: Duration,
    /// Bytes that may wait for the link before the reader stops reading.
    pub queue: usize,
}

impl Link {
    /// A link of `mbit` Mbit/s with round trip `rtt` and a queue of one
    /// bandwidth-delay product (at least 256 KiB).
    pub fn new(mbit: u64, rtt: Duration) -> Self {
        let rate = mbit * 1_000_000 / 8;
        let bdp = (rate as f64 * rtt.as_secs_f64()) as usize;
        Link { rate: Some(rate), delay: rtt / 2, queue: bdp.max(256 << 10) }
    }

    /// No delay, no cap: a plain relay.
    pub fn loopback() -> Self {
        Link { rate: None, delay: Duration::ZERO, queue: 1 << 20 }
    }
}

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// Something that goes wrong on one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The connection is closed (both ways) once `at` bytes went `dir`.
    Cut { dir: Dir, at: u64 },
    /// Delivery `dir` stops for `pause` after `at` bytes.
    Stall { dir: Dir, at: u64, pause: Duration },
    /// The byte at offset `at` of direction `dir` gets bit `bit` flipped.
    Flip { dir: Dir, at: u64, bit: u8 },
}

/// A running proxy; stops when dropped.
pub struct WanProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Shared {
    /// Fault plans for the next connections, one per connection, in order.
    plans: Mutex<VecDeque<Vec<Fault>>>,
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
}

impl WanProxy {
    /// Listens on 127.0.0.1:0 and relays every connection to `upstream`
    /// through `link`.
    pub async fn start(upstream: SocketAddr, link: Link) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let (s, token) = (Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = token.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { return };
                let plan = s.plans.lock().expect("plans").pop_front().unwrap_or_default();
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (s, token) = (Arc::clone(&s), token.child_token());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, link, plan, s, token).await;
                    }
                });
            }
        });
        WanProxy { addr, shared, stop }
    }

    /// Faults for the next connection accepted (plans queue up, one per
    /// connection; connections without a plan run clean).
    pub fn plan(&self, faults: Vec<Fault>) {
        self.shared.plans.lock().expect("plans").push_back(faults);
    }

    /// Bytes delivered server → client so far, all connections.
    pub fn down_bytes(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Bytes delivered client → server so far, all connections.
    pub fn up_bytes(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    link: Link,
    plan: Vec<Fault>,
    s: Arc<Shared>,
    conn: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up: Vec<Fault> = plan.iter().copied().filter(|f| dir_of(f) == Dir::Up).collect();
    let down: Vec<Fault> = plan.iter().copied().filter(|f| dir_of(f) == Dir::Down).collect();
    let a = direction(cr, sw, link, up, Arc::clone(&s), Dir::Up, conn.clone());
    let b = direction(sr, cw, link, down, s, Dir::Down, conn.clone());
    let _guard = conn.drop_guard();
    tokio::join!(a, b);
}

fn dir_of(f: &Fault) -> Dir {
    match *f {
        Fault::Cut { dir, .. } | Fault::Stall { dir, .. } | Fault::Flip { dir, .. } => dir,
    }
}

enum Piece {
    Data(Vec<u8>),
    Cut,
    Eof,
}

async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Link,
    mut faults: Vec<Fault>,
    s: Arc<Shared>,
    dir: Dir,
    conn: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Piece)>();
    let reader = async move {
        let mut pos = 0u64;
        let mut link_free = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((link_free + link.delay, Piece::Eof));
                    return;
                }
                Ok(n) => n,
            };
            let now = Instant::now();
            let start = link_free.max(now);
            link_free = match link.rate {
                Some(rate) => start + Duration::from_secs_f64(n as f64 / rate as f64),
                None => start,
            };
            let mut data = buf[..n].to_vec();
            let end = pos + n as u64;
            let mut pieces = Vec::new();
            let mut base = pos;
            faults.sort_by_key(fault_at);
            while let Some(f) = faults.first().copied().filter(|f| fault_at(f) < end) {
                faults.remove(0);
                let cut_at = (fault_at(&f).max(base) - base) as usize;
                match f {
                    Fault::Flip { bit, .. } => data[cut_at] ^= 1 << (bit % 8),
                    Fault::Stall { pause, .. } => {
                        // What came before is delivered; the rest leaves
                        // the link `pause` later.
                        let rest = data.split_off(cut_at);
                        let before = std::mem::replace(&mut data, rest);
                        let _ = tx.send((link_free + link.delay, Piece::Data(before)));
                        link_free += pause;
                        base += cut_at as u64;
                    }
                    Fault::Cut { .. } => {
                        data.truncate(cut_at);
                        pieces.push(Piece::Data(std::mem::take(&mut data)));
                        pieces.push(Piece::Cut);
                        for p in pieces {
                            let _ = tx.send((link_free + link.delay, p));
                        }
                        return;
                    }
                }
            }
            pos = end;
            pieces.push(Piece::Data(data));
            for p in pieces {
                if tx.send((link_free + link.delay, p)).is_err() {
                    return;
                }
            }
            // A full link queue: stop reading until it drains to `queue`.
            if let Some(rate) = link.rate {
                let queued = Duration::from_secs_f64(link.queue as f64 / rate as f64);
                if link_free > Instant::now() + queued {
                    tokio::time::sleep_until(link_free - queued).await;
                }
            }
        }
    };
    let counter = match dir {
        Dir::Up => &s.up,
        Dir::Down => &s.down,
    };
    let stop = conn.clone();
    let writer = async move {
        while let Some((at, piece)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match piece {
                Piece::Data(d) => {
                    if d.is_empty() {
                        continue;
                    }
                    if to.write_all(&d).await.is_err() {
                        break;
                    }
                    counter.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
                Piece::Cut => {
                    stop.cancel();
                    return;
                }
                Piece::Eof => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        _ = conn.cancelled() => {}
    }
}

fn fault_at(f: &Fault) -> u64 {
    match *f {
        Fault::Cut { at, .. } | Fault::Stall { at, .. } | Fault::Flip { at, .. } => at,
    }
}
