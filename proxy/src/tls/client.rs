//! A cluster's TLS side: origination to its endpoints, verifying them against a CA bundle,
//! with SNI and, for upstreams that require mutual TLS, a client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::certs;
use super::mesh::{CurrentCertificate, MeshIdentity, SpiffeServerVerifier};
use super::server::TlsConfigError;
use crate::config::{ClusterConfig, ClusterTls, UpstreamProtocol};
use crate::upstream::EndpointTarget;

pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// What the setting is made of (see [`fingerprint`]): pooled connections are kept apart
    /// by it.
    id: u64,
    /// Mesh mTLS: what it takes to verify one exact identity, for discovered endpoints.
    mesh: Option<MeshClient>,
}

/// A mesh cluster's TLS, and a connector per identity its discovered endpoints registered
/// with (a service has a handful), made on first use.
struct MeshClient {
    identity: Arc<MeshIdentity>,
    peers: Vec<String>,
    alpn: Vec<Vec<u8>>,
    by_identity: std::sync::Mutex<std::collections::HashMap<Arc<str>, TlsConnector>>,
}

/// A [`ClientTls::id`]: the same for the same settings, files and mesh identity, so pooled
/// connections stay in use across config changes that leave a cluster's TLS as it was, and
/// different otherwise. Never 0, which means plaintext.
fn fingerprint(tls: &ClusterTls, server_name: &str, alpn: &[Vec<u8>], inputs: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    format!("{tls:?}").hash(&mut hasher);
    server_name.hash(&mut hasher);
    alpn.hash(&mut hasher);
    inputs.hash(&mut hasher);
    hasher.finish().max(1)
}

