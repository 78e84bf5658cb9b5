//! Encoding: [`FrameEncoder`] writes frames into a byte buffer;
//! [`ObjectEncoder`] builds a well-formed frame sequence for a sender.

use bytes::{BufMut, Bytes, BytesMut};

use super::crc::Combined;
use super::{preamble, Abort, Chunk, Frame, ItemEnd, ItemHeader, Limits, ObjectEnd, ObjectHeader};

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A payload is larger than the limits allow (SPEC.md §6).
    #[error("{kind:?} payload of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Frame kind.
        kind: super::FrameKind,
        /// Payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// [`ObjectEncoder`] was called out of order (a caller bug).
    #[error("frame out of order: {0}")]
    OutOfOrder(&'static str),
    /// A chunk would run past its item's declared length.
    #[error("item {item}: {len} bytes at offset {offset} run past its length {item_len}")]
    ItemOverrun {
        /// Item index.
        item: u32,
        /// Offset of the chunk.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Declared item length.
        item_len: u64,
    },
    /// An item ended before its declared length was sent.
    #[error("item {item} ended after {sent} of its {len} bytes")]
    ItemShort {
        /// Item index.
        item: u32,
        /// Bytes sent.
        sent: u64,
        /// Declared length.
        len: u64,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes the preamble and then each frame into a `BytesMut`
/// (`tokio_util::codec::Encoder`). Payloads are copied into the buffer; to
/// send a chunk without copying it use [`Frame::into_buf`].
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::Encoder;
/// use tensorwire::wire::{Abort, AbortCode, Frame, FrameEncoder, PREAMBLE_LEN};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut buf = BytesMut::new();
/// FrameEncoder::new().encode(Frame::Abort(Abort::new(AbortCode::CANCELLED, "bye")), &mut buf)?;
/// assert_eq!(&buf[..4], b"TWIR");
/// assert!(buf.len() > PREAMBLE_LEN);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct FrameEncoder {
    limits: Limits,
    wrote_preamble: bool,
}

impl FrameEncoder {
    /// An encoder with default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder that refuses payloads the given limits would reject.
    pub fn with_limits(limits: Limits) -> Self {
        FrameEncoder { limits, wrote_preamble: false }
    }

    fn check(&self, frame: &Frame) -> Result<(), EncodeError> {
        let (len, max) = match frame {
            Frame::Chunk(c) => (c.data.len(), self.limits.max_payload),
            Frame::ObjectHeader(_) | Frame::ItemHeader(_) | Frame::Abort(_) => {
                (frame.encoded_len() - super::HEADER_LEN, self.limits.max_meta)
            }
            Frame::ItemEnd(_) | Frame::ObjectEnd(_) => return Ok(()),
        };
        if len as u64 > u64::from(max) {
            return Err(EncodeError::FrameTooLarge { kind: frame.kind(), len: len as u64, max: max.into() });
        }
        Ok(())
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameEncoder {
    type Error = EncodeError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check(&frame)?;
        if !self.wrote_preamble {
            dst.put_slice(&preamble());
            self.wrote_preamble = true;
        }
        dst.reserve(frame.encoded_len());
        frame.encode(dst);
        Ok(())
    }
}

/// Builds the frames of one object in a valid order, numbering items,
/// placing chunks at consecutive offsets, and computing the item and object
/// lengths and CRCs (SPEC.md §4, §7). Sans-IO: frames go wherever the caller
/// sends them.
///
/// Chunks are placed back to back; a sender that skips ranges (a resume)
/// uses [`ObjectEncoder::chunk_at`] and supplies the item CRC itself with
/// [`ObjectEncoder::item_end_with_crc`].
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::wire::{Frame, ObjectEncoder, ObjectHeader, ItemHeader, Mode, Dtype};
/// # fn main() -> Result<(), tensorwire::wire::EncodeError> {
/// let mut enc = ObjectEncoder::new();
/// let _ = enc.object_header(ObjectHeader::new("m", Mode::Container).with_items(1))?;
/// let _ = enc.item_header(ItemHeader::tensor(0, "w", Dtype::F32, vec![2]))?;
/// let _ = enc.chunk(Bytes::from_static(&[0; 8]))?;
/// let end = enc.item_end()?;
/// assert!(matches!(end, Frame::ItemEnd(e) if e.len == 8));
/// let _ = enc.object_end()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct ObjectEncoder {
    started: bool,
    ended: bool,
    items: u64,
    object: Combined,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    item: u32,
    len: u64,
    next: u64,
    sent: u64,
    crc: Combined,
}

impl ObjectEncoder {
    /// A fresh encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index the next item header will get.
    pub fn next_item(&self) -> u64 {
        self.items
    }

    /// The object header: the first frame.
    pub fn object_header(&mut self, header: ObjectHeader) -> Result<Frame, EncodeError> {
        if self.started {
            return Err(EncodeError::OutOfOrder("object header already sent"));
        }
        self.started = true;
        Ok(Frame::ObjectHeader(header))
    }

    /// Opens the next item; its `item` field is set to the next index.
    pub fn item_header(&mut self, mut header: ItemHeader) -> Result<Frame, EncodeError> {
        if !self.started || self.ended || self.open.is_some() {
            return Err(EncodeError::OutOfOrder("item header outside the object or inside an item"));
        }
        header.item = u32::try_from(self.items).map_err(|_| EncodeError::OutOfOrder("too many items"))?;
        self.open = Some(Open { item: header.item, len: header.len, next: 0, sent: 0, crc: Combined::new() });
        Ok(Frame::ItemHeader(header))
    }

    /// The next chunk of the open item, placed right after the previous one.
    pub fn chunk(&mut self, data: Bytes) -> Result<Frame, EncodeError> {
        let next = self.open.as_ref().map_or(0, |o| o.next);
        self.chunk_at(next, data)
    }

    /// A chunk of the open item at `offset` (at or after the previous chunk's end).
    pub fn chunk_at(&mut self, offset: u64, data: Bytes) -> Result<Frame, EncodeError> {
        let open = self.open.as_mut().ok_or(EncodeError::OutOfOrder("chunk outside an item"))?;
        let len = data.len() as u64;
        if offset < open.next || offset.saturating_add(len) > open.len {
            return Err(EncodeError::ItemOverrun { item: open.item, offset, len, item_len: open.len });
        }
        let chunk = Chunk::new(open.item, offset, data);
        if offset == open.next && open.sent == open.next {
            open.crc.push(chunk.crc, len);
        }
        open.next = offset + len;
        open.sent += len;
        Ok(Frame::Chunk(chunk))
    }

    /// Closes the open item with the CRC of the chunks sent.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ItemShort`] when fewer bytes than the item's length
    /// were sent (use [`ObjectEncoder::item_end_with_crc`] for a resume).
    pub fn item_end(&mut self) -> Result<Frame, EncodeError> {
        let open = self.open.as_ref().ok_or(EncodeError::OutOfOrder("item end outside an item"))?;
        if open.sent != open.len || open.crc.len() != open.len {
            return Err(EncodeError::ItemShort { item: open.item, sent: open.sent, len: open.len });
        }
        let crc = open.crc.crc();
        self.item_end_with_crc(crc)
    }

    /// Closes the open item with a CRC the caller computed over all its bytes.
    pub fn item_end_with_crc(&mut self, crc: u32) -> Result<Frame, EncodeError> {
        let open = self.open.take().ok_or(EncodeError::OutOfOrder("item end outside an item"))?;
        self.object.push(crc, open.len);
        self.items += 1;
        Ok(Frame::ItemEnd(ItemEnd { item: open.item, len: open.len, crc }))
    }

    /// The object end: the last frame.
    pub fn object_end(&mut self) -> Result<Frame, EncodeError> {
        if !self.started || self.ended || self.open.is_some() {
            return Err(EncodeError::OutOfOrder("object end outside the object or inside an item"));
        }
        self.ended = true;
        Ok(Frame::ObjectEnd(ObjectEnd { items: self.items, len: self.object.len(), crc: self.object.crc() }))
    }

    /// An abort, which ends the object wherever it stands.
    pub fn abort(&mut self, mut abort: Abort) -> Frame {
        self.ended = true;
        if abort.item.is_none() {
            abort.item = self.open.take().map(|o| o.item);
        }
        Frame::Abort(abort)
    }
}
