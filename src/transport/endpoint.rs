//! [`Endpoint`]: where a server is, and whether it speaks TLS, from an
//! `http://` or `https://` URL (SPEC.md §8.1).

use std::fmt;

use crate::Error;

/// The port a URL without one means.
pub const DEFAULT_PORT: u16 = 7470;

/// A server to connect to: `http://HOST[:PORT]` is cleartext HTTP/2 with
/// prior knowledge (h2c), `https://HOST[:PORT]` is TLS 1.3 with ALPN `h2`,
/// and the host is also the name the server's certificate must carry.
///
/// ```
/// use tensorwire::transport::Endpoint;
/// let (ep, path) = Endpoint::parse("https://models.site-1.example:8443/objects/global.safetensors").unwrap();
/// assert!(ep.tls);
/// assert_eq!(ep.addr(), "models.site-1.example:8443");
/// assert_eq!(path, "/objects/global.safetensors");
/// let (ep, _) = Endpoint::parse("http://[::1]/objects/x").unwrap();
/// assert_eq!((ep.tls, ep.host.as_str(), ep.port), (false, "::1", 7470));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether to speak TLS (`https://`).
    pub tls: bool,
    /// The host name or IP address (without IPv6 brackets): what the TLS
    /// server's certificate is checked against.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses a URL into the endpoint and the URL's path.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a URL that is not `http://` or `https://`
    /// or has no host.
    pub fn parse(url: &str) -> Result<(Endpoint, String), Error> {
        let invalid = |reason| Error::InvalidUrl { url: url.to_string(), reason };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("only http:// (cleartext HTTP/2) and https:// (TLS) are supported")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(DEFAULT_PORT);
        Ok((Endpoint { tls, host, port }, uri.path().to_string()))
    }

    /// `host:port`, with brackets around an IPv6 address, for connecting.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_other_schemes_and_missing_hosts() {
        for bad in ["ftp://h/objects/x", "h:1/objects/x", "/objects/x", "not a url"] {
            assert!(matches!(Endpoint::parse(bad), Err(Error::InvalidUrl { .. })), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_round_trips_ipv6() {
        let (ep, _) = Endpoint::parse("https://[::1]:9000/objects/a").expect("parse");
        assert_eq!(ep.to_string(), "https://[::1]:9000");
    }
}
