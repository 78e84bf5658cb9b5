//! One struct per frame kind (SPEC.md §4), each with the same pair:
//! `decode(head, payload)` and `encode(dst)`, plus `encoded_len()`.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::meta::{self, EncodingJson, IndexJson, ItemJson, ObjectJson};
use super::{crc, DecodeError, Dtype, Encoding, FrameHeader, FrameKind, Limits, Mode, HEADER_LEN, NO_ITEM};

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub enum Frame {
    /// §4.1
    ObjectHeader(ObjectHeader),
    /// §4.2
    ItemHeader(ItemHeader),
    /// §4.3
    Chunk(Chunk),
    /// §4.4
    ItemEnd(ItemEnd),
    /// §4.5
    ObjectEnd(ObjectEnd),
    /// §4.6
    Abort(Abort),
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::ObjectHeader(_) => FrameKind::ObjectHeader,
            Frame::ItemHeader(_) => FrameKind::ItemHeader,
            Frame::Chunk(_) => FrameKind::Chunk,
            Frame::ItemEnd(_) => FrameKind::ItemEnd,
            Frame::ObjectEnd(_) => FrameKind::ObjectEnd,
            Frame::Abort(_) => FrameKind::Abort,
        }
    }

    /// Decodes the payload of a frame whose header has been checked, and
    /// checks the payload CRC first (SPEC.md §3.2).
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`] a single frame can cause; ordering across frames
    /// is checked by [`Sequencer`](super::Sequencer).
    pub fn decode(head: FrameHeader, payload: Bytes, limits: &Limits) -> Result<Frame, DecodeError> {
        check_len(head, limits)?;
        // Caller contract: `payload` is exactly the header's payload.
        debug_assert_eq!(payload.len() as u64, u64::from(head.len));
        // SPEC.md §3.2: a payload whose CRC differs MUST be rejected.
        let actual = crc::checksum(&payload);
        if actual != head.payload_crc {
            return Err(DecodeError::PayloadChecksum {
                item: head.item,
                offset: head.offset,
                expected: head.payload_crc,
                actual,
            });
        }
        check_address(head)?;
        Ok(match head.kind {
            FrameKind::ObjectHeader => Frame::ObjectHeader(ObjectHeader::decode(head, &payload, limits)?),
            FrameKind::ItemHeader => Frame::ItemHeader(ItemHeader::decode(head, &payload, limits)?),
            FrameKind::Chunk => Frame::Chunk(Chunk::decode(head, payload)),
            FrameKind::ItemEnd => Frame::ItemEnd(ItemEnd::decode(head, &payload)?),
            FrameKind::ObjectEnd => Frame::ObjectEnd(ObjectEnd::decode(head, &payload)?),
            FrameKind::Abort => Frame::Abort(Abort::decode(head, &payload)?),
        })
    }

    /// Checks what [`Frame::decode`] would check of this frame once
    /// encoded: addresses, lengths against `limits`, metadata rules, and a
    /// chunk's CRC against its data.
    ///
    /// # Errors
    ///
    /// The [`DecodeError`] a decoder would report.
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        let payload_len = self.encoded_len() - HEADER_LEN;
        let (item, offset) = match self {
            Frame::ObjectHeader(_) | Frame::ObjectEnd(_) => (NO_ITEM, 0),
            Frame::ItemHeader(h) => (h.item, 0),
            Frame::Chunk(c) => (c.item, c.offset),
            Frame::ItemEnd(e) => (e.item, 0),
            Frame::Abort(a) => (a.item.unwrap_or(NO_ITEM), 0),
        };
        let len = u32::try_from(payload_len)
            .map_err(|_| DecodeError::FrameTooLarge { len: payload_len as u64, max: u32::MAX.into() })?;
        let head = FrameHeader::new(self.kind(), item, offset, len, 0);
        check_len(head, limits)?;
        check_address(head)?;
        if let Frame::Abort(Abort { item: Some(NO_ITEM), .. }) = self {
            return Err(DecodeError::BadAddress { kind: FrameKind::Abort, item: NO_ITEM, offset: 0 });
        }
        match self {
            Frame::ObjectHeader(h) => h.check(limits),
            Frame::ItemHeader(h) => {
                check_name(FrameKind::ItemHeader, &h.name, limits)?;
                h.validate(limits)
            }
            Frame::Chunk(c) if c.crc != crc::checksum(&c.data) => Err(DecodeError::PayloadChecksum {
                item: c.item,
                offset: c.offset,
                expected: c.crc,
                actual: crc::checksum(&c.data),
            }),
            _ => Ok(()),
        }
    }

    /// Writes header and payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        match self {
            Frame::ObjectHeader(f) => f.encode(dst),
            Frame::ItemHeader(f) => f.encode(dst),
            Frame::Chunk(f) => f.encode(dst),
            Frame::ItemEnd(f) => f.encode(dst),
            Frame::ObjectEnd(f) => f.encode(dst),
            Frame::Abort(f) => f.encode(dst),
        }
    }

    /// Bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::ObjectHeader(f) => f.encoded_len(),
            Frame::ItemHeader(f) => f.encoded_len(),
            Frame::Chunk(f) => f.encoded_len(),
            Frame::ItemEnd(_) => ItemEnd::ENCODED_LEN,
            Frame::ObjectEnd(_) => ObjectEnd::ENCODED_LEN,
            Frame::Abort(f) => f.encoded_len(),
        }
    }

    /// The frame as a [`Buf`] that does not copy a chunk's payload: the
    /// header (and any metadata) in one buffer, the chunk bytes in another.
    /// This is what a transport hands to `h2::SendStream::send_data`.
    ///
    /// ```
    /// use bytes::{Buf, Bytes};
    /// use tensorwire::wire::{Chunk, Frame, HEADER_LEN};
    /// let data = Bytes::from_static(&[7; 1000]);
    /// let buf = Frame::Chunk(Chunk::new(0, 0, data.clone())).into_buf();
    /// assert_eq!(buf.remaining(), HEADER_LEN + 1000);
    /// ```
    pub fn into_buf(self) -> EncodedFrame {
        match self {
            Frame::Chunk(c) => {
                let mut head = BytesMut::with_capacity(HEADER_LEN);
                c.head().encode(&mut head);
                EncodedFrame { head: head.freeze(), body: c.data }
            }
            other => {
                let mut head = BytesMut::with_capacity(other.encoded_len());
                other.encode(&mut head);
                EncodedFrame { head: head.freeze(), body: Bytes::new() }
            }
        }
    }
}

