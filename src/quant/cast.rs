//! fp16 and bf16 casts (SPEC.md §5.5.4).

use half::{bf16, f16};

/// NVFlare's "float16": clip to ±65504, then round to nearest even; NaN
/// stays NaN.
#[inline]
pub fn to_f16(x: f32) -> f16 {
    // f32::clamp keeps NaN.
    f16::from_f32(x.clamp(-65504.0, 65504.0))
}

/// bfloat16, rounded to nearest even (as torch); NaN stays NaN.
#[inline]
pub fn to_bf16(x: f32) -> bf16 {
    bf16::from_f32(x)
}

/// Writes `src` as little-endian fp16 into `dst` (2 bytes per value).
pub fn encode_f16(src: &[f32], dst: &mut Vec<u8>) {
    dst.reserve(src.len() * 2);
    dst.extend(src.iter().flat_map(|&x| to_f16(x).to_le_bytes()));
}

/// Writes `src` as little-endian bf16 into `dst` (2 bytes per value).
pub fn encode_bf16(src: &[f32], dst: &mut Vec<u8>) {
    dst.reserve(src.len() * 2);
    dst.extend(src.iter().flat_map(|&x| to_bf16(x).to_le_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_clips_and_keeps_nan() {
        assert_eq!(to_f16(1e9).to_f32(), 65504.0);
        assert_eq!(to_f16(f32::NEG_INFINITY).to_f32(), -65504.0);
        assert!(to_f16(f32::NAN).is_nan());
        // 2^-25 is a tie between 0 and the smallest subnormal: to even, 0.
        assert_eq!(to_f16(2f32.powi(-25)).to_bits(), 0);
    }
}
