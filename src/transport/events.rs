//! [`ServerEvent`]: what a [`Server`](super::Server) tells its log, with the
//! [`Peer`] of each request.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Peer;

/// Receives the server's [`ServerEvent`]s (see
/// [`Server::with_events`](super::Server::with_events)). Called on the
/// connection's task: keep it short (write a line, push to a channel).
pub type EventFn = Arc<dyn Fn(&ServerEvent) + Send + Sync>;

/// Something a server did, for its log.
///
/// ```
/// use tensorwire::transport::{Peer, ServerEvent};
/// let event = ServerEvent::Request {
///     peer: Peer::anonymous(Some("127.0.0.1:5000".parse().unwrap())),
///     method: "PUT".into(),
///     name: "updates/a".into(),
///     status: 403,
///     message: Some("pushes are not allowed".into()),
/// };
/// assert_eq!(event.to_string(), "127.0.0.1:5000 (no client certificate) PUT updates/a -> 403: pushes are not allowed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A request was answered (or failed after its response had started).
    Request {
        /// Who asked.
        peer: Peer,
        /// `GET` or `PUT` (or whatever else was refused).
        method: String,
        /// The request path's object name, or the path when it has none.
        name: String,
        /// The response status.
        status: u16,
        /// Why, for an error status.
        message: Option<String>,
    },
    /// A connection failed before any request: a TLS handshake that was
    /// refused (no or a bad client certificate, a cleartext client on the
    /// TLS port), or a peer that is not HTTP/2 (a TLS client on a
    /// cleartext port).
    ConnectionFailed {
        /// The remote address.
        addr: SocketAddr,
        /// What went wrong, as the crate's [`Error`](crate::Error) says it.
        error: String,
    },
    /// A verified identity is over its connection bound; its requests on
    /// this connection are answered `503`.
    IdentityOverLimit {
        /// Who.
        peer: Peer,
    },
}

impl fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::Request { peer, method, name, status, message } => {
                write!(f, "{peer} {method} {name} -> {status}")?;
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            ServerEvent::ConnectionFailed { addr, error } => write!(f, "{addr}: connection refused: {error}"),
            ServerEvent::IdentityOverLimit { peer } => {
                write!(f, "{peer}: over its connection limit; its requests are answered 503")
            }
        }
    }
}
