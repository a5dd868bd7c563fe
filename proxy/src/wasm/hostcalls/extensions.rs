//! Sluice's host extensions: what the Proxy-Wasm ABI lacks and the standard filters need,
//! offered as foreign functions (`proxy_call_foreign_function`) and properties. A module that
//! calls one in Envoy gets NOT_FOUND and can go on without it.
//!
//! | extension | kind | does |
//! |---|---|---|
//! | `sluice_eject_endpoint` | foreign function | takes an endpoint out of load balancing for a while |
//! | `upstream.address`, `upstream.port` | property (Envoy's names) | the endpoint the request went to |
//! | `sluice.upstream_failure` | property | why there is no upstream response: `upstream_connect_failure`, `upstream_reset`, … |

use std::net::SocketAddr;

use serde::Deserialize;

use crate::wasm::guest::CallResult;
use crate::wasm::state::HostState;
use crate::wasm::status::Status;

pub const EJECT_ENDPOINT: &str = "sluice_eject_endpoint";

/// The arguments of `sluice_eject_endpoint`, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ejection {
    cluster: String,
    endpoint: SocketAddr,
    /// How long, in milliseconds; at most 1 hour.
    duration_ms: u64,
}

const MAX_EJECTION_MS: u64 = 3_600_000;

/// `sluice_eject_endpoint({"cluster": "...", "endpoint": "ip:port", "duration_ms": n})`:
/// BAD_ARGUMENT for arguments that do not parse, NOT_FOUND for an unknown cluster or an
/// endpoint it does not have. Every worker stops picking the endpoint until the time is up.
/// The cluster's last available endpoint is not ejected: the result says `kept: …` then.
/// Returns what happened, for the caller: `ejected`, or `kept: …` with why not.
pub fn eject_endpoint(state: &HostState, args: &[u8]) -> CallResult<&'static str> {
    let ejection: Ejection = serde_json::from_slice(args).map_err(|error| {
        tracing::debug!(plugin = %state.plugin.name, %error, "sluice_eject_endpoint: bad arguments");
        Status::BadArgument
    })?;
    let cluster = state
        .clusters
        .as_ref()
        .and_then(|clusters| clusters.get(&ejection.cluster))
        .ok_or(Status::NotFound)?;
    let endpoints = cluster.endpoints();
    let endpoint = endpoints
        .iter()
        .find(|endpoint| endpoint.addr == ejection.endpoint)
        .ok_or(Status::NotFound)?;
    let duration = ejection.duration_ms.min(MAX_EJECTION_MS);
    let now = cluster.now_ms();
    // Never the last endpoint standing: a cluster with none left would refuse every request
    // of every route, a worse outage than the one endpoint's failures.
    let others_available = endpoints
        .iter()
        .any(|other| other.addr != endpoint.addr && other.is_available(now));
    if !others_available {
        tracing::info!(plugin = %state.plugin.name, cluster = %ejection.cluster, endpoint = %ejection.endpoint, "not ejecting the cluster's last available endpoint");
        return Ok("kept: the cluster's last available endpoint");
    }
    endpoint.eject_until(now.saturating_add(duration));
    tracing::info!(plugin = %state.plugin.name, cluster = %ejection.cluster, endpoint = %ejection.endpoint, duration_ms = duration, "a filter ejected the endpoint");
    Ok("ejected")
}