/// The bytes of the files a setting was made from, for its [`fingerprint`]. They were just
/// read and parsed; a file that cannot be read again now gives a fingerprint of its own.
fn file_bytes(base: &Path, paths: &[Option<&String>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for path in paths.iter().flatten() {
        match std::fs::read(base.join(path)) {
            Ok(contents) => bytes.extend_from_slice(&contents),
            Err(error) => bytes.extend_from_slice(error.to_string().as_bytes()),
        }
        bytes.push(0);
    }
    bytes
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn problem(path: &str, reason: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl ClientTls {
    /// Reads the CA bundle and client certificate of `tls` (paths relative to `base`) for
    /// `cluster`. Errors name the field below `tls`.
    pub fn load(
        tls: &ClusterTls,
        cluster: &ClusterConfig,
        base: &Path,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Self, TlsConfigError> {
        if tls.mesh {
            return Self::mesh(tls, cluster, mesh);
        }
        let Some(ca) = &tls.ca else {
            return Err(problem(
                "ca",
                "needed to verify the endpoints (or set mesh: true for mesh mTLS)",
            ));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => default_server_name(cluster).ok_or_else(|| {
                problem(
                    "server_name",
                    "needed when the endpoints are IP addresses: the name the upstream's certificate must show",
                )
            })?,
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| problem("server_name", format!("{name:?}: {e}")))?;
        let roots = certs::load_roots(&base.join(ca)).map_err(|e| problem("ca", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| problem("ca", e))?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let chain =
                    certs::load_certificates(&base.join(cert)).map_err(|e| problem("cert", e))?;
                let key =
                    certs::load_private_key(&base.join(key)).map_err(|e| problem("key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| problem("key", format!("does not fit the certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(problem("key", "cert is set, so key is needed too")),
            (None, Some(_)) => return Err(problem("cert", "key is set, so cert is needed too")),
        };
        config.alpn_protocols = alpn(cluster);
        let files = file_bytes(base, &[Some(ca), tls.cert.as_ref(), tls.key.as_ref()]);
        let id = fingerprint(tls, &name, &config.alpn_protocols, &[&files]);
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            id,
            mesh: None,
        })
    }

    /// Mesh mTLS: present the workload certificate, verify the endpoint's SPIFFE ID.
    fn mesh(
        tls: &ClusterTls,
        cluster: &ClusterConfig,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Self, TlsConfigError> {
        let identity = mesh.ok_or_else(super::mesh::no_identity)?;
        if tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some() {
            return Err(problem(
                "mesh",
                "the mesh brings the certificate and the CA: drop ca, cert and key",
            ));
        }
        // A mesh verifies SPIFFE IDs, not names; SNI still tells a passthrough hop the way.
        let name = tls
            .server_name
            .clone()
            .or_else(|| default_server_name(cluster))
            .unwrap_or_else(|| "mesh.sluice".to_owned());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| problem("server_name", format!("{name:?}: {e}")))?;
        let verifier = SpiffeServerVerifier::new(identity, tls.peers.clone());
        let protocols = alpn(cluster);
        let connector = mesh_connector(identity, verifier, protocols.clone())
            .map_err(|e| problem("mesh", e))?;
        // The identity renews its certificate in place; a new identity is a new setting.
        let identity_address = (Arc::as_ptr(identity) as usize).to_le_bytes();
        let id = fingerprint(tls, &name, &protocols, &[&identity_address]);
        Ok(Self {
            connector,
            server_name,
            id,
            mesh: Some(MeshClient {
                identity: Arc::clone(identity),
                peers: tls.peers.clone(),
                alpn: protocols,
                by_identity: std::sync::Mutex::default(),
            }),
        })
    }

    /// Which TLS setting this is: connections made with one are pooled apart from others'.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client side of a handshake on a fresh connection to an endpoint. With mesh mTLS,
    /// an endpoint that carries the identity that registered it must show exactly that one.
    pub async fn connect(
        &self,
        stream: TcpStream,
        identity: Option<&Arc<str>>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = match (&self.mesh, identity) {
            (Some(mesh), Some(identity)) => mesh.connector_for(identity)?,
            _ => self.connector.clone(),
        };
        connector.connect(self.server_name.clone(), stream).await
    }
}

// === impl MeshClient ===

impl MeshClient {
    fn connector_for(&self, required: &Arc<str>) -> std::io::Result<TlsConnector> {
        let mut by_identity = self
            .by_identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(connector) = by_identity.get(required) {
            return Ok(connector.clone());
        }
        let verifier = SpiffeServerVerifier::new(&self.identity, self.peers.clone())
            .requiring(Arc::clone(required));
        let connector = mesh_connector(&self.identity, verifier, self.alpn.clone())
            .map_err(std::io::Error::other)?;
        by_identity.insert(Arc::clone(required), connector.clone());
        Ok(connector)
    }
}

/// A connector that shows the workload certificate and verifies peers with `verifier`.
fn mesh_connector(
    identity: &Arc<MeshIdentity>,
    verifier: SpiffeServerVerifier,
    alpn: Vec<Vec<u8>>,
) -> Result<TlsConnector, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(identity.provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCertificate(Arc::clone(identity))));
    config.alpn_protocols = alpn;
    Ok(TlsConnector::from(Arc::new(config)))
}

fn alpn(cluster: &ClusterConfig) -> Vec<Vec<u8>> {
    match cluster.protocol {
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
    }
}

/// The host name of the endpoints, when they all have the same one.
fn default_server_name(cluster: &ClusterConfig) -> Option<String> {
    let mut names =
        cluster
            .endpoints
            .iter()
            .map(|endpoint| match EndpointTarget::parse(endpoint) {
                Ok(EndpointTarget::Host { name, .. }) => Some(name),
                Ok(EndpointTarget::Address(_)) | Err(_) => None,
            });
    let first = names.next()??;
    names
        .all(|name| name.as_deref() == Some(first.as_str()))
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem()
    }

    #[test]
    fn the_same_setting_and_files_keep_their_pool_id_and_a_new_ca_gets_another() {
        let folder = std::env::temp_dir().join(format!("sluice-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("folder");
        std::fs::write(folder.join("ca.pem"), self_signed_pem("web.test")).expect("ca");
        let cluster: ClusterConfig =
            serde_yaml::from_str(r#"{ name: web, endpoints: ["web.test:443"] }"#).expect("yaml");
        let tls: ClusterTls = serde_yaml::from_str("{ ca: ca.pem }").expect("yaml");
        let load = || {
            ClientTls::load(&tls, &cluster, &folder, None)
                .expect("loads")
                .id()
        };

        let first = load();
        assert_eq!(
            load(),
            first,
            "a reload with nothing changed keeps the pooled connections"
        );
        std::fs::write(folder.join("ca.pem"), self_signed_pem("web.test")).expect("ca");
        assert_ne!(load(), first, "a new CA file is a new setting");
        assert_ne!(first, 0, "0 means plaintext");
        std::fs::remove_dir_all(&folder).expect("cleanup");
    }
}
