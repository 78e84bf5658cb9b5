//! The sans-IO wire format of [SPEC.md](https://github.com/tensorwire/tensorwire/blob/main/SPEC.md).
//!
//! An object is a *preamble* ([`MAGIC`], [`VERSION`]) followed by a sequence of
//! frames. Every frame is a fixed [`HEADER_LEN`]-byte little-endian
//! [`FrameHeader`] and a payload:
//!
//! ```text
//! object  = preamble object-header *( item-header *chunk item-end ) object-end
//!         / preamble ... abort
//! ```
//!
//! * [`header`] — the fixed header (SPEC.md §3).
//! * [`frame`] — one struct per frame kind with `decode`/`encode` (SPEC.md §4),
//!   one file each (`frame/object_header.rs`, `frame/chunk.rs`, ...).
//! * [`meta`] — the JSON metadata of object and item headers, dtypes and
//!   encodings (SPEC.md §5).
//! * [`FrameDecoder`] / [`FrameEncoder`] — `tokio_util::codec` implementations
//!   that also enforce the ordering rules of SPEC.md §7 through [`Sequencer`].
//! * [`ObjectEncoder`] — builds a well-formed frame sequence (lengths, CRCs)
//!   from items and chunks, for senders.
//!
//! Nothing here touches a socket or needs a runtime: every type can be driven
//! from a test with byte buffers alone.
#![forbid(unsafe_code)]

mod budget;
pub mod crc;
mod decoder;
mod encoder;
mod error;
pub mod frame;
pub mod header;
mod kind;
mod limits;
pub mod meta;
mod scheme;
mod sequence;
#[cfg(test)]
mod test_util;

pub use budget::Budget;
pub use decoder::FrameDecoder;
pub use encoder::{EncodeError, FrameEncoder, ObjectEncoder};
pub use error::{CodecError, DecodeError};
pub use frame::{
    Abort, AbortCode, Chunk, EncodedFrame, Frame, IndexEntry, ItemEnd, ItemHeader, ObjectEnd, ObjectHeader,
};
pub use header::{FrameHeader, FrameKind};
pub use limits::{Limits, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
pub(crate) use meta::truncate as meta_truncate;
pub use meta::{Dtype, Encoding, Mode};
pub use scheme::{Scheme, Subnormals};
pub use sequence::{Sequencer, SequencerEvent};

/// The four magic bytes that open every object (SPEC.md §2): ASCII `TWIR`.
pub const MAGIC: [u8; 4] = *b"TWIR";

/// The wire-format version this crate speaks (SPEC.md §2).
pub const VERSION: u16 = 1;

/// Length of the preamble: magic, version (u16 LE), reserved (u16, zero).
pub const PREAMBLE_LEN: usize = 8;

/// Length of every frame header in bytes (SPEC.md §3).
pub const HEADER_LEN: usize = 28;

/// The item index carried by object-level frames (SPEC.md §3).
pub const NO_ITEM: u32 = 0xFFFF_FFFF;

/// The object-header metadata key that marks a file-mode object as a
/// safetensors file (SPEC.md §5.1, value `"safetensors"`).
pub const FORMAT_KEY: &str = "format";

/// The MIME type of a framed object body (SPEC.md §8).
pub const CONTENT_TYPE: &str = "application/vnd.tensorwire";

/// Encodes the preamble for [`VERSION`].
///
/// ```
/// assert_eq!(&tensorwire::wire::preamble()[..4], b"TWIR");
/// ```
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..6].copy_from_slice(&VERSION.to_le_bytes());
    p
}

/// Checks a preamble (SPEC.md §2).
///
/// # Errors
///
/// [`DecodeError::BadMagic`] when the magic does not match,
/// [`DecodeError::UnsupportedVersion`] for any version but [`VERSION`],
/// [`DecodeError::ReservedNonZero`] when the reserved bytes are set.
pub fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(), DecodeError> {
    // SPEC.md §2: the object MUST start with the magic.
    if p[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    // SPEC.md §2: a receiver MUST reject any version it does not implement.
    let version = u16::from_le_bytes([p[4], p[5]]);
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    // SPEC.md §2: the reserved field MUST be zero.
    if p[6] != 0 || p[7] != 0 {
        return Err(DecodeError::ReservedNonZero);
    }
    Ok(())
}
