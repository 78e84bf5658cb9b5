//! What the CLI exits with, and the one line it prints on failure.
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | success |
//! | 1 | a local failure (a file that cannot be read or written, the harness) |
//! | 2 | usage: a bad flag, URL, output path or value |
//! | 3 | connection: the server cannot be reached, or the connection failed |
//! | 4 | integrity: the object failed a check (CRC, framing, safetensors validation) |
//! | 5 | refused by the server with a 4xx status (or an abort that means the same) |
//! | 6 | server error: a 5xx status, or the server aborted the transfer |
//! | 130 | interrupted (Ctrl-C) |

use std::fmt;

use tensorwire::wire::AbortCode;
use tensorwire::Error;
use tensorwire_cli::harness::HarnessError;

/// A failure: the exit code and the message, which names the party or path it
/// is about.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) const LOCAL: u8 = 1;
pub(crate) const USAGE: u8 = 2;
pub(crate) const CONNECTION: u8 = 3;
pub(crate) const INTEGRITY: u8 = 4;
pub(crate) const REFUSED: u8 = 5;
pub(crate) const SERVER: u8 = 6;
pub(crate) const INTERRUPTED: u8 = 130;

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }

    /// A usage error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure::new(USAGE, message)
    }

    /// A local file's failure: the message names the path.
    pub(crate) fn local(path: &std::path::Path, e: impl fmt::Display) -> Self {
        Failure::new(LOCAL, format!("{}: {e}", path.display()))
    }

    /// A transfer's failure: `party` is the server (`server 127.0.0.1:7470`)
    /// or, for a local file's IO error, the file.
    pub(crate) fn transfer(party: &str, local: Option<&std::path::Path>, e: Error) -> Self {
        let code = classify(&e);
        let message = match (&e, local) {
            (Error::Io(_), Some(path)) if code == LOCAL => format!("{}: {e}", path.display()),
            (Error::Cancelled, _) => "interrupted".to_string(),
            _ => format!("{party}: {e}"),
        };
        Failure::new(code, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(classify(&e), e.to_string())
    }
}

/// A benchmark harness failure: a transfer's error keeps its exit code; a
/// received copy that is not the source is an integrity failure; anything
/// else (a child, a file) is local.
impl From<HarnessError> for Failure {
    fn from(e: HarnessError) -> Self {
        match e {
            HarnessError::Transfer(e) => Failure::from(e),
            HarnessError::Mismatch(_) => Failure::new(INTEGRITY, e.to_string()),
            other => Failure::new(LOCAL, other.to_string()),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::new(LOCAL, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::new(LOCAL, message)
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for Failure {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        match e.downcast::<Error>() {
            Ok(e) => Failure::from(*e),
            Err(e) => match e.downcast::<HarnessError>() {
                Ok(e) => Failure::from(*e),
                Err(e) => Failure::new(LOCAL, e.to_string()),
            },
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::new(LOCAL, e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::new(LOCAL, e.to_string())
    }
}

/// The exit code for a library error.
pub(crate) fn classify(e: &Error) -> u8 {
    use std::io::ErrorKind::*;
    match e {
        Error::Cancelled => INTERRUPTED,
        Error::Decode(_) | Error::Safetensors(_) | Error::Protocol(_) | Error::Tensor { .. } => INTEGRITY,
        Error::NotFound { .. } | Error::ItemNotFound { .. } => REFUSED,
        Error::InvalidName { .. } => USAGE,
        Error::Status { status, .. } if (400..500).contains(status) => REFUSED,
        Error::Status { .. } => SERVER,
        Error::Aborted { code, .. } if *code == AbortCode::CHECKSUM => INTEGRITY,
        Error::Aborted { code, .. } if *code == AbortCode::NOT_FOUND => REFUSED,
        Error::Aborted { .. } => SERVER,
        Error::Http(_) | Error::Timeout(_) => CONNECTION,
        Error::Store(e) => super::store::classify(e),
        Error::Io(io) => match io.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | AddrNotAvailable | AddrInUse
            | TimedOut | BrokenPipe | UnexpectedEof | HostUnreachable | NetworkUnreachable => CONNECTION,
            _ => LOCAL,
        },
        _ => LOCAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_refused_and_server() {
        assert_eq!(classify(&Error::Status { status: 403, message: String::new() }), REFUSED);
        assert_eq!(classify(&Error::Status { status: 503, message: String::new() }), SERVER);
        assert_eq!(classify(&Error::NotFound { name: "x".into() }), REFUSED);
    }

    #[test]
    fn integrity_and_connection_and_interrupt() {
        let crc = tensorwire::wire::DecodeError::PayloadChecksum { item: 0, offset: 0, expected: 1, actual: 2 };
        assert_eq!(classify(&Error::Decode(crc)), INTEGRITY);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&Error::Io(refused)), CONNECTION);
        assert_eq!(classify(&Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied))), LOCAL);
        assert_eq!(classify(&Error::Cancelled), INTERRUPTED);
        let aborted = Error::Aborted { code: AbortCode::NOT_FOUND, message: "no tensor".into() };
        assert_eq!(classify(&aborted), REFUSED);
    }

    #[test]
    fn harness_failures_keep_the_transfer_code_or_say_integrity() {
        let crc = tensorwire::wire::DecodeError::PayloadChecksum { item: 0, offset: 0, expected: 1, actual: 2 };
        assert_eq!(Failure::from(HarnessError::Transfer(Error::Decode(crc))).code, INTEGRITY);
        assert_eq!(Failure::from(HarnessError::Mismatch("a received tensor has other values")).code, INTEGRITY);
        assert_eq!(Failure::from(HarnessError::UnknownRole("x".into())).code, LOCAL);
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(HarnessError::Mismatch("shorter"));
        assert_eq!(Failure::from(boxed).code, INTEGRITY);
    }
}