/// An encoded frame as two buffers (see [`Frame::into_buf`]).
#[derive(Debug, Clone, Default)]
pub struct EncodedFrame {
    head: Bytes,
    body: Bytes,
}

impl EncodedFrame {
    /// Wraps bytes that are already encoded (the preamble, say).
    pub fn from_bytes(bytes: Bytes) -> Self {
        EncodedFrame { head: bytes, body: Bytes::new() }
    }

    /// Encoded bytes in two parts: `head` first, then `body`.
    pub fn from_parts(head: Bytes, body: Bytes) -> Self {
        EncodedFrame { head, body }
    }

    /// The two parts, `head` then `body` (a chunk's payload, uncopied).
    pub fn into_parts(self) -> (Bytes, Bytes) {
        (self.head, self.body)
    }

    /// Splits off the first `n` bytes (at most [`Buf::remaining`]), without
    /// copying either part.
    pub fn split_to(&mut self, n: usize) -> EncodedFrame {
        let h = n.min(self.head.len());
        let head = self.head.split_to(h);
        let b = (n - h).min(self.body.len());
        let body = self.body.split_to(b);
        EncodedFrame { head, body }
    }
}

impl Buf for EncodedFrame {
    fn remaining(&self) -> usize {
        self.head.len() + self.body.len()
    }

