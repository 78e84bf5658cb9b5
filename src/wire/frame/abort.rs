//! The abort (SPEC.md §4.6) and its open set of codes.

use bytes::{Buf, BufMut};

use crate::wire::{crc, DecodeError, FrameHeader, FrameKind, HEADER_LEN, NO_ITEM};

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
    use crate::wire::test_util::{decode, raw_frame, round_trip, TestResult};
    use crate::wire::Frame;

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
    fn decode_rejects_abort_without_code() {
        assert!(matches!(decode(&raw_frame(0x06, NO_ITEM, 0, &[1, 0])), Err(DecodeError::BadPayloadLength { .. })));
    }

    #[test]
    fn decode_rejects_abort_with_invalid_utf8() {
        assert_eq!(decode(&raw_frame(0x06, NO_ITEM, 0, &[1, 0, 0, 0, 0xFF])), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn round_trips() -> TestResult {
        for frame in [
            Frame::Abort(Abort::new(AbortCode::from(77), "über")),
            Frame::Abort(Abort { item: Some(3), code: AbortCode::CHECKSUM, message: String::new() }),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}
