//! Sluice's host extensions: what the Proxy-Wasm ABI lacks and the standard filters need,
//! offered as foreign functions (`proxy_call_foreign_function`) and properties. A module that
//! calls one in Envoy gets NOT_FOUND and can go on without it.
//!
//! | extension | kind | does |
//! |---|---|---|
//! | `sluice_eject_endpoint` | foreign function | takes an endpoint out of load balancing for a while |
//! | `upstream.address`, `upstream.port` | property (Envoy's names) | the endpoint the request went to |
//! | `sluice.upstream_failure` | property | why there is no upstream response: `upstream_connect_failure`, `upstream_reset`, … |
//! | `sluice_prepare_replay` | foreign function | request phase: keep the request (body up to a cap) so it can be sent again; set a per-try timeout |
//! | `sluice_replay` | foreign function | response phase: drop this attempt's answer and send the request again, to another endpoint if there is one, after a delay |

use std::net::SocketAddr;

use serde::Deserialize;

use std::time::Duration;

use crate::wasm::guest::CallResult;
use crate::wasm::replay::{self, ReplayPlan};
use crate::wasm::state::HostState;
use crate::wasm::status::Status;

pub const EJECT_ENDPOINT: &str = "sluice_eject_endpoint";
pub const PREPARE_REPLAY: &str = "sluice_prepare_replay";
pub const REPLAY: &str = "sluice_replay";

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

/// The arguments of `sluice_prepare_replay`, as JSON (both optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayPreparation {
    /// The most request body bytes kept for replay [64 KiB, at most 16 MiB].
    max_body_bytes: Option<usize>,
    /// How long each attempt may wait for the response headers, in milliseconds.
    per_try_timeout_ms: Option<u64>,
}

/// `sluice_prepare_replay({"max_body_bytes": n, "per_try_timeout_ms": n})`, in the request
/// phase: the host keeps a copy of the request as it goes upstream, so `sluice_replay` can
/// send it again. Returns `armed`, or `refused: …` with why. BAD_ARGUMENT for arguments that
/// do not parse, NOT_FOUND outside an HTTP stream.
pub fn prepare_replay(state: &mut HostState, args: &[u8]) -> CallResult<String> {
    let preparation: ReplayPreparation = parse_args(state, PREPARE_REPLAY, args)?;
    let plan = ReplayPlan {
        max_body: preparation
            .max_body_bytes
            .unwrap_or(replay::DEFAULT_MAX_BODY)
            .min(replay::MAX_BODY_LIMIT),
        per_try_timeout: preparation
            .per_try_timeout_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
    };
    let stream = state.acting_stream().ok_or(Status::NotFound)?;
    let armed = stream.info.replay.borrow_mut().arm(plan);
    Ok(outcome_text("armed", armed))
}

/// The arguments of `sluice_replay`, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// How long to wait before sending again, in milliseconds [0].
    #[serde(default)]
    delay_ms: u64,
}

/// `sluice_replay({"delay_ms": n})`, in the response phase of an upstream attempt: this
/// attempt's response (or failure) goes no further down the chain and never reaches the
/// client; after the delay the host sends the request again, to an endpoint not yet tried
/// when the cluster has one, and the response filters see the new attempt's answer. Returns
/// `scheduled`, or `refused: …` with why (the response then goes on as usual).
pub fn replay(state: &mut HostState, args: &[u8]) -> CallResult<String> {
    let request: ReplayRequest = parse_args(state, REPLAY, args)?;
    let delay = Duration::from_millis(request.delay_ms.min(MAX_EJECTION_MS));
    let plugin = state.plugin.name.clone();
    let stream = state.acting_stream().ok_or(Status::NotFound)?;
    let scheduled = stream
        .info
        .replay
        .borrow_mut()
        .request(delay, tokio::time::Instant::now());
    if let Err(why) = scheduled {
        tracing::debug!(%plugin, why, "sluice_replay refused");
    }
    Ok(outcome_text("scheduled", scheduled))
}

fn parse_args<T: serde::de::DeserializeOwned>(
    state: &HostState,
    function: &str,
    args: &[u8],
) -> CallResult<T> {
    // No arguments at all means every default.
    let args = if args.is_empty() {
        b"{}".as_slice()
    } else {
        args
    };
    serde_json::from_slice(args).map_err(|error| {
        tracing::debug!(plugin = %state.plugin.name, function, %error, "bad arguments");
        Status::BadArgument.into()
    })
}

fn outcome_text(done: &str, outcome: Result<(), &'static str>) -> String {
    match outcome {
        Ok(()) => done.to_owned(),
        Err(why) => format!("refused: {why}"),
    }
}
