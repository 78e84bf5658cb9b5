//! Quantization as in bitsandbytes, on the CPU (SPEC.md §5.4–§5.5).
//!
//! * Pure kernels over slices: [`cast`] (fp16, bf16), [`blockwise8`]
//!   (the 256-entry dynamic map), [`fourbit`] (fp4, nf4, nested absmax).
//!   They produce the same codes and absmax, bit for bit, as bitsandbytes'
//!   CUDA kernels, which NVFlare runs; they decode what bitsandbytes
//!   produces on any backend.
//! * [`encode_span`] / [`decode_span`] turn a run of whole records of an
//!   item into wire bytes and back, so that a sender quantizes chunk by
//!   chunk and a receiver restores chunk by chunk.
//! * [`Scheme`] picks an encoding per tensor and [`QuantizeExt`] applies it
//!   to a stream of tensors.
//!
//! # Non-finite input
//!
//! Encoders follow the CUDA kernels exactly (`shared/testdata/bnb`'s
//! `nonfinite` vectors check it): a NaN is ignored when the block's absmax is
//! taken and encodes as code 0; a block holding ±inf has absmax inf, so its
//! finite values decode to NaN (0 · inf) and ±inf to ±inf; a block of only
//! NaN gets absmax −f32::MAX. Nothing panics. fp16 clips ±inf to ±65504 and
//! keeps NaN. Callers that want an error instead check
//! [`Tensor`](crate::tensor::Tensor) values before quantizing.
#![forbid(unsafe_code)]

pub mod blockwise8;
pub mod cast;
pub mod fourbit;
mod span;
mod stream;
pub mod tables;

pub use crate::wire::Scheme;
pub use span::{decode_span, decode_span_with, element_bytes, encode_span, SpanError, Subnormals};
#[doc(hidden)]
pub use stream::decode_chunk;
pub(crate) use stream::{decode_chunk_into, encode_range};
pub use stream::{Encoded, Quantize, QuantizeExt};

/// Flushes an f32 subnormal to a zero of the same sign (CUDA `-ftz=true`).
/// Branch-free, so loops over it vectorize.
#[inline]
pub(crate) fn ftz(x: f32) -> f32 {
    let b = x.to_bits();
    let keep = if b & 0x7F80_0000 == 0 { 0x8000_0000 } else { u32::MAX };
    f32::from_bits(b & keep)
}
