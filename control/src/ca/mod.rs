//! The mesh certificate authority: the control service signs short-lived workload
//! certificates whose identity is a SPIFFE ID, `spiffe://<trust domain>/<workload>`, for
//! proxies that prove with a join token which workload they are (see `tokens.rs`).
//!
//! The CA's key and certificate live in `<data dir>/ca/` and survive restarts, so the
//! certificates it issued stay valid. The workload's private key never leaves the proxy: it
//! sends only its public key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};

use crate::store::{StoreError, write_atomically, write_private};

/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest workload certificate the service issues.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{}: {what}", path.display())]
    Unusable { path: PathBuf, what: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{0}")]
    Refused(String),
}

pub struct MeshCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A CA's key and certificate, as a store keeps them.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    pub key_pem: String,
    pub cert_pem: String,
}

/// A workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The leaf, then the CA.
    pub chain_pem: String,
    pub spiffe_id: String,
    pub not_after_unix: u64,
}

/// A P-256 public key as its uncompressed point: what a proxy sends.
struct WorkloadKey(Vec<u8>);

impl PublicKeyData for WorkloadKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl MeshCa {
    /// Opens the CA of `data_dir` for `trust_domain`, creating it on first use.
    pub fn open(data_dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        check_trust_domain(trust_domain)?;
        let folder = data_dir.join("ca");
        std::fs::create_dir_all(&folder).map_err(|source| StoreError::Io {
            path: folder.clone(),
            source,
        })?;
        restrict_to_owner(&folder);
        let key_path = folder.join("ca.key");
        let cert_path = folder.join("ca.pem");
        let domain_path = folder.join("trust-domain");
        let unusable = |path: &Path, what: String| CaError::Unusable {
            path: path.to_owned(),
            what,
        };
        // The issuer's name is derived from the trust domain: another domain would sign
        // certificates that do not chain to the stored CA.
        match std::fs::read_to_string(&domain_path) {
            Ok(stored) if stored.trim() != trust_domain => {
                return Err(unusable(
                    &domain_path,
                    format!(
                        "this CA is for trust domain {:?}, not {trust_domain:?}: start with --trust-domain {} or use another data dir",
                        stored.trim(),
                        stored.trim()
                    ),
                ));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&domain_path, trust_domain.as_bytes())?;
            }
            Err(error) => return Err(unusable(&domain_path, error.to_string())),
        }
        let params = ca_params(trust_domain);
        let key = if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| unusable(&key_path, e.to_string()))?;
            KeyPair::from_pem(&key_pem)
                .map_err(|e| unusable(&key_path, format!("not a private key: {e}")))?
        } else {
            let key = KeyPair::generate().map_err(|e| CaError::Signing(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            let _ = std::fs::remove_file(&cert_path);
            tracing::info!(trust_domain, path = %folder.display(), "created the mesh CA");
            key
        };
        // The certificate is made from the key and the domain alone, so one lost in a crash
        // after the key was written is made again, equal for everything that chains to it.
        let ca_pem = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CaError::Signing(e.to_string()))?;
                write_atomically(&cert_path, cert.pem().as_bytes())?;
                cert.pem()
            }
            Err(error) => return Err(unusable(&cert_path, error.to_string())),
        };
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            ca_pem,
        })
    }

    /// The trust domain and material of the CA in `data_dir`, if it has one.
    pub fn read_material(data_dir: &Path) -> Result<Option<(String, CaMaterial)>, CaError> {
        let folder = data_dir.join("ca");
        let read = |name: &str| {
            let path = folder.join(name);
            std::fs::read_to_string(&path).map_err(|e| CaError::Unusable {
                path,
                what: e.to_string(),
            })
        };
        if !folder.join("ca.key").exists() {
            return Ok(None);
        }
        let material = CaMaterial {
            key_pem: read("ca.key")?,
            cert_pem: read("ca.pem")?,
        };
        Ok(Some((read("trust-domain")?.trim().to_owned(), material)))
    }

    /// A new CA for `trust_domain`: its key and self-signed certificate, in PEM.
    pub fn generate(trust_domain: &str) -> Result<CaMaterial, CaError> {
        check_trust_domain(trust_domain)?;
        let key = KeyPair::generate().map_err(|e| CaError::Signing(e.to_string()))?;
        let cert = ca_params(trust_domain)
            .self_signed(&key)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(CaMaterial {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        })
    }

    /// The CA made of stored `material` (read from `source`, for errors).
    pub fn from_material(
        trust_domain: &str,
        material: CaMaterial,
        source: &str,
    ) -> Result<Self, CaError> {
        check_trust_domain(trust_domain)?;
        let key = KeyPair::from_pem(&material.key_pem).map_err(|e| CaError::Unusable {
            path: PathBuf::from(source),
            what: format!("not a private key: {e}"),
        })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(ca_params(trust_domain), key),
            ca_pem: material.cert_pem,
        })
    }

    /// Signs `params` (a certificate for a key made here, such as a replica's) as this CA.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, CaError> {
        params
            .signed_by(key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))
    }

    /// The SHA-256 of the CA certificate (DER), in hex: what a join token pins.
    pub fn digest(&self) -> String {
        ca_digest(&self.ca_pem)
    }

    /// The CA certificate (PEM): what every proxy trusts for mesh mTLS.
    pub fn trust_bundle(&self) -> &str {
        &self.ca_pem
    }

    pub fn spiffe_id(&self, workload: &str) -> String {
        format!("spiffe://{}/{workload}", self.trust_domain)
    }

    /// Signs a certificate for `workload` over `public_key` (a P-256 point), valid for `ttl`
    /// (at most [`MAX_CERT_TTL`]) from a minute ago, to forgive clock skew.
    pub fn issue(
        &self,
        workload: &str,
        public_key: &[u8],
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        check_workload(workload)?;
        if public_key.len() != 65 || public_key[0] != 0x04 {
            return Err(CaError::Refused(
                "the public key must be an uncompressed P-256 point (65 bytes)".into(),
            ));
        }
        let spiffe_id = self.spiffe_id(workload);
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CaError::Signing(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, workload.to_owned());
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.clone().try_into().map_err(
                |_| CaError::Refused(format!("{spiffe_id:?} is not a valid URI")),
            )?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        let ttl = ttl.min(MAX_CERT_TTL);
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + ttl).into();
        let cert = params
            .signed_by(&WorkloadKey(public_key.to_vec()), &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(IssuedCertificate {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            spiffe_id,
            not_after_unix: (now + ttl)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }
}

/// The SHA-256 (hex) of the first certificate in `pem`, as DER.
pub fn ca_digest(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map_or_else(String::new, |der| crate::store::sha256_hex(der.as_ref()))
}

fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sluice mesh CA {trust_domain}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + CA_VALIDITY).into();
    params
}

/// A trust domain is a DNS-like name: lowercase letters, digits, `.`, `-`, `_`.
fn check_trust_domain(name: &str) -> Result<(), CaError> {
    let fine = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(CaError::Refused(format!(
            "trust domain {name:?}: use lowercase letters, digits, '.', '-' and '_'"
        )))
    }
}

/// A workload name is the path of its SPIFFE ID: segments of letters, digits, `.-_`,
/// separated by `/` (`ns/shop/sa/checkout`).
pub fn check_workload(name: &str) -> Result<(), CaError> {
    let fine = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
    if fine {
        Ok(())
    } else {
        Err(CaError::Refused(format!(
            "workload {name:?}: use segments of letters, digits, '.', '-' and '_' separated by '/', such as ns/shop/sa/checkout"
        )))
    }
}

/// The CA's folder is its owner's alone.
#[cfg(unix)]
fn restrict_to_owner(folder: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(error) = std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %folder.display(), %error, "could not make the CA folder private");
    }
}

#[cfg(not(unix))]
fn restrict_to_owner(_folder: &Path) {}

#[cfg(test)]
mod tests;
