//! A listener's TLS side: the rustls server config built from its `tls:` block, and the
//! handshake with a downstream client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs;
use super::handshake::failure_reason;
use super::info::TlsInfo;
use super::mesh::{CurrentCertificate, MeshIdentity};
use super::sni::CertificatesByName;
use crate::config::{ClientCertificate, ListenerTls, MeshMode};

/// What a listener needs to accept TLS, built once per config.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    /// Where the served certificate's facts come from.
    served: Served,
    pub handshake_timeout: Duration,
    /// Plaintext clients are served too (permissive).
    pub accept_plaintext: bool,
}

/// A refused `tls:` block: the field path below it and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsConfigError {
    pub path: String,
    pub reason: String,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("{reason}: {source}")]
    Failed {
        reason: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl HandshakeError {
    /// The short reason, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Failed { reason, .. } => reason,
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("served", &self.served)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn problem(path: impl Into<String>, reason: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError {
        path: path.into(),
        reason: reason.to_string(),
    }
}

impl ServerTls {
    /// Reads the certificates, keys and CA of `config` (paths relative to `base`); `mesh`
    /// is this proxy's workload identity, for `mesh:`. Errors name the field below `tls`
    /// (`certificates[1].key`).
    pub fn load(
        config: &ListenerTls,
        base: &Path,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Self, TlsConfigError> {
        if let Some(mode) = config.mesh {
            return Self::mesh(config, mode, mesh);
        }
        if config.certificates.is_empty() {
            return Err(problem(
                "certificates",
                "at least one certificate is needed",
            ));
        }
        let mut served = Vec::with_capacity(config.certificates.len());
        for (index, entry) in config.certificates.iter().enumerate() {
            let (key, facts) =
                certs::certified_key(&base.join(&entry.cert), &base.join(&entry.key))
                    .map_err(|e| problem(format!("certificates[{index}]"), e))?;
            let names = if entry.server_names.is_empty() {
                facts.dns_sans.clone()
            } else {
                entry.server_names.clone()
            };
            served.push((key, facts, names));
        }
        let certificates = Arc::new(CertificatesByName::new(served));

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = versions(config.min_version.as_ref())?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| problem("min_version", e))?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let roots =
                    certs::load_roots(&base.join(ca)).map_err(|e| problem("client_ca", e))?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match config.client_certificate {
                    Some(ClientCertificate::Optional) => verifier.allow_unauthenticated(),
                    Some(ClientCertificate::Required) | None => verifier,
                };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| problem("client_ca", e))?,
                )
            }
            None if config.client_certificate.is_some() => {
                return Err(problem(
                    "client_certificate",
                    "needs client_ca, the CAs client certificates must chain to",
                ));
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(Arc::clone(&certificates) as _);
        server.alpn_protocols = alpn(config);
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            served: Served::ByName(certificates),
            handshake_timeout: handshake_timeout(config),
            accept_plaintext: config.accept_plaintext,
        })
    }

    /// Mesh mTLS: the workload certificate, clients verified against the mesh CA.
    fn mesh(
        config: &ListenerTls,
        mode: MeshMode,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Self, TlsConfigError> {
        let identity = mesh.ok_or_else(super::mesh::no_identity)?;
        if !config.certificates.is_empty() || config.client_ca.is_some() {
            return Err(problem(
                "mesh",
                "the mesh brings the certificate and the CA: drop certificates and client_ca",
            ));
        }
        if mode == MeshMode::Strict && config.accept_plaintext {
            return Err(problem(
                "accept_plaintext",
                "strict mesh mode admits only mesh clients: use mesh: permissive to serve plaintext too",
            ));
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(identity.roots(), identity.provider());
        let verifier = match mode {
            MeshMode::Strict => verifier,
            MeshMode::Permissive => verifier.allow_unauthenticated(),
        };
        let mut server = ServerConfig::builder_with_provider(identity.provider())
            .with_protocol_versions(versions(config.min_version.as_ref())?)
            .map_err(|e| problem("min_version", e))?
            .with_client_cert_verifier(verifier.build().map_err(|e| problem("mesh", e))?)
            .with_cert_resolver(Arc::new(CurrentCertificate(Arc::clone(identity))));
        server.alpn_protocols = alpn(config);
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            served: Served::Mesh(Arc::clone(identity)),
            handshake_timeout: handshake_timeout(config),
            accept_plaintext: mode == MeshMode::Permissive || config.accept_plaintext,
        })
    }

    /// The server side of a handshake, or with `accept_plaintext` the connection as it is
    /// when its first byte is not a TLS handshake record. One `handshake_timeout` covers
    /// both the wait for that byte and the handshake.
    pub async fn accept_or_plaintext(&self, stream: TcpStream) -> Result<Accepted, HandshakeError> {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        if self.accept_plaintext && !self.speaks_tls(&stream, deadline).await? {
            return Ok(Accepted::Plaintext(stream));
        }
        let (stream, info) = self.accept_until(stream, deadline).await?;
        Ok(Accepted::Tls(Box::new(stream), info))
    }

    /// Whether a client on `stream` starts a TLS handshake: its first byte is a TLS
    /// handshake record (0x16). Reads nothing away. `Err` if it sent nothing in time.
    async fn speaks_tls(
        &self,
        stream: &TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<bool, HandshakeError> {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first))
            .await
            .map_err(|_elapsed| HandshakeError::Timeout(self.handshake_timeout))?;
        match peeked {
            Ok(0) => Err(HandshakeError::Failed {
                reason: "closed_early",
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(_) => Ok(first[0] == TLS_HANDSHAKE_RECORD),
            Err(source) => Err(HandshakeError::Failed {
                reason: "io_error",
                source,
            }),
        }
    }

    /// Completes the server side of a handshake on `stream` by `deadline`.
    async fn accept_until(
        &self,
        stream: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), HandshakeError> {
        let accepting = self.acceptor.accept(stream);
        let stream = tokio::time::timeout_at(deadline, accepting)
            .await
            .map_err(|_elapsed| HandshakeError::Timeout(self.handshake_timeout))?
            .map_err(|source| HandshakeError::Failed {
                reason: failure_reason(&source),
                source,
            })?;
        let connection = stream.get_ref().1;
        let local = match &self.served {
            Served::ByName(certificates) => certificates.facts_for(connection.server_name()),
            Served::Mesh(identity) => Some(Arc::clone(&identity.current().facts)),
        };
        let info = TlsInfo::of(connection, local);
        Ok((stream, info))
    }
}

