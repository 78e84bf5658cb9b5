//! One struct per frame kind (SPEC.md §4), one file each, as h2 keeps its
//! `src/frame/`: every kind has the same pair, `decode(head, payload)` and
//! `encode(dst)`, plus `encoded_len()`, and its round-trip and rejection
//! tests at the bottom of its file. [`Frame`] is the sum of them; the checks
//! every kind shares (lengths, addresses) are here, the helpers in
//! `common.rs`.

use bytes::{BufMut, Bytes, BytesMut};

use super::{crc, DecodeError, FrameHeader, FrameKind, Limits, HEADER_LEN, NO_ITEM};

mod abort;
mod chunk;
mod common;
mod encoded;
mod item_end;
mod item_header;
mod object_end;
mod object_header;

pub use abort::{Abort, AbortCode};
pub use chunk::Chunk;
pub use encoded::EncodedFrame;
pub use item_end::ItemEnd;
pub use item_header::ItemHeader;
pub use object_end::ObjectEnd;
pub use object_header::{IndexEntry, ObjectHeader};

use common::check_name;

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
                EncodedFrame::from_parts(head.freeze(), c.data)
            }
            other => {
                let mut head = BytesMut::with_capacity(other.encoded_len());
                other.encode(&mut head);
                EncodedFrame::from_bytes(head.freeze())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode_with, raw_frame};

    #[test]
    fn decode_rejects_oversized_metadata() {
        let limits = Limits { max_meta: 8, ..Limits::default() };
        let json = br#"{"name":"w","len":0}"#;
        assert!(matches!(decode_with(&raw_frame(0x02, 0, 0, json), &limits), Err(DecodeError::FrameTooLarge { .. })));
    }
}
