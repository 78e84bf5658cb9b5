//! Metadata carried in object and item headers (SPEC.md §5): dtypes,
//! encodings, and the JSON that holds them.

use super::{DecodeError, FrameKind};

/// Element type of a tensor, spelled as safetensors spells it (SPEC.md §5.3).
///
/// ```
/// use tensorwire::wire::Dtype;
/// assert_eq!(Dtype::parse("BF16"), Ok(Dtype::BF16));
/// assert_eq!(Dtype::F32.bits(), 32);
/// assert_eq!(Dtype::F8_E4M3.as_str(), "F8_E4M3");
/// ```
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    BOOL,
    /// 4-bit float (E2M1), two per byte.
    F4,
    /// 6-bit float E2M3.
    F6_E2M3,
    /// 6-bit float E3M2.
    F6_E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float E5M2.
    F8_E5M2,
    /// 8-bit float E4M3.
    F8_E4M3,
    /// 8-bit exponent-only float E8M0.
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex of two f32.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

const DTYPES: [(Dtype, &str, u32); 20] = [
    (Dtype::BOOL, "BOOL", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6_E2M3, "F6_E2M3", 6),
    (Dtype::F6_E3M2, "F6_E3M2", 6),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::F8_E5M2, "F8_E5M2", 8),
    (Dtype::F8_E4M3, "F8_E4M3", 8),
    (Dtype::F8_E8M0, "F8_E8M0", 8),
    (Dtype::I16, "I16", 16),
    (Dtype::U16, "U16", 16),
    (Dtype::F16, "F16", 16),
    (Dtype::BF16, "BF16", 16),
    (Dtype::I32, "I32", 32),
    (Dtype::U32, "U32", 32),
    (Dtype::F32, "F32", 32),
    (Dtype::C64, "C64", 64),
    (Dtype::F64, "F64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::U64, "U64", 64),
];

impl Dtype {
    /// Every dtype, in SPEC order.
    pub const ALL: [Dtype; 20] = {
        let mut all = [Dtype::BOOL; 20];
        let mut i = 0;
        while i < 20 {
            all[i] = DTYPES[i].0;
            i += 1;
        }
        all
    };

    fn entry(self) -> &'static (Dtype, &'static str, u32) {
        // Every variant is listed in DTYPES, in declaration order.
        &DTYPES[self as usize]
    }

    /// The safetensors spelling.
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// Bits per element.
    pub fn bits(self) -> u32 {
        self.entry().2
    }

    /// Whether quantization schemes accept this dtype as a source
    /// (SPEC.md §5.4): `F32`, `F16`, `BF16` and `F64`.
    pub fn is_quantizable(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }

    /// Parses the safetensors spelling.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownDtype`] for any other string.
    pub fn parse(s: &str) -> Result<Dtype, DecodeError> {
        DTYPES
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(d, _, _)| *d)
            .ok_or_else(|| DecodeError::UnknownDtype(truncate(s)))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an object was produced (SPEC.md §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub enum Mode {
    /// Items are tensors with dtype and shape.
    Container,
    /// Items are opaque byte ranges of a file (usually one item: the file).
    File,
}

impl Mode {
    /// The JSON spelling: `"container"` or `"file"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Container => "container",
            Mode::File => "file",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        match s {
            "container" => Some(Mode::Container),
            "file" => Some(Mode::File),
            _ => None,
        }
    }
}

/// How an item's bytes encode its tensor on the wire (SPEC.md §5.4).
///
/// The item header's dtype is always the dtype to restore; an encoding other
/// than [`Encoding::Raw`] says how the values were packed to travel.
///
/// ```
/// use tensorwire::wire::{Dtype, Encoding};
/// let nf4 = Encoding::Nf4 { block_size: 64, nested: false };
/// // 100 values: two 64-blocks, each a 4-byte absmax plus packed nibbles.
/// assert_eq!(nf4.encoded_len(100, Dtype::F32), Some(2 * 4 + 50));
/// assert_eq!(Encoding::Raw.encoded_len(100, Dtype::F32), Some(400));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Encoding {
    /// The tensor's bytes as they are (little-endian, row-major).
    Raw,
    /// Values cast to IEEE half precision, clipped to ±65504.
    Fp16,
    /// Values cast to bfloat16.
    Bf16,
    /// bitsandbytes blockwise dynamic 8-bit quantization.
    Blockwise8 {
        /// Elements per block (power of two, 64..=4096; bitsandbytes uses 4096).
        block_size: u32,
        /// The 256-entry code table; `None` means the built-in dynamic map.
        code: Option<Vec<f32>>,
    },
    /// bitsandbytes 4-bit float (E2M1) quantization.
    Fp4 {
        /// Elements per block (power of two, 64..=4096; bitsandbytes uses 64).
        block_size: u32,
        /// Double quantization of the absmax (SPEC.md §5.5.3).
        nested: bool,
    },
    /// bitsandbytes 4-bit NormalFloat quantization.
    Nf4 {
        /// Elements per block (power of two, 64..=4096; bitsandbytes uses 64).
        block_size: u32,
        /// Double quantization of the absmax (SPEC.md §5.5.3).
        nested: bool,
    },
}

