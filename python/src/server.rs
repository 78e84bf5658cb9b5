//! `Server`: files under a root, in-memory containers, pushes to a Python
//! handler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tensorwire::recv::ObjectRetriever;
use tensorwire::tensor::{Dtype, Tensor, TensorMap};
use tensorwire::transport::{self, Config, FrameStream, PushHandler, Registry, ServerHandle};
use tensorwire::Error;

use crate::array::array_bytes;
use crate::client::TensorIter;
use crate::errors::IntoPyResult;
use crate::{runtime, wait};

/// The current version of an in-memory container.
type Slot = Arc<RwLock<Arc<TensorMap>>>;

/// A tensor as the Python layer passes it in: name, safetensors dtype,
/// shape, and the array's bytes as a flat `uint8` array.
type TensorTuple<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>);

/// A tensorwire server running on the module's runtime until closed.
#[pyclass(module = "tensorwire._tensorwire")]
pub(crate) struct Server {
    handle: ServerHandle,
    address: String,
    task: Mutex<Option<tokio::task::JoinHandle<Result<(), Error>>>>,
    containers: HashMap<String, Slot>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("address", &self.address).finish_non_exhaustive()
    }
}

/// A container given as `(name, dtype, shape, flat_uint8_array)` tuples:
/// tensors over the arrays' memory, nothing copied.
fn tensor_map(py: Python<'_>, tensors: Vec<TensorTuple<'_>>) -> PyResult<TensorMap> {
    let mut map = TensorMap::new();
    for (name, dtype, shape, data) in tensors {
        let dtype = Dtype::parse(&dtype).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let tensor = Tensor::new(name.clone(), dtype, shape, array_bytes(&data)?).py(py)?;
        map.insert(name, tensor);
    }
    Ok(map)
}

#[pymethods]
impl Server {
    /// Binds `addr` and starts serving.
    #[new]
    #[pyo3(signature = (addr, root=None, containers=None, on_push=None, allow_push=false))]
    fn new(
        py: Python<'_>,
        addr: String,
        root: Option<PathBuf>,
        containers: Option<Vec<(String, Vec<TensorTuple<'_>>)>>,
        on_push: Option<Py<PyAny>>,
        allow_push: bool,
    ) -> PyResult<Self> {
        let mut registry = match root {
            Some(root) => Registry::root(root).py(py)?.accept_pushes(allow_push),
            None => Registry::new(),
        };
        let mut slots = HashMap::new();
        for (name, tensors) in containers.unwrap_or_default() {
            let slot: Slot = Arc::new(RwLock::new(Arc::new(tensor_map(py, tensors)?)));
            let source = Arc::clone(&slot);
            registry = registry.with_container_source(
                name.clone(),
                Arc::new(move || Arc::clone(&source.read().unwrap_or_else(|p| p.into_inner()))),
            );
            slots.insert(name, slot);
        }
        if let Some(handler) = on_push {
            // A handler is the decision to take pushes (it sees each one).
            registry = registry.accept_pushes(true).with_push_handler(push_handler(handler));
        }
        let server = wait(py, transport::Server::bind(addr, registry, Config::default()))?.py(py)?;
        let address = server.local_addr().py(py)?.to_string();
        let handle = server.handle();
        let task = runtime().spawn(server.run());
        Ok(Server { handle, address, task: Mutex::new(Some(task)), containers: slots })
    }

    /// The address actually bound, `host:port`.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// Requests being handled right now.
    #[getter]
    fn active_requests(&self) -> usize {
        self.handle.active_requests()
    }

    /// Requests accepted since the server started.
    #[getter]
    fn requests_started(&self) -> u64 {
        self.handle.requests_started()
    }

    /// Response-body bytes handed to HTTP/2 so far.
    #[getter]
    fn bytes_sent(&self) -> u64 {
        self.handle.bytes_sent()
    }

    /// Replaces the tensors of container `name` (one given at construction);
    /// transfers already running keep the version they started with.
    fn set_container(&self, py: Python<'_>, name: &str, tensors: Vec<TensorTuple<'_>>) -> PyResult<()> {
        let slot = self.containers.get(name).ok_or_else(|| PyKeyError::new_err(name.to_string()))?;
        let map = Arc::new(tensor_map(py, tensors)?);
        *slot.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// Stops accepting connections and waits until the transfers in flight
    /// have finished (GIL released; Ctrl-C stops the wait, not the server).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.handle.shutdown();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let ran = wait(py, task)?.map_err(|e| PyRuntimeError::new_err(format!("server task failed: {e}")))?;
            ran.py(py)?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Runs the Python `handler(name, TensorIter)` on a blocking thread for each
/// pushed container. What the handler leaves unread is drained afterwards,
/// so the push is answered only once the whole object is verified.
fn push_handler(handler: Py<PyAny>) -> PushHandler {
    let handler = Arc::new(handler);
    Arc::new(move |name: String, _peer: transport::Peer, retriever: ObjectRetriever<FrameStream>| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let ran =
                tokio::task::spawn_blocking(move || Python::attach(|py| run_handler(py, &handler, name, retriever)));
            ran.await.map_err(|e| Error::Io(std::io::Error::other(e)))?
        })
    })
}

fn run_handler(
    py: Python<'_>,
    handler: &Py<PyAny>,
    name: String,
    retriever: ObjectRetriever<FrameStream>,
) -> Result<(), Error> {
    let handler_failed =
        |e: PyErr| Error::Io(std::io::Error::other(format!("on_push handler for {name:?} failed: {e}")));
    let iter = Py::new(py, TensorIter::new(retriever)).map_err(handler_failed)?;
    let called = handler.call1(py, (name.clone(), iter.clone_ref(py)));
    let iter = iter.borrow(py);
    if let Err(e) = called {
        // A failure of the transfer itself is reported as such (an integrity
        // failure is answered 422); anything else is the handler's own.
        if let Some(transfer) = iter.take_failure() {
            return Err(transfer);
        }
        e.display(py);
        iter.close(py);
        return Err(handler_failed(e));
    }
    loop {
        match iter.__next__(py) {
            Ok(Some(_)) => {}
            Ok(None) => return iter.take_failure().map_or(Ok(()), Err),
            Err(e) => return Err(iter.take_failure().unwrap_or_else(|| handler_failed(e))),
        }
    }
}
