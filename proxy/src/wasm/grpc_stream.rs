//! gRPC streams a filter opens with `proxy_grpc_stream`: one HTTP/2 exchange with a configured
//! cluster whose request body the guest feeds message by message (`proxy_grpc_send`), and
//! whose response is delivered to the root context as Envoy's async gRPC client delivers it:
//! initial metadata, each message, trailing metadata, then the close with its status.
//!
//! The guest's side of a stream is a [`StreamHandle`] in the VM's state; the exchange runs in
//! a worker task ([`run`]) that owns the other ends. Dropping the handle (cancel, or the VM
//! going away) resets the upstream stream and ends the task, so no callback follows.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use super::callout::{
    CallOutcome, CallResponse, GrpcOutcome, LocalFailure, VIA_UPSTREAM, upstream_request,
};
use super::convert::{header_pairs, response_pairs};
use super::pairs::Pair;
use crate::http::ProxyBody;
use crate::http::grpc_reply::status_for;
use crate::upstream::{Cluster, UpstreamPools};

/// The map types of a stream's metadata while it is delivered.
pub const GRPC_INITIAL_METADATA: u32 = 4;
pub const GRPC_TRAILING_METADATA: u32 = 5;

/// gRPC status codes this module produces itself.
const UNKNOWN: u32 = 2;
const RESOURCE_EXHAUSTED: u32 = 8;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// The largest message a stream accepts from the upstream: gRPC's default receive limit.
/// A larger one ends the stream with RESOURCE_EXHAUSTED rather than growing without bound.
const MAX_MESSAGE: usize = 4 << 20;

/// The guest's end of an open stream.
pub struct StreamHandle {
    /// Framed messages for the request body; `None` once the guest half-closed it.
    body: Option<mpsc::UnboundedSender<Bytes>>,
    /// Dropped (with the handle) to reset the stream.
    _cancel: oneshot::Sender<()>,
    /// The guest called `proxy_grpc_close`: the entry goes when the upstream closes too.
    pub local_closed: bool,
    /// The upstream closed: the entry goes when the guest closes too.
    pub remote_closed: bool,
}

/// A stream the guest opened in the callback in progress; the worker starts it when the
/// callback returns.
pub struct PendingStream {
    pub token: u32,
    pub cluster: Arc<Cluster>,
    pub headers: Vec<Pair>,
    body: mpsc::UnboundedReceiver<Bytes>,
    cancelled: oneshot::Receiver<()>,
}

/// What the upstream said, in the order the guest hears it.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    InitialMetadata(Vec<Pair>),
    Message(Vec<u8>),
    TrailingMetadata(Vec<Pair>),
    Close { status: u32, message: Vec<u8> },
}