/// Absmax blocks per double-quantization group (SPEC.md §5.5.3).
pub const NESTED_GROUP_BLOCKS: u64 = 256;

impl Encoding {
    /// The scheme name used on the wire.
    pub fn scheme(&self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Fp16 => "fp16",
            Encoding::Bf16 => "bf16",
            Encoding::Blockwise8 { .. } => "blockwise8",
            Encoding::Fp4 { .. } => "fp4",
            Encoding::Nf4 { .. } => "nf4",
        }
    }

    /// `(block_size, bits per code, nested)` for the block schemes.
    fn blocks(&self) -> Option<(u64, u64, bool)> {
        match *self {
            Encoding::Blockwise8 { block_size, .. } => Some((block_size.into(), 8, false)),
            Encoding::Fp4 { block_size, nested } | Encoding::Nf4 { block_size, nested } => {
                Some((block_size.into(), 4, nested))
            }
            _ => None,
        }
    }

    /// Bytes on the wire for `numel` elements of `dtype`, or `None` on
    /// overflow or when `numel` elements of a sub-byte dtype do not fill
    /// whole bytes (SPEC.md §5.2, §5.5).
    pub fn encoded_len(&self, numel: u64, dtype: Dtype) -> Option<u64> {
        match self {
            Encoding::Raw => {
                let bits = numel.checked_mul(dtype.bits().into())?;
                (bits % 8 == 0).then_some(bits / 8)
            }
            Encoding::Fp16 | Encoding::Bf16 => numel.checked_mul(2),
            _ => {
                let (block, bits, nested) = self.blocks()?;
                // An invalid block size of 0 has no length (check() rejects it).
                let blocks = numel.div_ceil(std::num::NonZeroU64::new(block)?.get());
                let codes = numel.checked_mul(bits)?.div_ceil(8);
                let scales = if nested {
                    // One offset and one absmax2 per group, one code byte per block.
                    blocks.div_ceil(NESTED_GROUP_BLOCKS) * 8 + blocks
                } else {
                    blocks * 4
                };
                codes.checked_add(scales)
            }
        }
    }

    /// The record geometry of the encoding, the one source of it (SPEC.md
    /// §5.5, §7.2): `(bytes on the wire, source elements)` per record. Chunk
    /// boundaries align to records, and a record decodes on its own.
    fn record(&self) -> (u64, u64) {
        match self {
            Encoding::Raw => (1, 1),
            Encoding::Fp16 | Encoding::Bf16 => (2, 1),
            _ => match self.blocks() {
                // Per block: an f32 absmax, then the codes.
                Some((block, bits, false)) => (4 + block * bits / 8, block),
                // Per group of blocks: 8 bytes of group scales, then per
                // block a code byte for its absmax and the codes (SPEC.md §5.5.3).
                Some((block, bits, true)) => {
                    (8 + NESTED_GROUP_BLOCKS * (1 + block * bits / 8), block * NESTED_GROUP_BLOCKS)
                }
                None => (1, 1),
            },
        }
    }

    /// The record size that chunk boundaries of an item align to (SPEC.md
    /// §5.5, §7.2): 1 for raw bytes, 2 for the 16-bit casts, a whole block
    /// record (or nested group) for the block schemes.
    pub fn record_len(&self) -> u64 {
        self.record().0
    }

    /// Source elements one record of [`Encoding::record_len`] bytes holds:
    /// 1 for raw bytes and the casts, the block (or nested group of
    /// blocks) for the block schemes.
    ///
    /// ```
    /// use tensorwire::wire::Encoding;
    /// let nf4 = Encoding::Nf4 { block_size: 64, nested: false };
    /// assert_eq!((nf4.record_len(), nf4.record_elements()), (36, 64));
    /// ```
    pub fn record_elements(&self) -> u64 {
        self.record().1
    }

    /// Checks the encoding's own fields and that it may encode `dtype`.
    pub(crate) fn check(&self, dtype: Dtype) -> Result<(), EncodingError> {
        let cannot = || EncodingError::CannotEncode { scheme: self.scheme(), dtype };
        match self {
            Encoding::Raw => return Ok(()),
            Encoding::Fp16 | Encoding::Bf16 => {
                // SPEC.md §5.4: a cast applies only to sources wider than 16 bits.
                if !matches!(dtype, Dtype::F32 | Dtype::F64) {
                    return Err(cannot());
                }
                return Ok(());
            }
            _ => {}
        }
        // SPEC.md §5.4: block schemes take float sources only.
        if !dtype.is_quantizable() {
            return Err(cannot());
        }
        let block = self.blocks().map_or(0, |b| b.0);
        // SPEC.md §5.5: block_size MUST be a power of two in 64..=4096.
        if !(64..=4096).contains(&block) || !block.is_power_of_two() {
            return Err(EncodingError::BlockSize(block));
        }
        if let Encoding::Blockwise8 { code: Some(code), .. } = self {
            // SPEC.md §5.5.1: a code table has 256 finite entries.
            if code.len() != 256 || code.iter().any(|c| !c.is_finite()) {
                return Err(EncodingError::CodeTable);
            }
        }
        Ok(())
    }
}

