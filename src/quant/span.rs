//! Whole records of an item: source values to wire bytes and back
//! (SPEC.md §5.5). A span starts at a record boundary; only the span that
//! ends the item may end inside a record.

use half::f16;

use super::blockwise8::{self, Searcher};
use super::fourbit::{self, Kind};
use super::{ftz, tables};
use crate::wire::meta::NESTED_GROUP_BLOCKS;
pub use crate::wire::Subnormals;
use crate::wire::{Dtype, Encoding};

/// Why a span could not be encoded or decoded. [`Error`](crate::Error)
/// carries it as [`Error::Tensor`](crate::Error::Tensor), with the name of
/// the tensor it happened in ([`SpanError::in_tensor`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpanError {
    /// The dtype is not a float source the block schemes and casts take
    /// (SPEC.md §5.4).
    #[error("{0} cannot be quantized")]
    NotQuantizable(Dtype),
    /// The source bytes end inside a value.
    #[error("{len} bytes are not whole {dtype} values")]
    PartialValues {
        /// The bytes given.
        len: usize,
        /// Their dtype.
        dtype: Dtype,
    },
    /// SPEC.md §5.5: `block_size` is a power of two in 64..=4096.
    #[error("block_size {0} is not a power of two in 64..=4096")]
    BlockSize(u32),
    /// A blockwise 8-bit code table other than the built-in dynamic map:
    /// accepted for decoding only.
    #[error("only the built-in dynamic map can encode")]
    CustomCodeTable,
    /// SPEC.md §5.5.3: a nested 4-bit group cannot carry NaN or ±inf.
    #[error(
        "{count} non-finite value(s) (NaN or ±inf) in the group of {group_len} values from element {group_start}, \
         the first at element {first}: nested 4-bit cannot carry them without corrupting the whole group; use fp4 \
         or nf4 (bitsandbytes' behaviour, confined to the block)"
    )]
    NonFiniteInNestedGroup {
        /// Non-finite values in the group.
        count: usize,
        /// Values in the group.
        group_len: usize,
        /// The group's first element, within the span.
        group_start: usize,
        /// The first non-finite element, within the span.
        first: usize,
    },
    /// The encoded size of the span does not fit in 64 bits.
    #[error("span size overflows")]
    SizeOverflow,
    /// SPEC.md §5.5: a span's bytes are exactly its records.
    #[error("{len} bytes cannot hold {numel} {scheme} values ({expected} expected)")]
    WrongLength {
        /// The bytes given.
        len: usize,
        /// The values they should hold.
        numel: usize,
        /// The encoding's scheme name.
        scheme: &'static str,
        /// The bytes `numel` values take.
        expected: u64,
    },
}

impl SpanError {
    /// The crate's [`Error`](crate::Error) for this failure in tensor `name`.
    pub fn in_tensor(self, name: impl Into<String>) -> crate::Error {
        crate::Error::Tensor { name: name.into(), reason: self.to_string() }
    }
}

/// Bytes per element of a quantizable source dtype (`None` otherwise).
pub fn element_bytes(dtype: Dtype) -> Option<usize> {
    dtype.is_quantizable().then(|| dtype.bits() as usize / 8)
}

