//! Responses the proxy makes itself. This is the one place errors become HTTP responses:
//! each carries a machine-readable reason in the `x-sluice-reason` header (also the
//! `reason` label of `sluice_http_local_replies_total`) and a short human explanation.
//! Internal details such as endpoint addresses go to the log, never to the client.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use super::grpc_reply;
use crate::upstream::UpstreamError;

pub const REASON_HEADER: &str = "x-sluice-reason";

/// Why the proxy answered instead of the upstream. The names are a contract for dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoRoute,
    NoHealthyUpstream,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamReset,
    UpstreamProtocolError,
    UpstreamTimeout,
    /// An attempt waited longer than the per-try timeout a filter set for replays.
    UpstreamPerTryTimeout,
    /// A fail-closed Wasm plugin failed (Envoy's response details `wasm_fail_stream`).
    WasmFailStream,
    /// A Wasm filter answered with `proxy_send_local_response`.
    FilterLocalReply,
    /// A filter buffered more of the request body than `max_body_buffer`.
    BodyTooLarge,
    /// A filter paused the request and did not resume it within the stream idle timeout.
    StreamIdleTimeout,
    /// A filter left a request header HTTP cannot carry (Envoy's 503 at upstream encode).
    FilterInvalidHeader,
    /// The client's request body is malformed (bad chunked framing): 400, the client's fault.
    DownstreamProtocolError,
    /// The client went away before its request ended: counted with status 499 (nobody is
    /// left to answer), never as an upstream failure.
    DownstreamDisconnect,
    /// A circuit-breaker threshold of the cluster (max_requests, max_pending_requests).
    UpstreamOverflow,
    /// The client sent no request body bytes for the listener's `request_body_timeout`: 408.
    RequestBodyTimeout,
    /// The proxy sheds load: its memory is past `overload.max_memory`.
    Overload,
}

#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    pub reason: Reason,
    pub message: String,
    /// Envoy's response code details when they say more than the reason's (see `Reason`).
    pub details: Option<String>,
}

/// The response code details of a reply the proxy or a filter made (`response.code_details`),
/// carried in the response's extensions to the response filters.
#[derive(Debug, Clone)]
pub struct ReplyDetails(pub String);

// === impl Reason ===

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpstreamConnectFailure => "upstream_connect_failure",
            Self::UpstreamConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamReset => "upstream_reset",
            Self::UpstreamProtocolError => "upstream_protocol_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamPerTryTimeout => "upstream_per_try_timeout",
            Self::WasmFailStream => "wasm_fail_stream",
            Self::FilterLocalReply => "filter_local_reply",
            Self::BodyTooLarge => "body_too_large",
            Self::StreamIdleTimeout => "stream_idle_timeout",
            Self::FilterInvalidHeader => "filter_invalid_header",
            Self::DownstreamProtocolError => "downstream_protocol_error",
            Self::DownstreamDisconnect => "downstream_disconnect",
            Self::UpstreamOverflow => "upstream_overflow",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::Overload => "overload",
        }
    }
}

impl Reason {
    /// The reason a reply's `x-sluice-reason` names, if it is one of the proxy's.
    pub fn parse(text: &str) -> Option<Self> {
        ALL_REASONS
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }

    /// Envoy's response code details for the same reply (`response.code_details`).
    pub fn envoy_details(self) -> &'static str {
        match self {
            Self::NoRoute => "route_not_found",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpstreamConnectFailure => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Self::UpstreamConnectTimeout => {
                "upstream_reset_before_response_started{connection_timeout}"
            }
            Self::UpstreamReset => "upstream_reset_before_response_started{remote_reset}",
            Self::UpstreamProtocolError => "upstream_reset_before_response_started{protocol_error}",
            Self::UpstreamTimeout => "upstream_response_timeout",
            Self::UpstreamPerTryTimeout => "upstream_per_try_timeout",
            Self::WasmFailStream => "wasm_fail_stream",
            Self::FilterLocalReply => "",
            Self::BodyTooLarge => "request_payload_too_large",
            Self::StreamIdleTimeout => "stream_idle_timeout",
            Self::FilterInvalidHeader => "filter_removed_required_request_headers",
            Self::DownstreamProtocolError => "downstream_protocol_error",
            Self::DownstreamDisconnect => "downstream_remote_disconnect",
            Self::UpstreamOverflow => "upstream_reset_before_response_started{overflow}",
            // Envoy's stream idle timeout is what fires on a stalled request body there.
            Self::RequestBodyTimeout => "stream_idle_timeout",
            Self::Overload => "overload",
        }
    }

    /// Envoy's response flags for the same reply (`response.flags`): bit n is Envoy's core
    /// response flag n (UH 1, UT 2, UR 4, UF 5, UO 7, NR 8, DC 14, SI 16, DPE 18, UPE 23,
    /// OM 25).
    pub fn envoy_flags(self) -> u64 {
        let bit = match self {
            Self::NoHealthyUpstream => 1,
            Self::UpstreamTimeout | Self::UpstreamPerTryTimeout => 2,
            Self::UpstreamReset => 4,
            Self::UpstreamConnectFailure | Self::UpstreamConnectTimeout => 5,
            Self::NoRoute => 8,
            Self::StreamIdleTimeout | Self::RequestBodyTimeout => 16,
            Self::FilterInvalidHeader | Self::DownstreamProtocolError => 18,
            Self::DownstreamDisconnect => 14,
            Self::UpstreamOverflow => 7,
            Self::UpstreamProtocolError => 23,
            Self::Overload => 25,
            Self::WasmFailStream | Self::FilterLocalReply | Self::BodyTooLarge => return 0,
        };
        1 << bit
    }
}