/// Why an encoding cannot encode a dtype ([`Encoding::check`]); callers
/// report it as the item's inconsistency or the tensor's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EncodingError {
    /// SPEC.md §5.4: casts take sources wider than 16 bits, block schemes
    /// float sources.
    #[error("{scheme} cannot encode {dtype}")]
    CannotEncode { scheme: &'static str, dtype: Dtype },
    /// SPEC.md §5.5: block_size is a power of two in 64..=4096.
    #[error("block_size {0} is not a power of two in 64..=4096")]
    BlockSize(u64),
    /// SPEC.md §5.5.1: a code table has 256 finite entries.
    #[error("code table must hold 256 finite values")]
    CodeTable,
}

/// Cuts a peer-supplied string for inclusion in an error message.
pub(crate) fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

// ---- JSON representation of an encoding (SPEC.md §5.2); the frames' own
// JSON lives with each frame (frame/object_header.rs, frame/item_header.rs) ----

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct EncodingJson {
    scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<u32>,
    /// 256 little-endian f32 as 2048 lowercase hex digits (SPEC.md §5.5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    nested: bool,
}

impl EncodingJson {
    pub(crate) fn from_encoding(e: &Encoding) -> Option<Self> {
        let mut j = EncodingJson { scheme: e.scheme().into(), block_size: None, code: None, nested: false };
        match e {
            Encoding::Raw => return None,
            Encoding::Fp16 | Encoding::Bf16 => {}
            Encoding::Blockwise8 { block_size, code } => {
                j.block_size = Some(*block_size);
                j.code = code.as_deref().map(code_to_hex);
            }
            Encoding::Fp4 { block_size, nested } | Encoding::Nf4 { block_size, nested } => {
                j.block_size = Some(*block_size);
                j.nested = *nested;
            }
        }
        Some(j)
    }

    pub(crate) fn into_encoding(self) -> Result<Encoding, DecodeError> {
        let block = || {
            self.block_size.ok_or_else(|| DecodeError::BadMetadata {
                kind: FrameKind::ItemHeader,
                reason: format!("encoding {} needs block_size", self.scheme),
            })
        };
        Ok(match self.scheme.as_str() {
            "raw" => Encoding::Raw,
            "fp16" => Encoding::Fp16,
            "bf16" => Encoding::Bf16,
            "blockwise8" => {
                let code = self.code.as_deref().map(code_from_hex).transpose()?;
                Encoding::Blockwise8 { block_size: block()?, code }
            }
            "fp4" => Encoding::Fp4 { block_size: block()?, nested: self.nested },
            "nf4" => Encoding::Nf4 { block_size: block()?, nested: self.nested },
            // SPEC.md §5.4: an unknown scheme MUST be rejected.
            other => return Err(DecodeError::UnknownEncoding(truncate(other))),
        })
    }
}

