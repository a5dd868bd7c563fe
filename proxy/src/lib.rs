//! Sluice: a service-mesh data plane. This crate is the proxy core (listeners, routes,
//! clusters, load balancing, admin) and the `sluice` binary.
//!
//! Start at [`RunningProxy::start`] with a config from [`config::load_file`]; the
//! architecture is described in `shared/design/architecture.md`.

pub mod admin;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod http;
pub mod listener;
pub mod runtime;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod wasm;

pub use runtime::RunningProxy;
