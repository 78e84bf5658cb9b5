//! [`FrameKind`], the first byte of every frame header (SPEC.md §3.1).
//! Decoding it from a byte (`TryFrom<u8>`) is the header's business
//! (`header.rs`), so this file imports nothing.

/// The kind of a frame (SPEC.md §3.1). Variants keep the SPEC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum FrameKind {
    /// Opens the object: name, mode, counts (§4.1).
    ObjectHeader = 0x01,
    /// Opens an item: name, dtype, shape, length, encoding (§4.2).
    ItemHeader = 0x02,
    /// A range of an item's bytes (§4.3).
    Chunk = 0x03,
    /// Closes an item with its length and CRC (§4.4).
    ItemEnd = 0x04,
    /// Closes the object with its counts and CRC (§4.5).
    ObjectEnd = 0x05,
    /// Ends the object early, with a code and a message (§4.6).
    Abort = 0x06,
}