fn code_to_hex(code: &[f32]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(code.len() * 8);
    for b in code.iter().flat_map(|c| c.to_le_bytes()) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn code_from_hex(s: &str) -> Result<Vec<f32>, DecodeError> {
    let bad =
        || DecodeError::BadMetadata { kind: FrameKind::ItemHeader, reason: "code must be 2048 hex digits".into() };
    // SPEC.md §5.5.1: exactly 256 f32 values, 8 hex digits each.
    if s.len() != 256 * 8 || !s.is_ascii() {
        return Err(bad());
    }
    s.as_bytes()
        .chunks_exact(8)
        .map(|word| {
            let mut le = [0u8; 4];
            for (dst, pair) in le.iter_mut().zip(word.chunks_exact(2)) {
                let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
                *dst = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
            }
            Ok(f32::from_le_bytes(le))
        })
        .collect()
}

pub(crate) fn parse_mode(s: &str) -> Result<Mode, DecodeError> {
    Mode::parse(s).ok_or_else(|| DecodeError::BadMetadata {
        kind: FrameKind::ObjectHeader,
        reason: format!("unknown mode {:?}", truncate(s)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_table_matches_declaration_order() {
        for (i, (d, name, _)) in DTYPES.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert_eq!(Dtype::parse(name), Ok(*d));
        }
    }

    #[test]
    fn parse_rejects_unknown_dtype() {
        assert_eq!(Dtype::parse("f32"), Err(DecodeError::UnknownDtype("f32".into())));
    }

    #[test]
    fn encoded_len_matches_bitsandbytes_sizes() {
        // 8-bit: one code per value plus one f32 absmax per 4096-block.
        let b8 = Encoding::Blockwise8 { block_size: 4096, code: None };
        assert_eq!(b8.encoded_len(4097, Dtype::F32), Some(4097 + 2 * 4));
        // 4-bit: ceil(n/2) bytes plus one f32 absmax per 64-block.
        let fp4 = Encoding::Fp4 { block_size: 64, nested: false };
        assert_eq!(fp4.encoded_len(65, Dtype::BF16), Some(33 + 2 * 4));
        // Nested: 8 bytes per 256-block group plus one byte per block.
        let nf4 = Encoding::Nf4 { block_size: 64, nested: true };
        assert_eq!(nf4.encoded_len(64 * 257, Dtype::F32), Some(32 * 257 + 2 * 8 + 257));
        // A zero block size (rejected by check()) has no length rather than a panic.
        assert_eq!(Encoding::Nf4 { block_size: 0, nested: false }.encoded_len(10, Dtype::F32), None);
        // Sub-byte raw dtypes must fill whole bytes.
        assert_eq!(Encoding::Raw.encoded_len(3, Dtype::F4), None);
        assert_eq!(Encoding::Raw.encoded_len(4, Dtype::F6_E2M3), Some(3));
    }

    #[test]
    fn record_len_is_one_block_record() {
        assert_eq!(Encoding::Blockwise8 { block_size: 4096, code: None }.record_len(), 4100);
        assert_eq!(Encoding::Nf4 { block_size: 64, nested: false }.record_len(), 36);
        assert_eq!(Encoding::Nf4 { block_size: 64, nested: true }.record_len(), 8 + 256 * 33);
    }

    #[test]
    fn a_record_of_elements_encodes_to_one_record() {
        // record_len and record_elements describe the same geometry: the
        // elements of one record take exactly record_len bytes.
        for e in [
            Encoding::Fp16,
            Encoding::Bf16,
            Encoding::Blockwise8 { block_size: 4096, code: None },
            Encoding::Blockwise8 { block_size: 64, code: None },
            Encoding::Fp4 { block_size: 128, nested: false },
            Encoding::Nf4 { block_size: 64, nested: true },
            Encoding::Fp4 { block_size: 4096, nested: true },
        ] {
            assert_eq!(e.encoded_len(e.record_elements(), Dtype::F32), Some(e.record_len()), "{e:?}");
        }
        assert_eq!(Encoding::Raw.encoded_len(Encoding::Raw.record_elements(), Dtype::U8), Some(1));
    }

    #[test]
    fn check_rejects_cast_of_16_bit_source() {
        assert_eq!(
            Encoding::Fp16.check(Dtype::BF16),
            Err(EncodingError::CannotEncode { scheme: "fp16", dtype: Dtype::BF16 })
        );
        assert!(Encoding::Fp16.check(Dtype::F32).is_ok());
    }

    #[test]
    fn check_rejects_bad_block_size_and_code() {
        assert_eq!(
            Encoding::Nf4 { block_size: 96, nested: false }.check(Dtype::F32),
            Err(EncodingError::BlockSize(96))
        );
        assert_eq!(
            Encoding::Nf4 { block_size: 8192, nested: false }.check(Dtype::F32),
            Err(EncodingError::BlockSize(8192))
        );
        let short = Encoding::Blockwise8 { block_size: 4096, code: Some(vec![0.0; 255]) };
        assert_eq!(short.check(Dtype::F32), Err(EncodingError::CodeTable));
        assert!(matches!(
            Encoding::Fp4 { block_size: 64, nested: false }.check(Dtype::I32),
            Err(EncodingError::CannotEncode { scheme: "fp4", dtype: Dtype::I32 })
        ));
    }
}
