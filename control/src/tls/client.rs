//! Clients reaching a replica over `https://`: how they know it is their mesh's control plane.
//! Either by CA certificates they hold (`SLUICE_CONTROL_CA`, a PEM file), or by the mesh CA's
//! SHA-256 pinned in advance (a join token carries it, as kubeadm's discovery hash does;
//! `SLUICE_CONTROL_CA_SHA256` for the CLI): the replica's chain must include a CA with that
//! digest, and the replica's certificate must chain to it and name the host dialled.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::store::sha256_hex;

/// How a client checks the control service it reaches over `https://`, and the certificate
/// it shows in turn, if it has one.
#[derive(Clone, Default)]
pub struct ControlTrust {
    roots: Vec<CertificateDer<'static>>,
    /// The SHA-256 (hex) of the mesh CA's certificate.
    pinned: Option<String>,
    /// A proxy's workload certificate: it subscribes with mutual TLS, so the control
    /// service knows its SPIFFE ID.
    client_certificate: Option<Arc<dyn ResolvesClientCert>>,
}

// === impl ControlTrust ===

impl ControlTrust {
    /// Trusts the CA whose certificate has this SHA-256 (hex).
    pub fn pinned(digest: &str) -> Self {
        Self {
            pinned: Some(digest.to_ascii_lowercase()),
            ..Self::default()
        }
    }

    /// From the environment: `SLUICE_CONTROL_CA` (a PEM file of CA certificates) and
    /// `SLUICE_CONTROL_CA_SHA256` (the mesh CA's digest).
    pub fn from_env() -> Result<Self, String> {
        let mut trust = Self::default();
        if let Some(file) = std::env::var_os("SLUICE_CONTROL_CA") {
            let pem = std::fs::read(&file).map_err(|e| {
                format!(
                    "SLUICE_CONTROL_CA={}: {e}",
                    std::path::Path::new(&file).display()
                )
            })?;
            trust.roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("SLUICE_CONTROL_CA: not PEM certificates: {e}"))?;
        }
        if let Ok(digest) = std::env::var("SLUICE_CONTROL_CA_SHA256") {
            let digest = digest.trim().trim_start_matches("sha256:");
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(
                    "SLUICE_CONTROL_CA_SHA256: expected the 64 hex digits `sluice control` prints"
                        .into(),
                );
            }
            trust.pinned = Some(digest.to_ascii_lowercase());
        }
        Ok(trust)
    }

    /// The environment's trust ([`ControlTrust::from_env`]), and the mesh CA a join token
    /// names, if it names one.
    pub fn for_join_token(join_token: Option<&str>) -> Result<Self, String> {
        let mut trust = Self::from_env()?;
        if let Some((_, Some(digest))) = join_token.map(crate::tokens::split_token) {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(
                    "the join token's CA digest (after the '.') is not 64 hex digits: the token file is damaged; make a new one with `sluice join-token`".into(),
                );
            }
            trust.pinned = Some(digest.to_ascii_lowercase());
        }
        Ok(trust)
    }

    /// Shows the certificate `resolver` gives (kept current as it renews) to the replica.
    pub fn with_client_certificate(mut self, resolver: Arc<dyn ResolvesClientCert>) -> Self {
        self.client_certificate = Some(resolver);
        self
    }

    /// Whether it can check anything at all.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty() && self.pinned.is_none()
    }

    /// A rustls client config that checks the replica this way, speaking HTTP/2.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in &self.roots {
            roots
                .add(der.clone())
                .map_err(|e| format!("SLUICE_CONTROL_CA: {e}"))?;
        }
        let by_roots = (!roots.is_empty())
            .then(|| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .transpose()?;
        let verifier = MeshCaVerifier {
            by_roots,
            pinned: self.pinned.clone(),
            provider: provider.clone(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.client_certificate {
            Some(resolver) => builder.with_client_cert_resolver(Arc::clone(resolver)),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Verifies a replica by the roots given, else by the pinned CA found in its chain.
#[derive(Debug)]
struct MeshCaVerifier {
    by_roots: Option<Arc<WebPkiServerVerifier>>,
    pinned: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut refused = None;
        if let Some(verifier) = &self.by_roots {
            match verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(verified) => return Ok(verified),
                Err(error) => refused = Some(error),
            }
        }
        let Some(pinned) = &self.pinned else {
            return Err(refused.unwrap_or_else(|| rustls::Error::General("no trusted CA".into())));
        };
        let ca = intermediates
            .iter()
            .find(|der| sha256_hex(der.as_ref()) == *pinned)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the control service's CA is not the mesh CA pinned (sha256 {pinned}, from the join token or SLUICE_CONTROL_CA_SHA256): this is not your mesh's control plane"
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
