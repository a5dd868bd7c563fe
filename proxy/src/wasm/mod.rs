//! The Proxy-Wasm host, in three layers as proxy-wasm-cpp-host has them:
//! [`runtime`] (engine, compiled-module cache), [`vm`] (one Store and instance per plugin and
//! worker), and [`state`] (per-context data the host calls work on). [`hostcalls`] holds every
//! imported function, grouped by capability; [`chain`] runs a stream's filters.

mod body;
mod build;
mod callout;
mod chain;
mod convert;
mod error;
mod grpc_stream;
mod guest;
mod hostcalls;
mod metrics;
mod tagged_metrics;
pub use tagged_metrics::{TaggedMetrics, TaggedName};
mod network;
mod pairs;
mod plugin;
mod replay;
mod rollout;
mod runtime;
mod shared;
mod state;
mod status;
mod vm;
mod worker;

pub use body::FilteredBody;
pub use build::{build_wasm_packages, build_wasm_workspace, build_wasm_workspace_for};
pub use callout::Clusters;
pub use chain::{BodyStep, FilterChain, Interruption, PeerBody, request_headers, response_headers};
pub use convert::{
    apply_request_pairs, apply_response_pairs, local_response, request_pairs, response_pairs,
};
pub use error::{VmFailure, WasmError};
pub use metrics::WasmMetricFamilies;
pub use network::{NetStep, NetworkChain};
pub use pairs::{Pair, decode as decode_pairs, encode_pairs};
pub use plugin::{PluginHealth, PluginSpec};
pub use replay::{Replay, ReplayPlan};
pub use rollout::{Canary, ConfiguredFilter};
pub use runtime::{MAX_MEMORY_LIMIT, ModuleBytes};
pub use state::{ResumeSignals, StreamInfo};
pub use worker::WorkerPlugins;
