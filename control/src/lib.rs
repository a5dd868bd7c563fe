//! The Sluice control plane: the API (generated from `proto/`), the store behind it, the
//! service proxies subscribe to, the mesh registry, and the client the CLI and proxies use. The proxy crate
//! supplies validation (it owns the Wasm host and config model) through [`ChangeValidator`].

pub mod auth;
pub mod ca;
pub mod client;
pub mod discover;
pub mod identity;
pub mod overlay;
pub mod ready;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;
pub mod targets;
pub mod tls;
pub mod tokens;

/// Types and the tonic service generated from `proto/sluice/control/v1/control.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("sluice.control.v1");
}

pub use client::{
    Client, ConnectError, DEFAULT_CONTROL_URL, IdentityAdminClient, IdentityClient, connect,
    connect_from, connect_identity, connect_identity_admin, connect_with,
};
pub use identity::IdentitySettings;
pub use overlay::{FilterAttachment, ListenerRoutes, Overlay};
pub use registry::{DEFAULT_LEASE_TTL, Registry};
pub use server::{ControlError, ControlSettings, DEFAULT_MAX_MODULE_SIZE, RunningControl};
pub use service::{ChangeValidator, ControlService};
pub use store::{EtcdSettings, StoreLocation};
pub use targets::Target;
pub use tls::ControlTrust;
