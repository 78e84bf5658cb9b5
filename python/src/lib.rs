//! `tensorwire._tensorwire`: the PyO3 glue between Python and the tensorwire
//! library. The public Python face (`tensorwire/__init__.py`) wraps these
//! classes; everything here only converts and waits.
//!
//! * [`runtime`] is the one tokio runtime every object shares.
//! * [`wait`] runs a future with the GIL released and polls for signals, so
//!   Ctrl-C (KeyboardInterrupt) cancels whatever was waited on.
//! * `array` moves bytes between numpy and `Bytes` without copies;
//!   `errors` turns [`tensorwire::Error`] into the Python hierarchy.
#![deny(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod array;
mod client;
mod errors;
mod quant;
mod server;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

/// How often a wait wakes up to look for signals (Ctrl-C).
const SIGNAL_TICK: Duration = Duration::from_millis(50);

/// The runtime that drives every connection, server and transfer.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tensorwire")
            .enable_all()
            .build()
            // Without threads or a timer there is nothing this module can do.
            .expect("tensorwire: cannot start the tokio runtime")
    })
}

/// Runs `fut` to completion with the GIL released, checking for Python
/// signals every [`SIGNAL_TICK`]. When a signal handler raises (Ctrl-C), the
/// future is dropped — which cancels the transfer it drives (its HTTP/2
/// stream is reset) — and the exception is returned.
pub(crate) fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        let step = py.detach(|| runtime().block_on(async { tokio::time::timeout(SIGNAL_TICK, fut.as_mut()).await }));
        match step {
            Ok(out) => return Ok(out),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// The native module.
#[pymodule]
fn _tensorwire(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<array::Buffer>()?;
    m.add_class::<client::TensorIter>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(quant::encode, m)?)?;
    m.add_function(wrap_pyfunction!(quant::decode, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
