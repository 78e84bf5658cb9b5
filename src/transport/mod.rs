//! HTTP/2 transport (SPEC.md §8): the only module that touches sockets.
//!
//! * [`Server`] serves files from a [`Registry`] (`GET /objects/{name}`) and
//!   accepts pushes (`PUT /objects/{name}`).
//! * [`Client`] pulls and pushes files over one connection, many transfers
//!   at a time, with progress and cancellation.
//!
//! Both send only against flow-control capacity the peer granted
//! (`reserve_capacity` / `poll_capacity`), so a slow receiver slows the
//! sender instead of growing a buffer, and both release received capacity
//! only after the bytes were taken by the consumer.
//!
//! # The allocator matters on the receiving side
//!
//! h2 reads every DATA frame into a fresh buffer (1 MiB with the default
//! [`Config`]). glibc's `malloc` returns such buffers to the kernel when they
//! are freed, so the next frame faults fresh, zeroed pages in: about 100,000
//! minor faults per GiB received, which made receiving into a file up to
//! twice as slow as a raw TCP copy. Applications that receive large objects
//! should use an allocator that keeps freed memory (the `tensorwire` binary
//! uses mimalloc: about 200 faults per GiB), or set
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=536870912`.

pub(crate) mod body;
mod client;
pub(crate) mod flow;
mod registry;
mod request;
mod server;

use std::time::Duration;

pub use body::{FrameReceiver, FrameStream, Progress, ProgressFn};
pub use client::{Client, Transfer, TransferOptions};
pub use flow::BdpEstimator;
pub use registry::{ContainerSource, PushHandler, Registry};
pub use request::{ObjectRequest, RequestError, Resume, MAX_RESUME_RANGES, RESUME_HEADER};
pub use server::{Server, ServerHandle};

use crate::wire::Limits;

/// Connection and transfer settings, shared by [`Client`] and [`Server`].
///
/// The defaults follow the measurements in `shared/reference/h2-and-anchors.md`:
/// DATA frames of 1 MiB (h2's 16 KiB default costs one `writev` per 16 KiB),
/// initial windows of a few MiB (enough for loopback and LAN), a send buffer
/// as large as the window (h2's 400 KiB default caps what is in flight), and
/// 4 MiB chunks. Receive windows then grow with the measured
/// bandwidth-delay product up to [`Config::max_window`] (128 MiB: 10 Gbit/s
/// × 100 ms), and shrink back when the connection is idle; see
/// [`BdpEstimator`]. What one transfer may hold in memory on the receiving
/// side is its stream window plus one chunk, so at most `max_window` +
/// `chunk_size`.
///
/// ```
/// use tensorwire::transport::Config;
/// let config = Config { stream_window: 16 << 20, connection_window: 32 << 20, ..Config::default() };
/// assert_eq!(config.max_frame_size, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Receive window per stream, advertised to the peer.
    pub stream_window: u32,
    /// Receive window for the whole connection.
    pub connection_window: u32,
    /// Largest DATA frame the peer may send us (16 KiB ..= 16 MiB − 1).
    pub max_frame_size: u32,
    /// Most bytes h2 may hold queued per stream on the sending side.
    pub max_send_buffer: usize,
    /// Chunk payload size for what this side sends.
    pub chunk_size: u32,
    /// Limits on what a peer may declare (SPEC.md §6).
    pub limits: Limits,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a transfer may make no progress (no data received, or no
    /// send capacity granted) before it fails.
    pub idle_timeout: Duration,
    /// Most concurrent streams a server accepts per connection.
    pub max_concurrent_streams: u32,
    /// Largest receive window (stream and connection) the adaptive flow
    /// control may grow to; at most `stream_window` turns growth off.
    pub max_window: u32,
    /// A connection with no data for this long is probed with a PING.
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection (its
    /// transfers fail as retryable); also bounds the HTTP/2 handshake
    /// together with `connect_timeout`.
    pub keepalive_timeout: Duration,
    /// How often a client asks again after a pull failed on a lost or
    /// stalled connection or on damaged bytes (reconnecting when the
    /// connection is gone, resuming from what it verified; SPEC.md §8.4).
    /// 0 fails at the first error.
    pub retries: u32,
    /// Longest wait between two attempts (the waits start at 100 ms and
    /// double).
    pub retry_max_wait: Duration,
}

/// The default [`Config::max_window`]: 128 MiB, at least the
/// bandwidth-delay product of 10 Gbit/s × 100 ms (125 MB).
pub const DEFAULT_MAX_WINDOW: u32 = 128 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            stream_window: 4 << 20,
            connection_window: 8 << 20,
            max_frame_size: 1 << 20,
            max_send_buffer: 4 << 20,
            chunk_size: crate::wire::DEFAULT_CHUNK_BYTES,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 128,
            max_window: DEFAULT_MAX_WINDOW,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            retries: 5,
            retry_max_wait: Duration::from_secs(30),
        }
    }
}

impl Config {
    pub(crate) fn frame_size(&self) -> u32 {
        self.max_frame_size.clamp(16 << 10, (16 << 20) - 1)
    }
}

/// The path prefix of objects (SPEC.md §8.2).
pub const OBJECTS_PATH: &str = "/objects/";

/// Percent-encodes an object name for a request path: each `/`-separated
/// segment is encoded on its own (SPEC.md §8.2).
///
/// ```
/// assert_eq!(tensorwire::transport::object_path("run 1/model.safetensors"), "/objects/run%201/model.safetensors");
/// ```
pub fn object_path(name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let segments: Vec<String> = name.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect();
    format!("{OBJECTS_PATH}{}", segments.join("/"))
}