    fn chunk(&self) -> &[u8] {
        if self.head.is_empty() {
            &self.body
        } else {
            &self.head
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        let h = cnt.min(self.head.len());
        self.head.advance(h);
        cnt -= h;
        self.body.advance(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for part in [&self.head, &self.body] {
            if n < dst.len() && !part.is_empty() {
                dst[n] = std::io::IoSlice::new(part);
                n += 1;
            }
        }
        n
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if self.head.is_empty() && len <= self.body.len() {
            return self.body.split_to(len);
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

/// SPEC.md §6: payload length limits per kind, checked before allocation.
pub(crate) fn check_len(head: FrameHeader, limits: &Limits) -> Result<(), DecodeError> {
    let len = u64::from(head.len);
    let exact = |expected: usize| {
        if len == expected as u64 {
            Ok(())
        } else {
            Err(DecodeError::BadPayloadLength { kind: head.kind, len, expected: expected as u64 })
        }
    };
    let at_most = |max: u32| {
        if len <= u64::from(max) {
            Ok(())
        } else {
            Err(DecodeError::FrameTooLarge { len, max: max.into() })
        }
    };
    match head.kind {
        FrameKind::Chunk => at_most(limits.max_payload),
        FrameKind::ObjectHeader | FrameKind::ItemHeader | FrameKind::Abort => at_most(limits.max_meta),
        FrameKind::ItemEnd => exact(ItemEnd::PAYLOAD_LEN),
        FrameKind::ObjectEnd => exact(ObjectEnd::PAYLOAD_LEN),
    }
}

/// SPEC.md §3: which item and offset values each kind may carry.
fn check_address(head: FrameHeader) -> Result<(), DecodeError> {
    let ok = match head.kind {
        FrameKind::ObjectHeader | FrameKind::ObjectEnd => head.item == NO_ITEM && head.offset == 0,
        FrameKind::ItemHeader | FrameKind::ItemEnd => head.item != NO_ITEM && head.offset == 0,
        FrameKind::Chunk => head.item != NO_ITEM,
        FrameKind::Abort => head.offset == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadAddress { kind: head.kind, item: head.item, offset: head.offset })
    }
}

fn bad_meta(kind: FrameKind, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::BadMetadata { kind, reason: reason.to_string() }
}

fn json_frame<B: BufMut>(dst: &mut B, kind: FrameKind, item: u32, json: &[u8]) {
    // Metadata payloads are bounded by Limits::max_meta when decoded; a sender
    // that builds one over 4 GiB has violated its own contract.
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    FrameHeader::new(kind, item, 0, len, crc::checksum(json)).encode(dst);
    dst.put_slice(json);
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing structs of strings, integers and finite floats to a Vec
    // cannot fail: there is no IO and every map key is a string.
    serde_json::to_vec(value).unwrap_or_default()
}

fn check_name(kind: FrameKind, name: &str, limits: &Limits) -> Result<(), DecodeError> {
    // SPEC.md §5: names are non-empty and at most max_name_len bytes.
    if name.is_empty() {
        return Err(bad_meta(kind, "empty name"));
    }
    if name.len() as u64 > u64::from(limits.max_name_len) {
        return Err(DecodeError::LimitExceeded {
            what: "name length",
            value: name.len() as u64,
            max: limits.max_name_len.into(),
        });
    }
    Ok(())
}

/// Opens an object (SPEC.md §4.1).
///
/// ```
/// use tensorwire::wire::{Mode, ObjectHeader};
/// let h = ObjectHeader::new("model", Mode::Container).with_items(147);
/// assert_eq!(h.items, Some(147));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ObjectHeader {
    /// The object's name, as requested.
    pub name: String,
    /// What the items are.
    pub mode: Mode,
    /// Number of items, when known before the first is sent.
    pub items: Option<u64>,
    /// Sum of the items' byte lengths, when known.
    pub total_len: Option<u64>,
    /// The sender's largest chunk payload.
    pub chunk_size: u32,
    /// Free-form string pairs (SPEC.md §5.1).
    pub metadata: BTreeMap<String, String>,
    /// The tensors the items will restore to, in item order, when the sender
    /// knows them up front (SPEC.md §5.1): lets a receiver lay out a file
    /// before the data arrives.
    pub index: Option<Vec<IndexEntry>>,
}

/// One tensor of an object header's index (SPEC.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct IndexEntry {
    /// The item's name.
    pub name: String,
    /// The dtype the item restores to.
    pub dtype: Dtype,
    /// The item's shape.
    pub shape: Vec<u64>,
}

impl ObjectHeader {
    /// A header with unknown counts, the default chunk size and no metadata.
    pub fn new(name: impl Into<String>, mode: Mode) -> Self {
        ObjectHeader {
            name: name.into(),
            mode,
            items: None,
            total_len: None,
            chunk_size: crate::wire::encoder::DEFAULT_CHUNK_BYTES,
            metadata: BTreeMap::new(),
            index: None,
        }
    }

    /// Sets the item count.
    pub fn with_items(mut self, items: u64) -> Self {
        self.items = Some(items);
        self
    }

    /// Sets the total length.
    pub fn with_total_len(mut self, total_len: u64) -> Self {
        self.total_len = Some(total_len);
        self
    }

    /// Decodes the JSON payload (SPEC.md §5.1).
    pub fn decode(_head: FrameHeader, payload: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let j: ObjectJson = serde_json::from_slice(payload).map_err(|e| bad_meta(FrameKind::ObjectHeader, e))?;
        let h = ObjectHeader {
            mode: meta::parse_mode(&j.mode)?,
            name: j.name,
            items: j.items,
            total_len: j.total_len,
            chunk_size: j.chunk_size,
            metadata: j.metadata,
            index: j.index.map(|entries| entries.into_iter().map(IndexJson::into_entry).collect()).transpose()?,
        };
        h.check(limits)?;
        Ok(h)
    }

    fn check(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_name(FrameKind::ObjectHeader, &self.name, limits)?;
        // SPEC.md §6: declared counts MUST NOT exceed the receiver's limits.
        if let Some(items) = self.items.filter(|&n| n > limits.max_items) {
            return Err(DecodeError::LimitExceeded { what: "item count", value: items, max: limits.max_items });
        }
        if let Some(len) = self.total_len.filter(|&n| n > limits.max_object_len) {
            return Err(DecodeError::LimitExceeded { what: "object length", value: len, max: limits.max_object_len });
        }
        if let Some(index) = &self.index {
            // SPEC.md §5.1: an index lists exactly the declared items.
            if self.items != Some(index.len() as u64) {
                return Err(bad_meta(FrameKind::ObjectHeader, "index without a matching item count"));
            }
            for e in index {
                check_name(FrameKind::ObjectHeader, &e.name, limits)?;
                if e.shape.len() as u64 > u64::from(limits.max_rank) {
                    return Err(DecodeError::LimitExceeded {
                        what: "rank",
                        value: e.shape.len() as u64,
                        max: limits.max_rank.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn json(&self) -> Vec<u8> {
        to_json(&ObjectJson {
            name: self.name.clone(),
            mode: self.mode.as_str().into(),
            items: self.items,
            total_len: self.total_len,
            chunk_size: self.chunk_size,
            metadata: self.metadata.clone(),
            index: self.index.as_ref().map(|entries| entries.iter().map(IndexJson::from_entry).collect()),
        })
    }

    /// Writes header and JSON payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        json_frame(dst, FrameKind::ObjectHeader, NO_ITEM, &self.json());
    }

    /// Bytes [`ObjectHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.json().len()
    }
}

/// Opens an item (SPEC.md §4.2).
///
/// ```
/// use tensorwire::wire::{Dtype, ItemHeader};
/// let h = ItemHeader::tensor(0, "embed.weight", Dtype::F32, vec![128256, 2048]);
/// assert_eq!(h.len, 128256 * 2048 * 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ItemHeader {
    /// Item index: 0 for the first item, then one more for each.
    pub item: u32,
    /// Unique name within the object.
    pub name: String,
    /// Dtype to restore; `None` for opaque bytes.
    pub dtype: Option<Dtype>,
    /// Shape; present exactly when `dtype` is.
    pub shape: Option<Vec<u64>>,
    /// Bytes the item carries on the wire.
    pub len: u64,
    /// How the bytes encode the tensor.
    pub encoding: Encoding,
}

impl ItemHeader {
    /// A raw tensor item; `len` is computed from dtype and shape (saturating
    /// on overflow, which [`ItemHeader::decode`] would reject).
    pub fn tensor(item: u32, name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> Self {
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        let len = Encoding::Raw.encoded_len(numel, dtype).unwrap_or(u64::MAX);
        ItemHeader { item, name: name.into(), dtype: Some(dtype), shape: Some(shape), len, encoding: Encoding::Raw }
    }

    /// An opaque item of `len` bytes.
    pub fn bytes(item: u32, name: impl Into<String>, len: u64) -> Self {
        ItemHeader { item, name: name.into(), dtype: None, shape: None, len, encoding: Encoding::Raw }
    }

    /// Number of elements, for tensor items (`None` on overflow or for opaque items).
    pub fn numel(&self) -> Option<u64> {
        self.shape.as_ref()?.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// Decodes the JSON payload and checks that dtype, shape, encoding and
    /// length agree (SPEC.md §5.2).
    pub fn decode(head: FrameHeader, payload: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        const KIND: FrameKind = FrameKind::ItemHeader;
        let j: ItemJson = serde_json::from_slice(payload).map_err(|e| bad_meta(KIND, e))?;
        check_name(KIND, &j.name, limits)?;
        let h = ItemHeader {
            item: head.item,
            name: j.name,
            dtype: j.dtype.as_deref().map(Dtype::parse).transpose()?,
            shape: j.shape,
            len: j.len,
            encoding: j.encoding.map(EncodingJson::into_encoding).transpose()?.unwrap_or(Encoding::Raw),
        };
        h.validate(limits)?;
        Ok(h)
    }

    /// Checks the rules of SPEC.md §5.2 and the limits of §6.
    ///
    /// # Errors
    ///
    /// [`DecodeError::InconsistentItem`] or [`DecodeError::LimitExceeded`].
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        let bad = |reason: String| DecodeError::InconsistentItem { item: self.item, reason };
        // SPEC.md §6: an item's length MUST NOT exceed max_item_len.
        if self.len > limits.max_item_len {
            return Err(DecodeError::LimitExceeded { what: "item length", value: self.len, max: limits.max_item_len });
        }
        let (dtype, shape) = match (self.dtype, &self.shape) {
            (None, None) => {
                // SPEC.md §5.2: opaque items carry raw bytes.
                if self.encoding != Encoding::Raw {
                    return Err(bad("an opaque item cannot be encoded".into()));
                }
                return Ok(());
            }
            (Some(d), Some(s)) => (d, s),
            _ => return Err(bad("dtype and shape must come together".into())),
        };
        // SPEC.md §6: rank MUST NOT exceed max_rank.
        if shape.len() as u64 > u64::from(limits.max_rank) {
            return Err(DecodeError::LimitExceeded {
                what: "rank",
                value: shape.len() as u64,
                max: limits.max_rank.into(),
            });
        }
        self.encoding.check(dtype).map_err(bad)?;
        let numel = self.numel().ok_or_else(|| bad("element count overflows".into()))?;
        // SPEC.md §5.2: len MUST equal the encoded length of the shape.
        match self.encoding.encoded_len(numel, dtype) {
            Some(expected) if expected == self.len => Ok(()),
            Some(expected) => Err(bad(format!(
                "{dtype} {shape:?} encoded as {} takes {expected} bytes, header says {}",
                self.encoding.scheme(),
                self.len
            ))),
            None => Err(bad(format!("{numel} elements of {dtype} do not fill whole bytes"))),
        }
    }

    fn json(&self) -> Vec<u8> {
        to_json(&ItemJson {
            name: self.name.clone(),
            dtype: self.dtype.map(|d| d.as_str().to_string()),
            shape: self.shape.clone(),
            len: self.len,
            encoding: EncodingJson::from_encoding(&self.encoding),
        })
    }

    /// Writes header and JSON payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        json_frame(dst, FrameKind::ItemHeader, self.item, &self.json());
    }

    /// Bytes [`ItemHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.json().len()
    }
}

/// A range of an item's bytes (SPEC.md §4.3).
///
/// The payload stays a [`Bytes`]: decoding splits it off the receive buffer
/// and encoding through [`Frame::into_buf`] never copies it.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Item index.
    pub item: u32,
    /// Offset of the first byte within the item.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// CRC-32 of `data`: computed by [`Chunk::new`], checked by the decoder.
    pub crc: u32,
}

impl Chunk {
    /// A chunk of `data`, computing its CRC.
    ///
    /// # Panics
    ///
    /// If `data` is 4 GiB or longer: the header's length field has 32 bits.
    pub fn new(item: u32, offset: u64, data: Bytes) -> Self {
        assert!(data.len() <= u32::MAX as usize, "chunk payload must be shorter than 4 GiB");
        Chunk { item, offset, crc: crc::checksum(&data), data }
    }

    /// Takes the payload of a checked header (the CRC was verified by [`Frame::decode`]).
    pub fn decode(head: FrameHeader, payload: Bytes) -> Self {
        Chunk { item: head.item, offset: head.offset, data: payload, crc: head.payload_crc }
    }

    fn head(&self) -> FrameHeader {
        // Chunk::new bounds data.len() to u32.
        let len = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        FrameHeader::new(FrameKind::Chunk, self.item, self.offset, len, self.crc)
    }

    /// Writes header and payload (copying the payload; see [`Frame::into_buf`]).
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        self.head().encode(dst);
        dst.put_slice(&self.data);
    }

    /// Bytes [`Chunk::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }
}

#[cfg(any(test, feature = "arbitrary"))]
impl<'a> arbitrary::Arbitrary<'a> for Chunk {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let item = u.arbitrary()?;
        let offset = u.arbitrary()?;
        let data: Vec<u8> = u.arbitrary()?;
        let mut chunk = Chunk::new(item, offset, data.into());
        // Now and then a wrong CRC, to exercise the checksum path.
        if u.ratio(1, 16)? {
            chunk.crc ^= 1;
        }
        Ok(chunk)
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("item", &self.item)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .field("crc", &format_args!("{:#010x}", self.crc))
            .finish()
    }
}

/// Closes an item (SPEC.md §4.4): its length and CRC-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ItemEnd {
    /// Item index.
    pub item: u32,
    /// The item's length in bytes.
    pub len: u64,
    /// CRC-32 of all the item's bytes in offset order.
    pub crc: u32,
}

