//! A replica serving TLS: its certificate comes from the mesh CA, for the names it is reached
//! by, and is issued again every day (valid for a week), so it never lapses while the replica
//! runs. Clients may present a certificate from the mesh CA (a proxy's workload identity);
//! the replica then knows the peer's SPIFFE ID.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::ca::{CaError, MeshCa};

/// How long a replica certificate is valid, and how often a new one is issued.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service knows of the other end of a control connection.
#[derive(Debug, Clone)]
pub struct ControlPeer {
    pub address: Option<SocketAddr>,
    /// The SPIFFE ID of the mesh certificate the client presented, if it did.
    pub spiffe_id: Option<String>,
}

/// A control connection: plaintext (loopback only) or TLS.
pub enum ControlConn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The replica's current certificate, swapped when renewed.
struct ReplicaCert(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for ReplicaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaCert")
    }
}

impl ResolvesServerCert for ReplicaCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS for one replica: the acceptor, and the task renewing its certificate.
pub struct ReplicaTls {
    acceptor: TlsAcceptor,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for ReplicaTls {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl ReplicaTls {
    /// A certificate from `ca` for `names` (DNS names or IP addresses), and a server config
    /// that asks clients for a mesh certificate without requiring one.
    pub fn start(ca: Arc<MeshCa>, names: Vec<String>) -> Result<Self, CaError> {
        let cert = Arc::new(ReplicaCert(ArcSwap::from_pointee(issue(&ca, &names)?)));
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(ca.trust_bundle().as_bytes()).flatten() {
            roots
                .add(der)
                .map_err(|e| CaError::Signing(format!("the mesh CA as a TLS root: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| CaError::Signing(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Signing(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        // h2 for gRPC; http/1.1 for `GET /ready`.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                match issue(&ca, &names) {
                    Ok(renewed) => {
                        cert.0.store(Arc::new(renewed));
                        tracing::info!("replica certificate renewed");
                    }
                    Err(error) => {
                        tracing::error!(%error, "could not renew the replica certificate; the current one stays")
                    }
                }
            }
        });
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            renewal,
        })
    }
}

/// The names a replica's certificate carries: `extra` (`--tls-name`), the host part of its
/// name, the machine's host name, `localhost`, loopback, and the address it listens on.
pub fn replica_names(extra: &[String], name: &str, listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = extra.to_vec();
    let host = name.rsplit_once(':').map_or(name, |(host, _)| host);
    names.push(host.to_owned());
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(hostname.trim().to_owned());
    }
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

fn issue(ca: &MeshCa, names: &[String]) -> Result<CertifiedKey, CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Signing(e.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "sluice control replica");
    params.subject_alt_names = names
        .iter()
        .filter_map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Some(SanType::IpAddress(ip)),
            Err(_) => name.clone().try_into().ok().map(SanType::DnsName),
        })
        .collect();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + VALIDITY).into();
    let cert = ca.sign(&params, &key)?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(CertificateDer::pem_slice_iter(ca.trust_bundle().as_bytes()).flatten());
    let private = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| CaError::Signing(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| CaError::Signing(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Accepts on `listener` (TLS with `tls`, else plaintext) and hands each connection, once
/// ready, to the server. Ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<ReplicaTls>>,
) -> mpsc::Receiver<std::io::Result<ControlConn>> {
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a control connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = ready.closed() => return,
            };
            // Without TCP_NODELAY, an update written in two segments waits for the proxy's
            // delayed ACK: 40ms on Linux, for every push.
            let _ = stream.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                if ready.send(Ok(ControlConn::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let ready = ready.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(ControlConn::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "control TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "control TLS handshake timed out"),
                }
            });
        }
    });
    incoming
}

// === impl ControlConn ===

impl Connected for ControlConn {
    type ConnectInfo = ControlPeer;

    fn connect_info(&self) -> ControlPeer {
        match self {
            Self::Plain(stream) => ControlPeer {
                address: stream.peer_addr().ok(),
                spiffe_id: None,
            },
            Self::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ControlPeer {
                    address: tcp.peer_addr().ok(),
                    spiffe_id: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| spiffe_id_of(leaf.as_ref())),
                }
            }
        }
    }
}

/// The `spiffe://` URI SAN of a DER certificate.
fn spiffe_id_of(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let (_, names) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    names.0.into_iter().find_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) if uri.as_str().starts_with("spiffe://") => {
            Some(uri.to_string())
        }
        _ => None,
    })
}

impl AsyncRead for ControlConn {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(context, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buf),
        }
    }
}

impl AsyncWrite for ControlConn {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(context, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(context),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}
