//! `sluice-sdk`: what a Proxy-Wasm filter author needs for Sluice.
//!
//! - [`proxy_wasm`]: the official Rust SDK, re-exported, so a filter written with it runs
//!   unchanged in Sluice and in Envoy.
//! - [`config`]: parsing a filter's JSON configuration with errors that name the field.
//! - [`shared::update`]: read-modify-write of shared data across workers (compare-and-swap).
//! - [`host`]: defining a counter, the cluster a stream was routed to.
//! - [`ext`]: typed access to Sluice's host extensions (request replay, endpoint ejection,
//!   the upstream's address and failure reason), which say so when the host lacks them.
//! - `harness` (feature `harness`, native only): runs a compiled `.wasm` on the real Sluice
//!   host in-process, in front of a scripted upstream, for `cargo test`.

pub use proxy_wasm;

pub mod config;
pub mod duration;
pub mod ext;
pub mod host;
pub mod shared;

#[cfg(feature = "harness")]
pub mod harness;
