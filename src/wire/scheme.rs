//! [`Scheme`]: the quantization schemes a receiver may ask for (SPEC.md
//! §5.4, §8.2 `quantize`), and the encoding each gives a tensor. Part of
//! the wire vocabulary, so that a request can name a scheme without
//! depending on the kernels in `quant`.

use super::{Dtype, Encoding};

/// A quantization scheme, as NVFlare names them (SPEC.md §5.4).
///
/// ```
/// use tensorwire::quant::Scheme;
/// use tensorwire::tensor::Dtype;
/// use tensorwire::wire::Encoding;
/// assert_eq!(Scheme::parse("nf4"), Some(Scheme::Nf4));
/// assert_eq!(Scheme::Nf4.encoding_for(Dtype::BF16), Encoding::Nf4 { block_size: 64, nested: false });
/// // Schemes that would not shrink a tensor leave it raw, as in NVFlare.
/// assert_eq!(Scheme::Fp16.encoding_for(Dtype::BF16), Encoding::Raw);
/// assert_eq!(Scheme::Blockwise8.encoding_for(Dtype::I64), Encoding::Raw);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// IEEE half precision, clipped to ±65504 (NVFlare's "float16").
    Fp16,
    /// bfloat16.
    Bf16,
    /// bitsandbytes blockwise 8-bit, block 4096.
    Blockwise8,
    /// bitsandbytes fp4, block 64.
    Fp4,
    /// bitsandbytes nf4, block 64.
    Nf4,
    /// fp4 with the absmax double-quantized (a tensorwire extension).
    Fp4Nested,
    /// nf4 with the absmax double-quantized (a tensorwire extension).
    Nf4Nested,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Scheme; 7] = [
        Scheme::Fp16,
        Scheme::Bf16,
        Scheme::Blockwise8,
        Scheme::Fp4,
        Scheme::Nf4,
        Scheme::Fp4Nested,
        Scheme::Nf4Nested,
    ];

    /// Parses `fp16`, `bf16`, `blockwise8`, `fp4`, `nf4`, `fp4-nested`,
    /// `nf4-nested` (NVFlare's `float16`, `float4`, `normfloat4` too).
    pub fn parse(s: &str) -> Option<Scheme> {
        Some(match s.to_ascii_lowercase().as_str() {
            "fp16" | "float16" => Scheme::Fp16,
            "bf16" | "bfloat16" => Scheme::Bf16,
            "blockwise8" => Scheme::Blockwise8,
            "fp4" | "float4" => Scheme::Fp4,
            "nf4" | "normfloat4" => Scheme::Nf4,
            "fp4-nested" => Scheme::Fp4Nested,
            "nf4-nested" => Scheme::Nf4Nested,
            _ => return None,
        })
    }

    /// The name [`Scheme::parse`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Fp16 => "fp16",
            Scheme::Bf16 => "bf16",
            Scheme::Blockwise8 => "blockwise8",
            Scheme::Fp4 => "fp4",
            Scheme::Nf4 => "nf4",
            Scheme::Fp4Nested => "fp4-nested",
            Scheme::Nf4Nested => "nf4-nested",
        }
    }

    /// Bits per value on the wire (without the absmax).
    pub fn bits(self) -> u32 {
        match self {
            Scheme::Fp16 | Scheme::Bf16 => 16,
            Scheme::Blockwise8 => 8,
            _ => 4,
        }
    }

    /// How a tensor of `dtype` travels under this scheme: [`Encoding::Raw`]
    /// when the scheme would not shrink it or it is not a float tensor
    /// (NVFlare's rule: only when the scheme has fewer bits than the source).
    pub fn encoding_for(self, dtype: Dtype) -> Encoding {
        let applies = match self {
            Scheme::Fp16 | Scheme::Bf16 => matches!(dtype, Dtype::F32 | Dtype::F64),
            _ => dtype.is_quantizable(),
        };
        if !applies || self.bits() >= dtype.bits() {
            return Encoding::Raw;
        }
        match self {
            Scheme::Fp16 => Encoding::Fp16,
            Scheme::Bf16 => Encoding::Bf16,
            Scheme::Blockwise8 => Encoding::Blockwise8 { block_size: 4096, code: None },
            Scheme::Fp4 => Encoding::Fp4 { block_size: 64, nested: false },
            Scheme::Nf4 => Encoding::Nf4 { block_size: 64, nested: false },
            Scheme::Fp4Nested => Encoding::Fp4 { block_size: 64, nested: true },
            Scheme::Nf4Nested => Encoding::Nf4 { block_size: 64, nested: true },
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a decoder treats products `table[code] × absmax` that are subnormal
/// in f32 (SPEC.md §5.5): bitsandbytes builds its CUDA kernels with
/// `--use_fast_math`, which flushes them to zero; its CPU path keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subnormals {
    /// Flush to a zero of the same sign, as a CUDA peer (NVFlare) restores
    /// them. The default.
    #[default]
    Flush,
    /// Keep them, as bitsandbytes' CPU path does.
    Keep,
}
