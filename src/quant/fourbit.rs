//! bitsandbytes 4-bit quantization, fp4 and nf4 (SPEC.md §5.5.2), bit-exact
//! with its CUDA kernels, and the nested absmax of §5.5.3.

use std::sync::OnceLock;

use super::blockwise8::{self, Searcher};
use super::{ftz, tables};

/// Which 4-bit table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// bitsandbytes' 4-bit float (E2M1).
    Fp4,
    /// NormalFloat4.
    Nf4,
}

struct Tables {
    nf4: [f32; 16],
    nf4_thresholds: [f32; 15],
    fp4: [f32; 16],
    fp4_thresholds: [f32; 7],
}

fn t() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let nf4 = tables::nf4();
        Tables {
            nf4,
            // The CUDA kernel's NF4 constants equal the f32 midpoints.
            nf4_thresholds: tables::midpoints(&nf4),
            fp4: tables::fp4(),
            fp4_thresholds: tables::FP4_THRESHOLDS_CUDA_BITS.map(f32::from_bits),
        }
    })
}

impl Kind {
    /// The 16-entry decoding table.
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            Kind::Fp4 => &t().fp4,
            Kind::Nf4 => &t().nf4,
        }
    }

    /// The code of a normalized value `y` (NaN gives 0).
    #[inline]
    pub fn code(self, y: f32) -> u8 {
        let t = t();
        match self {
            // The number of thresholds strictly below y.
            Kind::Nf4 => t.nf4_thresholds.iter().map(|&th| (y > th) as u8).sum(),
            Kind::Fp4 => {
                let sign = if y < 0.0 { 8 } else { 0 };
                let a = y.abs();
                let k: usize = t.fp4_thresholds.iter().map(|&th| (a > th) as usize).sum();
                tables::FP4_POS_CODES[k] + sign
            }
        }
    }
}

/// Quantizes one block: packs two codes per byte (element 2i in the high
/// nibble) into `packed` (`ceil(x.len() / 2)` bytes), returns the absmax.
/// `partial` marks a last block shorter than the block size; an odd block
/// pads its last low nibble with the code of the kernel's zero padding.
pub fn quantize_block(kind: Kind, x: &[f32], partial: bool, packed: &mut [u8]) -> f32 {
    let mut scratch = Scratch::new(x.len());
    quantize_block_with(kind, x, partial, packed, &mut scratch)
}

/// Working memory for [`quantize_block_with`], reused across blocks.
#[derive(Debug, Default)]
pub struct Scratch {
    y: Vec<f32>,
    codes: Vec<u32>,
}

impl Scratch {
    /// Room for blocks of up to `block` values.
    pub fn new(block: usize) -> Self {
        let n = block + 1;
        Scratch { y: vec![0.0; n], codes: vec![0; n] }
    }
}

/// [`quantize_block`] with caller-provided working memory (a block of at
/// most the size `scratch` was made for).
pub fn quantize_block_with(kind: Kind, x: &[f32], partial: bool, packed: &mut [u8], scratch: &mut Scratch) -> f32 {
    let am = blockwise8::absmax(x, partial);
    let r = blockwise8::reciprocal(am);
    // Codes one threshold at a time over the whole block: loops the
    // compiler vectorizes.
    if scratch.y.len() < x.len() + 1 {
        *scratch = Scratch::new(x.len());
    }
    let (y, codes) = (&mut scratch.y, &mut scratch.codes);
    let n = x.len();
    // An odd block is padded, as the kernel pads it, with 0 * r.
    let padded = n + (n & 1);
    for (o, &v) in y.iter_mut().zip(&x[..n]) {
        *o = ftz(v * r);
    }
    if padded > n {
        y[n] = 0.0 * r;
    }
    let (y, codes) = (&y[..padded], &mut codes[..padded]);
    codes.fill(0);
    let t = t();
    match kind {
        Kind::Nf4 => {
            for &th in &t.nf4_thresholds {
                for (c, &v) in codes.iter_mut().zip(y) {
                    *c += u32::from(v > th);
                }
            }
        }
        Kind::Fp4 => {
            for &th in &t.fp4_thresholds {
                for (c, &v) in codes.iter_mut().zip(y) {
                    *c += u32::from(v.abs() > th);
                }
            }
            for (c, &v) in codes.iter_mut().zip(y) {
                *c = u32::from(tables::FP4_POS_CODES[(*c & 7) as usize]) | (u32::from(v < 0.0) << 3);
            }
        }
    }
    for (byte, pair) in packed.iter_mut().zip(codes.chunks_exact(2)) {
        *byte = (pair[0] << 4 | pair[1]) as u8;
    }
    am
}

/// Decodes one block of `n` values from `packed`.
pub fn dequantize_block(kind: Kind, packed: &[u8], n: usize, absmax: f32, out: &mut [f32]) {
    let table = kind.table();
    let n = n.min(out.len()).min(packed.len() * 2);
    let (pairs, tail) = out[..n].split_at_mut(n / 2 * 2);
    for (pair, &byte) in pairs.chunks_exact_mut(2).zip(packed) {
        pair[0] = table[(byte >> 4) as usize] * absmax;
        pair[1] = table[(byte & 0xF) as usize] * absmax;
    }
    if let (Some(o), Some(&byte)) = (tail.first_mut(), packed.get(n / 2)) {
        *o = table[(byte >> 4) as usize] * absmax;
    }
}

/// Double quantization of a group's absmax values (SPEC.md §5.5.3):
/// returns `(offset, absmax2)` and writes one code per block.
pub fn quantize_absmax(absmax: &[f32], codes: &mut [u8]) -> (f32, f32) {
    let n = absmax.len().max(1) as f32;
    let offset = absmax.iter().sum::<f32>() / n;
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let absmax2 = blockwise8::quantize_block(&centered, false, Searcher::dynamic(), codes);
    (offset, absmax2)
}

/// The absmax of block `i` of a nested group.
#[inline]
pub fn nested_absmax(code: u8, absmax2: f32, offset: f32) -> f32 {
    tables::DYNAMIC_MAP_BITS.get(code as usize).map_or(0.0, |&b| f32::from_bits(b) * absmax2) + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_special_values() {
        assert_eq!(Kind::Nf4.code(f32::NAN), 0);
        assert_eq!(Kind::Fp4.code(f32::NAN), 0);
        assert_eq!(Kind::Nf4.code(0.0), 7);
        assert_eq!(Kind::Nf4.code(1.0), 15);
        assert_eq!(Kind::Fp4.code(1.0), 3);
        assert_eq!(Kind::Fp4.code(-1.0), 11);
        assert_eq!(Kind::Fp4.code(-0.0), 0);
    }

    #[test]
    fn nested_absmax_round_trips_closely() {
        let absmax: Vec<f32> = (0..256).map(|i| 0.5 + (i as f32) / 300.0).collect();
        let mut codes = vec![0u8; 256];
        let (offset, a2) = quantize_absmax(&absmax, &mut codes);
        for (a, &c) in absmax.iter().zip(&codes) {
            assert!((nested_absmax(c, a2, offset) - a).abs() <= a2 * 0.01, "{a}");
        }
    }
}