impl ItemEnd {
    /// Payload length: len (u64) and crc (u32).
    pub const PAYLOAD_LEN: usize = 12;
    /// Header plus payload.
    pub const ENCODED_LEN: usize = HEADER_LEN + Self::PAYLOAD_LEN;

    /// Decodes the 12-byte payload.
    pub fn decode(head: FrameHeader, mut p: &[u8]) -> Result<Self, DecodeError> {
        check_exact(head, p, Self::PAYLOAD_LEN)?;
        Ok(ItemEnd { item: head.item, len: p.get_u64_le(), crc: p.get_u32_le() })
    }

    /// Writes header and payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        let mut p = [0u8; Self::PAYLOAD_LEN];
        p[..8].copy_from_slice(&self.len.to_le_bytes());
        p[8..].copy_from_slice(&self.crc.to_le_bytes());
        FrameHeader::new(FrameKind::ItemEnd, self.item, 0, p.len() as u32, crc::checksum(&p)).encode(dst);
        dst.put_slice(&p);
    }
}

/// Closes the object (SPEC.md §4.5): counts and the CRC-32 of all item bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ObjectEnd {
    /// Number of items sent.
    pub items: u64,
    /// Sum of the items' lengths.
    pub len: u64,
    /// CRC-32 of the concatenation of all items' bytes in item order.
    pub crc: u32,
}

