//! The object end (SPEC.md §4.5): counts and the CRC-32 of all item bytes.

use bytes::{Buf, BufMut};

use super::common::check_exact;
use crate::wire::{crc, DecodeError, FrameHeader, FrameKind, HEADER_LEN, NO_ITEM};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode, raw_frame, round_trip, TestResult};
    use crate::wire::Frame;

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
    fn decode_rejects_object_end_of_wrong_length() {
        assert!(matches!(decode(&raw_frame(0x05, NO_ITEM, 0, &[0; 21])), Err(DecodeError::BadPayloadLength { .. })));
    }

    #[test]
    fn decode_rejects_object_frame_naming_an_item() {
        assert!(matches!(decode(&raw_frame(0x05, 0, 0, &[0; 20])), Err(DecodeError::BadAddress { .. })));
    }

    #[test]
    fn round_trips() -> TestResult {
        for frame in [
            Frame::ObjectEnd(ObjectEnd { items: 1, len: 2, crc: 3 }),
            Frame::ObjectEnd(ObjectEnd { items: u64::MAX, len: 1 << 40, crc: u32::MAX }),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}
