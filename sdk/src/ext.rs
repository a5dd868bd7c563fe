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
    /// The attempt waited longer than the per-try timeout set with [`prepare_replay`].
    PerTryTimeout,
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
    /// The host has the extension but cannot do it now, and says why.
    Refused(String),
    Other(Status),
}

impl std::fmt::Display for ExtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => write!(f, "the host has no such extension (or no such target)"),
            Self::BadArgument => write!(f, "the host could not read the arguments"),
            Self::Refused(why) => write!(f, "refused: {why}"),
            Self::Other(status) => write!(f, "the host answered {status:?}"),
        }
    }
}

/// The endpoint the request went to (`ip:port`), once one was picked. Envoy has this property
/// too.
pub fn upstream_address() -> Option<String> {
    crate::host::text_property(vec!["upstream", "address"])
}

/// Why there is no upstream response, in the response phase; `None` when the upstream
/// answered (look at the status) or the host cannot tell.
pub fn upstream_failure() -> Option<UpstreamFailure> {
    let reason = crate::host::text_property(vec!["sluice", "upstream_failure"])?;
    Some(match reason.as_str() {
        "upstream_connect_failure" => UpstreamFailure::ConnectFailure,
        "upstream_connect_timeout" => UpstreamFailure::ConnectTimeout,
        "upstream_reset" => UpstreamFailure::Reset,
        "upstream_timeout" => UpstreamFailure::Timeout,
        "upstream_per_try_timeout" => UpstreamFailure::PerTryTimeout,
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
        "duration_ms": millis(duration),
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

/// In the request phase: have the host keep this request as it goes upstream (the body up
/// to `max_body_bytes`), so [`replay`] can send it again, and give every attempt at most
/// `per_try_timeout` to answer with headers (a late attempt fails as
/// [`UpstreamFailure::PerTryTimeout`], a 504).
pub fn prepare_replay(
    max_body_bytes: usize,
    per_try_timeout: Option<Duration>,
) -> Result<(), ExtError> {
    // Called on every request: plain formatting, not a JSON value tree.
    let per_try = per_try_timeout.map_or_else(|| "null".to_owned(), |t| millis(t).to_string());
    let args = format!(r#"{{"max_body_bytes":{max_body_bytes},"per_try_timeout_ms":{per_try}}}"#);
    call("sluice_prepare_replay", &args, b"armed")
}

/// In the response phase of an upstream attempt (`on_http_response_headers`, including the
/// proxy's own reply when the attempt failed): drop this response, which then reaches no
/// filter after this one and never the client, and send the request again after `delay`, to
/// an endpoint not tried yet when the cluster has one. The response filters then see the new
/// attempt's answer. Return `Action::Continue` after it; what the callback returns does not
/// matter once the replay is scheduled.
///
/// [`ExtError::Refused`] says why not (not prepared, the body was too large or is still
/// arriving, the route's timeout ends first, …): the response then goes on as usual.
pub fn replay(delay: Duration) -> Result<(), ExtError> {
    let args = format!(r#"{{"delay_ms":{}}}"#, millis(delay));
    call("sluice_replay", &args, b"scheduled")
}

fn call(function: &str, args: &str, success: &[u8]) -> Result<(), ExtError> {
    match hostcalls::call_foreign_function(function, Some(args.as_bytes())) {
        Ok(Some(outcome)) if outcome.as_slice() != success => {
            let text = String::from_utf8_lossy(&outcome);
            let why = text.strip_prefix("refused: ").unwrap_or(&text);
            Err(ExtError::Refused(why.to_owned()))
        }
        Ok(_) => Ok(()),
        Err(Status::NotFound) => Err(ExtError::NotFound),
        Err(Status::BadArgument) => Err(ExtError::BadArgument),
        Err(status) => Err(ExtError::Other(status)),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