impl ObjectEnd {
    /// Payload length: items (u64), len (u64), crc (u32).
    pub const PAYLOAD_LEN: usize = 20;
    /// Header plus payload.
    pub const ENCODED_LEN: usize = HEADER_LEN + Self::PAYLOAD_LEN;

    /// Decodes the 20-byte payload.
    pub fn decode(head: FrameHeader, mut p: &[u8]) -> Result<Self, DecodeError> {
        check_exact(head, p, Self::PAYLOAD_LEN)?;
        Ok(ObjectEnd { items: p.get_u64_le(), len: p.get_u64_le(), crc: p.get_u32_le() })
    }

    /// Writes header and payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        let mut p = [0u8; Self::PAYLOAD_LEN];
        p[..8].copy_from_slice(&self.items.to_le_bytes());
        p[8..16].copy_from_slice(&self.len.to_le_bytes());
        p[16..].copy_from_slice(&self.crc.to_le_bytes());
        FrameHeader::new(FrameKind::ObjectEnd, NO_ITEM, 0, p.len() as u32, crc::checksum(&p)).encode(dst);
        dst.put_slice(&p);
    }
}

fn check_exact(head: FrameHeader, p: &[u8], expected: usize) -> Result<(), DecodeError> {
    // SPEC.md §4.4, §4.5: fixed payloads have exactly their length.
    if p.len() != expected {
        return Err(DecodeError::BadPayloadLength { kind: head.kind, len: p.len() as u64, expected: expected as u64 });
    }
    Ok(())
}

