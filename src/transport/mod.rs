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
mod peer;
mod registry;
mod server;
mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use auth::{Access, AccessRule};
pub use body::{FrameReceiver, FrameStream, Progress, ProgressFn};
pub use client::{Client, Transfer, TransferOptions};
pub use endpoint::{Endpoint, DEFAULT_PORT};
pub use events::{EventFn, ServerEvent};
pub use peer::{Identity, Peer};
pub use registry::{ContainerSource, PushHandler, Registry};
pub use server::{Server, ServerHandle};
pub(crate) use tls::{hint as tls_hint, tls_alert};
pub use tls::{provider as tls_provider, ClientTls, ServerTls, ALPN_H2};

use crate::wire::Limits;

/// Connection and transfer settings, shared by [`Client`] and [`Server`].
///
/// The defaults follow the measurements in `shared/reference/h2-and-anchors.md`:
/// DATA frames of 1 MiB (h2's 16 KiB default costs one `writev` per 16 KiB),
/// windows of a few MiB (enough for loopback and LAN; raise them to about
/// twice the bandwidth-delay product on a WAN), a send buffer as large as the
/// window (h2's 400 KiB default caps what is in flight), and 4 MiB chunks.
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
}

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
            server_tls: None,
            client_tls: None,
            max_connections_per_identity: 16,
            max_streams_per_identity: 256,
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
