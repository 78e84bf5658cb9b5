//! [`DecodeError`]: what can be wrong with bytes claimed to be a tensorwire object.

/// A malformed or inconsistent object (SPEC.md §7 lists the rules).
///
/// Small, `Clone + PartialEq` so that tests and fuzzers can compare errors.
/// Variants name the fault; the SPEC.md section that each one enforces is
/// given in its doc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// §2: the object does not start with the magic `TWIR`.
    #[error("not a tensorwire object: bad magic")]
    BadMagic,
    /// §2: the preamble names a version this decoder does not implement.
    #[error("unsupported wire-format version {0}")]
    UnsupportedVersion(u16),
    /// §3: reserved bits or bytes are not zero.
    #[error("reserved header bits are set")]
    ReservedNonZero,
    /// §3: the header checksum does not match; item and offset are as
    /// claimed by the damaged header and cannot be trusted.
    #[error("header checksum mismatch (expected {expected:#010x}, got {actual:#010x})")]
    HeaderChecksum {
        /// CRC carried by the header.
        expected: u32,
        /// CRC computed over the header bytes.
        actual: u32,
    },
    /// §3: the payload checksum does not match. The header itself was intact,
    /// so `item` and `offset` locate the damaged chunk: the chunk can be
    /// fetched again.
    #[error(
        "payload checksum mismatch in item {item} at offset {offset} (expected {expected:#010x}, got {actual:#010x})"
    )]
    PayloadChecksum {
        /// Item index of the damaged frame.
        item: u32,
        /// Byte offset of the damaged frame within its item.
        offset: u64,
        /// CRC carried by the header.
        expected: u32,
        /// CRC computed over the payload received.
        actual: u32,
    },
    /// §3: a frame kind this version does not define.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// §3, §6: a payload longer than the limit for its kind.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// §4: a payload whose length is wrong for its frame kind.
    #[error("{kind:?} payload has length {len}, expected {expected}")]
    BadPayloadLength {
        /// Frame kind.
        kind: crate::wire::FrameKind,
        /// Actual payload length.
        len: u64,
        /// The length the kind requires (or the minimum).
        expected: u64,
    },
    /// §3: an object-level frame that names an item, or a non-chunk frame
    /// with a non-zero offset.
    #[error("{kind:?} frame has {} and offset {offset}, which its kind forbids", item_label(*.item))]
    BadAddress {
        /// Frame kind.
        kind: crate::wire::FrameKind,
        /// Item index in the header.
        item: u32,
        /// Offset in the header.
        offset: u64,
    },
    /// §5: metadata is not valid JSON of the required shape.
    #[error("invalid metadata in {kind:?}: {reason}")]
    BadMetadata {
        /// Frame kind whose payload was being parsed.
        kind: crate::wire::FrameKind,
        /// What the JSON parser or the field check said.
        reason: String,
    },
    /// §5.3: a dtype string this version does not know.
    #[error("unknown dtype {0:?}")]
    UnknownDtype(String),
    /// §5.4: an encoding scheme this version does not know.
    #[error("unknown encoding scheme {0:?}")]
    UnknownEncoding(String),
    /// §5.2: an item's dtype, shape, encoding and byte length disagree.
    #[error("item {item}: {reason}")]
    InconsistentItem {
        /// Item index.
        item: u32,
        /// Which fields disagree.
        reason: String,
    },
    /// §4.6: an abort message that is not UTF-8.
    #[error("abort message is not valid UTF-8")]
    InvalidUtf8,
    /// §6: a limit other than the payload length was exceeded.
    #[error("{what} of {value} exceeds the limit of {max}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The value seen.
        value: u64,
        /// The limit in force.
        max: u64,
    },
    /// §7: a frame that the ordering rules do not allow here.
    #[error("unexpected {kind:?} frame: {reason}")]
    UnexpectedFrame {
        /// Kind of the offending frame.
        kind: crate::wire::FrameKind,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// §7.2: a chunk for an item that is not the open one.
    #[error("chunk for item {item}, but the open item is {open:?}")]
    ChunkWithoutItem {
        /// Item the chunk names.
        item: u32,
        /// The item currently open, if any.
        open: Option<u32>,
    },
    /// §7.2: a chunk overlapping an earlier chunk of its item, or out of order.
    #[error("chunk of item {item} at offset {offset} overlaps bytes before {next}")]
    ChunkOverlap {
        /// Item index.
        item: u32,
        /// Offset of the offending chunk.
        offset: u64,
        /// The first offset not yet covered.
        next: u64,
    },
    /// §7.2: a chunk leaving a gap in a stream that must be complete.
    #[error("chunk of item {item} at offset {offset} leaves a gap after {next}")]
    ChunkGap {
        /// Item index.
        item: u32,
        /// Offset of the offending chunk.
        offset: u64,
        /// The first offset not yet covered.
        next: u64,
    },
    /// §7.2: a chunk reaching past its item's length.
    #[error("chunk of item {item} at offset {offset} with {len} bytes ends past the item's {item_len} bytes")]
    ChunkOutOfBounds {
        /// Item index.
        item: u32,
        /// Offset of the chunk.
        offset: u64,
        /// Payload length of the chunk.
        len: u64,
        /// The item's declared length.
        item_len: u64,
    },
    /// §7.2: a chunk not aligned to its item's record size.
    #[error("chunk of item {item} at offset {offset} with {len} bytes is not aligned to {unit}-byte records")]
    ChunkMisaligned {
        /// Item index.
        item: u32,
        /// Offset of the chunk.
        offset: u64,
        /// Payload length of the chunk.
        len: u64,
        /// The item's record size.
        unit: u64,
    },
    /// §7.1: two items with the same name.
    #[error("item {item} repeats the name {name:?}")]
    DuplicateName {
        /// Item index of the repeat.
        item: u32,
        /// The repeated name.
        name: String,
    },
    /// §7.3: an item end whose length or CRC disagrees with what was received.
    #[error("item {item} ended with {field} {claimed:#x}, but {actual:#x} was received")]
    ItemEndMismatch {
        /// Item index.
        item: u32,
        /// `"length"` or `"crc"`.
        field: &'static str,
        /// What the item end claims.
        claimed: u64,
        /// What the receiver computed.
        actual: u64,
    },
    /// §7.4: an object end whose counts or CRC disagree with what was received.
    #[error("object ended with {field} {claimed:#x}, but {actual:#x} was received")]
    ObjectEndMismatch {
        /// `"items"`, `"length"` or `"crc"`.
        field: &'static str,
        /// What the object end claims.
        claimed: u64,
        /// What the receiver computed.
        actual: u64,
    },
    /// §7.5: bytes after the object end or an abort. (How many is not
    /// reported: that would depend on how the stream was split into reads.)
    #[error("bytes after the end of the object")]
    TrailingData,
    /// §7.5: the stream ended inside a frame.
    #[error("stream ended inside a frame: {needed} more bytes needed")]
    UnexpectedEof {
        /// Bytes missing to complete the frame (or preamble).
        needed: u64,
    },
    /// §7.5: the stream ended between frames but before the object end.
    #[error("stream ended before the object end")]
    Truncated,
}