/// An abort code (SPEC.md §4.6). Codes this version does not name still
/// round-trip.
///
/// ```
/// use tensorwire::wire::AbortCode;
/// assert_eq!(AbortCode::from(2), AbortCode::CANCELLED);
/// assert_eq!(AbortCode::from(999).to_string(), "unknown (999)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct AbortCode(u32);

impl AbortCode {
    /// The sender failed for a reason of its own.
    pub const INTERNAL: AbortCode = AbortCode(1);
    /// The transfer was cancelled.
    pub const CANCELLED: AbortCode = AbortCode(2);
    /// The object or an item does not exist.
    pub const NOT_FOUND: AbortCode = AbortCode(3);
    /// The peer broke the protocol.
    pub const PROTOCOL: AbortCode = AbortCode(4);
    /// Data failed a checksum.
    pub const CHECKSUM: AbortCode = AbortCode(5);
    /// A limit was exceeded.
    pub const LIMIT: AbortCode = AbortCode(6);
    /// The source changed while it was being sent.
    pub const SOURCE_CHANGED: AbortCode = AbortCode(7);
    /// A deadline passed.
    pub const TIMEOUT: AbortCode = AbortCode(8);
    /// An option or encoding is not supported.
    pub const UNSUPPORTED: AbortCode = AbortCode(9);

    /// The numeric value.
    pub fn value(self) -> u32 {
        self.0
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "internal",
            2 => "cancelled",
            3 => "not found",
            4 => "protocol",
            5 => "checksum",
            6 => "limit",
            7 => "source changed",
            8 => "timeout",
            9 => "unsupported",
            _ => return None,
        })
    }
}

impl From<u32> for AbortCode {
    fn from(v: u32) -> Self {
        AbortCode(v)
    }
}

impl std::fmt::Display for AbortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown ({})", self.0),
        }
    }
}

impl std::fmt::Debug for AbortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AbortCode({}: {self})", self.0)
    }
}

/// Ends the object early (SPEC.md §4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Abort {
    /// The item being sent when the sender gave up, if any.
    pub item: Option<u32>,
    /// Why.
    pub code: AbortCode,
    /// A human-readable explanation (UTF-8).
    pub message: String,
}

impl Abort {
    /// An abort not tied to an item.
    pub fn new(code: AbortCode, message: impl Into<String>) -> Self {
        Abort { item: None, code, message: message.into() }
    }

    /// Decodes code (u32) and UTF-8 message.
    pub fn decode(head: FrameHeader, mut p: &[u8]) -> Result<Self, DecodeError> {
        // SPEC.md §4.6: the payload is at least the 4-byte code.
        if p.len() < 4 {
            return Err(DecodeError::BadPayloadLength { kind: head.kind, len: p.len() as u64, expected: 4 });
        }
        let code = AbortCode(p.get_u32_le());
        let message = std::str::from_utf8(p).map_err(|_| DecodeError::InvalidUtf8)?.to_string();
        let item = (head.item != NO_ITEM).then_some(head.item);
        Ok(Abort { item, code, message })
    }

