//! [`Scheme`], [`Encoded`] tensors, and the [`QuantizeExt`] stream adapter.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::{element_bytes, encode_span};
use crate::tensor::{Tensor, TensorMeta};
use crate::wire::{Encoding, Scheme};
use crate::Error;

/// A tensor and the encoding it travels in. The encoded bytes are produced
/// lazily, record range by record range ([`Encoded::wire_range`]), so a
/// sender holds one chunk of them, never the whole encoded tensor.
#[derive(Debug, Clone)]
pub struct Encoded {
    tensor: Tensor,
    encoding: Encoding,
}

impl Encoded {
    /// A tensor sent as it is.
    pub fn raw(tensor: Tensor) -> Self {
        Encoded { tensor, encoding: Encoding::Raw }
    }

    /// A tensor under `scheme` (raw where the scheme does not apply).
    pub fn new(tensor: Tensor, scheme: Scheme) -> Self {
        let encoding = scheme.encoding_for(tensor.dtype());
        Encoded { tensor, encoding }
    }

    /// A tensor under an explicit encoding.
    ///
    /// # Errors
    ///
    /// [`Error::Tensor`] when the encoding cannot encode the tensor's dtype.
    pub fn with_encoding(tensor: Tensor, encoding: Encoding) -> Result<Self, Error> {
        if let Err(e) = encoding.check(tensor.dtype()) {
            return Err(Error::Tensor { name: tensor.name().into(), reason: e.to_string() });
        }
        Ok(Encoded { tensor, encoding })
    }

    /// The source tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The encoding.
    pub fn encoding(&self) -> &Encoding {
        &self.encoding
    }

    /// The tensor's metadata (what the receiver restores).
    pub fn meta(&self) -> &TensorMeta {
        self.tensor.meta()
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> u64 {
        let numel = self.meta().numel().unwrap_or(0);
        self.encoding.encoded_len(numel, self.tensor.dtype()).unwrap_or(0)
    }

    /// The wire bytes in `range`, which starts on a record boundary and ends
    /// on one or at the end (SPEC.md §5.6).
    ///
    /// # Errors
    ///
    /// [`Error::Tensor`] when the range is not record-aligned or encoding
    /// fails.
    pub fn wire_range(&self, range: Range<usize>) -> Result<Bytes, Error> {
        let data = self.tensor.data();
        encode_range(&self.encoding, self.tensor.meta(), |r| data.slice(r), data.len(), range)
    }
}

/// Encodes wire bytes `range` of a tensor (SPEC.md §5.6): the records
/// covering it, from the source elements they hold, which `raw` returns for
/// a range of the tensor's raw bytes.
pub(crate) fn encode_range(
    encoding: &Encoding,
    meta: &TensorMeta,
    raw: impl Fn(Range<usize>) -> Bytes,
    raw_len: usize,
    range: Range<usize>,
) -> Result<Bytes, Error> {
    if *encoding == Encoding::Raw {
        return Ok(raw(range));
    }
    let bad = |reason: String| Error::Tensor { name: meta.name.clone(), reason };
    let record = encoding.record_len() as usize;
    let per_record = encoding.record_elements() as usize;
    let width = element_bytes(meta.dtype).ok_or_else(|| bad(format!("{} cannot be quantized", meta.dtype)))?;
    if range.start % record != 0 {
        return Err(bad(format!("wire range {range:?} is not aligned to {record}-byte records")));
    }
    let numel = raw_len / width;
    let first = range.start / record * per_record;
    let last = (range.end.div_ceil(record) * per_record).min(numel);
    if first > last {
        return Err(bad(format!("wire range {range:?} is past the end")));
    }
    let wire =
        encode_span(encoding, meta.dtype, &raw(first * width..last * width)).map_err(|e| e.in_tensor(&meta.name))?;
    if wire.len() != range.len() {
        return Err(bad(format!("wire range {range:?} is not a whole number of records")));
    }
    Ok(Bytes::from(wire))
}

/// Decodes one chunk of an encoded item: returns where its values start in
/// the item's raw bytes, and the values in the item's dtype.
///
/// # Errors
///
/// [`Error::Tensor`] when the bytes are not the records the offset implies.
pub fn decode_chunk(encoding: &Encoding, meta: &TensorMeta, offset: u64, wire: &[u8]) -> Result<(u64, Vec<u8>), Error> {
    let mut out = Vec::new();
    let at = decode_chunk_into(encoding, meta, offset, wire, &mut out, super::Subnormals::Flush)?;
    Ok((at, out))
}

/// [`decode_chunk`], appending the values to `out` (the tensor being
/// assembled) instead of a buffer of their own; returns where they start.
pub(crate) fn decode_chunk_into(
    encoding: &Encoding,
    meta: &TensorMeta,
    offset: u64,
    wire: &[u8],
    out: &mut Vec<u8>,
    subnormals: super::Subnormals,
) -> Result<u64, Error> {
    let bad = |reason: String| Error::Tensor { name: meta.name.clone(), reason };
    let width = element_bytes(meta.dtype).ok_or_else(|| bad(format!("{} cannot be quantized", meta.dtype)))? as u64;
    let record = encoding.record_len();
    let per_record = encoding.record_elements();
    let numel = meta.numel().ok_or_else(|| bad("size overflows".into()))?;
    // SPEC.md §7.2: the decoder checked that chunks are record-aligned.
    let first = offset / record * per_record;
    let last = ((offset + wire.len() as u64).div_ceil(record) * per_record).min(numel);
    let count = usize::try_from(last.saturating_sub(first)).map_err(|_| bad("chunk too large".into()))?;
    super::decode_span_with(encoding, meta.dtype, wire, count, out, subnormals).map_err(|e| e.in_tensor(&meta.name))?;
    Ok(first * width)
}

/// Quantizes a stream of tensors: `tensors.quantize(Scheme::Nf4)`.
pub trait QuantizeExt: Stream<Item = Result<Tensor, Error>> + Sized {
    /// Each tensor under `scheme` (raw where the scheme does not apply). The
    /// encoding itself happens chunk by chunk as the object is sent.
    fn quantize(self, scheme: Scheme) -> Quantize<Self> {
        Quantize { inner: self, scheme }
    }
}

impl<S: Stream<Item = Result<Tensor, Error>>> QuantizeExt for S {}

/// The stream [`QuantizeExt::quantize`] returns.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct Quantize<S> {
    inner: S,
    scheme: Scheme,
}

impl<S: Stream<Item = Result<Tensor, Error>> + Unpin> Stream for Quantize<S> {
    type Item = Result<Encoded, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let scheme = self.scheme;
        Pin::new(&mut self.inner).poll_next(cx).map(|t| t.map(|t| t.map(|t| Encoded::new(t, scheme))))
    }
}
