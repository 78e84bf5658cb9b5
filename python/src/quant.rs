//! `encode` / `decode`: the quantization kernels on whole tensors, for
//! `tensorwire.quantize` / `tensorwire.dequantize`. The Python layer splits
//! the records (SPEC.md §5.5) into codes and absmax arrays and back.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tensorwire::quant::{decode_span, encode_span, Scheme};
use tensorwire::tensor::{Dtype, TensorMeta};
use tensorwire::wire::Encoding;

use crate::array::{array_bytes, Buffer};

fn encoding(dtype: &str, scheme: &str) -> PyResult<(Dtype, Encoding)> {
    let dtype = Dtype::parse(dtype).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let parsed = Scheme::parse(scheme).ok_or_else(|| PyValueError::new_err(format!("unknown scheme {scheme:?}")))?;
    match parsed.encoding_for(dtype) {
        Encoding::Raw => Err(PyValueError::new_err(format!(
            "{scheme} does not apply to {dtype} tensors (not a float dtype, or the scheme would not shrink it)"
        ))),
        e => Ok((dtype, e)),
    }
}

fn numel(dtype: Dtype, shape: &[u64]) -> PyResult<usize> {
    let meta = TensorMeta::new("", dtype, shape.to_vec());
    meta.numel().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| PyValueError::new_err("shape overflows"))
}

/// The records of a tensor quantized under `scheme`, and the block size
/// (0 for the 16-bit casts). The GIL is released while encoding.
#[pyfunction]
pub(crate) fn encode(
    py: Python<'_>,
    data: Bound<'_, PyAny>,
    dtype: &str,
    shape: Vec<u64>,
    scheme: &str,
) -> PyResult<(Buffer, u32)> {
    let (dtype, enc) = encoding(dtype, scheme)?;
    let n = numel(dtype, &shape)?;
    let bytes = array_bytes(&data)?;
    if bytes.len() != n * (dtype.bits() as usize / 8) {
        return Err(PyValueError::new_err("data does not match dtype and shape"));
    }
    let block = match enc {
        Encoding::Blockwise8 { block_size, .. }
        | Encoding::Fp4 { block_size, .. }
        | Encoding::Nf4 { block_size, .. } => block_size,
        _ => 0,
    };
    let wire = py.detach(|| encode_span(&enc, dtype, &bytes)).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((Buffer::new(wire.into()), block))
}

/// The values of a tensor restored from its records. The GIL is released
/// while decoding.
#[pyfunction]
pub(crate) fn decode(
    py: Python<'_>,
    wire: Bound<'_, PyAny>,
    dtype: &str,
    shape: Vec<u64>,
    scheme: &str,
) -> PyResult<Buffer> {
    let (dtype, enc) = encoding(dtype, scheme)?;
    let n = numel(dtype, &shape)?;
    let wire = array_bytes(&wire)?;
    let mut out = Vec::new();
    py.detach(|| decode_span(&enc, dtype, &wire, n, &mut out)).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(Buffer::new(out.into()))
}
