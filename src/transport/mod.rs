//! HTTP/2 transport (SPEC.md §8): the only module that touches sockets.
//!
//! * [`Server`] serves files from a [`Registry`] (`GET /objects/{name}`) and
//!   accepts pushes (`PUT /objects/{name}`).
//! * [`Client`] pulls and pushes files over one connection, many transfers
//!   at a time, with progress and cancellation.
//! * Between sites: TLS 1.3 with ALPN `h2` ([`ServerTls`], [`ClientTls`],
//!   or your own rustls configs in [`Config`]), the verified [`Peer`] of
//!   each connection, and [`Access`] rules for who may pull and push what
//!   (SPEC.md §8.1, §8.9).
//!
//! Both send only against flow-control capacity the peer granted
//! (`reserve_capacity` / `poll_capacity`), so a slow receiver slows the
//! sender instead of growing a buffer, and both release received capacity
//! only after the bytes were taken by the consumer.
//!
//! # Facing untrusted peers
//!
//! A [`Server`] bounds what peers can make it hold (SPEC.md §8.7), each bound
//! a [`Config`] field: connections in total and per peer address, streams
//! per connection, header block size, handshake, idle-connection and
//! transfer timeouts, and byte budgets per connection and per server for
//! partial frames, remembered item names and quantized frames being sent.
//! No buffer is sized from a length a peer declares. Pushes go into
//! temporary files of their own, committed by `renameat` relative to a
//! directory handle once verified (SPEC.md §8.3).
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

mod auth;
pub(crate) mod body;
mod client;
mod endpoint;
mod events;
pub(crate) mod flow;
mod metrics;
mod peer;
mod registry;
mod request;
mod server;
mod source;
mod tls;
mod uploads;
mod written;

use std::sync::Arc;
use std::time::Duration;

pub use auth::{Access, AccessRule};
pub use body::{FrameReceiver, FrameStream, Progress, ProgressFn};
pub use client::{Client, Transfer, TransferOptions};
pub use endpoint::{Endpoint, DEFAULT_PORT};
pub use events::{EventFn, ServerEvent};
pub use flow::BdpEstimator;
pub use peer::{Identity, Peer};
pub use registry::{ContainerSource, Listed, PushHandler, Registry, MAX_LISTED};
pub use request::{ObjectRequest, RequestError, Resume, MAX_RESUME_RANGES, RESUME_HEADER};
#[cfg(any(fuzzing, test))]
pub(crate) use server::fuzz_request;
pub use server::{Server, ServerHandle};
pub use source::{Source, SourceFrames, SourcePull};
pub use tls::{provider as tls_provider, ClientTls, ServerTls, ALPN_H2};

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
    /// Most concurrent streams a server accepts per connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`; `serve --max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// The smallest chunk size a server sends when a client asks for a
    /// smaller one (SPEC.md §8.2: requests are clamped to
    /// `min_chunk_size ..= min(max_payload, MAX_CHUNK_BYTES)`).
    pub min_chunk_size: u32,
    /// Largest header block a peer may send, decoded (RFC 9113
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`); h2 refuses larger blocks before
    /// buffering them whole (`serve --max-header-list-size`).
    pub max_header_list_size: u32,
    /// Most connections a server holds at once; more are accepted and closed
    /// at once (`serve --max-connections`).
    pub max_connections: usize,
    /// Most connections a server holds from one peer IP address
    /// (`serve --max-connections-per-peer`).
    pub max_connections_per_peer: usize,
    /// Most files a server keeps open for transfers at once (each pull from
    /// disk and each push into a file holds one); past it a request is
    /// answered 503 (`serve --max-open-files`).
    pub max_open_files: usize,
    /// How long a server keeps a push that was cut off (its temporary file
    /// and what it verified) for the pusher to resume (SPEC.md §8.4, push
    /// resume; `serve --upload-keep SECS`); zero keeps none. A kept upload
    /// holds its place among [`Config::max_open_files`].
    pub upload_keep: Duration,
    /// How long a new connection may take to finish the HTTP/2 handshake
    /// (`serve --handshake-timeout`).
    pub handshake_timeout: Duration,
    /// How long a server keeps a connection with no request in flight
    /// before closing it with GOAWAY (`serve --idle-connection-timeout`).
    pub idle_connection_timeout: Duration,
    /// Most bytes one connection's streams may make a server hold beyond the
    /// flow-control window: partial frames and remembered item names
    /// (`serve --max-pinned-per-connection`). At the limit the server stops
    /// releasing flow-control capacity (the peer must wait) and refuses more
    /// names.
    pub max_pinned_per_connection: u64,
    /// The same bound for all connections of a server together
    /// (`serve --max-pinned`); it also bounds the frames a server has
    /// produced and not yet handed to HTTP/2 (quantized chunks).
    pub max_pinned: u64,
    /// A server's TLS config ([`ServerTls::build`], or your own: it needs
    /// ALPN `h2`); `None` serves cleartext HTTP/2 with prior knowledge.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// The TLS config a [`Client`] uses for `https://` endpoints
    /// ([`ClientTls::build`], or your own with ALPN `h2`); `None` means
    /// [`ClientTls::new`]: the system roots and no client certificate.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// Most connections a server holds at once per verified client
    /// identity (SPEC.md §8.9); more are answered `503` on every request.
    pub max_connections_per_identity: usize,
    /// Most requests a server handles at once per verified client
    /// identity, all its connections together; more are answered `503`.
    pub max_streams_per_identity: usize,
    /// Largest receive window (stream and connection) the adaptive flow
    /// control may grow to; at most `stream_window` turns growth off.
    pub max_window: u32,
    /// The same cap for what a server receives (pushes). Every connection's
    /// window is memory a peer can make the server hold, so a server does
    /// not grow its windows past `connection_window` by default (the bound
    /// is then `max_connections × connection_window`, SPEC.md §8.7); a
    /// server that takes large pushes across a WAN raises it
    /// (`serve --max-push-window`), which raises that bound to
    /// `max_connections × max_push_window`.
    pub max_push_window: u32,
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
            min_chunk_size: crate::wire::MIN_CHUNK_BYTES,
            max_concurrent_streams: 64,
            max_header_list_size: 64 << 10,
            max_connections: 1024,
            max_connections_per_peer: 128,
            max_open_files: 512,
            upload_keep: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(120),
            max_pinned_per_connection: 64 << 20,
            max_pinned: 256 << 20,
            server_tls: None,
            client_tls: None,
            max_connections_per_identity: 16,
            max_streams_per_identity: 256,
            max_window: DEFAULT_MAX_WINDOW,
            max_push_window: 8 << 20,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            retries: 5,
            retry_max_wait: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The chunk size a server sends when asked for `asked` bytes (its own
    /// `chunk_size` when not asked): clamped into the sane range, never
    /// above what a receiver accepts by default (SPEC.md §8.2).
    pub fn served_chunk_size(&self, asked: Option<u32>) -> u32 {
        let max = self.limits.max_payload.clamp(1, crate::wire::MAX_CHUNK_BYTES);
        let min = self.min_chunk_size.clamp(1, max);
        asked.unwrap_or(self.chunk_size).clamp(min, max)
    }

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
