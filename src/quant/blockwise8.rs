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
///
/// A 64K-entry table indexed by the top 16 bits of `y` gives the number of
/// midpoints below the bucket and the one midpoint inside it, if any, so a
/// code costs one lookup and one comparison; the few buckets that hold
/// several midpoints fall back to a binary search.
pub struct Searcher {
    mids: [f32; 255],
    buckets: Box<[Bucket]>,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// The first midpoint at or above the bucket's smallest value (NaN if none).
    mid: f32,
    /// The number of midpoints below the bucket's smallest value.
    base: u8,
    /// Whether the bucket holds more than one midpoint.
    slow: bool,
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
        let mut buckets = vec![Bucket { mid: f32::NAN, base: 0, slow: false }; 1 << 16].into_boxed_slice();
        for (p, bucket) in buckets.iter_mut().enumerate() {
            let p = p as u32;
            // The bucket's values, smallest and largest, in value order.
            let (a, b) = (f32::from_bits(p << 16), f32::from_bits(p << 16 | 0xFFFF));
            let (lo, hi) = if p & 0x8000 == 0 { (a, b) } else { (b, a) };
            if lo.is_nan() && hi.is_nan() {
                continue; // NaN buckets: code 0, and every comparison is false.
            }
            if lo.is_nan() || hi.is_nan() {
                // ±inf shares its bucket with NaNs: search exactly.
                bucket.slow = true;
                continue;
            }
            let below = mids.partition_point(|&m| m < lo);
            let inside = mids.partition_point(|&m| m <= hi) - below;
            *bucket = Bucket { mid: mids.get(below).copied().unwrap_or(f32::NAN), base: below as u8, slow: inside > 1 };
        }
        Searcher { mids, buckets }
    }

    /// The searcher for the dynamic map, built once.
    pub fn dynamic() -> &'static Searcher {
        static S: OnceLock<Searcher> = OnceLock::new();
        S.get_or_init(|| Searcher::new(&tables::dynamic_map()))
    }

    /// The code of `y`.
    #[inline]
    pub fn code(&self, y: f32) -> u8 {
        let b = self.buckets[(y.to_bits() >> 16) as usize];
        if b.slow {
            return self.exact(y);
        }
        // Above the midpoint: the next code; on it, the even one of the two.
        let above = (y > b.mid) as u8;
        let tie = (y == b.mid) as u8 & (b.base & 1);
        b.base + above + tie
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

#[cfg(test)]
#[test]
fn every_bucket_edge_agrees_with_binary_search() {
    let s = Searcher::dynamic();
    for p in 0u32..1 << 16 {
        for low in [0u32, 1, 0x7FFF, 0xFFFE, 0xFFFF] {
            let y = f32::from_bits(p << 16 | low);
            assert_eq!(s.code(y), s.exact(y), "y = {y:e}");
        }
    }
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
