//! The layout of a safetensors object read from its first bytes only: the
//! header is validated with the `safetensors` crate without the data.

#![forbid(unsafe_code)]

use super::manifest::TensorRange;
use crate::Error;

/// The longest safetensors header this crate reads (the `safetensors`
/// crate's own limit).
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// What the first bytes of a safetensors object say.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The header is `len` bytes long (8 + JSON); read that many.
    NeedMore(u64),
    /// The header parsed and validated.
    Layout(Layout),
}

/// A safetensors object's header length and its tensors, in file order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) header_len: u64,
    pub(crate) tensors: Vec<TensorRange>,
    pub(crate) metadata: Vec<(String, String)>,
}

/// Parses the header of a safetensors object of `size` bytes from `prefix`,
/// its first bytes.
pub(crate) fn probe(prefix: &[u8], size: u64) -> Result<Probe, Error> {
    use safetensors::SafeTensorError as E;
    let n = prefix.get(..8).ok_or(E::HeaderTooSmall)?;
    let n = u64::from_le_bytes(n.try_into().map_err(|_| E::HeaderTooSmall)?);
    // The safetensors format: the header is at most 100 MB and lies within the file.
    if n > MAX_HEADER_BYTES {
        return Err(E::HeaderTooLarge.into());
    }
    let header_len = 8 + n;
    if header_len > size {
        return Err(E::InvalidHeaderLength.into());
    }
    let Some(json) = prefix.get(8..header_len as usize) else { return Ok(Probe::NeedMore(header_len)) };
    // Validated as a safetensors file of `size` bytes is (one place for it).
    let meta = crate::recv::parse_safetensors_header(json, size)?;
    let infos = meta.tensors();
    let tensors = meta
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = infos.get(&name)?;
            let range = [header_len + info.data_offsets.0 as u64, header_len + info.data_offsets.1 as u64];
            let shape = info.shape.iter().map(|&d| d as u64).collect();
            Some(TensorRange { name, dtype: info.dtype.to_string(), shape, range })
        })
        .collect();
    let mut metadata: Vec<(String, String)> =
        meta.metadata().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    metadata.sort();
    Ok(Probe::Layout(Layout { header_len, tensors, metadata }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}"#;
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json);
        out.extend_from_slice(&[0u8; 11]);
        out
    }

    #[test]
    fn probe_reads_the_layout_from_the_header_alone() {
        let f = file();
        let header = f.len() as u64 - 11;
        let Probe::Layout(l) = probe(&f[..header as usize], f.len() as u64).unwrap() else { panic!("layout") };
        assert_eq!(l.header_len, header);
        assert_eq!(l.tensors[1].range, [header + 8, header + 11]);
        assert_eq!(l.tensors[0].dtype, "F32");
    }

    #[test]
    fn probe_asks_for_the_rest_of_a_long_header() {
        let f = file();
        assert!(matches!(probe(&f[..20], f.len() as u64), Ok(Probe::NeedMore(n)) if n == f.len() as u64 - 11));
    }

    #[test]
    fn probe_rejects_a_size_that_disagrees_with_the_header() {
        let f = file();
        assert!(matches!(probe(&f, f.len() as u64 + 1), Err(Error::Safetensors(_))));
    }

    #[test]
    fn probe_rejects_a_header_longer_than_the_object() {
        assert!(matches!(probe(&[200, 0, 0, 0, 0, 0, 0, 0], 100), Err(Error::Safetensors(_))));
    }
}