/// Reads whole source values from `src` into `out` as f32 (exact for
/// F16/BF16/F32; F64 rounds to nearest), `out.len()` values.
fn read_into(dtype: Dtype, src: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match dtype {
        Dtype::F16 => {
            let mut h = [f16::ZERO; 4096];
            for (piece, dst) in src.chunks(2 * 4096).zip(out.chunks_mut(4096)) {
                let h = &mut h[..dst.len()];
                for (v, b) in h.iter_mut().zip(piece.chunks_exact(2)) {
                    *v = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                h.convert_to_f32_slice(dst);
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// bfloat16 bits of `x`, rounded to nearest even, NaN kept quiet (as the
/// `half` crate and torch convert).
#[inline]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        ((b >> 16) | 0x0040) as u16
    } else {
        rounded
    }
}

/// Appends f32 values to `out` in `dtype`, rounding to nearest even.
fn write_values(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    use half::slice::HalfFloatSliceExt;
    let start = out.len();
    let width = dtype.bits() as usize / 8;
    out.resize(start + values.len() * width, 0);
    let dst = &mut out[start..];
    match dtype {
        Dtype::F16 => {
            let mut h = [f16::ZERO; 4096];
            for (vals, d) in values.chunks(4096).zip(dst.chunks_mut(2 * 4096)) {
                let h = &mut h[..vals.len()];
                h.convert_from_f32_slice(vals);
                for (b, v) in d.chunks_exact_mut(2).zip(h.iter()) {
                    b.copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
        }
        Dtype::BF16 => {
            for (b, &v) in dst.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&bf16_bits(v).to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (b, &v) in dst.chunks_exact_mut(8).zip(values) {
                b.copy_from_slice(&f64::from(v).to_le_bytes());
            }
        }
        _ => {
            for (b, &v) in dst.chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn block_size(b: u32) -> Result<usize, SpanError> {
    // SPEC.md §5.5: block_size MUST be a power of two in 64..=4096.
    if (64..=4096).contains(&b) && b.is_power_of_two() {
        Ok(b as usize)
    } else {
        Err(SpanError::BlockSize(b))
    }
}

/// Encodes the source bytes `src` (whole `dtype` values starting at a record
/// boundary of the item) into wire bytes under `encoding`.
///
/// # Errors
///
/// [`SpanError::NotQuantizable`], [`SpanError::PartialValues`],
/// [`SpanError::BlockSize`], [`SpanError::CustomCodeTable`] (custom tables
/// are accepted for decoding only), [`SpanError::NonFiniteInNestedGroup`].
pub fn encode_span(encoding: &Encoding, dtype: Dtype, src: &[u8]) -> Result<Vec<u8>, SpanError> {
    if *encoding == Encoding::Raw {
        return Ok(src.to_vec());
    }
    let width = element_bytes(dtype).ok_or(SpanError::NotQuantizable(dtype))?;
    if src.len() % width != 0 {
        return Err(SpanError::PartialValues { len: src.len(), dtype });
    }
    let numel = src.len() / width;
    let mut out = Vec::with_capacity(encoding.encoded_len(numel as u64, dtype).unwrap_or(0) as usize);
    // Values are read a block (or 4096 values) at a time into this scratch.
    let mut x = vec![0f32; 4096];
    match encoding {
        Encoding::Raw => out.extend_from_slice(src),
        Encoding::Fp16 | Encoding::Bf16 => {
            for piece in src.chunks(4096 * width) {
                let x = &mut x[..piece.len() / width];
                read_into(dtype, piece, x);
                if *encoding == Encoding::Fp16 {
                    x.iter_mut().for_each(|v| *v = v.clamp(-65504.0, 65504.0));
                    write_values(Dtype::F16, x, &mut out);
                } else {
                    write_values(Dtype::BF16, x, &mut out);
                }
            }
        }
        Encoding::Blockwise8 { block_size: b, code } => {
            if code.as_ref().is_some_and(|c| c.iter().map(|v| v.to_bits()).ne(tables::DYNAMIC_MAP_BITS)) {
                return Err(SpanError::CustomCodeTable);
            }
            let b = block_size(*b)?;
            let search = Searcher::dynamic();
            for piece in src.chunks(b * width) {
                let x = &mut x[..piece.len() / width];
                read_into(dtype, piece, x);
                x.iter_mut().for_each(|v| *v = ftz(*v));
                let at = out.len();
                out.resize(at + 4 + x.len(), 0);
                let am = blockwise8::quantize_block(x, x.len() < b, search, &mut out[at + 4..]);
                out[at..at + 4].copy_from_slice(&am.to_le_bytes());
            }
        }
        Encoding::Fp4 { block_size: b, nested } | Encoding::Nf4 { block_size: b, nested } => {
            let kind = if matches!(encoding, Encoding::Fp4 { .. }) { Kind::Fp4 } else { Kind::Nf4 };
            let b = block_size(*b)?;
            if *nested {
                encode_nested(kind, b, dtype, src, &mut out)?;
            } else {
                let mut scratch = fourbit::Scratch::new(b);
                for piece in src.chunks(b * width) {
                    let x = &mut x[..piece.len() / width];
                    read_into(dtype, piece, x);
                    x.iter_mut().for_each(|v| *v = ftz(*v));
                    let at = out.len();
                    out.resize(at + 4 + x.len().div_ceil(2), 0);
                    let am = fourbit::quantize_block_with(kind, x, x.len() < b, &mut out[at + 4..], &mut scratch);
                    out[at..at + 4].copy_from_slice(&am.to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

/// SPEC.md §5.5.3: a nested record cannot carry a non-finite block absmax
/// (nor the −f32::MAX of a block of only NaN) — one such block would move
/// the group's offset and scale and turn every block of the group into
/// NaN — so a span holding NaN or ±inf is refused here, naming the first
/// offending element and the count in its group; the plain fp4/nf4 encodings
/// keep bitsandbytes' behaviour, confined to the block.
fn encode_nested(kind: Kind, b: usize, dtype: Dtype, src: &[u8], out: &mut Vec<u8>) -> Result<(), SpanError> {
    let width = dtype.bits() as usize / 8;
    let group = b * NESTED_GROUP_BLOCKS as usize;
    let mut x = vec![0f32; b];
    let mut scratch = fourbit::Scratch::new(b);
    let mut all = vec![0f32; group];
    for (gi, g) in src.chunks(group * width).enumerate() {
        let vals = &mut all[..g.len() / width];
        read_into(dtype, g, vals);
        let bad = vals.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            let first = gi * group + vals.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(SpanError::NonFiniteInNestedGroup {
                count: bad,
                group_len: vals.len(),
                group_start: gi * group,
                first,
            });
        }
        let blocks = (g.len() / width).div_ceil(b);
        let at = out.len();
        let codes_at = at + 8 + blocks;
        out.resize(codes_at + (g.len() / width).div_ceil(2), 0);
        let mut absmax = Vec::with_capacity(blocks);
        let mut pos = codes_at;
        for piece in g.chunks(b * width) {
            let block = &mut x[..piece.len() / width];
            read_into(dtype, piece, block);
            block.iter_mut().for_each(|v| *v = ftz(*v));
            let len = block.len().div_ceil(2);
            absmax.push(fourbit::quantize_block_with(
                kind,
                block,
                block.len() < b,
                &mut out[pos..pos + len],
                &mut scratch,
            ));
            pos += len;
        }
        let (offset, absmax2) = fourbit::quantize_absmax(&absmax, &mut out[at + 8..codes_at]);
        out[at..at + 4].copy_from_slice(&offset.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&absmax2.to_le_bytes());
    }
    Ok(())
}

/// Decodes the wire bytes of a span holding `numel` values and appends them
/// to `out` in `dtype`, with subnormal products flushed to zero as
/// bitsandbytes' CUDA kernels do ([`Subnormals::Flush`], SPEC.md §5.5).
///
/// # Errors
///
/// [`SpanError::WrongLength`] when the bytes do not hold exactly `numel`
/// encoded values; [`SpanError::SizeOverflow`], [`SpanError::BlockSize`],
/// [`SpanError::NotQuantizable`].
pub fn decode_span(
    encoding: &Encoding,
    dtype: Dtype,
    wire: &[u8],
    numel: usize,
    out: &mut Vec<u8>,
) -> Result<(), SpanError> {
    decode_span_with(encoding, dtype, wire, numel, out, Subnormals::Flush)
}

/// [`decode_span`] with an explicit treatment of subnormal products.
///
/// # Errors
///
/// As [`decode_span`].
pub fn decode_span_with(
    encoding: &Encoding,
    dtype: Dtype,
    wire: &[u8],
    numel: usize,
    out: &mut Vec<u8>,
    subnormals: Subnormals,
) -> Result<(), SpanError> {
    let flush = |v: &mut [f32]| {
        if subnormals == Subnormals::Flush {
            v.iter_mut().for_each(|x| *x = ftz(*x));
        }
    };
    let expected = encoding.encoded_len(numel as u64, dtype).ok_or(SpanError::SizeOverflow)?;
    // SPEC.md §5.5: a span's bytes are exactly its records.
    if wire.len() as u64 != expected {
        return Err(SpanError::WrongLength { len: wire.len(), numel, scheme: encoding.scheme(), expected });
    }
    if *encoding == Encoding::Raw {
        out.extend_from_slice(wire);
        return Ok(());
    }
    element_bytes(dtype).ok_or(SpanError::NotQuantizable(dtype))?;
    out.reserve(numel * dtype.bits() as usize / 8);
    let f32_at = |b: &[u8], i: usize| f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    match encoding {
        Encoding::Raw => out.extend_from_slice(wire),
        Encoding::Fp16 | Encoding::Bf16 => {
            let from = if *encoding == Encoding::Fp16 { Dtype::F16 } else { Dtype::BF16 };
            let mut v = vec![0f32; 4096];
            for piece in wire.chunks(2 * 4096) {
                let v = &mut v[..piece.len() / 2];
                read_into(from, piece, v);
                write_values(dtype, v, out);
            }
        }
        Encoding::Blockwise8 { block_size: b, code } => {
            let b = block_size(*b)?;
            let mut table = tables::dynamic_map();
            if let Some(c) = code {
                for (t, v) in table.iter_mut().zip(c) {
                    *t = *v;
                }
            }
            let mut vals = vec![0f32; b];
            let (mut at, mut left) = (0, numel);
            while left > 0 {
                let n = left.min(b);
                let am = f32_at(wire, at);
                blockwise8::dequantize_block(&wire[at + 4..at + 4 + n], am, &table, &mut vals[..n]);
                flush(&mut vals[..n]);
                write_values(dtype, &vals[..n], out);
                at += 4 + n;
                left -= n;
            }
        }
        Encoding::Fp4 { block_size: b, nested } | Encoding::Nf4 { block_size: b, nested } => {
            let kind = if matches!(encoding, Encoding::Fp4 { .. }) { Kind::Fp4 } else { Kind::Nf4 };
            let b = block_size(*b)?;
            let mut vals = vec![0f32; b];
            let (mut at, mut left) = (0, numel);
            if *nested {
                while left > 0 {
                    let g = left.div_ceil(b).min(NESTED_GROUP_BLOCKS as usize);
                    let (offset, absmax2) = (f32_at(wire, at), f32_at(wire, at + 4));
                    let mut pos = at + 8 + g;
                    for i in 0..g {
                        let n = left.min(b);
                        let am = fourbit::nested_absmax(wire[at + 8 + i], absmax2, offset);
                        let len = n.div_ceil(2);
                        fourbit::dequantize_block(kind, &wire[pos..pos + len], n, am, &mut vals);
                        flush(&mut vals[..n]);
                        write_values(dtype, &vals[..n], out);
                        pos += len;
                        left -= n;
                    }
                    at = pos;
                }
            } else {
                while left > 0 {
                    let n = left.min(b);
                    let len = n.div_ceil(2);
                    let am = f32_at(wire, at);
                    fourbit::dequantize_block(kind, &wire[at + 4..at + 4 + len], n, am, &mut vals);
                    flush(&mut vals[..n]);
                    write_values(dtype, &vals[..n], out);
                    at += 4 + len;
                    left -= n;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// SPEC.md §5.5.3: one inf used to turn a whole nested group into NaN.
    #[test]
    fn nested_refuses_non_finite_values() {
        let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 100.0).collect();
        v[700] = f32::INFINITY;
        v[701] = f32::NAN;
        let enc = Encoding::Nf4 { block_size: 64, nested: true };
        let e = encode_span(&enc, Dtype::F32, &f32_bytes(&v)).expect_err("refused");
        assert_eq!(e, SpanError::NonFiniteInNestedGroup { count: 2, group_len: 1000, group_start: 0, first: 700 });
        assert!(e.to_string().contains("2 non-finite value(s)"), "{e}");
    }

    #[test]
    fn encode_rejects_partial_values() {
        let e = encode_span(&Encoding::Fp16, Dtype::F32, &[0; 6]);
        assert_eq!(e, Err(SpanError::PartialValues { len: 6, dtype: Dtype::F32 }));
    }

    #[test]
    fn encode_rejects_a_dtype_that_is_not_quantizable() {
        let e = encode_span(&Encoding::Nf4 { block_size: 64, nested: false }, Dtype::I32, &[0; 8]);
        assert_eq!(e, Err(SpanError::NotQuantizable(Dtype::I32)));
    }

    #[test]
    fn encode_rejects_a_bad_block_size() {
        let e = encode_span(&Encoding::Fp4 { block_size: 100, nested: false }, Dtype::F32, &[0; 8]);
        assert_eq!(e, Err(SpanError::BlockSize(100)));
    }

    #[test]
    fn encode_rejects_a_custom_code_table() {
        let enc = Encoding::Blockwise8 { block_size: 64, code: Some(vec![0.5; 256]) };
        assert_eq!(encode_span(&enc, Dtype::F32, &[0; 8]), Err(SpanError::CustomCodeTable));
    }

    #[test]
    fn decode_rejects_a_span_of_the_wrong_length() {
        let enc = Encoding::Nf4 { block_size: 64, nested: false };
        let mut out = Vec::new();
        // 64 values take 4 bytes of absmax and 32 of codes.
        let e = decode_span(&enc, Dtype::F32, &[0; 35], 64, &mut out);
        assert_eq!(e, Err(SpanError::WrongLength { len: 35, numel: 64, scheme: "nf4", expected: 36 }));
        assert!(out.is_empty());
    }

    #[test]
    fn span_errors_become_tensor_errors() {
        let e = SpanError::BlockSize(100).in_tensor("w");
        assert!(matches!(&e, crate::Error::Tensor { name, .. } if name == "w"), "{e}");
        assert_eq!(e.to_string(), "tensor \"w\": block_size 100 is not a power of two in 64..=4096");
    }

    /// The plain 4-bit schemes keep bitsandbytes' behaviour: the inf's block
    /// is lost, every other block decodes to finite values.
    #[test]
    fn plain_4bit_confines_non_finite_values_to_their_block() {
        let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 100.0).collect();
        v[700] = f32::INFINITY;
        let enc = Encoding::Nf4 { block_size: 64, nested: false };
        let wire = encode_span(&enc, Dtype::F32, &f32_bytes(&v)).expect("encodes");
        let mut out = Vec::new();
        decode_span(&enc, Dtype::F32, &wire, v.len(), &mut out).expect("decodes");
        let back: Vec<f32> = out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for (i, x) in back.iter().enumerate() {
            assert_eq!(x.is_finite(), i / 64 != 700 / 64, "element {i}: {x}");
        }
    }

    #[test]
    fn nested_still_encodes_finite_tensors() {
        let v: Vec<f32> = (0..20_000).map(|i| ((i * 37 % 1000) as f32 - 500.0) / 100.0).collect();
        let enc = Encoding::Fp4 { block_size: 64, nested: true };
        let wire = encode_span(&enc, Dtype::F32, &f32_bytes(&v)).expect("encodes");
        let mut out = Vec::new();
        decode_span(&enc, Dtype::F32, &wire, v.len(), &mut out).expect("decodes");
        assert_eq!(out.len(), v.len() * 4);
    }
}

#[cfg(test)]
mod subnormal_tests {
    use super::*;

    /// SPEC.md §5.5: a block whose absmax is below 1e-37 (as a sender that
    /// does not flush — bitsandbytes on CPU — produces for tiny weights)
    /// restores subnormal products as a CUDA peer does (zero) by default, or
    /// kept on request.
    #[test]
    fn tiny_absmax_block_flushes_like_cuda_or_keeps_like_cpu() {
        let absmax = 5e-38f32.to_le_bytes();
        let nf4: Vec<u8> = absmax.iter().copied().chain((0..32).map(|i| (i as u8 % 16) << 4 | 8)).collect();
        let b8: Vec<u8> = absmax.iter().copied().chain((0..64).map(|i| (i * 4) as u8)).collect();
        for (enc, wire) in [
            (Encoding::Nf4 { block_size: 64, nested: false }, nf4),
            (Encoding::Blockwise8 { block_size: 4096, code: None }, b8),
        ] {
            let decode = |mode| {
                let mut out = Vec::new();
                decode_span_with(&enc, Dtype::F32, &wire, 64, &mut out, mode).expect("decodes");
                out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>()
            };
            let (flushed, kept) = (decode(Subnormals::Flush), decode(Subnormals::Keep));
            let sub = |x: &f32| *x != 0.0 && x.abs() < f32::MIN_POSITIVE;
            assert!(kept.iter().filter(|x| sub(x)).count() > 10, "{}: the CPU path keeps them", enc.scheme());
            assert!(!flushed.iter().any(sub), "{}: CUDA flushes them", enc.scheme());
            let mut default = Vec::new();
            decode_span(&enc, Dtype::F32, &wire, 64, &mut default).expect("decodes");
            let default: Vec<f32> =
                default.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert_eq!(default, flushed, "flushing is the default");
            for (f, k) in flushed.iter().zip(&kept) {
                let same = f.to_bits() == k.to_bits();
                assert!(same || (sub(k) && *f == 0.0 && f.is_sign_negative() == k.is_sign_negative()), "{f} {k}");
            }
        }
    }
}
