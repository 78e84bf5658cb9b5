//! The chunk (SPEC.md §4.3): a range of an item's bytes, kept as [`Bytes`].

use bytes::{BufMut, Bytes};

use crate::wire::{crc, FrameHeader, FrameKind, HEADER_LEN};

/// A range of an item's bytes (SPEC.md §4.3).
///
/// The payload stays a [`Bytes`]: decoding splits it off the receive buffer
/// and encoding through [`Frame::into_buf`](super::Frame::into_buf) never copies it.
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

    /// Takes the payload of a checked header (the CRC was verified by [`Frame::decode`](super::Frame::decode)).
    pub fn decode(head: FrameHeader, payload: Bytes) -> Self {
        Chunk { item: head.item, offset: head.offset, data: payload, crc: head.payload_crc }
    }

    pub(super) fn head(&self) -> FrameHeader {
        // Chunk::new bounds data.len() to u32.
        let len = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        FrameHeader::new(FrameKind::Chunk, self.item, self.offset, len, self.crc)
    }

    /// Writes header and payload (copying the payload; see [`Frame::into_buf`](super::Frame::into_buf)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode, decode_with, raw_frame, round_trip, TestResult};
    use crate::wire::{DecodeError, Frame, Limits, NO_ITEM};

    #[test]
    fn chunk_byte_literal() -> TestResult {
        let bytes = raw_frame(0x03, 1, 8, &[1, 2, 3]);
        let Frame::Chunk(c) = decode(&bytes)? else { panic!("wrong kind") };
        assert_eq!((c.item, c.offset, &c.data[..]), (1, 8, &[1u8, 2, 3][..]));
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
    fn decode_rejects_item_frame_without_item() {
        assert!(matches!(decode(&raw_frame(0x03, NO_ITEM, 0, b"x")), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn debug_leaves_out_payload_bytes() {
        let c = Chunk::new(0, 0, Bytes::from_static(b"secret weights"));
        let s = format!("{c:?}");
        assert!(s.contains("len: 14") && !s.contains("secret"));
    }

    #[test]
    fn round_trips() -> TestResult {
        for frame in [
            Frame::Chunk(Chunk::new(2, 1 << 33, Bytes::from_static(b"payload"))),
            Frame::Chunk(Chunk::new(0, 0, Bytes::new())),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}
