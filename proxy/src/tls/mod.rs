//! TLS with rustls: termination on listeners (per-SNI certificates, ALPN, client
//! certificates), origination to clusters, passthrough by server name, and what a handshake established, for filters and
//! metrics.

mod certs;
mod client;
mod handshake;
mod info;
mod mesh;
mod names;
mod peek;
mod server;
mod sni;

pub use certs::{CertError, CertificateFacts};
pub use client::ClientTls;
pub use info::TlsInfo;
pub use mesh::{CurrentCertificate, IssuedIdentity, MeshIdentity, UnusableCertificate};
pub use names::NameTable;
pub use peek::{PeekError, read_server_name};
pub use server::{Accepted, HandshakeError, ServerTls, TlsConfigError};