/// A connection on a TLS listener, ready to serve.
pub enum Accepted {
    Tls(Box<TlsStream<TcpStream>>, TlsInfo),
    /// A plaintext client of a listener with `accept_plaintext` (or permissive mesh mode).
    Plaintext(TcpStream),
}

/// Where a listener's certificate comes from.
#[derive(Debug)]
enum Served {
    /// Files, chosen by SNI.
    ByName(Arc<CertificatesByName>),
    /// The workload identity.
    Mesh(Arc<MeshIdentity>),
}

fn alpn(config: &ListenerTls) -> Vec<Vec<u8>> {
    match &config.alpn {
        Some(protocols) => protocols.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    }
}

fn handshake_timeout(config: &ListenerTls) -> Duration {
    config
        .handshake_timeout
        .map_or(Duration::from_secs(10), |t| t.0)
}

/// The content type of a TLS handshake record, the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn versions(
    min_version: Option<&serde_yaml::Value>,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], TlsConfigError> {
    static BOTH: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let text = match min_version {
        None => return Ok(BOTH),
        Some(serde_yaml::Value::String(text)) => text.clone(),
        // `min_version: 1.2` reads as a number.
        Some(serde_yaml::Value::Number(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
    };
    match text.trim_start_matches("TLSv") {
        "1.2" => Ok(BOTH),
        "1.3" => Ok(ONLY_13),
        _ => Err(problem(
            "min_version",
            format!("{text} is not a version Sluice accepts (1.2 or 1.3)"),
        )),
    }
}