    /// Writes header and payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        let mut p = Vec::with_capacity(4 + self.message.len());
        p.extend_from_slice(&self.code.0.to_le_bytes());
        p.extend_from_slice(self.message.as_bytes());
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        FrameHeader::new(FrameKind::Abort, self.item.unwrap_or(NO_ITEM), 0, len, crc::checksum(&p)).encode(dst);
        dst.put_slice(&p);
    }

    /// Bytes [`Abort::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + 4 + self.message.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::TestResult;

    /// A header with the given fields, CRCs computed; then the payload.
    fn raw_frame(kind: u8, item: u32, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![kind, 0, 0, 0];
        b.extend_from_slice(&item.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc::checksum(payload).to_le_bytes());
        let hc = crc::checksum(&b);
        b.extend_from_slice(&hc.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        decode_with(bytes, &Limits::default())
    }

    fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&bytes[..HEADER_LEN]);
        let head = FrameHeader::decode(&head)?;
        Frame::decode(head, Bytes::copy_from_slice(&bytes[HEADER_LEN..]), limits)
    }

    fn round_trip(frame: Frame) -> TestResult {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len());
        assert_eq!(decode(&buf)?, frame);
        let mut parts = frame.clone().into_buf();
        assert_eq!(parts.copy_to_bytes(parts.remaining()), buf);
        Ok(())
    }

    #[test]
    fn object_header_byte_literal() -> TestResult {
        let json = br#"{"name":"m","mode":"container","items":2,"total_len":null,"chunk_size":1024,"future_key":[1]}"#;
        let bytes = raw_frame(0x01, NO_ITEM, 0, json);
        let Frame::ObjectHeader(h) = decode(&bytes)? else { panic!("wrong kind") };
        assert_eq!(h.name, "m");
        assert_eq!(h.mode, Mode::Container);
        assert_eq!(h.items, Some(2));
        assert_eq!(h.total_len, None);
        assert_eq!(h.chunk_size, 1024);
        Ok(())
    }

    #[test]
    fn item_header_byte_literal() -> TestResult {
        let json = br#"{"name":"w","dtype":"BF16","shape":[2,3],"len":12}"#;
        let Frame::ItemHeader(h) = decode(&raw_frame(0x02, 5, 0, json))? else { panic!("wrong kind") };
        assert_eq!(h, ItemHeader { item: 5, ..ItemHeader::tensor(0, "w", Dtype::BF16, vec![2, 3]) });
        Ok(())
    }

    #[test]
    fn item_header_with_encoding_byte_literal() -> TestResult {
        let json = br#"{"name":"q","dtype":"F32","shape":[65],"len":41,"encoding":{"scheme":"nf4","block_size":64}}"#;
        let Frame::ItemHeader(h) = decode(&raw_frame(0x02, 0, 0, json))? else { panic!("wrong kind") };
        assert_eq!(h.encoding, Encoding::Nf4 { block_size: 64, nested: false });
        Ok(())
    }

    #[test]
    fn chunk_byte_literal() -> TestResult {
        let bytes = raw_frame(0x03, 1, 8, &[1, 2, 3]);
        let Frame::Chunk(c) = decode(&bytes)? else { panic!("wrong kind") };
        assert_eq!((c.item, c.offset, &c.data[..]), (1, 8, &[1u8, 2, 3][..]));
        Ok(())
    }

    #[test]
    fn item_end_byte_literal() -> TestResult {
        let payload = [
            0x0C, 0, 0, 0, 0, 0, 0, 0, // len 12
            0x78, 0x56, 0x34, 0x12, // crc 0x12345678
        ];
        let frame = decode(&raw_frame(0x04, 3, 0, &payload))?;
        assert_eq!(frame, Frame::ItemEnd(ItemEnd { item: 3, len: 12, crc: 0x1234_5678 }));
        Ok(())
    }

    #[test]
    fn object_end_byte_literal() -> TestResult {
        let payload = [
            2, 0, 0, 0, 0, 0, 0, 0, // items 2
            0x20, 0, 0, 0, 0, 0, 0, 0, // len 32
            0xEF, 0xBE, 0xAD, 0xDE, // crc 0xDEADBEEF
        ];
        let frame = decode(&raw_frame(0x05, NO_ITEM, 0, &payload))?;
        assert_eq!(frame, Frame::ObjectEnd(ObjectEnd { items: 2, len: 32, crc: 0xDEAD_BEEF }));
        Ok(())
    }

    #[test]
    fn abort_byte_literal() -> TestResult {
        let payload = [
            0x02, 0, 0, 0, // code 2: cancelled
            b'b', b'y', b'e', // message
        ];
        let frame = decode(&raw_frame(0x06, 4, 0, &payload))?;
        assert_eq!(frame, Frame::Abort(Abort { item: Some(4), code: AbortCode::CANCELLED, message: "bye".into() }));
        Ok(())
    }

    #[test]
    fn every_kind_round_trips() -> TestResult {
        let code: Vec<f32> = (0..256).map(|i| i as f32 / 255.0 - 0.5).collect();
        let mut q = ItemHeader::tensor(7, "q", Dtype::F16, vec![4097]);
        q.encoding = Encoding::Blockwise8 { block_size: 4096, code: Some(code) };
        q.len = q.encoding.encoded_len(4097, Dtype::F16).unwrap_or(0);
        let mut meta = ObjectHeader::new("model", Mode::File).with_items(1).with_total_len(10);
        meta.metadata.insert("format".into(), "safetensors".into());
        for frame in [
            Frame::ObjectHeader(meta),
            Frame::ItemHeader(ItemHeader::tensor(0, "embed", Dtype::F8_E4M3, vec![3, 0, 5])),
            Frame::ItemHeader(ItemHeader::bytes(1, "file", 1 << 37)),
            Frame::ItemHeader(q),
            Frame::Chunk(Chunk::new(2, 1 << 33, Bytes::from_static(b"payload"))),
            Frame::ItemEnd(ItemEnd { item: 9, len: 1 << 35, crc: 7 }),
            Frame::ObjectEnd(ObjectEnd { items: 1, len: 2, crc: 3 }),
            Frame::Abort(Abort::new(AbortCode::from(77), "über")),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }

    #[test]
    fn decode_rejects_payload_checksum_mismatch() {
        let mut bytes = raw_frame(0x03, 1, 64, b"abc");
        bytes[HEADER_LEN] ^= 0xFF;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadChecksum {
                item: 1,
                offset: 64,
                expected: crc::checksum(b"abc"),
                actual: crc::checksum(b"\x9ebc")
            })
        );
    }

    #[test]
    fn decode_rejects_oversized_chunk() {
        let limits = Limits { max_payload: 2, ..Limits::default() };
        assert_eq!(
            decode_with(&raw_frame(0x03, 0, 0, b"abc"), &limits),
            Err(DecodeError::FrameTooLarge { len: 3, max: 2 })
        );
    }

    #[test]
    fn decode_rejects_oversized_metadata() {
        let limits = Limits { max_meta: 8, ..Limits::default() };
        let json = br#"{"name":"w","len":0}"#;
        assert!(matches!(decode_with(&raw_frame(0x02, 0, 0, json), &limits), Err(DecodeError::FrameTooLarge { .. })));
    }

    #[test]
    fn decode_rejects_item_end_of_wrong_length() {
        assert!(matches!(
            decode(&raw_frame(0x04, 0, 0, &[0; 11])),
            Err(DecodeError::BadPayloadLength { kind: FrameKind::ItemEnd, len: 11, expected: 12 })
        ));
    }

    #[test]
    fn decode_rejects_object_end_of_wrong_length() {
        assert!(matches!(decode(&raw_frame(0x05, NO_ITEM, 0, &[0; 21])), Err(DecodeError::BadPayloadLength { .. })));
    }

    #[test]
    fn decode_rejects_object_frame_naming_an_item() {
        assert!(matches!(decode(&raw_frame(0x05, 0, 0, &[0; 20])), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn decode_rejects_item_frame_without_item() {
        assert!(matches!(decode(&raw_frame(0x03, NO_ITEM, 0, b"x")), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn decode_rejects_offset_on_non_chunk() {
        assert!(matches!(decode(&raw_frame(0x04, 0, 8, &[0; 12])), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn decode_rejects_malformed_json() {
        assert!(matches!(decode(&raw_frame(0x01, NO_ITEM, 0, b"{\"name\":")), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_unknown_mode() {
        let json = br#"{"name":"m","mode":"zip","chunk_size":1}"#;
        assert!(matches!(decode(&raw_frame(0x01, NO_ITEM, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_item_count_over_limit() {
        let json = br#"{"name":"m","mode":"file","items":1048577,"chunk_size":1}"#;
        assert!(matches!(
            decode(&raw_frame(0x01, NO_ITEM, 0, json)),
            Err(DecodeError::LimitExceeded { what: "item count", .. })
        ));
    }

    #[test]
    fn decode_rejects_empty_name() {
        let json = br#"{"name":"","len":0}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_name_over_limit() {
        let json = format!(r#"{{"name":"{}","len":0}}"#, "n".repeat(4097));
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json.as_bytes())),
            Err(DecodeError::LimitExceeded { what: "name length", .. })
        ));
    }

    #[test]
    fn decode_rejects_unknown_dtype() {
        let json = br#"{"name":"w","dtype":"F128","shape":[1],"len":16}"#;
        assert_eq!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::UnknownDtype("F128".into())));
    }

    #[test]
    fn decode_rejects_unknown_encoding() {
        let json = br#"{"name":"w","dtype":"F32","shape":[1],"len":1,"encoding":{"scheme":"int3"}}"#;
        assert_eq!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::UnknownEncoding("int3".into())));
    }

    #[test]
    fn decode_rejects_length_disagreeing_with_shape() {
        let json = br#"{"name":"w","dtype":"F32","shape":[2,3],"len":25}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { item: 0, .. })));
    }

    #[test]
    fn decode_rejects_shape_overflow() {
        let json = br#"{"name":"w","dtype":"F32","shape":[4294967296,4294967296],"len":0}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_dtype_without_shape() {
        let json = br#"{"name":"w","dtype":"F32","len":4}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_encoded_opaque_item() {
        let json = br#"{"name":"w","len":4,"encoding":{"scheme":"fp16"}}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_rank_over_limit() {
        let json = format!(r#"{{"name":"w","dtype":"U8","shape":[{}],"len":1}}"#, ["1"; 33].join(","));
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json.as_bytes())),
            Err(DecodeError::LimitExceeded { what: "rank", .. })
        ));
    }

    #[test]
    fn decode_rejects_item_length_over_limit() {
        let json = br#"{"name":"w","len":274877906945}"#;
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json)),
            Err(DecodeError::LimitExceeded { what: "item length", .. })
        ));
    }

    #[test]
    fn decode_rejects_bad_code_table() {
        let json = br#"{"name":"w","dtype":"F32","shape":[1],"len":5,"encoding":{"scheme":"blockwise8","block_size":4096,"code":"00"}}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_abort_without_code() {
        assert!(matches!(decode(&raw_frame(0x06, NO_ITEM, 0, &[1, 0])), Err(DecodeError::BadPayloadLength { .. })));
    }

    #[test]
    fn decode_rejects_abort_with_invalid_utf8() {
        assert_eq!(decode(&raw_frame(0x06, NO_ITEM, 0, &[1, 0, 0, 0, 0xFF])), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn validate_agrees_with_decode_on_invalid_frames() {
        let bad = Frame::ItemHeader(ItemHeader { len: 3, ..ItemHeader::tensor(0, "w", Dtype::F32, vec![1]) });
        assert!(bad.validate(&Limits::default()).is_err());
        let mut buf = Vec::new();
        bad.encode(&mut buf);
        assert!(decode(&buf).is_err());
    }

    #[test]
    fn debug_leaves_out_payload_bytes() {
        let c = Chunk::new(0, 0, Bytes::from_static(b"secret weights"));
        let s = format!("{c:?}");
        assert!(s.contains("len: 14") && !s.contains("secret"));
    }
}
