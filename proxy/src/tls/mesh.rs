//! This proxy's workload identity in the mesh: the certificate the control service's CA issued
//! it (a SPIFFE ID, `spiffe://<trust domain>/<workload>`), renewed before it expires, and the
//! mesh's trust bundle. TLS listeners and clusters with `mesh:` use it: every new handshake
//! takes the current certificate, so a renewal needs no restart and drops no connection.
//!
//! Peers are verified by their SPIFFE ID, not a DNS name: their certificate must chain to
//! the mesh CA, and its URI SAN must match what the cluster expects.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certs::{CertificateFacts, facts};

/// One issued certificate, ready to serve.
#[derive(Debug)]
pub struct IssuedIdentity {
    pub key: Arc<CertifiedKey>,
    pub facts: Arc<CertificateFacts>,
}

pub struct MeshIdentity {
    spiffe_id: String,
    /// As the control service sent it, to notice a CA change at renewal.
    trust_bundle_pem: String,
    current: ArcSwap<IssuedIdentity>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// Why an issued certificate cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the issued certificate is unusable: {0}")]
pub struct UnusableCertificate(String);

impl IssuedIdentity {
    /// From the PEM chain the CA returned and the PKCS#8 key that stayed here.
    pub fn from_pem(chain_pem: &str, key_pkcs8: Vec<u8>) -> Result<Self, UnusableCertificate> {
        let bad = |what: String| UnusableCertificate(what);
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        let leaf = chain.first().ok_or_else(|| bad("no certificate".into()))?;
        let facts = facts(leaf).map_err(bad)?;
        let key = PrivateKeyDer::try_from(key_pkcs8).map_err(|e| bad(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| bad(format!("the key: {e}")))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| bad(format!("not for our key: {e}")))?;
        Ok(Self {
            key: Arc::new(certified),
            facts: Arc::new(facts),
        })
    }

    /// When it stops being valid.
    pub fn not_after(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.facts.not_after)
    }
}

impl MeshIdentity {
    /// The identity with its first certificate and the mesh's trust bundle (PEM).
    pub fn new(
        spiffe_id: String,
        first: IssuedIdentity,
        trust_bundle_pem: &str,
    ) -> Result<Arc<Self>, UnusableCertificate> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(trust_bundle_pem.as_bytes()) {
            let cert = cert.map_err(|e| UnusableCertificate(format!("trust bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| UnusableCertificate(format!("trust bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(UnusableCertificate("the trust bundle is empty".into()));
        }
        Ok(Arc::new(Self {
            spiffe_id,
            trust_bundle_pem: trust_bundle_pem.to_owned(),
            current: ArcSwap::from_pointee(first),
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }))
    }

    /// A stand-in identity (a throwaway self-signed CA and certificate) for validating a
    /// config with `mesh:` settings without a control service: `sluice check`. It never
    /// serves traffic.
    pub fn for_validation() -> Result<Arc<Self>, UnusableCertificate> {
        let failed = |e: rcgen::Error| UnusableCertificate(e.to_string());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
        let ca = ca_params.self_signed(&ca_key).map_err(failed)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let spiffe_id = "spiffe://validation.invalid/check".to_owned();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        leaf.subject_alt_names = vec![rcgen::SanType::URI(
            spiffe_id.clone().try_into().map_err(failed)?,
        )];
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
        let issued = IssuedIdentity::from_pem(&cert.pem(), key.serialize_der())?;
        Self::new(spiffe_id, issued, &ca.pem())
    }

    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Serves `renewed` from the next handshake on.
    pub fn renew(&self, renewed: IssuedIdentity) {
        self.current.store(Arc::new(renewed));
    }

    pub fn current(&self) -> Arc<IssuedIdentity> {
        self.current.load_full()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.provider)
    }
}

/// The refusal of a `mesh:` setting on a proxy that has no workload identity.
pub fn no_identity() -> super::server::TlsConfigError {
    super::server::TlsConfigError {
        path: "mesh".to_owned(),
        reason:
            "this proxy has no workload identity: start it with --control and --join-token-file"
                .to_owned(),
    }
}

/// Serves (and presents, as a client) the identity's current certificate.
#[derive(Debug)]
pub struct CurrentCertificate(pub Arc<MeshIdentity>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().key))
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a mesh server: its certificate chains to the mesh CA and its SPIFFE ID matches
/// one of `peers` (exact, or a prefix ending in `*`); any mesh identity when `peers` is empty.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    peers: Vec<String>,
    /// A discovered endpoint's: the identity that registered it, and no other.
    required: Option<Arc<str>>,
}

impl SpiffeServerVerifier {
    pub fn new(identity: &MeshIdentity, peers: Vec<String>) -> Self {
        Self {
            roots: identity.roots(),
            provider: identity.provider(),
            peers,
            required: None,
        }
    }

    /// Also requires exactly `spiffe_id`: the identity that registered a discovered endpoint.
    pub fn requiring(mut self, spiffe_id: Arc<str>) -> Self {
        self.required = Some(spiffe_id);
        self
    }

    fn allows(&self, spiffe_id: &str) -> bool {
        let listed = self.peers.is_empty()
            || self.peers.iter().any(|peer| match peer.strip_suffix('*') {
                Some(prefix) => spiffe_id.starts_with(prefix),
                None => spiffe_id == peer,
            });
        listed && self.required.as_deref().is_none_or(|r| r == spiffe_id)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let facts = facts(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        match facts.uri_sans.first() {
            Some(spiffe_id) if self.allows(spiffe_id) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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
