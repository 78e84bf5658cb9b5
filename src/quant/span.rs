//! Whole records of an item: source values to wire bytes and back
//! (SPEC.md §5.5). A span starts at a record boundary; only the span that
//! ends the item may end inside a record.

use half::{bf16, f16};

use super::blockwise8::{self, Searcher};
use super::fourbit::{self, Kind};
use super::{cast, ftz, tables};
use crate::wire::meta::NESTED_GROUP_BLOCKS;
use crate::wire::{Dtype, Encoding};

/// Bytes per element of a quantizable source dtype (`None` otherwise).
pub fn element_bytes(dtype: Dtype) -> Option<usize> {
    dtype.is_quantizable().then(|| dtype.bits() as usize / 8)
}

/// Source values as f32 (exact for F16/BF16/F32; F64 rounds to nearest).
fn read_f32(dtype: Dtype, src: &[u8]) -> Result<Vec<f32>, String> {
    let width = element_bytes(dtype).ok_or_else(|| format!("{dtype} cannot be quantized"))?;
    if src.len() % width != 0 {
        return Err(format!("{} bytes are not whole {dtype} values", src.len()));
    }
    let c = src.chunks_exact(width);
    Ok(match dtype {
        Dtype::F16 => c.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => c.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => c.map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
        _ => c.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    })
}

/// Appends f32 values to `out` in `dtype`, rounding to nearest even.
fn write_values(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    match dtype {
        Dtype::F16 => out.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        Dtype::BF16 => out.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
        Dtype::F64 => out.extend(values.iter().flat_map(|&v| f64::from(v).to_le_bytes())),
        _ => out.extend(values.iter().flat_map(|&v| v.to_le_bytes())),
    }
}

fn block_size(b: u32) -> Result<usize, String> {
    if (64..=4096).contains(&b) && b.is_power_of_two() {
        Ok(b as usize)
    } else {
        Err(format!("block_size {b} is not a power of two in 64..=4096"))
    }
}

/// Encodes the source bytes `src` (whole `dtype` values starting at a record
/// boundary of the item) into wire bytes under `encoding`.
///
/// # Errors
///
/// A message when the dtype cannot be encoded, the bytes are not whole
/// values, or the 8-bit code table is not the built-in one (custom tables
/// are accepted for decoding only).
pub fn encode_span(encoding: &Encoding, dtype: Dtype, src: &[u8]) -> Result<Vec<u8>, String> {
    if *encoding == Encoding::Raw {
        return Ok(src.to_vec());
    }
    let x = read_f32(dtype, src)?;
    let mut out = Vec::with_capacity(encoding.encoded_len(x.len() as u64, dtype).unwrap_or(0) as usize);
    match encoding {
        Encoding::Raw => out.extend_from_slice(src),
        Encoding::Fp16 => cast::encode_f16(&x, &mut out),
        Encoding::Bf16 => cast::encode_bf16(&x, &mut out),
        Encoding::Blockwise8 { block_size: b, code } => {
            if code.as_ref().is_some_and(|c| c.iter().map(|v| v.to_bits()).ne(tables::DYNAMIC_MAP_BITS)) {
                return Err("only the built-in dynamic map can encode".into());
            }
            let b = block_size(*b)?;
            let search = Searcher::dynamic();
            let x: Vec<f32> = x.into_iter().map(ftz).collect();
            for block in x.chunks(b) {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                out.resize(at + 4 + block.len(), 0);
                let am = blockwise8::quantize_block(block, block.len() < b, search, &mut out[at + 4..]);
                out[at..at + 4].copy_from_slice(&am.to_le_bytes());
            }
        }
        Encoding::Fp4 { block_size: b, nested } | Encoding::Nf4 { block_size: b, nested } => {
            let kind = if matches!(encoding, Encoding::Fp4 { .. }) { Kind::Fp4 } else { Kind::Nf4 };
            let b = block_size(*b)?;
            let x: Vec<f32> = x.into_iter().map(ftz).collect();
            if *nested {
                encode_nested(kind, b, &x, &mut out);
            } else {
                for block in x.chunks(b) {
                    let at = out.len();
                    out.resize(at + 4 + block.len().div_ceil(2), 0);
                    let am = fourbit::quantize_block(kind, block, block.len() < b, &mut out[at + 4..]);
                    out[at..at + 4].copy_from_slice(&am.to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

fn encode_nested(kind: Kind, b: usize, x: &[f32], out: &mut Vec<u8>) {
    let group = b * NESTED_GROUP_BLOCKS as usize;
    for g in x.chunks(group) {
        let blocks: Vec<&[f32]> = g.chunks(b).collect();
        let at = out.len();
        let codes_at = at + 8 + blocks.len();
        out.resize(codes_at + g.len().div_ceil(2), 0);
        let mut absmax = Vec::with_capacity(blocks.len());
        let mut pos = codes_at;
        for block in &blocks {
            let len = block.len().div_ceil(2);
            absmax.push(fourbit::quantize_block(kind, block, block.len() < b, &mut out[pos..pos + len]));
            pos += len;
        }
        let (offset, absmax2) = fourbit::quantize_absmax(&absmax, &mut out[at + 8..codes_at]);
        out[at..at + 4].copy_from_slice(&offset.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&absmax2.to_le_bytes());
    }
}

/// Decodes the wire bytes of a span holding `numel` values and appends them
/// to `out` in `dtype`.
///
/// # Errors
///
/// A message when the bytes do not hold exactly `numel` encoded values.
pub fn decode_span(
    encoding: &Encoding,
    dtype: Dtype,
    wire: &[u8],
    numel: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let expected = encoding.encoded_len(numel as u64, dtype).ok_or("span size overflows")?;
    // SPEC.md §5.5: a span's bytes are exactly its records.
    if wire.len() as u64 != expected {
        return Err(format!(
            "{} bytes cannot hold {numel} {} values ({expected} expected)",
            wire.len(),
            encoding.scheme()
        ));
    }
    if *encoding == Encoding::Raw {
        out.extend_from_slice(wire);
        return Ok(());
    }
    element_bytes(dtype).ok_or_else(|| format!("{dtype} cannot be quantized"))?;
    out.reserve(numel * dtype.bits() as usize / 8);
    let f32_at = |b: &[u8], i: usize| f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    match encoding {
        Encoding::Raw => out.extend_from_slice(wire),
        Encoding::Fp16 => {
            let v: Vec<f32> = wire.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            write_values(dtype, &v, out);
        }
        Encoding::Bf16 => {
            let v: Vec<f32> = wire.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            write_values(dtype, &v, out);
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
                    write_values(dtype, &vals[..n], out);
                    at += 4 + len;
                    left -= n;
                }
            }
        }
    }
    Ok(())
}
