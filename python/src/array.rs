//! Bytes between numpy and Rust without copies.
//!
//! Out: a received tensor's `Bytes` becomes a [`Buffer`], which numpy views
//! through `__array_interface__` (`numpy.asarray(buffer)`), keeping the
//! buffer alive as the array's base. The array interface is used rather than
//! the buffer protocol because the buffer protocol is only in the stable ABI
//! from Python 3.11, and this module is built for 3.9+ (abi3).
//!
//! In: a numpy array (C-contiguous, viewed as flat `uint8` by the Python
//! layer) becomes `Bytes` that point into the array's memory and hold a
//! reference to it until the last chunk cut from them is dropped.

use bytes::{Bytes, BytesMut};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Alignment every buffer handed to numpy has (the widest element, f64/c64).
const ALIGN: usize = 8;

/// Tensor bytes received from a peer, viewed by numpy without a copy.
///
/// Writable when this buffer is the only owner of the bytes (a tensor
/// assembled from several chunks); read-only when the bytes are a slice of a
/// buffer still shared with the receive path.
#[pyclass(frozen, module = "tensorwire._tensorwire")]
pub(crate) struct Buffer {
    store: Store,
    /// Start of the bytes, taken once from the store (whose heap memory
    /// never moves).
    ptr: usize,
    len: usize,
    writable: bool,
}

enum Store {
    Owned(#[allow(dead_code)] BytesMut),
    Shared(#[allow(dead_code)] Bytes),
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store {
            Store::Owned(_) => "owned",
            Store::Shared(_) => "shared",
        };
        f.debug_struct("Buffer").field("len", &self.len).field("store", &kind).finish()
    }
}

impl Buffer {
    /// Wraps received bytes. Bytes that are not 8-byte aligned (a tensor
    /// that was one chunk at an odd offset of a frame) are copied once, so
    /// that every numpy and torch view is aligned.
    pub(crate) fn new(bytes: Bytes) -> Self {
        let bytes = if bytes.is_empty() || bytes.as_ptr() as usize % ALIGN == 0 {
            bytes
        } else {
            // A fresh allocation: glibc's malloc (and mimalloc, jemalloc)
            // align every block to 16 bytes.
            Bytes::from(bytes.to_vec())
        };
        match bytes.try_into_mut() {
            Ok(mut owned) => {
                let ptr = owned.as_mut_ptr() as usize;
                Buffer { len: owned.len(), store: Store::Owned(owned), ptr, writable: true }
            }
            Err(shared) => {
                let ptr = shared.as_ptr() as usize;
                Buffer { len: shared.len(), store: Store::Shared(shared), ptr, writable: false }
            }
        }
    }
}

#[pymethods]
impl Buffer {
    /// numpy's array interface (version 3): a flat `uint8` array over the
    /// buffer's memory.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.ptr, !self.writable))?;
        Ok(d)
    }

    /// Bytes held.
    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether numpy may write into the buffer.
    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }
}

/// Keeps a numpy array alive while `Bytes` point into its memory.
struct ArrayOwner {
    _array: Py<PyAny>,
    ptr: usize,
    len: usize,
}

impl AsRef<[u8]> for ArrayOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is the data of the C-contiguous array held
        // in `_array`; the reference keeps it alive, and numpy does not move
        // or free the data of an array that is referenced (resize refuses).
        // The caller promises not to write to the array while a transfer
        // reads it (documented on every function that takes arrays).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

/// The bytes of a flat, contiguous `uint8` numpy array, without a copy.
pub(crate) fn array_bytes(array: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    // Only a real ndarray's interface is trusted: the pointer is read from it.
    let ndarray = array.py().import("numpy")?.getattr("ndarray")?;
    if !array.is_instance(&ndarray)? || !array.getattr("flags")?.getattr("c_contiguous")?.is_truthy()? {
        return Err(PyTypeError::new_err("expected a C-contiguous numpy array"));
    }
    let ai = array.getattr("__array_interface__")?;
    let typestr: String = ai.get_item("typestr")?.extract()?;
    let shape: Vec<usize> = ai.get_item("shape")?.extract()?;
    let strides = ai.call_method1("get", ("strides",))?;
    let (ptr, _read_only): (usize, bool) = ai.get_item("data")?.extract()?;
    let [len] = shape[..] else {
        return Err(PyTypeError::new_err("expected a flat uint8 array"));
    };
    if typestr != "|u1" || !strides.is_none() {
        return Err(PyTypeError::new_err("expected a contiguous uint8 array"));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(ArrayOwner { _array: array.clone().unbind(), ptr, len }))
}
