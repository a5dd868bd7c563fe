//! Reading PEM files (certificate chains, private keys, CA bundles) and the facts of a
//! certificate that filters and logs see: subject, SANs, digest.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Why a certificate, key or CA file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Content {
        path: std::path::PathBuf,
        what: String,
    },
}

/// What a certificate says about whom it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// RFC 4514 form, as Envoy's `subject_*_certificate`.
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// Lowercase hex SHA-256 of the DER bytes.
    pub sha256: String,
    /// Seconds since the epoch when it stops being valid.
    pub not_after: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

fn content(path: &Path, what: impl Into<String>) -> CertError {
    CertError::Content {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// The certificates of a PEM file, in order (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| content(path, format!("no usable PRIVATE KEY block: {e}")))
}

/// A certificate chain and its key, ready to serve; the key must match the leaf.
pub fn certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, CertificateFacts), CertError> {
    let chain = load_certificates(cert)?;
    let private = load_private_key(key)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| content(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        content(
            key,
            format!(
                "does not belong to the certificate in {}: {e}",
                cert.display()
            ),
        )
    })?;
    let facts = facts(&certified.cert[0]).map_err(|e| content(cert, e))?;
    Ok((Arc::new(certified), facts))
}

/// A trust store from a PEM bundle of CA certificates.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| content(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Subject, SANs, digest and expiry of one DER certificate.
pub fn facts(der: &CertificateDer<'_>) -> Result<CertificateFacts, String> {
    let cert = x509_cert::Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let mut facts = CertificateFacts {
        subject: tbs.subject.to_string(),
        sha256: sluice_control::store::sha256_hex(der.as_ref()),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        ..CertificateFacts::default()
    };
    if let Ok(Some((_, names))) = tbs.get::<SubjectAltName>() {
        for name in names.0 {
            match name {
                GeneralName::DnsName(dns) => facts.dns_sans.push(dns.to_string()),
                GeneralName::UniformResourceIdentifier(uri) => facts.uri_sans.push(uri.to_string()),
                _ => {}
            }
        }
    }
    Ok(facts)
}
