//! Counting NaN and ±inf in a written safetensors file, so that a quantized
//! pull can say how many values came back non-finite (bitsandbytes' schemes
//! keep a block with ±inf as NaN/±inf on the other side, SPEC.md §5.5.2).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `(tensor, count)` for every float tensor of `path` that holds NaN or
/// ±inf. Reads the file in 1 MiB pieces.
pub(crate) fn count(path: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let file = File::open(path)?;
    let meta = tensorwire::recv::validate_safetensors(&file).map_err(std::io::Error::other)?;
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0)?;
    let base = 8 + u64::from_le_bytes(n);
    let tensors = meta.tensors();
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for name in meta.offset_keys() {
        let Some(info) = tensors.get(&name) else { continue };
        let width = match info.dtype {
            safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
            safetensors::Dtype::F32 => 4,
            safetensors::Dtype::F64 => 8,
            _ => continue,
        };
        let (start, end) = (base + info.data_offsets.0 as u64, base + info.data_offsets.1 as u64);
        let mut bad = 0u64;
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..len], at)?;
            bad += buf[..len].chunks_exact(width).filter(|v| !finite(info.dtype, v)).count() as u64;
            at += len as u64;
        }
        if bad > 0 {
            found.push((name, bad));
        }
    }
    Ok(found)
}

fn finite(dtype: safetensors::Dtype, v: &[u8]) -> bool {
    match (dtype, v) {
        // The exponent bits all set means NaN or ±inf.
        (safetensors::Dtype::F16, [_, hi]) => (hi & 0x7c) != 0x7c,
        (safetensors::Dtype::BF16, [lo, hi]) => !((hi & 0x7f) == 0x7f && (lo & 0x80) == 0x80),
        (safetensors::Dtype::F32, [a, b, c, d]) => f32::from_le_bytes([*a, *b, *c, *d]).is_finite(),
        (safetensors::Dtype::F64, b) => b.try_into().map(f64::from_le_bytes).is_ok_and(f64::is_finite),
        _ => true,
    }
}
