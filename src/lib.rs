//! # tensorwire
//!
//! Streams large models and tensors between the parties of a
//! federated-learning system over HTTP/2: framed, checksummed, chunk by
//! chunk, with memory that does not grow with the model.
//!
//! ## Layout
//!
//! * [`wire`] — the frame format of `SPEC.md` (version 1): preamble, fixed
//!   header, one struct per frame kind, JSON metadata,
//!   [`wire::FrameDecoder`] / [`wire::FrameEncoder`] (`tokio_util::codec`),
//!   the ordering rules ([`wire::Sequencer`]) and [`wire::ObjectEncoder`] for
//!   senders. No IO, no runtime.
//! * [`tensor`] — the item model: [`tensor::Tensor`] is metadata plus
//!   `Bytes`; [`tensor::TensorMap`] is a state dict.
//! * [`send`] — [`send::FileStreamer`]: a memory-mapped file as chunk frames
//!   that are slices of the mapping (the crate's only `unsafe`);
//!   [`send::ContainerStreamer`]: tensors one at a time, from memory, a
//!   mapped safetensors file, or a lazy `Stream`.
//! * [`recv`] — [`recv::Assembler`] (sans-IO placement of chunks, with a
//!   [`recv::RangeSet`] ledger), [`recv::FileSink`] (`.part` file, checks,
//!   fsync, atomic rename), [`recv::ObjectRetriever`] (a `Stream` of
//!   tensors, or a safetensors file written as they arrive),
//!   [`recv::ContainerFile`] (the same file, resumable across streams) and
//!   [`recv::PartLedger`] (the crash-safe record beside `FILE.part`).
//! * [`quant`] — bitsandbytes' fp16/bf16, blockwise 8-bit, fp4 and nf4 as
//!   pure kernels (bit-exact with its CUDA kernels), applied per chunk by
//!   [`send::ContainerStreamer::quantize`] or [`quant::QuantizeExt`], and
//!   undone by the retriever, which restores the original dtypes.
//! * [`models`] — reference model shapes (Llama-3.2-1B) and synthetic
//!   weights for examples and benchmarks.
//! * [`transport`] — HTTP/2 ([`transport::Server`], [`transport::Client`]):
//!   the only module that touches sockets; cleartext h2c or TLS 1.3 with
//!   mutual TLS ([`transport::ServerTls`], [`transport::ClientTls`]), the
//!   verified [`transport::Peer`] of each request and [`transport::Access`]
//!   rules for who may pull and push what; adaptive receive windows
//!   ([`transport::BdpEstimator`]), keep-alive, retries and resume with a
//!   typed [`transport::ObjectRequest`] (SPEC.md §8.4).
//! * `store` (feature `store`, on with `cli`) — object storage (S3 and
//!   S3-compatible stores, local directories) as a source and a sink,
//!   through the `object_store` crate: lazy ranged pulls verified against a
//!   sidecar manifest, multipart pushes (SPEC.md §11).
//! * [`Error`] — the public error, grouped by origin, with
//!   [`Error::is_retryable`].
//!
//! ## Memory, by mode
//!
//! | mode | sender holds | receiver holds |
//! |---|---|---|
//! | file streaming | the chunks in flight (mapped file pages are released once sent) | one frame plus the HTTP/2 window (adaptive, at most `Config::max_window`); data goes to disk at its offset |
//! | container streaming | the container + the chunks in flight | the tensor being assembled + what the consumer has not taken |
//!
//! Measured on a 2-core VM over loopback: file streaming of 4 GiB, about
//! 18 MiB peak RSS per side whatever the file size
//! (`examples/loopback_bench.rs`); container streaming of a 5.7 GB
//! Llama-3.2-1B state dict, see `examples/container_bench.rs` and the README.
//!
//! ## Example: frame an object and decode it back
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use tokio_util::codec::{Decoder, Encoder};
//! use tensorwire::wire::{Dtype, Frame, FrameDecoder, FrameEncoder, ItemHeader, Mode, ObjectEncoder, ObjectHeader};
//! # fn main() -> Result<(), tensorwire::Error> {
//! let weights = Bytes::from(vec![0u8; 4 * 6]); // a 2x3 f32 tensor
//! let mut object = ObjectEncoder::new();
//! let mut codec = FrameEncoder::new();
//! let mut wire = BytesMut::new();
//! for frame in [
//!     object.object_header(ObjectHeader::new("model", Mode::Container).with_items(1))?,
//!     object.item_header(ItemHeader::tensor(0, "w", Dtype::F32, vec![2, 3]))?,
//!     object.chunk(weights.slice(..12))?,
//!     object.chunk(weights.slice(12..))?,
//!     object.item_end()?,
//!     object.object_end()?,
//! ] {
//!     codec.encode(frame, &mut wire)?;
//! }
//!
//! let mut decoder = FrameDecoder::new();
//! let mut chunks = 0;
//! while let Some(frame) = decoder.decode_eof(&mut wire)? {
//!     chunks += matches!(frame, Frame::Chunk(_)) as usize;
//! }
//! assert_eq!(chunks, 2);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(unreachable_pub)]
#![doc(test(attr(deny(warnings))))]

mod error;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod harness;
pub mod models;
pub mod quant;
pub mod recv;
pub mod send;
#[cfg(feature = "store")]
pub mod store;
pub mod tensor;
pub mod transport;
pub mod wire;

pub use error::Error;
/// The TLS library, re-exported for [`transport::Config::server_tls`] and
/// [`transport::Config::client_tls`] users who build their own configs.
pub use rustls;
