//! `Client` and `TensorIter`: pulls and pushes from Python.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tensorwire::quant::Scheme;
use tensorwire::recv::ObjectRetriever;
use tensorwire::send::ContainerStreamer;
use tensorwire::tensor::{Dtype, Tensor};
use tensorwire::transport::{self, Config, FrameStream, Transfer, TransferOptions};
use tensorwire::Error;

use crate::array::{array_bytes, Buffer};
use crate::errors::{to_py, IntoPyResult};
use crate::wait;

/// One received tensor as Python gets it: name, safetensors dtype, shape,
/// and its bytes.
pub(crate) type RawTensor = (String, &'static str, Vec<u64>, Buffer);

/// A connection to a tensorwire server. Every method releases the GIL while
/// it waits and is cancelled by Ctrl-C.
#[pyclass(module = "tensorwire._tensorwire")]
#[derive(Debug)]
pub(crate) struct Client {
    inner: Mutex<Option<transport::Client>>,
}

impl Client {
    fn client(&self) -> PyResult<transport::Client> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clone().ok_or_else(|| PyRuntimeError::new_err("the client is closed"))
    }
}

fn scheme(name: Option<&str>) -> PyResult<Option<Scheme>> {
    name.map(|s| Scheme::parse(s).ok_or_else(|| PyValueError::new_err(format!("unknown quantization scheme {s:?}"))))
        .transpose()
}

fn summary<'py>(py: Python<'py>, t: Transfer, started: Instant) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("bytes", t.len)?;
    d.set_item("items", t.items)?;
    d.set_item("crc", t.crc)?;
    d.set_item("seconds", started.elapsed().as_secs_f64())?;
    Ok(d)
}

#[pymethods]
impl Client {
    /// Connects to `addr` (`host:port`).
    #[new]
    fn new(py: Python<'_>, addr: String) -> PyResult<Self> {
        let client = wait(py, transport::Client::connect(addr, Config::default()))?.py(py)?;
        Ok(Client { inner: Mutex::new(Some(client)) })
    }

    /// Pulls container `name` tensor by tensor (see `TensorIter`).
    #[pyo3(signature = (name, items=None, quantize=None))]
    fn retrieve(
        &self,
        py: Python<'_>,
        name: String,
        items: Option<Vec<String>>,
        quantize: Option<&str>,
    ) -> PyResult<TensorIter> {
        let client = self.client()?;
        let opts = TransferOptions { quantize: scheme(quantize)?, ..TransferOptions::default() };
        let retriever = wait(py, async move { client.retrieve(&name, items.as_deref(), &opts).await })?.py(py)?;
        Ok(TensorIter::new(retriever))
    }

    /// Pulls object `name` into the file `dest` (via `dest.part`, renamed
    /// once verified).
    fn get_file<'py>(&self, py: Python<'py>, name: String, dest: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client()?;
        let started = Instant::now();
        let got = wait(py, async move { client.get_file(&name, &dest).await })?.py(py)?;
        summary(py, got, started)
    }

    /// Pushes the file at `path` as object `name`.
    fn put_file<'py>(&self, py: Python<'py>, path: PathBuf, name: String) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client()?;
        let started = Instant::now();
        let got = wait(py, async move { client.put_file(&path, &name).await })?.py(py)?;
        summary(py, got, started)
    }

    /// Pushes the tensors `tensors` yields — `(name, dtype, shape,
    /// flat_uint8_array)` tuples — as container `name`, taking the next one
    /// only when the previous one has been sent.
    #[pyo3(signature = (name, tensors, quantize=None))]
    fn put_tensors<'py>(
        &self,
        py: Python<'py>,
        name: String,
        tensors: Py<PyAny>,
        quantize: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client()?;
        let scheme = scheme(quantize)?;
        let source = PySource::new(tensors);
        let failure = Arc::clone(&source.failure);
        let taken = Arc::clone(&source.taken);
        let mut streamer = ContainerStreamer::from_tensors(name, source.into_stream());
        if let Some(s) = scheme {
            streamer = streamer.quantize(s);
        }
        let started = Instant::now();
        let sent = wait(py, async move { client.put_container(streamer, &TransferOptions::default()).await })?;
        // An exception raised by the Python side while sending wins over the
        // transfer error it caused.
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        let mut sent = sent.py(py)?;
        if sent.items == 0 {
            // A push handler answers without counts: report what was sent.
            sent.items = taken.0.load(Ordering::Relaxed);
            sent.len = taken.1.load(Ordering::Relaxed);
        }
        summary(py, sent, started)
    }

    /// Closes the connection: no new transfers; those still running on it
    /// (an iterator not yet exhausted) finish first.
    fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Tensors taken from a Python iterator, one at a time, on a blocking thread
