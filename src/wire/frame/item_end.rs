//! The item end (SPEC.md §4.4): an item's length and CRC-32.

use bytes::{Buf, BufMut};

use super::common::check_exact;
use crate::wire::{crc, DecodeError, FrameHeader, FrameKind, HEADER_LEN};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode, raw_frame, round_trip, TestResult};
    use crate::wire::Frame;

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
    fn decode_rejects_item_end_of_wrong_length() {
        assert!(matches!(
            decode(&raw_frame(0x04, 0, 0, &[0; 11])),
            Err(DecodeError::BadPayloadLength { kind: FrameKind::ItemEnd, len: 11, expected: 12 })
        ));
    }

    #[test]
    fn decode_rejects_offset_on_non_chunk() {
        assert!(matches!(decode(&raw_frame(0x04, 0, 8, &[0; 12])), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn round_trips() -> TestResult {
        for frame in [
            Frame::ItemEnd(ItemEnd { item: 9, len: 1 << 35, crc: 7 }),
            Frame::ItemEnd(ItemEnd { item: 0, len: 0, crc: 0 }),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}