impl DecodeError {
    /// Whether fetching the affected range again can succeed: true for a
    /// payload checksum failure, whose header (and so its item and offset)
    /// was intact; false for everything that makes the object as a whole
    /// untrustworthy.
    ///
    /// ```
    /// use tensorwire::wire::DecodeError;
    /// let e = DecodeError::PayloadChecksum { item: 0, offset: 0, expected: 1, actual: 2 };
    /// assert!(e.is_retryable());
    /// assert!(!DecodeError::BadMagic.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::PayloadChecksum { .. })
    }
}

/// The error of [`FrameDecoder`](super::FrameDecoder)'s `tokio_util`
/// `Decoder` implementation (for `FramedRead` over any `AsyncRead`): a
/// malformed object, or the IO underneath. The wire layer's own type, so
/// that `wire` depends on nothing above it; the crate's `Error` converts
/// from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes do not form a valid object.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Reading the bytes failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// Whether the object broke a receiver's limit (SPEC.md §6) rather than
    /// the format: a server answers these 413 (SPEC.md §8.5), not 422.
    ///
    /// ```
    /// use tensorwire::wire::DecodeError;
    /// assert!(DecodeError::FrameTooLarge { len: 1 << 30, max: 1 << 24 }.is_limit());
    /// assert!(!DecodeError::BadMagic.is_limit());
    /// ```
    pub fn is_limit(&self) -> bool {
        matches!(self, DecodeError::FrameTooLarge { .. } | DecodeError::LimitExceeded { .. })
    }
}

/// `item N`, or `no item` for the object-level marker (SPEC.md §3.3).
fn item_label(item: u32) -> String {
    if item == super::NO_ITEM {
        "no item".to_string()
    } else {
        format!("item {item}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameKind, NO_ITEM};

    #[test]
    fn object_level_marker_prints_as_no_item() {
        let e = DecodeError::BadAddress { kind: FrameKind::ItemHeader, item: NO_ITEM, offset: 0 };
        assert_eq!(e.to_string(), "ItemHeader frame has no item and offset 0, which its kind forbids");
        let e = DecodeError::BadAddress { kind: FrameKind::ObjectEnd, item: 3, offset: 0 };
        assert!(e.to_string().contains("has item 3 and"), "{e}");
    }
}
