//! Real certificates for the TLS tests, made with rcgen: a CA, a server
//! certificate for 127.0.0.1 / ::1 / localhost, client certificates for a
//! few sites, an expired one, and one from another CA.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::TempDir;

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The test PKI, written to a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    /// The CA every good certificate chains to.
    pub ca: PathBuf,
    /// Another CA, which the server does not trust.
    pub other_ca: PathBuf,
    pub server: CertFiles,
    ca_cert: Certificate,
    ca_key: KeyPair,
    other_cert: Certificate,
    other_key: KeyPair,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let (ca_cert, ca_key) = ca("tensorwire test CA");
        let (other_cert, other_key) = ca("some other CA");
        let ca = dir.file("ca.pem", ca_cert.pem().as_bytes());
        let other_ca = dir.file("other-ca.pem", other_cert.pem().as_bytes());
        let mut pki = Pki {
            server: CertFiles { cert: PathBuf::new(), key: PathBuf::new() },
            dir,
            ca,
            other_ca,
            ca_cert,
            ca_key,
            other_cert,
            other_key,
        };
        pki.server = pki.leaf("server", &["127.0.0.1", "::1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth, false);
        pki
    }

    /// A client certificate with CN `cn` and these SANs, from the CA.
    pub fn client(&self, cn: &str, sans: &[&str]) -> CertFiles {
        self.leaf(cn, sans, ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, cn: &str) -> CertFiles {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, true)
    }

    /// A client certificate from the other CA.
    pub fn foreign_client(&self, cn: &str) -> CertFiles {
        let (cert, key) = sign(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, false, &self.other_cert, &self.other_key);
        self.write(&format!("foreign-{cn}"), &cert, &key)
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> CertFiles {
        let (cert, key) = sign(cn, sans, usage, expired, &self.ca_cert, &self.ca_key);
        self.write(&format!("{cn}{}", if expired { "-expired" } else { "" }), &cert, &key)
    }

    fn write(&self, stem: &str, cert: &Certificate, key: &KeyPair) -> CertFiles {
        CertFiles {
            cert: self.dir.file(&format!("{stem}.pem"), cert.pem().as_bytes()),
            key: self.dir.file(&format!("{stem}.key"), key.serialize_pem().as_bytes()),
        }
    }
}

fn ca(cn: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.self_signed(&key).expect("self-signed CA"), key)
}

fn sign(
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
    issuer: &Certificate,
    issuer_key: &KeyPair,
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    (params.signed_by(&key, issuer, issuer_key).expect("sign leaf"), key)
}
