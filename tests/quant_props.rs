//! Property tests of the quantizers: error bounds per block, and that
//! encoding in record-aligned pieces equals encoding in one go.

use proptest::prelude::*;
use tensorwire::quant::{decode_span, encode_span, tables, Scheme};
use tensorwire::tensor::Dtype;

/// Half the largest gap between adjacent entries of a sorted table.
fn half_gap(table: &[f32]) -> f32 {
    let mut t = table.to_vec();
    t.sort_by(f32::total_cmp);
    t.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0
}

fn bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn block_values() -> impl Strategy<Value = Vec<f32>> {
    (1usize..700, 1e-3f32..1e3).prop_flat_map(|(n, scale)| prop::collection::vec(-scale..scale, n))
}

proptest! {
    #[test]
    fn error_is_within_half_the_largest_code_gap(x in block_values()) {
        for (scheme, block, table) in [
            (Scheme::Blockwise8, 4096usize, tables::dynamic_map().to_vec()),
            (Scheme::Nf4, 64, tables::nf4().to_vec()),
            (Scheme::Fp4, 64, tables::fp4().to_vec()),
        ] {
            let enc = scheme.encoding_for(Dtype::F32);
            let wire = encode_span(&enc, Dtype::F32, &bytes(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut out = Vec::new();
            decode_span(&enc, Dtype::F32, &wire, x.len(), &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = values(&out);
            let h = half_gap(&table);
            for (b, (orig, got)) in x.chunks(block).zip(back.chunks(block)).enumerate() {
                let absmax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (o, g) in orig.iter().zip(got) {
                    let bound = h * absmax * (1.0 + 1e-5) + f32::MIN_POSITIVE;
                    prop_assert!((o - g).abs() <= bound, "{scheme} block {b}: {o} -> {g}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn casts_round_to_nearest(x in prop::collection::vec(-7e4f32..7e4, 1..300)) {
        for scheme in [Scheme::Fp16, Scheme::Bf16] {
            let enc = scheme.encoding_for(Dtype::F32);
            let wire = encode_span(&enc, Dtype::F32, &bytes(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut out = Vec::new();
            decode_span(&enc, Dtype::F32, &wire, x.len(), &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (o, g) in x.iter().zip(values(&out)) {
                let expected = match scheme {
                    Scheme::Fp16 => half::f16::from_f32(o.clamp(-65504.0, 65504.0)).to_f32(),
                    _ => half::bf16::from_f32(*o).to_f32(),
                };
                prop_assert_eq!(g.to_bits(), expected.to_bits());
            }
        }
    }

    #[test]
    fn pieces_encode_like_the_whole(x in prop::collection::vec(-5f32..5.0, 1..3000), cut in 0usize..3000) {
        for scheme in [Scheme::Blockwise8, Scheme::Fp4, Scheme::Nf4, Scheme::Nf4Nested, Scheme::Fp16] {
            let enc = scheme.encoding_for(Dtype::F32);
            let per = match scheme {
                Scheme::Blockwise8 => 4096,
                Scheme::Nf4Nested => 64 * 256,
                Scheme::Fp16 => 1,
                _ => 64,
            };
            let at = (cut.min(x.len()) / per) * per;
            let whole = encode_span(&enc, Dtype::F32, &bytes(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut pieces = encode_span(&enc, Dtype::F32, &bytes(&x[..at])).map_err(|e| TestCaseError::fail(e.to_string()))?;
            pieces.extend(encode_span(&enc, Dtype::F32, &bytes(&x[at..])).map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(&pieces, &whole, "{} split at {}", scheme, at);
        }
    }
}
