//! HTTP callouts (`proxy_http_call`): sent by the worker after the guest call that asked for
//! them returns, over the worker's own connection pools, and answered with
//! `proxy_on_http_call_response`. As in Envoy, upstream trouble before a response arrives is
//! a synthesized response (503 connect failure or no healthy upstream, 504 timeout); only a
//! response that breaks off mid-body (or overflows the buffer) is a failed call, `(0, 0, 0)`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use super::convert::{header_pairs, pairs_header_map, response_pairs};
use super::pairs::Pair;
use crate::http::{ProxyBody, shape_for_upstream};
use crate::upstream::{Cluster, UpstreamError, UpstreamPools};

/// The clusters a callout may target, by name (the snapshot's).
pub type Clusters = Arc<HashMap<String, Arc<Cluster>>>;

/// Most response body bytes a callout buffers (Envoy's default buffer limit).
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// What kind of callout a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Http,
    /// A unary gRPC call: the request carries one length-prefixed message.
    Grpc,
}

pub struct PendingCall {
    pub kind: CallKind,
    pub token: u32,
    pub cluster: Arc<Cluster>,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub timeout: Option<Duration>,
    /// Fires (or closes) when the guest cancels a gRPC call; HTTP calls cannot be cancelled.
    pub cancelled: Option<tokio::sync::oneshot::Receiver<()>>,
}

#[derive(Debug, Default)]
pub struct CallResponse {
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
    /// Envoy's response code details of the exchange: `via_upstream` when the upstream
    /// answered, else why the proxy answered itself. Envoy's gRPC client adds them to a
    /// close message.
    pub details: String,
}

pub enum CallOutcome {
    Response(CallResponse),
    /// The response broke off after it began, or was too large to buffer.
    Reset,
}

/// Performs one callout. A gRPC call gets the proxy's own answers shaped as gRPC replies, as
/// Envoy's router shapes them for a gRPC request.
pub async fn perform(pools: Rc<UpstreamPools>, call: PendingCall) -> CallOutcome {
    let grpc = call.kind == CallKind::Grpc;
    let cluster = Arc::clone(&call.cluster);
    let exchange = exchange(&pools, &cluster, call.headers, call.body);
    let outcome = match call.timeout {
        Some(timeout) => tokio::time::timeout(timeout, exchange).await,
        None => Ok(exchange.await),
    };
    match outcome {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(failure)) => failure.reply(grpc),
        Err(_elapsed) => LocalFailure::timeout().reply(grpc),
    }
}

async fn exchange(
    pools: &Rc<UpstreamPools>,
    cluster: &Cluster,
    headers: Vec<Pair>,
    body: Vec<u8>,
) -> Result<CallOutcome, LocalFailure> {
    let endpoint = cluster
        .pick()
        .ok_or_else(LocalFailure::no_healthy_upstream)?;
    let _active = endpoint.begin_request();
    let body = if body.is_empty() {
        ProxyBody::Empty
    } else {
        ProxyBody::full(body)
    };
    let request = upstream_request(headers, body, cluster);
    let response = pools
        .send(cluster, &endpoint, request)
        .await
        .map_err(|error| {
            tracing::debug!(cluster = %cluster.name, %error, "callout failed before a response");
            LocalFailure::connect(&error)
        })?;
    let (parts, body) = response.response.into_parts();
    let headers = response_pairs(&parts);
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
    Ok(match limited.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map(header_pairs).unwrap_or_default();
            let body = collected.to_bytes().to_vec();
            if let Some(conn) = response.conn_return {
                conn.give_back();
            }
            CallOutcome::Response(CallResponse {
                headers,
                body,
                trailers,
                details: VIA_UPSTREAM.to_owned(),
            })
        }
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "callout response broke off");
            CallOutcome::Reset
        }
    })
}

/// Envoy's response code details of an exchange the upstream answered.
pub const VIA_UPSTREAM: &str = "via_upstream";

/// Why the proxy answered a callout itself, in Envoy's router's words: the status, the text
/// of the reply, and the response code details.
#[derive(Debug)]
pub struct LocalFailure {
    pub status: StatusCode,
    pub text: String,
    pub details: String,
}

