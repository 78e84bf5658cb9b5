//! [`tensorwire::Error`] as the Python exception hierarchy of
//! `tensorwire.errors` (`Error` and its subclasses).

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tensorwire::wire::{AbortCode, DecodeError};
use tensorwire::Error;

/// What a Python exception needs to know about an [`Error`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Class {
    /// The class name in `tensorwire.errors`.
    name: &'static str,
    item: Option<u32>,
    offset: Option<u64>,
    status: Option<u16>,
    code: Option<u32>,
}

fn class(name: &'static str) -> Class {
    Class { name, ..Class::default() }
}

/// Sorts an error into the hierarchy: damaged data is an `IntegrityError`,
/// a peer breaking the rules a `ProtocolError`, a missing object `NotFound`,
/// a failed connection a `ConnectionError`, and what went wrong with the
/// transfer otherwise a `TransferError`.
fn classify(e: &Error) -> Class {
    match e {
        Error::Decode(d) => decode_class(d),
        Error::Protocol(_) => class("ProtocolError"),
        Error::NotFound { .. } => class("NotFound"),
        Error::Status { status: 404, .. } => Class { status: Some(404), ..class("NotFound") },
        Error::Status { status, .. } => Class { status: Some(*status), ..class("TransferError") },
        Error::Aborted { code, .. } => {
            let name = match *code {
                AbortCode::CHECKSUM => "IntegrityError",
                AbortCode::NOT_FOUND => "NotFound",
                AbortCode::PROTOCOL => "ProtocolError",
                _ => "TransferError",
            };
            Class { code: Some(code.value()), ..class(name) }
        }
        Error::Http(h) if h.is_io() || h.is_go_away() => class("ConnectionError"),
        Error::Http(_) => class("TransferError"),
        Error::Io(io) => {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof
                | AddrNotAvailable | TimedOut => class("ConnectionError"),
                _ => class("TransferError"),
            }
        }
        Error::Timeout(_) => class("ConnectionError"),
        Error::Cancelled => class("TransferError"),
        _ => class("Error"),
    }
}

/// [`classify`], and for variants it does not name (the enum is
/// non-exhaustive: a missing item, say, may get a variant of its own) the
/// kind the library gives the error as an `io::Error`, so a missing thing is
/// still `NotFound`. Returns the error unchanged beside its class.
fn classify_owned(e: Error) -> (Class, Error) {
    let c = classify(&e);
    if c.name != "Error" {
        return (c, e);
    }
    let message = e.to_string();
    let io = std::io::Error::from(e);
    let c = match io.kind() {
        std::io::ErrorKind::NotFound => class("NotFound"),
        _ => c,
    };
    // Every variant but `Io` (classified above) is wrapped whole.
    let e = match io.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(e)) => *e,
        _ => Error::Io(std::io::Error::other(message)),
    };
    (c, e)
}

fn decode_class(d: &DecodeError) -> Class {
    let at = |name, item: u32, offset: Option<u64>| Class { item: Some(item), offset, ..class(name) };
    match *d {
        DecodeError::PayloadChecksum { item, offset, .. } => at("IntegrityError", item, Some(offset)),
        DecodeError::HeaderChecksum { .. } | DecodeError::ObjectEndMismatch { field: "crc", .. } => {
            class("IntegrityError")
        }
        DecodeError::ItemEndMismatch { item, field: "crc", .. } => at("IntegrityError", item, None),
        DecodeError::ItemEndMismatch { item, .. }
        | DecodeError::InconsistentItem { item, .. }
        | DecodeError::DuplicateName { item, .. } => at("ProtocolError", item, None),
        DecodeError::ChunkOverlap { item, offset, .. }
        | DecodeError::ChunkGap { item, offset, .. }
        | DecodeError::ChunkOutOfBounds { item, offset, .. }
        | DecodeError::ChunkMisaligned { item, offset, .. } => at("ProtocolError", item, Some(offset)),
        DecodeError::ChunkWithoutItem { item, .. } => at("ProtocolError", item, None),
        _ => class("ProtocolError"),
    }
}

/// The Python exception for `e`: an instance of `tensorwire.errors.<class>`
/// with the message and, where known, `item`, `offset`, `status`, `code`;
/// `e` comes back beside it.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> (PyErr, Error) {
    let (c, e) = classify_owned(e);
    let build = || -> PyResult<PyErr> {
        let cls = py.import("tensorwire.errors")?.getattr(c.name)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("item", c.item)?;
        kwargs.set_item("offset", c.offset)?;
        kwargs.set_item("status", c.status)?;
        kwargs.set_item("code", c.code)?;
        Ok(PyErr::from_value(cls.call((e.to_string(),), Some(&kwargs))?))
    };
    // Only a broken installation lacks tensorwire.errors; say so, with the message.
    let err = build().unwrap_or_else(|import_failure| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("{e} (and tensorwire.errors failed: {import_failure})"))
    });
    (err, e)
}

/// `Err(e)` as a Python exception.
pub(crate) trait IntoPyResult<T> {
    /// Converts the error with [`to_py`].
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e).0)
    }
}
