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
    Http(h2::Error),
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
    /// The object exists but holds no item (tensor) of this name (HTTP 404
    /// with a `tensorwire-missing-item` header, SPEC.md §8.5).
    #[error("object {object:?} has no tensor named {item:?}")]
    ItemNotFound {
        /// The object asked for.
        object: String,
        /// The item it does not hold.
        item: String,
    },
    /// An object name that could escape the server's root or is malformed.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName {
        /// The name as received.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A server URL that cannot be used.
    #[error("{url}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
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
    /// A pull request that does not parse (SPEC.md §8.2, §8.4).
    #[error(transparent)]
    Request(#[from] RequestError),
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
    /// A certificate or key file could not be used (TLS configuration).
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// TLS failed: a configuration rustls refuses, or a handshake the peer
    /// or this side rejected (an unknown issuer, an expired certificate, a
    /// name mismatch, no client certificate, a peer that does not speak TLS).
    #[error("TLS: {0}{hint}", hint = tls_hint(.0))]
    Tls(#[from] rustls::Error),
    /// A peer certificate that could not be read for its names.
    #[error("unreadable certificate: {reason}")]
    Certificate {
        /// What the X.509 parser said.
        reason: String,
    },
    /// An access rule (`--allow-push` / `--allow-get`) that is malformed.
    #[error("invalid access rule {rule:?}: {reason}")]
    InvalidRule {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer may not do this (HTTP 403, SPEC.md §8.9).
    #[error("{peer} may not {action} {name:?}")]
    Forbidden {
        /// `pull` or `push`.
        action: &'static str,
        /// The object name.
        name: String,
        /// Who asked (address and verified identity, if any).
        peer: String,
    },
    /// An object-store transfer failed (feature `store`).
    #[cfg(feature = "store")]
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer aborted the transfer (SPEC.md §4.6).
    #[error("aborted by peer ({code}): {message}")]
    Aborted {
        /// The abort code.
        code: AbortCode,
        /// The peer's explanation.
        message: String,
    },
}

impl From<crate::wire::CodecError> for Error {
    fn from(e: crate::wire::CodecError) -> Self {
        match e {
            crate::wire::CodecError::Decode(d) => Error::Decode(d),
            crate::wire::CodecError::Io(io) => Error::Io(io),
        }
    }
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

/// An HTTP/2 error whose cause is a TLS alert from the peer after the
/// handshake (in TLS 1.3 a server checks the client's certificate after the
/// client has finished: no certificate, an untrusted or an expired one)
/// becomes [`Error::Tls`], which says so; any other stays [`Error::Http`].
impl From<h2::Error> for Error {
    fn from(e: h2::Error) -> Self {
        match e.get_io().and_then(tls_alert) {
            Some(tls) => Error::Tls(tls),
            None => Error::Http(e),
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
            Error::NotFound { .. } | Error::ItemNotFound { .. } => std::io::Error::new(ErrorKind::NotFound, e),
            Error::Timeout(_) => std::io::Error::new(ErrorKind::TimedOut, e),
            other => std::io::Error::other(other),
        }
    }
}

/// The TLS alert an IO error reports, if it is one. h2 keeps only the kind
/// and the text of an IO error (so that its errors are `Clone`), which drops
/// the `rustls::Error` inside; its text, `received fatal alert: {:?}`,
/// names the alert, and this finds it again.
pub(crate) fn tls_alert(e: &std::io::Error) -> Option<rustls::Error> {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return Some(tls.clone());
    }
    let text = e.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    (0..=u8::MAX)
        .map(rustls::AlertDescription::from)
        .find(|d| format!("{d:?}") == name)
        .map(rustls::Error::AlertReceived)
}

/// Appended to errors that mean "the other end does not speak TLS".
pub(crate) const NOT_TLS_HINT: &str =
    "does the peer speak TLS? a cleartext HTTP/2 port is http://, a TLS one https:// with --tls-cert on the server";

/// What the [`Error::Tls`] message adds to rustls's own.
pub(crate) fn tls_hint(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidMessage(_) => format!(" ({NOT_TLS_HINT})"),
        rustls::Error::NoCertificatesPresented => {
            " (the client presented no certificate; a client passes one with --cert and --key)".into()
        }
        rustls::Error::AlertReceived(alert) => match alert {
            rustls::AlertDescription::CertificateRequired => {
                " (the server requires a client certificate: use --cert and --key)"
            }
            rustls::AlertDescription::UnknownCA => {
                " (the peer does not trust the CA that issued this side's certificate)"
            }
            rustls::AlertDescription::CertificateExpired => " (the peer says this side's certificate has expired)",
            rustls::AlertDescription::BadCertificate => {
                " (the peer rejected this side's certificate: wrong name or CA?)"
            }
            _ => "",
        }
        .into(),
        _ => String::new(),
    }
}

/// A malformed pull request (answered 400, SPEC.md §8.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A query parameter has a value this version does not accept.
    #[error("bad query parameter {param}: {value:?}")]
    BadParameter {
        /// The parameter.
        param: &'static str,
        /// Its value as received.
        value: String,
    },
    /// The `tensorwire-resume` header is malformed.
    #[error("bad tensorwire-resume header: {reason}")]
    BadResume {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why an object-store transfer failed (feature `store`, `tensorwire::store`).
#[cfg(feature = "store")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store failed the request (network, credentials, a missing
    /// bucket, a refused upload).
    #[error("store: {0}")]
    Backend(#[source] object_store::Error),
    /// No object under this key.
    #[error("no object {key:?} in the store")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The object changed while it was being read (its ETag or version
    /// differs from the first read's, or from the manifest's): the pull
    /// stops rather than mix versions.
    #[error("object {key:?} changed while it was read ({detail})")]
    Changed {
        /// The key.
        key: String,
        /// What differed.
        detail: String,
    },
    /// A range's bytes do not match the manifest's CRC.
    #[error("bytes {offset}..+{len} fail their checksum (expected {expected:#010x}, got {actual:#010x})")]
    RangeChecksum {
        /// Where the range starts in the object.
        offset: u64,
        /// Its length.
        len: u64,
        /// The manifest's CRC-32.
        expected: u32,
        /// The CRC-32 of the bytes read.
        actual: u32,
    },
    /// The whole object's CRC does not match the manifest's.
    #[error("object {key:?} fails its checksum (expected {expected:#010x}, got {actual:#010x})")]
    ObjectChecksum {
        /// The key.
        key: String,
        /// The manifest's CRC-32.
        expected: u32,
        /// The CRC-32 of the bytes read.
        actual: u32,
    },
    /// The object's length differs from what the manifest or the first read
    /// said, or a read returned a different number of bytes than asked.
    #[error("object {key:?}: {actual} bytes where {expected} were expected")]
    SizeMismatch {
        /// The key.
        key: String,
        /// What was expected.
        expected: u64,
        /// What the store gave.
        actual: u64,
    },
    /// A read that does not fall on the manifest's range boundaries (a bug
    /// in the caller, or a manifest with another granularity).
    #[error("read {offset}..+{len} does not fall on {range_size}-byte ranges")]
    Misaligned {
        /// Where the read starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The manifest's granularity.
        range_size: u64,
    },
    /// The manifest does not parse or does not fit its object.
    #[error("manifest {key:?}: {reason}")]
    Manifest {
        /// The manifest's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An option out of range (a part size below the store's minimum).
    #[error("{0}")]
    Option(String),
    /// A URL that names no store this crate opens.
    #[error("{url}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[cfg(feature = "store")]
impl StoreError {
    /// Whether the object failed a check (checksum, size, manifest, a
    /// change between reads), as opposed to the store failing a request.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            StoreError::Changed { .. }
                | StoreError::RangeChecksum { .. }
                | StoreError::ObjectChecksum { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::Manifest { .. }
        )
    }
}