impl LocalFailure {
    pub fn no_healthy_upstream() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            text: "no healthy upstream".into(),
            details: "no_healthy_upstream".into(),
        }
    }

    pub fn timeout() -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            text: "upstream request timeout".into(),
            details: "upstream_response_timeout".into(),
        }
    }

    /// No response came: the connection failed, or the stream was reset before headers.
    /// Envoy names the reset reason, and for a failed connect the transport's reason too
    /// (`delayed connect error: Connection refused`).
    pub fn connect(error: &UpstreamError) -> Self {
        let (reason, transport) = match error {
            UpstreamError::ConnectFailed { source, .. } => (
                "remote connection failure",
                Some(format!("delayed connect error: {}", os_error_text(source))),
            ),
            UpstreamError::ConnectTimeout { .. } => ("connection timeout", None),
            UpstreamError::Overflow { .. } => ("overflow", None),
            UpstreamError::Tls { .. } | UpstreamError::Handshake { .. } => {
                ("connection failure", None)
            }
            _ => ("connection termination", None),
        };
        let mut details = format!(
            "upstream_reset_before_response_started{{{}",
            reason.replace(' ', "_")
        );
        if let Some(transport) = transport {
            details.push('|');
            details.push_str(&transport.replace(' ', "_"));
        }
        details.push('}');
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            text: format!("{CONNECT_FAILURE}. reset reason: {reason}"),
            details,
        }
    }

    /// The reply the guest gets: plain text for an HTTP call; for a gRPC call the
    /// trailers-only reply Envoy's router gives a gRPC request.
    pub fn reply(self, grpc: bool) -> CallOutcome {
        CallOutcome::Response(self.response(grpc))
    }

    pub fn response(self, grpc: bool) -> CallResponse {
        let (headers, body) = if grpc {
            (grpc_reply_pairs(self.grpc_status(), &self.text), Vec::new())
        } else {
            let headers = vec![
                (
                    ":status".to_owned(),
                    self.status.as_str().as_bytes().to_vec(),
                ),
                (
                    "content-length".to_owned(),
                    self.text.len().to_string().into_bytes(),
                ),
                ("content-type".to_owned(), b"text/plain".to_vec()),
            ];
            (headers, self.text.into_bytes())
        };
        CallResponse {
            headers,
            body,
            trailers: Vec::new(),
            details: self.details,
        }
    }

    /// A timeout is DEADLINE_EXCEEDED; anything else the HTTP status mapped (UNAVAILABLE).
    fn grpc_status(&self) -> u32 {
        if self.status == StatusCode::GATEWAY_TIMEOUT {
            4
        } else {
            crate::http::grpc_reply::status_for(self.status)
        }
    }
}

/// The headers of a trailers-only gRPC reply from the proxy itself.
fn grpc_reply_pairs(grpc_status: u32, text: &str) -> Vec<Pair> {
    let mut headers = http::HeaderMap::new();
    crate::http::grpc_reply::add_status_headers(&mut headers, grpc_status, text.as_bytes());
    let mut pairs = vec![(":status".to_owned(), b"200".to_vec())];
    pairs.extend(header_pairs(&headers));
    pairs
}

/// An OS error as `strerror` words it, without Rust's ` (os error N)`.
fn os_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// What Envoy's router answers when the upstream could not be reached or reset before
/// headers; the reset reason follows it.
const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers";

/// The upstream request of a callout to `cluster`: the guest's pseudo-headers become the
/// method, the path and the Host, and the rest are shaped as any request to that cluster.
/// An absolute-form `:path` (`http://idp.example/jwks`) goes to an HTTP/1 upstream as that
/// request target, as Envoy sends it; HTTP/2 carries its parts as pseudo-headers.
pub fn upstream_request(
    headers: Vec<Pair>,
    body: ProxyBody,
    cluster: &Cluster,
) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    let mut plain = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match name.as_str() {
            ":method" => {
                if let Ok(method) = http::Method::from_bytes(&value) {
                    *request.method_mut() = method;
                }
            }
            ":path" => {
                if let Ok(uri) = http::Uri::try_from(value.as_slice()) {
                    *request.uri_mut() = uri;
                }
            }
            ":authority" => plain.push(("host".to_owned(), value)),
            name if name.starts_with(':') => {}
            _ => plain.push((name, value)),
        }
    }
    *request.headers_mut() = pairs_header_map(plain);
    let (mut parts, body) = request.into_parts();
    let absolute_form = parts.uri.scheme().is_some().then(|| parts.uri.clone());
    shape_for_upstream(
        &mut parts.uri,
        &mut parts.version,
        &mut parts.headers,
        cluster.settings.protocol,
    );
    if let Some(uri) = absolute_form
        && parts.version < http::Version::HTTP_2
    {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// A unary gRPC call's result, from the HTTP exchange that carried it.
#[derive(Debug, PartialEq, Eq)]
pub enum GrpcOutcome {
    Message(Vec<u8>),
    /// A gRPC status other than OK (or a failed exchange), with its message.
    Closed {
        status: u32,
        message: Vec<u8>,
    },
}

/// The request headers of a unary gRPC call to `service`/`method`.
pub fn grpc_request(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: Vec<Pair>,
    timeout: Option<Duration>,
) -> Vec<Pair> {
    let mut headers = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (
            ":path".to_owned(),
            format!("/{service}/{method}").into_bytes(),
        ),
        (":authority".to_owned(), cluster.as_bytes().to_vec()),
        ("content-type".to_owned(), b"application/grpc".to_vec()),
        ("te".to_owned(), b"trailers".to_vec()),
    ];
    if let Some(timeout) = timeout {
        headers.push((
            "grpc-timeout".to_owned(),
            format!("{}m", timeout.as_millis()).into_bytes(),
        ));
    }
    headers.extend(
        metadata
            .into_iter()
            .filter(|(name, _)| !name.starts_with(':')),
    );
    headers
}

/// gRPC's length-prefixed message framing (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}
