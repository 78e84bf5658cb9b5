//! The item model: a named tensor is its metadata plus its bytes.

use std::collections::BTreeMap;

use bytes::Bytes;

pub use crate::wire::Dtype;
use crate::wire::{Encoding, ItemHeader};
use crate::Error;

/// Name, dtype and shape of a tensor.
///
/// ```
/// use tensorwire::tensor::{Dtype, TensorMeta};
/// let meta = TensorMeta::new("w", Dtype::BF16, vec![2, 3]);
/// assert_eq!(meta.byte_len(), Some(12));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorMeta {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape; `[]` is a scalar.
    pub shape: Vec<u64>,
}

impl TensorMeta {
    /// Metadata from its parts.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> Self {
        TensorMeta { name: name.into(), dtype, shape }
    }

    /// Number of elements (`None` on overflow).
    pub fn numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// Bytes of the raw data (`None` on overflow or a sub-byte dtype that
    /// does not fill whole bytes).
    pub fn byte_len(&self) -> Option<u64> {
        Encoding::Raw.encoded_len(self.numel()?, self.dtype)
    }

    /// The item header of this tensor sent raw, as item `item`.
    pub fn item_header(&self, item: u32) -> ItemHeader {
        ItemHeader::tensor(item, self.name.clone(), self.dtype, self.shape.clone())
    }
}

/// A tensor: metadata and its raw little-endian, row-major bytes.
///
/// The bytes are a [`Bytes`], so tensors cut from a larger buffer (a
/// memory-mapped file, a received chunk) share it without copying.
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::tensor::{Dtype, Tensor};
/// # fn main() -> Result<(), tensorwire::Error> {
/// let t = Tensor::new("bias", Dtype::F32, vec![2], Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64]))?;
/// assert_eq!(t.to_f32_vec(), Some(vec![1.0, 2.0]));
/// assert!(Tensor::new("bad", Dtype::F32, vec![3], Bytes::new()).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    meta: TensorMeta,
    data: Bytes,
}

impl Tensor {
    /// A tensor, checking that `data` has exactly the length dtype and shape
    /// call for.
    ///
    /// # Errors
    ///
    /// [`Error::Tensor`] when the length disagrees or overflows.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>, data: Bytes) -> Result<Self, Error> {
        Self::from_meta(TensorMeta::new(name, dtype, shape), data)
    }

    /// A tensor from its metadata and bytes.
    ///
    /// # Errors
    ///
    /// As [`Tensor::new`].
    pub fn from_meta(meta: TensorMeta, data: Bytes) -> Result<Self, Error> {
        match meta.byte_len() {
            Some(len) if len == data.len() as u64 => Ok(Tensor { meta, data }),
            expected => Err(Error::Tensor {
                name: meta.name,
                reason: format!("{} {:?} needs {:?} bytes, got {}", meta.dtype, meta.shape, expected, data.len()),
            }),
        }
    }

    /// The metadata.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The dtype.
    pub fn dtype(&self) -> Dtype {
        self.meta.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[u64] {
        &self.meta.shape
    }

    /// The raw bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Splits into metadata and bytes.
    pub fn into_parts(self) -> (TensorMeta, Bytes) {
        (self.meta, self.data)
    }

    /// The values of an `F32` tensor (`None` for other dtypes). Decoded with
    /// `from_le_bytes`, so the bytes need no alignment.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        (self.meta.dtype == Dtype::F32)
            .then(|| self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A safetensors view of this tensor (for `safetensors::serialize`).
    ///
    /// # Errors
    ///
    /// [`Error::Safetensors`] if safetensors rejects the shape.
    pub fn as_view(&self) -> Result<safetensors::tensor::TensorView<'_>, Error> {
        let shape = self.meta.shape.iter().map(|&d| d as usize).collect();
        Ok(safetensors::tensor::TensorView::new(to_safetensors(self.meta.dtype), shape, &self.data)?)
    }

    /// Copies a safetensors view into a tensor named `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Tensor`] for a dtype this crate does not know.
    pub fn from_view(name: impl Into<String>, view: &safetensors::tensor::TensorView<'_>) -> Result<Self, Error> {
        let name = name.into();
        let dtype = from_safetensors(view.dtype()).ok_or_else(|| Error::Tensor {
            name: name.clone(),
            reason: format!("unsupported dtype {}", view.dtype()),
        })?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        Self::new(name, dtype, shape, Bytes::copy_from_slice(view.data()))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.meta.name)
            .field("dtype", &self.meta.dtype)
            .field("shape", &self.meta.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Tensors by name, in name order: a state dict.
pub type TensorMap = BTreeMap<String, Tensor>;

/// The safetensors spelling of a dtype.
pub fn to_safetensors(d: Dtype) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        Dtype::BOOL => S::BOOL,
        Dtype::F4 => S::F4,
        Dtype::F6_E2M3 => S::F6_E2M3,
        Dtype::F6_E3M2 => S::F6_E3M2,
        Dtype::U8 => S::U8,
        Dtype::I8 => S::I8,
        Dtype::F8_E5M2 => S::F8_E5M2,
        Dtype::F8_E4M3 => S::F8_E4M3,
        Dtype::F8_E8M0 => S::F8_E8M0,
        Dtype::I16 => S::I16,
        Dtype::U16 => S::U16,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::I32 => S::I32,
        Dtype::U32 => S::U32,
        Dtype::F32 => S::F32,
        Dtype::C64 => S::C64,
        Dtype::F64 => S::F64,
        Dtype::I64 => S::I64,
        Dtype::U64 => S::U64,
    }
}

/// This crate's dtype for a safetensors dtype (`None` for one it does not know).
pub fn from_safetensors(d: safetensors::Dtype) -> Option<Dtype> {
    Dtype::ALL.into_iter().find(|&ours| to_safetensors(ours) == d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_maps_both_ways() {
        for d in Dtype::ALL {
            assert_eq!(from_safetensors(to_safetensors(d)), Some(d));
            assert_eq!(to_safetensors(d).to_string(), d.as_str());
        }
    }

    #[test]
    fn view_round_trip() -> Result<(), Error> {
        let t = Tensor::new("x", Dtype::I16, vec![2, 2], Bytes::from_static(&[1, 0, 2, 0, 3, 0, 4, 0]))?;
        let bytes = safetensors::serialize([("x", t.as_view()?)], None)?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        assert_eq!(Tensor::from_view("x", &st.tensor("x")?)?, t);
        Ok(())
    }

    #[test]
    fn scalar_and_empty_tensors() -> Result<(), Error> {
        assert_eq!(Tensor::new("s", Dtype::F64, vec![], Bytes::from_static(&[0; 8]))?.meta().numel(), Some(1));
        assert_eq!(Tensor::new("e", Dtype::F32, vec![0, 7], Bytes::new())?.data().len(), 0);
        Ok(())
    }
}