/// Opens the two ends of a stream to `cluster` with the request `headers`.
pub fn open(
    token: u32,
    cluster: Arc<Cluster>,
    headers: Vec<Pair>,
) -> (StreamHandle, PendingStream) {
    let (body_tx, body_rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let handle = StreamHandle {
        body: Some(body_tx),
        _cancel: cancel_tx,
        local_closed: false,
        remote_closed: false,
    };
    let pending = PendingStream {
        token,
        cluster,
        headers,
        body: body_rx,
        cancelled: cancel_rx,
    };
    (handle, pending)
}

// === impl StreamHandle ===

impl StreamHandle {
    /// Queues `message` (framed) on the request body; `end_stream` half-closes it after.
    /// After a half-close, or once the exchange is over, messages go nowhere, as in Envoy.
    pub fn send(&mut self, message: &[u8], end_stream: bool) {
        if let Some(body) = &self.body {
            let _ = body.send(Bytes::from(super::callout::grpc_frame(message)));
        }
        if end_stream {
            self.half_close();
        }
    }

    /// Ends the request body: the upstream sees the end of the client's messages.
    pub fn half_close(&mut self) {
        self.body = None;
    }
}

/// Runs a stream until the upstream closes it or the guest's handle is dropped. `deliver`
/// hands each event to the guest and says whether the stream should go on (false when the
/// VM is gone, or the guest cancelled the stream in the callback).
pub async fn run(
    pools: Rc<UpstreamPools>,
    stream: PendingStream,
    mut deliver: impl FnMut(StreamEvent) -> bool,
) {
    let PendingStream {
        cluster,
        headers,
        body,
        mut cancelled,
        ..
    } = stream;
    tokio::select! {
        () = exchange(&pools, &cluster, headers, body, &mut deliver) => {}
        // Cancelled, or the VM went away: dropping the exchange resets the upstream stream.
        _ = &mut cancelled => {}
    }
}

/// The exchange itself, reporting through `deliver` as Envoy's async gRPC stream does.
async fn exchange(
    pools: &Rc<UpstreamPools>,
    cluster: &Cluster,
    headers: Vec<Pair>,
    body: mpsc::UnboundedReceiver<Bytes>,
    deliver: &mut impl FnMut(StreamEvent) -> bool,
) {
    // Without a response, Envoy's router answers the gRPC request itself.
    let Some(endpoint) = cluster.pick() else {
        replay(LocalFailure::no_healthy_upstream().response(true), deliver);
        return;
    };
    let _active = endpoint.begin_request();
    let request = upstream_request(headers, ProxyBody::Sent(body), cluster);
    let response = match pools.send(cluster, &endpoint, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "gRPC stream failed before a response");
            replay(LocalFailure::connect(&error).response(true), deliver);
            return;
        }
    };
    let conn_return = response.conn_return;
    let (parts, mut body) = response.response.into_parts();
    let end_stream = body.is_end_stream();
    let Some(mut frames) = start(
        parts.status,
        response_pairs(&parts),
        end_stream,
        VIA_UPSTREAM,
        deliver,
    ) else {
        return;
    };
    let end = loop {
        let data = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => break Ending::Trailers(header_pairs(&trailers)),
                    Err(_other_frame) => continue,
                },
            },
            // The body ended without trailers: no status, as Envoy reports it.
            None => break Ending::Error(UNKNOWN),
            Some(Err(error)) => {
                tracing::debug!(cluster = %cluster.name, %error, "gRPC stream reset");
                break Ending::Error(INTERNAL);
            }
        };
        frames.push(&data);
        if !deliver_messages(&mut frames, VIA_UPSTREAM, deliver) {
            return;
        }
    };
    match end {
        Ending::Trailers(trailers) => {
            if let Some(conn) = conn_return {
                conn.give_back();
            }
            close_with(deliver, trailers, VIA_UPSTREAM);
        }
        Ending::Error(status) => stream_error(deliver, status, VIA_UPSTREAM),
    }
}

/// How a stream's response body ended.
enum Ending {
    Trailers(Vec<Pair>),
    Error(u32),
}

/// The answer of a unary call, read as Envoy's async client reads it: the stream's close
/// decides, and an OK close must have brought a message (else INTERNAL, with no text).
pub fn unary_outcome(outcome: CallOutcome) -> GrpcOutcome {
    let response = match outcome {
        CallOutcome::Response(response) => response,
        CallOutcome::Reset => {
            return GrpcOutcome::Closed {
                status: UNAVAILABLE,
                message: b"reset".to_vec(),
            };
        }
    };
    let (mut last_message, mut close) = (None, None);
    replay(response, &mut |event| {
        match event {
            StreamEvent::Message(message) => last_message = Some(message),
            StreamEvent::Close { status, message } => close = Some((status, message)),
            StreamEvent::InitialMetadata(_) | StreamEvent::TrailingMetadata(_) => {}
        }
        true
    });
    match (close, last_message) {
        (Some((0, _)), Some(message)) => GrpcOutcome::Message(message),
        (Some((status, message)), _) if status != 0 => GrpcOutcome::Closed { status, message },
        _ => GrpcOutcome::Closed {
            status: INTERNAL,
            message: Vec::new(),
        },
    }
}