const ALL_REASONS: [Reason; 18] = [
    Reason::NoRoute,
    Reason::NoHealthyUpstream,
    Reason::UpstreamConnectFailure,
    Reason::UpstreamConnectTimeout,
    Reason::UpstreamReset,
    Reason::UpstreamProtocolError,
    Reason::UpstreamTimeout,
    Reason::UpstreamPerTryTimeout,
    Reason::WasmFailStream,
    Reason::FilterLocalReply,
    Reason::BodyTooLarge,
    Reason::StreamIdleTimeout,
    Reason::FilterInvalidHeader,
    Reason::DownstreamProtocolError,
    Reason::DownstreamDisconnect,
    Reason::UpstreamOverflow,
    Reason::RequestBodyTimeout,
    Reason::Overload,
];

// === impl LocalReply ===

impl LocalReply {
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: String) -> Self {
        self.details = Some(details);
        self
    }

    pub fn no_route(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Reason::NoRoute,
            format!("no route matches {method} {path}"),
        )
    }

    /// `service`: the registry service a discovering cluster takes its endpoints from.
    pub fn no_healthy_upstream(cluster: &str, service: Option<&str>) -> Self {
        let text = match service {
            Some(service) => format!(
                "no healthy endpoint in cluster {cluster} (service {service}: no healthy instance registered)"
            ),
            None => format!("no healthy endpoint in cluster {cluster}"),
        };
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::NoHealthyUpstream,
            text,
        )
    }

    /// Envoy answers a fail-closed plugin failure with an empty 503; the reason header says why.
    pub fn wasm_fail_stream() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Reason::WasmFailStream, "")
    }

    /// Envoy's words for it; which filter and limit go to the log.
    pub fn body_too_large(plugin: &str, limit: usize) -> Self {
        tracing::debug!(
            plugin,
            limit,
            "a filter buffered more request body than max_body_buffer"
        );
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            "Payload Too Large",
        )
    }

    /// Envoy's stream idle timeout answer.
    pub fn stream_idle_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            Reason::StreamIdleTimeout,
            "stream timeout",
        )
    }

    pub fn upstream_timeout(cluster: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            Reason::UpstreamTimeout,
            format!("cluster {cluster} did not respond within the route's timeout"),
        )
    }

    pub fn upstream_per_try_timeout(cluster: &str, timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            Reason::UpstreamPerTryTimeout,
            format!("cluster {cluster} did not respond within the per-try timeout ({timeout:?})"),
        )
    }

    /// The client's request body failed while it streamed to the upstream.
    pub fn from_client_body(error: &crate::http::body::ClientBodyError) -> Self {
        use crate::http::body::ClientBodyError;
        match error {
            ClientBodyError::Malformed(_) => Self::new(
                StatusCode::BAD_REQUEST,
                Reason::DownstreamProtocolError,
                error.to_string(),
            ),
            ClientBodyError::Disconnected(_) => Self::new(
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                Reason::DownstreamDisconnect,
                error.to_string(),
            ),
            ClientBodyError::Stalled(_) => Self::new(
                StatusCode::REQUEST_TIMEOUT,
                Reason::RequestBodyTimeout,
                error.to_string(),
            ),
        }
    }

    /// The proxy sheds load (`overload.max_memory`).
    pub fn overload() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Overload,
            "the proxy is shedding load: its memory is past overload.max_memory",
        )
    }

    /// Maps an upstream failure to the status Envoy would answer with.
    pub fn from_upstream(cluster: &str, error: &UpstreamError) -> Self {
        let (status, reason, what) = match error {
            // The limit by name, so whoever is on call knows which one to look at.
            UpstreamError::Overflow { .. } => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::UpstreamOverflow,
                    error.to_string(),
                );
            }
            UpstreamError::ConnectFailed { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Handshake { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::UpstreamConnectFailure,
                "could not connect to",
            ),
            UpstreamError::ConnectTimeout { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::UpstreamConnectTimeout,
                "timed out connecting to",
            ),
            UpstreamError::Reset { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::UpstreamReset,
                "connection closed before a response from",
            ),
            UpstreamError::Protocol { .. } => (
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamProtocolError,
                "invalid response from",
            ),
        };
        Self::new(
            status,
            reason,
            format!("{what} an endpoint of cluster {cluster}"),
        )
    }

    /// The reply as a response. To a gRPC request it is a trailers-only gRPC reply (its HTTP
    /// status mapped to a gRPC status, the message as `grpc-message`), as Envoy answers.
    pub fn into_response(mut self, grpc_request: bool) -> Response<ProxyBody> {
        let details = self.details.take().map(ReplyDetails);
        let mut response = self.response(grpc_request);
        if let Some(details) = details {
            response.extensions_mut().insert(details);
        }
        response
    }

    fn response(self, grpc_request: bool) -> Response<ProxyBody> {
        if grpc_request {
            let mut response = Response::new(ProxyBody::Empty);
            let headers = response.headers_mut();
            let grpc_status = grpc_reply::status_for(self.status);
            grpc_reply::add_status_headers(headers, grpc_status, self.message.as_bytes());
            headers.insert(
                REASON_HEADER,
                HeaderValue::from_static(self.reason.as_str()),
            );
            return response;
        }
        let has_body = !self.message.is_empty();
        let length = self.message.len();
        let body = if self.message.is_empty() {
            ProxyBody::Empty
        } else {
            // No trailing newline: Envoy's local replies have none, and filters may measure them.
            ProxyBody::full(self.message)
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if has_body {
            // A length, not chunks, as Envoy sends its replies (filters after may change both),
            // in Envoy's order.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(
            REASON_HEADER,
            HeaderValue::from_static(self.reason.as_str()),
        );
        response
    }
}
