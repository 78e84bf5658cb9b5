//! Reference model shapes and synthetic weights, for examples, benchmarks
//! and the memory harness.

use bytes::Bytes;

use crate::tensor::{Dtype, Tensor, TensorMap};

/// The shape of a Llama-style decoder's state dict.
///
/// ```
/// use tensorwire::models::LlamaShape;
/// let l = LlamaShape::LLAMA_3_2_1B;
/// assert_eq!(l.tensors().len(), 147);
/// assert_eq!(l.parameters(), 1_498_482_688);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Decoder layers.
    pub layers: u64,
    /// Hidden size.
    pub hidden: u64,
    /// MLP intermediate size.
    pub intermediate: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Vocabulary size.
    pub vocab: u64,
}

impl LlamaShape {
    /// Llama-3.2-1B with its output head listed apart from the embedding, as
    /// the Hugging Face state dict (and so NVFlare) sends it: 147 tensors,
    /// 1,498,482,688 parameters, 5,716.26 MiB in fp32.
    pub const LLAMA_3_2_1B: LlamaShape =
        LlamaShape { layers: 16, hidden: 2048, intermediate: 8192, heads: 32, kv_heads: 8, vocab: 128_256 };

    /// A small model of the same structure (about 30 M parameters).
    pub const SMALL: LlamaShape =
        LlamaShape { layers: 4, hidden: 512, intermediate: 2048, heads: 8, kv_heads: 2, vocab: 16_000 };

    /// Names and shapes of every tensor, in state-dict order.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let kv = h / self.heads * self.kv_heads;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        out.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        out
    }

    /// Total parameters.
    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(|(_, s)| s.iter().product::<u64>()).sum()
    }

    /// A state dict of this shape in `dtype` (F32, F16 or BF16) with
    /// deterministic pseudo-random weights of normal-like spread around 0,
    /// every page written (so it is resident, as real weights are).
    pub fn synthetic(&self, dtype: Dtype, seed: u64) -> TensorMap {
        let mut map = TensorMap::new();
        for (n, (name, shape)) in self.tensors().into_iter().enumerate() {
            let numel = shape.iter().product::<u64>() as usize;
            let data = weights(numel, dtype, seed.wrapping_add(n as u64));
            // The length matches dtype and shape by construction.
            if let Ok(t) = Tensor::new(name.clone(), dtype, shape, data) {
                map.insert(name, t);
            }
        }
        map
    }
}

/// `numel` synthetic weights in `dtype` (as [`LlamaShape::synthetic`] makes
/// them), for building one tensor at a time.
pub fn weights_for_tests(numel: usize, dtype: Dtype, seed: u64) -> Bytes {
    weights(numel, dtype, seed)
}

/// `numel` values in `dtype`, little-endian: a cheap generator whose values
/// lie in about [-0.1, 0.1].
fn weights(numel: usize, dtype: Dtype, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Sum of two uniforms: a triangular spread, centred on zero.
        let a = (x & 0xFFFF) as f32 + ((x >> 16) & 0xFFFF) as f32;
        (a / 65535.0 - 1.0) * 0.1
    };
    let width = (dtype.bits() / 8) as usize;
    let mut out = Vec::with_capacity(numel * width);
    for _ in 0..numel {
        let v = next();
        match dtype {
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_2_1b_matches_the_published_size() {
        let l = LlamaShape::LLAMA_3_2_1B;
        assert_eq!(l.tensors().len(), 147);
        assert_eq!(l.parameters(), 1_498_482_688);
        let mib = l.parameters() as f64 * 4.0 / 1048576.0;
        assert_eq!(format!("{mib:.2}"), "5716.26");
    }

    #[test]
    fn synthetic_tensors_have_their_sizes() {
        let m = LlamaShape::SMALL.synthetic(Dtype::BF16, 1);
        assert_eq!(m.len(), LlamaShape::SMALL.tensors().len());
        let bytes: u64 = m.values().map(|t| t.data().len() as u64).sum();
        assert_eq!(bytes, LlamaShape::SMALL.parameters() * 2);
    }
}
