//! bitsandbytes blockwise dynamic 8-bit quantization (SPEC.md §5.5.1),
//! bit-exact with its CUDA kernel.

use std::sync::OnceLock;

use super::{ftz, tables};

/// The block absmax as the CUDA kernel reduces it: `fmaxf` from −f32::MAX,
/// so NaN is ignored; a partial last block also sees the zero padding.
#[inline]
pub(crate) fn absmax(block: &[f32], partial: bool) -> f32 {
    let m = block.iter().fold(-f32::MAX, |m, &x| m.max(x.abs()));
    if partial {
        m.max(0.0)
    } else {
        m
    }
}

/// `1 / absmax` as the kernel computes it, subnormals flushed.
#[inline]
pub(crate) fn reciprocal(absmax: f32) -> f32 {
    ftz(1.0 / ftz(absmax))
}

/// The code of `y` in a sorted 256-entry table: the nearest entry by the
/// f32 midpoints, ties to the even index, NaN to 0 (the CUDA `dQuantize`).
pub struct Searcher {
    mids: [f32; 255],
    /// For each 16-bit prefix of an f32, the number of midpoints below the
    /// smallest value with that prefix, or `SLOW` where the bucket holds more
    /// than one midpoint.
    lut: Box<[u8; 1 << 16]>,
    slow: Box<[bool; 1 << 16]>,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher").finish_non_exhaustive()
    }
}

impl Searcher {
    /// A searcher for `table` (sorted ascending, finite).
    pub fn new(table: &[f32; 256]) -> Self {
        let mids: [f32; 255] = tables::midpoints(table);
        let mut lut = Box::new([0u8; 1 << 16]);
        let mut slow = Box::new([false; 1 << 16]);
        for p in 0..(1u32 << 16) {
            // The bucket's values, smallest and largest, in value order.
            let (a, b) = (f32::from_bits(p << 16), f32::from_bits(p << 16 | 0xFFFF));
            let (lo, hi) = if p & 0x8000 == 0 { (a, b) } else { (b, a) };
            if lo.is_nan() || hi.is_nan() {
                continue; // NaN buckets: code 0 (lut 0, and y > mid is false).
            }
            let below = mids.partition_point(|&m| m < lo);
            let inside = mids.partition_point(|&m| m <= hi) - below;
            lut[p as usize] = below.min(255) as u8;
            slow[p as usize] = inside > 1;
        }
        Searcher { mids, lut, slow }
    }

    /// The searcher for the dynamic map, built once.
    pub fn dynamic() -> &'static Searcher {
        static S: OnceLock<Searcher> = OnceLock::new();
        S.get_or_init(|| Searcher::new(&tables::dynamic_map()))
    }

    /// The code of `y`.
    #[inline]
    pub fn code(&self, y: f32) -> u8 {
        let p = (y.to_bits() >> 16) as usize;
        if self.slow[p] {
            return self.exact(y);
        }
        let base = self.lut[p] as usize;
        match self.mids.get(base) {
            Some(&m) if y > m => (base + 1) as u8,
            // A tie goes to the even index of the two neighbours.
            Some(&m) if y == m => (base + (base & 1)) as u8,
            _ => base as u8,
        }
    }

    /// The same answer by binary search, for buckets holding several
    /// midpoints (and for tests).
    pub fn exact(&self, y: f32) -> u8 {
        if y.is_nan() {
            return 0;
        }
        let below = self.mids.partition_point(|&m| m < y);
        if self.mids.get(below) == Some(&y) {
            (below + (below & 1)) as u8
        } else {
            below as u8
        }
    }
}

/// Quantizes one block: writes one code per value, returns its absmax.
/// `partial` marks a last block shorter than the block size.
pub fn quantize_block(x: &[f32], partial: bool, search: &Searcher, codes: &mut [u8]) -> f32 {
    let am = absmax(x, partial);
    let r = reciprocal(am);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = search.code(ftz(v * r));
    }
    am
}

/// Decodes one block: `f32(table[code] * absmax)`.
pub fn dequantize_block(codes: &[u8], absmax: f32, table: &[f32; 256], out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = table[c as usize] * absmax;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_agrees_with_binary_search_around_every_midpoint() {
        let s = Searcher::dynamic();
        for &m in s.mids.iter() {
            for y in [m, f32::from_bits(m.to_bits() + 1), f32::from_bits(m.to_bits().wrapping_sub(1)), -m, 0.0, -0.0] {
                assert_eq!(s.code(y), s.exact(y), "y = {y:e}");
            }
        }
        for bits in (0..u32::MAX).step_by(65_537) {
            let y = f32::from_bits(bits);
            assert_eq!(s.code(y), s.exact(y), "y = {y:e} ({bits:#x})");
        }
    }

    #[test]
    fn special_values() {
        let s = Searcher::dynamic();
        assert_eq!(s.code(f32::NAN), 0);
        assert_eq!(s.code(0.0), 127);
        assert_eq!(s.code(-0.0), 127);
        assert_eq!(s.code(1.5), 255);
        assert_eq!(s.code(-1.0), 0);
    }
}
