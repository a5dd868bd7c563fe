//! TLS for the tests: a throwaway CA issuing server and client certificates (rcgen), and a
//! rustls client that speaks HTTP/1.1 or HTTP/2 (by ALPN) to a TLS listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::client::Reply;

/// A CA for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// Writes the CA certificate to `<folder>/ca.pem`; returns its path.
    pub fn write(&self, folder: &Path) -> PathBuf {
        let file = folder.join("ca.pem");
        std::fs::write(&file, &self.pem).unwrap();
        file
    }

    /// A server certificate for DNS `names`.
    pub fn server(&self, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        self.issue(params)
    }

    /// A client certificate whose identity is URI SAN `uri` (a SPIFFE ID).
    pub fn client(&self, uri: &str) -> Issued {
        self.issue(client_params(uri))
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, uri: &str) -> Issued {
        let mut params = client_params(uri);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn client_params(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "test client");
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    params
}

impl Issued {
    /// Writes `<name>.pem` and `<name>.key` into `folder`; returns their paths.
    pub fn write(&self, folder: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = folder.join(format!("{name}.pem"));
        let key = folder.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

/// How a test client connects.
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts `ca` (PEM), offers `alpn`, and presents `identity` when given.
    pub fn new(ca: &str, alpn: &[&str], identity: Option<&Issued>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(ca) {
            roots.add(cert).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(issued) => {
                use rustls::pki_types::pem::PemObject;
                let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
                builder
                    .with_client_auth_cert(pem_certs(&issued.cert), key)
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self {
            config: Arc::new(config),
        }
    }

    /// A handshake with `addr`, asking for `server_name`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let stream = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, stream)
            .await
    }

    /// `GET path` over a new TLS connection, in the protocol ALPN chose.
    pub async fn get(&self, addr: SocketAddr, server_name: &str, path: &str) -> Reply {
        let stream = self.connect(addr, server_name).await.unwrap();
        send(stream, path).await
    }
}

/// One request on an established TLS connection: HTTP/2 if ALPN chose `h2`.
pub async fn send(stream: TlsStream<TcpStream>, path: &str) -> Reply {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::get(path)
        .header("host", "tls.test")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = {
            let (mut parts, body) = request.into_parts();
            parts.uri = format!("https://tls.test{path}").parse().unwrap();
            parts.headers.remove("host");
            Request::from_parts(parts, body)
        };
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut headers = parts.headers;
    headers.insert("x-test-version", format!("{version:?}").parse().unwrap());
    Reply {
        status: parts.status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        trailers: None,
    }
}

/// The DNS SANs of the certificate the server presented on `stream`.
pub fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    use x509_cert::der::Decode;
    let chain = stream.get_ref().1.peer_certificates().unwrap();
    let cert = x509_cert::Certificate::from_der(chain[0].as_ref()).unwrap();
    let (_, names) = cert
        .tbs_certificate
        .get::<x509_cert::ext::pkix::SubjectAltName>()
        .unwrap()
        .unwrap();
    names
        .0
        .iter()
        .filter_map(|name| match name {
            x509_cert::ext::pkix::name::GeneralName::DnsName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}