/// (never on a runtime worker) because taking one needs the GIL.
struct PySource {
    iter: Arc<Py<PyAny>>,
    failure: Arc<Mutex<Option<PyErr>>>,
    /// Tensors and their bytes taken so far.
    taken: Arc<(AtomicU64, AtomicU64)>,
}

impl PySource {
    fn new(iter: Py<PyAny>) -> Self {
        PySource { iter: Arc::new(iter), failure: Arc::default(), taken: Arc::default() }
    }

    fn into_stream(self) -> impl futures::Stream<Item = Result<Tensor, Error>> + Send + 'static {
        futures::stream::unfold(Some(self), |state| async move {
            let state = state?;
            let iter = Arc::clone(&state.iter);
            let next = tokio::task::spawn_blocking(move || Python::attach(|py| next_tensor(py, &iter))).await;
            let next = next.map_err(|e| PyRuntimeError::new_err(e.to_string())).and_then(|r| r);
            match next {
                Ok(Some(t)) => {
                    state.taken.0.fetch_add(1, Ordering::Relaxed);
                    state.taken.1.fetch_add(t.data().len() as u64, Ordering::Relaxed);
                    Some((Ok(t), Some(state)))
                }
                Ok(None) => None,
                Err(e) => {
                    let reason = e.to_string();
                    *state.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    Some((Err(Error::Tensor { name: String::new(), reason }), None))
                }
            }
        })
    }
}

/// The next `(name, dtype, shape, flat_uint8_array)` of `iter` as a tensor
/// over the array's memory.
fn next_tensor(py: Python<'_>, iter: &Py<PyAny>) -> PyResult<Option<Tensor>> {
    let item = match iter.bind(py).call_method0("__next__") {
        Ok(item) => item,
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (name, dtype, shape, data): (String, String, Vec<u64>, Bound<'_, PyAny>) = item.extract()?;
    let dtype = Dtype::parse(&dtype).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let bytes = array_bytes(&data)?;
    Tensor::new(name, dtype, shape, bytes).map(Some).py(py)
}

/// A container being received: each `next()` waits (GIL released) for the
/// next verified tensor. Dropping or closing it cancels the transfer: the
/// HTTP/2 stream is reset and the server stops sending.
#[pyclass(module = "tensorwire._tensorwire")]
pub(crate) struct TensorIter {
    retriever: Mutex<Option<ObjectRetriever<FrameStream>>>,
    /// The library error that ended the iteration, for a push handler to
    /// report with its own status.
    failed: Mutex<Option<Error>>,
}

impl std::fmt::Debug for TensorIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorIter").finish_non_exhaustive()
    }
}

impl TensorIter {
    pub(crate) fn new(retriever: ObjectRetriever<FrameStream>) -> Self {
        TensorIter { retriever: Mutex::new(Some(retriever)), failed: Mutex::new(None) }
    }

    /// The error that ended the iteration, once.
    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[pymethods]
impl TensorIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next tensor as `(name, dtype, shape, Buffer)`.
    pub(crate) fn __next__(&self, py: Python<'_>) -> PyResult<Option<RawTensor>> {
        // try_lock: a second thread waiting here would hold the GIL that the
        // first one needs to finish.
        let Ok(mut slot) = self.retriever.try_lock() else {
            return Err(PyRuntimeError::new_err("this iterator is already being advanced by another thread"));
        };
        let Some(retriever) = slot.as_mut() else { return Ok(None) };
        let outcome = match wait(py, retriever.next()) {
            Ok(Some(Ok(t))) => {
                let (meta, data) = t.into_parts();
                return Ok(Some((meta.name, meta.dtype.as_str(), meta.shape, Buffer::new(data))));
            }
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => {
                let (err, e) = to_py(py, e);
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(err)
            }
            Err(interrupted) => Err(interrupted),
        };
        // End, failure or Ctrl-C: the retriever is dropped, which resets the
        // stream if the object did not end.
        *slot = None;
        outcome
    }

    /// Cancels the transfer if it is still running.
    pub(crate) fn close(&self, py: Python<'_>) {
        // Dropped with the GIL released: the drop may wait on h2's lock.
        let taken = self.retriever.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(move || drop(taken));
    }
}
