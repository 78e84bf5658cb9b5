//! The crate's public [`Error`].

use crate::wire::{AbortCode, DecodeError, EncodeError};

/// Everything that can go wrong in tensorwire, grouped by origin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes received do not form a valid object (SPEC.md §7).
    #[error("malformed object: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// An IO operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The HTTP/2 layer failed.
    #[error("http/2: {0}")]
    Http(#[from] h2::Error),
    /// A tensor's bytes do not match its dtype and shape, or a container
    /// holds something this crate cannot send.
    #[error("tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A safetensors file is not valid.
    #[error("invalid safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The object does not exist (HTTP 404, or not in the registry).
    #[error("no object named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// An object name that could escape the server's root or is malformed.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName {
        /// The name as received.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The response body (truncated).
        message: String,
    },
    /// The peer did something this protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The transfer was cancelled by this side.
    #[error("cancelled")]
    Cancelled,
    /// A server has no room for this request now (HTTP 503): try again.
    #[error("server at capacity: {0}")]
    AtCapacity(&'static str),
    /// Nothing arrived within the configured time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The peer aborted the transfer (SPEC.md §4.6).
    #[error("aborted by peer ({code}): {message}")]
    Aborted {
        /// The abort code.
        code: AbortCode,
        /// The peer's explanation.
        message: String,
    },
}

impl Error {
    /// Whether the same request may succeed when retried or resumed: a chunk
    /// whose payload failed its checksum, or a peer that timed out. Decode
    /// failures of the object's structure are final.
    ///
    /// ```
    /// use tensorwire::{wire::DecodeError, Error};
    /// let e = Error::from(DecodeError::PayloadChecksum { item: 1, offset: 0, expected: 0, actual: 1 });
    /// assert!(e.is_retryable());
    /// assert!(!Error::from(DecodeError::BadMagic).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Decode(e) => e.is_retryable(),
            Error::Aborted { code, .. } => *code == AbortCode::TIMEOUT || *code == AbortCode::CHECKSUM,
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            ),
            Error::Http(e) => e.is_io() || e.is_go_away(),
            Error::Timeout(_) | Error::AtCapacity(_) => true,
            Error::Status { status, .. } => *status == 503,
            _ => false,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        match e {
            Error::Io(e) => e,
            Error::Decode(_) => std::io::Error::new(ErrorKind::InvalidData, e),
            Error::Aborted { .. } => std::io::Error::new(ErrorKind::ConnectionAborted, e),
            Error::NotFound { .. } => std::io::Error::new(ErrorKind::NotFound, e),
            Error::Timeout(_) => std::io::Error::new(ErrorKind::TimedOut, e),
            other => std::io::Error::other(other),
        }
    }
}
