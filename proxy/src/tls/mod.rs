//! TLS with rustls: termination on listeners (per-SNI certificates, ALPN, client
//! certificates), origination to clusters, and what a handshake established, for filters and
//! metrics.

mod certs;
mod client;
mod handshake;
mod info;
mod server;
mod sni;

pub use certs::{CertError, CertificateFacts};
pub use client::ClientTls;
pub use info::TlsInfo;
pub use server::{HandshakeError, ServerTls, TlsConfigError};
