//! HTTP callouts (`proxy_http_call`): sent by the worker after the guest call that asked for
//! them returns, over the worker's own connection pools, and answered with
//! `proxy_on_http_call_response`. As in Envoy, upstream trouble before a response arrives is
//! a synthesized response (503 connect failure or no healthy upstream, 504 timeout); only a
//! response that breaks off mid-body (or overflows the buffer) is a failed call, `(0, 0, 0)`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;

use super::convert::{header_pairs, pairs_header_map};
use super::pairs::Pair;
use crate::http::{ProxyBody, shape_for_upstream};
use crate::upstream::{Cluster, UpstreamPools};

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
}

#[derive(Debug, Default)]
pub struct CallResponse {
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
}

pub enum CallOutcome {
    Response(CallResponse),
    /// The response broke off after it began, or was too large to buffer.
    Reset,
}

/// Performs one callout.
pub async fn perform(pools: Rc<UpstreamPools>, call: PendingCall) -> CallOutcome {
    let cluster = Arc::clone(&call.cluster);
    let exchange = exchange(&pools, &cluster, call.headers, call.body);
    let outcome = match call.timeout {
        Some(timeout) => tokio::time::timeout(timeout, exchange).await,
        None => Ok(exchange.await),
    };
    match outcome {
        Ok(outcome) => outcome,
        Err(_elapsed) => synthesized(504, "upstream request timeout"),
    }
}

async fn exchange(
    pools: &Rc<UpstreamPools>,
    cluster: &Cluster,
    headers: Vec<Pair>,
    body: Vec<u8>,
) -> CallOutcome {
    let Some(endpoint) = cluster.pick() else {
        return synthesized(503, "no healthy upstream");
    };
    let _active = endpoint.begin_request();
    let mut request = Request::new(if body.is_empty() {
        ProxyBody::Empty
    } else {
        ProxyBody::full(body)
    });
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
    shape_for_upstream(
        &mut parts.uri,
        &mut parts.version,
        &mut parts.headers,
        cluster.settings.protocol,
    );
    let response = match pools
        .send(cluster, &endpoint, Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "callout failed before a response");
            return synthesized(
                503,
                "upstream connect error or disconnect/reset before headers",
            );
        }
    };
    let (parts, body) = response.response.into_parts();
    let mut headers = vec![(
        ":status".to_owned(),
        parts.status.as_str().as_bytes().to_vec(),
    )];
    headers.extend(header_pairs(&parts.headers));
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
    match limited.collect().await {
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
            })
        }
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "callout response broke off");
            CallOutcome::Reset
        }
    }
}

/// A unary gRPC call's result, from the HTTP exchange that carried it.
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

/// Reads a unary call's answer: the status from the trailers (or the headers of a
/// trailers-only reply), and the one message of the body.
pub fn grpc_outcome(outcome: CallOutcome) -> GrpcOutcome {
    let response = match outcome {
        CallOutcome::Response(response) => response,
        CallOutcome::Reset => {
            return GrpcOutcome::Closed {
                status: 14,
                message: b"reset".to_vec(),
            };
        }
    };
    let find = |name: &str| {
        response
            .trailers
            .iter()
            .chain(response.headers.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let http_status = find(":status").unwrap_or_default();
    let Some(status) =
        find("grpc-status").and_then(|s| String::from_utf8(s).ok()?.parse::<u32>().ok())
    else {
        // No gRPC status: the exchange failed at the HTTP level (Envoy maps these the same way).
        let status = if http_status == b"504" { 4 } else { 14 };
        return GrpcOutcome::Closed {
            status,
            message: response.body,
        };
    };
    if status != 0 {
        return GrpcOutcome::Closed {
            status,
            message: find("grpc-message").unwrap_or_default(),
        };
    }
    match response.body.get(5..) {
        Some(message) if response.body[0] == 0 => GrpcOutcome::Message(message.to_vec()),
        _ => GrpcOutcome::Closed {
            status: 13,
            message: b"malformed gRPC message".to_vec(),
        },
    }
}

/// The response Envoy's async client makes up when the upstream never answered.
fn synthesized(status: u16, text: &'static str) -> CallOutcome {
    let body = Bytes::from_static(text.as_bytes());
    CallOutcome::Response(CallResponse {
        headers: vec![
            (":status".to_owned(), status.to_string().into_bytes()),
            (
                "content-length".to_owned(),
                body.len().to_string().into_bytes(),
            ),
            (
                "content-type".to_owned(),
                HeaderValue::from_static("text/plain").as_bytes().to_vec(),
            ),
        ],
        body: body.to_vec(),
        trailers: Vec::new(),
    })
}