/// Delivers a whole response (a unary call's, or the proxy's own reply) as the events of a
/// stream that received it.
fn replay(response: CallResponse, deliver: &mut impl FnMut(StreamEvent) -> bool) {
    let CallResponse {
        headers,
        body,
        trailers,
        details,
    } = response;
    let status = headers
        .iter()
        .find(|(name, _)| name == ":status")
        .and_then(|(_, value)| StatusCode::from_bytes(value).ok())
        .unwrap_or(StatusCode::OK);
    let end_stream = body.is_empty() && trailers.is_empty();
    let Some(mut frames) = start(status, headers, end_stream, &details, deliver) else {
        return;
    };
    frames.push(&body);
    if !deliver_messages(&mut frames, &details, deliver) {
        return;
    }
    if trailers.is_empty() {
        stream_error(deliver, UNKNOWN, &details);
    } else {
        close_with(deliver, trailers, &details);
    }
}

/// Delivers every whole message received so far. Returns whether the stream goes on: not
/// when the guest stopped listening, nor after a malformed message closed it.
fn deliver_messages(
    frames: &mut MessageFrames,
    details: &str,
    deliver: &mut impl FnMut(StreamEvent) -> bool,
) -> bool {
    loop {
        match frames.next_message() {
            Ok(Some(message)) => {
                if !deliver(StreamEvent::Message(message)) {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(status) => {
                stream_error(deliver, status, details);
                return false;
            }
        }
    }
}

/// Delivers what the response headers mean, as Envoy's `onHeaders`: the initial metadata,
/// and, for a reply that is over already (trailers-only, or not HTTP 200), the close. Returns
/// the message decoder when messages may follow.
fn start(
    status: StatusCode,
    headers: Vec<Pair>,
    end_stream: bool,
    details: &str,
    deliver: &mut impl FnMut(StreamEvent) -> bool,
) -> Option<MessageFrames> {
    let has_status = headers.iter().any(|(name, _)| name == "grpc-status");
    // A gRPC server puts `grpc-status` in the headers only when they are all it sends.
    let trailers_only = end_stream || has_status;
    if status != StatusCode::OK {
        if !deliver(StreamEvent::InitialMetadata(Vec::new())) {
            return None;
        }
        if trailers_only && has_status {
            close_with(deliver, headers, details);
        } else {
            stream_error(deliver, status_for(status), details);
        }
        return None;
    }
    if trailers_only {
        if deliver(StreamEvent::InitialMetadata(Vec::new())) {
            close_with(deliver, headers, details);
        }
        return None;
    }
    deliver(StreamEvent::InitialMetadata(headers)).then(MessageFrames::default)
}

/// The trailing metadata, then the close with the status and message they carry (UNKNOWN
/// when there is no status).
fn close_with(deliver: &mut impl FnMut(StreamEvent) -> bool, trailers: Vec<Pair>, details: &str) {
    let find = |name: &str| {
        trailers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let status = find("grpc-status")
        .and_then(|value| std::str::from_utf8(&value).ok()?.trim().parse().ok())
        .unwrap_or(UNKNOWN);
    let message = find("grpc-message").unwrap_or_default();
    if deliver(StreamEvent::TrailingMetadata(trailers)) {
        deliver(StreamEvent::Close {
            status,
            message: with_details(message, details),
        });
    }
}

/// A stream that ends in error: empty trailing metadata, then the close.
fn stream_error(deliver: &mut impl FnMut(StreamEvent) -> bool, status: u32, details: &str) {
    if deliver(StreamEvent::TrailingMetadata(Vec::new())) {
        deliver(StreamEvent::Close {
            status,
            message: with_details(Vec::new(), details),
        });
    }
}

/// A close message as Envoy's gRPC client reports it: the message with the exchange's
/// response code details in braces (`bye{via_upstream}`), or either alone if the other is
/// empty.
fn with_details(mut message: Vec<u8>, details: &str) -> Vec<u8> {
    if details.is_empty() {
        return message;
    }
    if message.is_empty() {
        return details.as_bytes().to_vec();
    }
    message.push(b'{');
    message.extend_from_slice(details.as_bytes());
    message.push(b'}');
    message
}

/// Splits a response body into gRPC's length-prefixed messages, across data frames.
#[derive(Default)]
struct MessageFrames {
    buffered: BytesMut,
}

impl MessageFrames {
    fn push(&mut self, data: &[u8]) {
        self.buffered.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived; a compressed message (no compression was
    /// offered) is INTERNAL, and one over [`MAX_MESSAGE`] RESOURCE_EXHAUSTED.
    fn next_message(&mut self) -> Result<Option<Vec<u8>>, u32> {
        let Some(prefix) = self.buffered.get(..5) else {
            return Ok(None);
        };
        let compressed = prefix[0] != 0;
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if length > MAX_MESSAGE {
            return Err(RESOURCE_EXHAUSTED);
        }
        if compressed && length > 0 {
            return Err(INTERNAL);
        }
        if self.buffered.len() < 5 + length {
            return Ok(None);
        }
        self.buffered.advance(5);
        Ok(Some(self.buffered.split_to(length).to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::pairs::test_pairs as pairs;

    fn frame(message: &[u8]) -> Vec<u8> {
        super::super::callout::grpc_frame(message)
    }

    #[test]
    fn messages_are_split_across_and_within_data_frames() {
        let mut frames = MessageFrames::default();
        let mut wire = frame(b"one");
        wire.extend(frame(b""));
        wire.extend(frame(b"three"));
        frames.push(&wire[..6]);
        assert_eq!(frames.next_message(), Ok(None), "a partial message waits");
        frames.push(&wire[6..]);
        assert_eq!(frames.next_message(), Ok(Some(b"one".to_vec())));
        assert_eq!(frames.next_message(), Ok(Some(Vec::new())));
        assert_eq!(frames.next_message(), Ok(Some(b"three".to_vec())));
        assert_eq!(frames.next_message(), Ok(None));
    }

    #[test]
    fn compressed_and_oversized_messages_end_the_stream() {
        let mut compressed = MessageFrames::default();
        compressed.push(&[1, 0, 0, 0, 1, b'x']);
        assert_eq!(compressed.next_message(), Err(INTERNAL));

        let mut huge = MessageFrames::default();
        huge.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(huge.next_message(), Err(RESOURCE_EXHAUSTED));
    }

    fn events_for(status: u16, headers: &[(&str, &str)], end_stream: bool) -> Vec<StreamEvent> {
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        let (parts, ()) = response.body(()).unwrap().into_parts();
        let mut events = Vec::new();
        let more = start(
            parts.status,
            response_pairs(&parts),
            end_stream,
            "",
            &mut |event| {
                events.push(event);
                true
            },
        );
        if more.is_some() {
            events.push(StreamEvent::Message(b"(messages may follow)".to_vec()));
        }
        events
    }

    #[test]
    fn response_headers_open_the_stream_or_close_it_as_envoy_does() {
        // Ordinary headers are the initial metadata, and messages follow.
        assert_eq!(
            events_for(200, &[("content-type", "application/grpc")], false),
            vec![
                StreamEvent::InitialMetadata(pairs(&[
                    (":status", "200"),
                    ("content-type", "application/grpc")
                ])),
                StreamEvent::Message(b"(messages may follow)".to_vec()),
            ]
        );
        // Trailers-only: empty initial metadata, the headers as trailing metadata, the close.
        let trailers_only = [("grpc-status", "5"), ("grpc-message", "nope")];
        assert_eq!(
            events_for(200, &trailers_only, true),
            vec![
                StreamEvent::InitialMetadata(Vec::new()),
                StreamEvent::TrailingMetadata(pairs(&[
                    (":status", "200"),
                    ("grpc-status", "5"),
                    ("grpc-message", "nope")
                ])),
                StreamEvent::Close {
                    status: 5,
                    message: b"nope".to_vec()
                },
            ]
        );
        // Not HTTP 200 and no gRPC status: the HTTP status mapped, empty trailing metadata.
        assert_eq!(
            events_for(503, &[], true),
            vec![
                StreamEvent::InitialMetadata(Vec::new()),
                StreamEvent::TrailingMetadata(Vec::new()),
                StreamEvent::Close {
                    status: UNAVAILABLE,
                    message: Vec::new()
                },
            ]
        );
        assert_eq!(
            events_for(404, &[], false).last(),
            Some(&StreamEvent::Close {
                status: 12,
                message: Vec::new()
            })
        );
    }

    #[test]
    fn a_guest_that_stops_listening_hears_nothing_more() {
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header("grpc-status", "0")
            .body(())
            .unwrap()
            .into_parts();
        let mut heard = 0;
        start(parts.status, response_pairs(&parts), true, "", &mut |_| {
            heard += 1;
            false
        });
        assert_eq!(heard, 1);
    }

    #[test]
    fn close_messages_carry_the_response_code_details_as_envoys() {
        assert_eq!(
            with_details(b"bye".to_vec(), VIA_UPSTREAM),
            b"bye{via_upstream}"
        );
        assert_eq!(with_details(Vec::new(), VIA_UPSTREAM), b"via_upstream");
        assert_eq!(with_details(b"bye".to_vec(), ""), b"bye");
    }

    fn unary(headers: &[(&str, &str)], body: &[u8], trailers: &[(&str, &str)]) -> GrpcOutcome {
        unary_outcome(CallOutcome::Response(CallResponse {
            headers: pairs(headers),
            body: body.to_vec(),
            trailers: pairs(trailers),
            details: VIA_UPSTREAM.to_owned(),
        }))
    }

    fn closed(status: u32, message: &str) -> GrpcOutcome {
        GrpcOutcome::Closed {
            status,
            message: message.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_unary_answer_is_its_streams_close() {
        let ok = [(":status", "200"), ("content-type", "application/grpc")];
        let status_0 = [("grpc-status", "0")];
        assert_eq!(
            unary(&ok, &frame(b"pong"), &status_0),
            GrpcOutcome::Message(b"pong".to_vec())
        );
        // OK, but no message: INTERNAL, with no text (Envoy does not add details here).
        assert_eq!(unary(&ok, b"", &status_0), closed(INTERNAL, ""));
        assert_eq!(
            unary(&ok, b"", &[("grpc-status", "7"), ("grpc-message", "no")]),
            closed(7, "no{via_upstream}")
        );
        // No trailers: UNKNOWN. Not HTTP 200 and no gRPC status: the HTTP status mapped.
        assert_eq!(unary(&ok, &frame(b"x"), &[]), closed(UNKNOWN, VIA_UPSTREAM));
        assert_eq!(
            unary(&[(":status", "503")], b"busy", &[]),
            closed(UNAVAILABLE, VIA_UPSTREAM)
        );
        // The proxy's own reply, shaped for gRPC, with its details.
        let refused = LocalFailure::no_healthy_upstream().reply(true);
        assert_eq!(
            unary_outcome(refused),
            closed(UNAVAILABLE, "no healthy upstream{no_healthy_upstream}")
        );
        let late = LocalFailure::timeout().reply(true);
        assert_eq!(
            unary_outcome(late),
            closed(4, "upstream request timeout{upstream_response_timeout}")
        );
    }

    #[test]
    fn a_send_after_the_half_close_goes_nowhere() {
        let config: crate::config::ClusterConfig =
            serde_yaml::from_str("{name: grpc, endpoints: [\"127.0.0.1:1\"]}").unwrap();
        let cluster = Cluster::new(&config, crate::admin::Metrics::new(), None);
        let (mut handle, mut pending) = open(6, cluster, Vec::new());
        handle.send(b"a", false);
        handle.send(b"b", true);
        handle.send(b"c", false);
        assert_eq!(pending.body.try_recv().unwrap(), Bytes::from(frame(b"a")));
        assert_eq!(pending.body.try_recv().unwrap(), Bytes::from(frame(b"b")));
        assert!(matches!(
            pending.body.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        drop(handle);
        assert!(
            pending.cancelled.try_recv().is_err(),
            "dropping the handle cancels"
        );
    }
}
