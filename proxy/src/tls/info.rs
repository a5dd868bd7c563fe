//! What one TLS connection's handshake established, for filters (Envoy's `connection.*`
//! properties) and logs.

use std::sync::Arc;

use rustls::ServerConnection;

use super::certs::{CertificateFacts, facts};

#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// SNI, when the client sent one.
    pub server_name: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate (mutual TLS), when it sent one.
    pub peer: Option<CertificateFacts>,
    /// The certificate this proxy served.
    pub local: Option<Arc<CertificateFacts>>,
}

impl TlsInfo {
    /// `local`: the facts of the certificate this proxy served.
    pub fn of(connection: &ServerConnection, local: Option<Arc<CertificateFacts>>) -> Self {
        let server_name = connection.server_name().map(str::to_owned);
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        let peer = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| facts(leaf).ok());
        Self {
            local,
            server_name,
            version,
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer,
        }
    }

    /// The workload identity of the client: its first URI SAN (a SPIFFE ID in a mesh), else
    /// its first DNS SAN, else its subject.
    pub fn peer_principal(&self) -> Option<&str> {
        let peer = self.peer.as_ref()?;
        peer.uri_sans
            .first()
            .or_else(|| peer.dns_sans.first())
            .map(String::as_str)
            .or(Some(peer.subject.as_str()))
    }
}
