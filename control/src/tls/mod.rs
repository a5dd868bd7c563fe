//! TLS on control connections. Replicas serve TLS with a certificate from the mesh CA
//! (`server.rs`); clients check it by CA certificates they hold or by the mesh CA's digest,
//! which join tokens carry (`client.rs`). Plaintext is for loopback only (the demo, tests).

mod client;
mod server;

pub use client::ControlTrust;
pub use server::{ControlConn, ControlPeer, ReplicaTls, accept, replica_names};

/// Whether `host` (from a URL) is this machine, where plaintext is allowed.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
