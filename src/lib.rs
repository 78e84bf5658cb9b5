//! # tensorwire
//!
//! Streams large models and tensors between the parties of a
//! federated-learning system over HTTP/2: framed, checksummed, chunk by
//! chunk, with memory that does not grow with the model.
//!
//! This release holds the foundation: the wire format of `SPEC.md` (version
//! 1) as a sans-IO codec in [`wire`].
//!
//! ## Layout
//!
//! * [`wire`] — the frame format: preamble, fixed header, one struct per frame
//!   kind, JSON metadata, [`wire::FrameDecoder`] / [`wire::FrameEncoder`]
//!   (`tokio_util::codec`), the ordering rules ([`wire::Sequencer`]) and
//!   [`wire::ObjectEncoder`] for senders. No IO, no runtime.
//! * [`Error`] — the public error, grouped by origin, with
//!   [`Error::is_retryable`].
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
pub mod recv;
pub mod send;
pub mod transport;
pub mod wire;

pub use error::Error;
