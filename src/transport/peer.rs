//! [`Peer`] and [`Identity`]: who is at the other end of a connection, as
//! far as the TLS layer verified it (SPEC.md §8.9).

use std::fmt;
use std::net::SocketAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Error;

/// A client's verified identity: the subject common name and the subject
/// alternative names of the certificate it presented, once the server's
/// verifier has checked that the certificate chains to the configured
/// client CA (mutual TLS).
///
/// SAN entries are kept as text: DNS names and URIs as they are, IP
/// addresses in their usual notation, e-mail addresses as `user@host`.
///
/// ```
/// use tensorwire::transport::Identity;
/// let id = Identity::new(Some("site-1".into()), vec!["site-1.example.org".into()]);
/// assert_eq!(id.names().collect::<Vec<_>>(), ["site-1", "site-1.example.org"]);
/// assert_eq!(id.to_string(), "CN=site-1 SAN=site-1.example.org");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    common_name: Option<String>,
    alt_names: Vec<String>,
}

impl Identity {
    /// An identity with these names (for push handlers under test, or
    /// identities established outside this crate).
    pub fn new(common_name: Option<String>, alt_names: Vec<String>) -> Self {
        Identity { common_name, alt_names }
    }

    /// Reads the subject CN and the SAN entries of a DER certificate. It
    /// does not verify anything: call it on a certificate the TLS layer has
    /// verified.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] when the bytes are not an X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let bad = |e: &dyn fmt::Display| Error::Certificate { reason: e.to_string() };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(&e))?;
        let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        let mut alt_names = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| bad(&e))? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        alt_names.push((*s).to_string())
                    }
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            alt_names.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Identity { common_name, alt_names })
    }

    /// The subject common name, if the certificate has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The subject alternative names.
    pub fn alt_names(&self) -> &[String] {
        &self.alt_names
    }

    /// The CN (first, if any) and every SAN entry: what `--allow-push` and
    /// `--allow-get` patterns are matched against.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name.iter().chain(self.alt_names.iter()).map(String::as_str)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.common_name {
            Some(cn) => write!(f, "CN={cn}")?,
            None => write!(f, "CN=-")?,
        }
        if !self.alt_names.is_empty() {
            write!(f, " SAN={}", self.alt_names.join(","))?;
        }
        Ok(())
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The other end of one connection: its address, and its verified
/// [`Identity`] when it presented a client certificate over mutual TLS.
/// Push handlers, the [`Registry`](super::Registry)'s access rules and the
/// server's [`ServerEvent`](super::ServerEvent)s receive it.
///
/// ```
/// use tensorwire::transport::Peer;
/// let peer = Peer::anonymous(Some("127.0.0.1:5000".parse().unwrap()));
/// assert!(peer.identity().is_none());
/// assert_eq!(peer.to_string(), "127.0.0.1:5000 (no client certificate)");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    addr: Option<SocketAddr>,
    identity: Option<Identity>,
}

impl Peer {
    /// A peer without a verified identity (cleartext, or TLS without a
    /// client certificate); `addr` is `None` for in-memory connections.
    pub fn anonymous(addr: Option<SocketAddr>) -> Self {
        Peer { addr, identity: None }
    }

    /// A peer whose certificate was verified.
    pub fn verified(addr: Option<SocketAddr>, identity: Identity) -> Self {
        Peer { addr, identity: Some(identity) }
    }

    /// The remote address, when the connection is a socket.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The verified identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}")?,
            None => write!(f, "-")?,
        }
        match &self.identity {
            Some(id) => write!(f, " ({id})"),
            None => write!(f, " (no client certificate)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_der_rejects_garbage() {
        assert!(matches!(Identity::from_der(b"not a certificate"), Err(Error::Certificate { .. })));
    }

    #[test]
    fn display_without_common_name() {
        let id = Identity::new(None, vec!["10.0.0.1".into(), "a.example".into()]);
        assert_eq!(id.to_string(), "CN=- SAN=10.0.0.1,a.example");
        assert_eq!(id.names().count(), 2);
    }
}
