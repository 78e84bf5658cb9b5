//! The fixed frame header (SPEC.md §3).
//!
//! ```text
//!  0        1        2                 4                                 8
//!  +--------+--------+-----------------+---------------------------------+
//!  |  kind  | flags  | reserved (0)    |             item (u32)          |
//!  +--------+--------+-----------------+---------------------------------+
//!  8                                                                    16
//!  +---------------------------------------------------------------------+
//!  |                          offset (u64)                               |
//!  +---------------------------------+-----------------------------------+
//! 16                                20                                  24
//!  |         payload_len (u32)       |          payload_crc (u32)        |
//!  +---------------------------------+-----------------------------------+
//! 24                                28
//!  |         header_crc (u32)        |   payload_len bytes of payload ...
//!  +---------------------------------+
//! ```
//!
//! All integers are little-endian. `payload_crc` is the CRC-32 of the payload;
//! `header_crc` is the CRC-32 of bytes 0..24, so it covers `payload_crc` and
//! through it the payload.

use bytes::BufMut;

// The kind is its own file so that `DecodeError` (which names kinds) and
// the header (which returns `DecodeError`) do not import each other.
pub use super::kind::FrameKind;
use super::{crc, DecodeError, HEADER_LEN};

/// SPEC.md §3.1: the kind byte of a header.
impl TryFrom<u8> for FrameKind {
    type Error = DecodeError;

    fn try_from(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0x01 => FrameKind::ObjectHeader,
            0x02 => FrameKind::ItemHeader,
            0x03 => FrameKind::Chunk,
            0x04 => FrameKind::ItemEnd,
            0x05 => FrameKind::ObjectEnd,
            0x06 => FrameKind::Abort,
            // SPEC.md §3.1: a receiver MUST reject a kind it does not know.
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// A decoded frame header (SPEC.md §3).
///
/// ```
/// use tensorwire::wire::{FrameHeader, FrameKind, HEADER_LEN};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let payload = b"abc";
/// let crc = tensorwire::wire::crc::checksum(payload);
/// let head = FrameHeader::new(FrameKind::Chunk, 3, 4096, payload.len() as u32, crc);
/// let mut buf = [0u8; HEADER_LEN];
/// head.encode(&mut &mut buf[..]);
/// assert_eq!(FrameHeader::decode(&buf)?, head);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: FrameKind,
    /// Item index, or [`NO_ITEM`](super::NO_ITEM) for object-level frames.
    pub item: u32,
    /// Byte offset within the item (chunks only; zero otherwise).
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

impl FrameHeader {
    /// A header for a payload of `len` bytes whose CRC-32 is `payload_crc`.
    pub fn new(kind: FrameKind, item: u32, offset: u64, len: u32, payload_crc: u32) -> Self {
        FrameHeader { kind, item, offset, len, payload_crc }
    }

    /// Parses and checks a header: its CRC first, then kind and reserved bits.
    ///
    /// # Errors
    ///
    /// [`DecodeError::HeaderChecksum`], [`DecodeError::UnknownKind`],
    /// [`DecodeError::ReservedNonZero`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, DecodeError> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // SPEC.md §3.2: the header CRC is checked before any field is used.
        let expected = u32_at(24);
        let actual = crc::checksum(&b[..24]);
        if expected != actual {
            return Err(DecodeError::HeaderChecksum { expected, actual });
        }
        let kind = FrameKind::try_from(b[0])?;
        // SPEC.md §3: flags and reserved bytes MUST be zero in version 1.
        if b[1] != 0 || b[2] != 0 || b[3] != 0 {
            return Err(DecodeError::ReservedNonZero);
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&b[8..16]);
        Ok(FrameHeader {
            kind,
            item: u32_at(4),
            offset: u64::from_le_bytes(offset),
            len: u32_at(16),
            payload_crc: u32_at(20),
        })
    }

    /// Writes the header's [`HEADER_LEN`] bytes, computing the header CRC.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[4..8].copy_from_slice(&self.item.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        let header_crc = crc::checksum(&b[..24]);
        b[24..28].copy_from_slice(&header_crc.to_le_bytes());
        dst.put_slice(&b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_crc(mut b: [u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
        let c = crc::checksum(&b[..24]);
        b[24..28].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn decode_byte_literal() -> Result<(), DecodeError> {
        let b = with_crc([
            0x03, // kind: chunk
            0x00, // flags
            0x00, 0x00, // reserved
            0x07, 0x00, 0x00, 0x00, // item 7
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 4096
            0x05, 0x00, 0x00, 0x00, // payload_len 5
            0xEF, 0xBE, 0xAD, 0xDE, // payload_crc 0xDEADBEEF
            0, 0, 0, 0, // header_crc (filled in)
        ]);
        let h = FrameHeader::decode(&b)?;
        assert_eq!(h.kind, FrameKind::Chunk);
        assert_eq!(h.item, 7);
        assert_eq!(h.offset, 4096);
        assert_eq!(h.len, 5);
        assert_eq!(h.payload_crc, 0xDEAD_BEEF);
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, b);
        Ok(())
    }

    #[test]
    fn decode_rejects_header_checksum_mismatch() {
        let mut b = [0u8; HEADER_LEN];
        FrameHeader::new(FrameKind::Chunk, 0, 0, 1, crc::checksum(b"x")).encode(&mut &mut b[..]);
        b[8] ^= 1;
        assert!(matches!(FrameHeader::decode(&b), Err(DecodeError::HeaderChecksum { .. })));
    }

    #[test]
    fn decode_rejects_unknown_kind() {
        let mut b = [0u8; HEADER_LEN];
        b[0] = 0x07;
        assert_eq!(FrameHeader::decode(&with_crc(b)), Err(DecodeError::UnknownKind(0x07)));
    }

    #[test]
    fn decode_rejects_flags() {
        let mut b = [0u8; HEADER_LEN];
        b[0] = 0x03;
        b[1] = 0x80;
        assert_eq!(FrameHeader::decode(&with_crc(b)), Err(DecodeError::ReservedNonZero));
    }

    #[test]
    fn decode_rejects_reserved() {
        let mut b = [0u8; HEADER_LEN];
        b[0] = 0x03;
        b[3] = 0x01;
        assert_eq!(FrameHeader::decode(&with_crc(b)), Err(DecodeError::ReservedNonZero));
    }

    #[test]
    fn kind_round_trips_through_u8() {
        for k in 1u8..=6 {
            assert_eq!(FrameKind::try_from(k).map(|k| k as u8), Ok(k));
        }
        assert_eq!(FrameKind::try_from(0), Err(DecodeError::UnknownKind(0)));
    }
}
