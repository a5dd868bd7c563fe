//! Typed access to Sluice's host extensions (`proxy/src/wasm/hostcalls/extensions.rs`). In a
//! host without them (Envoy), each says so (`None`, or [`ExtError::NotFound`]), so one module
//! can run in both and simply do less where an extension is missing.
//!
//! Call them from a stream's callbacks (the stream is what they are about).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Why the upstream gave no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    ConnectFailure,
    ConnectTimeout,
    /// The connection broke before the response headers.
    Reset,
    /// The route's timeout passed first.
    Timeout,
    ProtocolError,
    /// Every endpoint was unhealthy or ejected.
    NoHealthyUpstream,
    /// A reason this SDK does not know yet, as the host named it.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtError {
    /// The host has no such extension (Envoy, or an older Sluice), or it does not know the
    /// cluster or the endpoint: either way, nothing happened.
    NotFound,
    BadArgument,
    Other(Status),
}

/// The endpoint the request went to (`ip:port`), once one was picked. Envoy has this property
/// too.
pub fn upstream_address() -> Option<String> {
    text(vec!["upstream", "address"])
}

/// Why there is no upstream response, in the response phase; `None` when the upstream
/// answered (look at the status) or the host cannot tell.
pub fn upstream_failure() -> Option<UpstreamFailure> {
    let reason = text(vec!["sluice", "upstream_failure"])?;
    Some(match reason.as_str() {
        "upstream_connect_failure" => UpstreamFailure::ConnectFailure,
        "upstream_connect_timeout" => UpstreamFailure::ConnectTimeout,
        "upstream_reset" => UpstreamFailure::Reset,
        "upstream_timeout" => UpstreamFailure::Timeout,
        "upstream_protocol_error" => UpstreamFailure::ProtocolError,
        "no_healthy_upstream" => UpstreamFailure::NoHealthyUpstream,
        _ => UpstreamFailure::Other(reason),
    })
}

/// Takes `endpoint` (`ip:port`) of `cluster` out of load balancing on every worker for
/// `duration` (at most an hour). `Ok(false)`: the host kept it, as the cluster's last
/// available endpoint.
pub fn eject_endpoint(cluster: &str, endpoint: &str, duration: Duration) -> Result<bool, ExtError> {
    let args = serde_json::json!({
        "cluster": cluster,
        "endpoint": endpoint,
        "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    });
    let args = args.to_string();
    match hostcalls::call_foreign_function("sluice_eject_endpoint", Some(args.as_bytes())) {
        Ok(outcome) => Ok(outcome.is_none_or(|text| text.as_slice() == b"ejected")),
        // Envoy answers NOT_FOUND for a function it does not have, as Sluice does for an
        // unknown cluster: only a host that has the function can tell them apart, and both
        // mean nothing was ejected.
        Err(Status::NotFound) => Err(ExtError::NotFound),
        Err(Status::BadArgument) => Err(ExtError::BadArgument),
        Err(status) => Err(ExtError::Other(status)),
    }
}

fn text(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}
