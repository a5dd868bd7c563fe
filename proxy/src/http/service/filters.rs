//! The Wasm filter chain's part of an exchange: request headers through the filters, the
//! answers to a filter that stops the stream, and responses (the upstream's or the proxy's
//! own) back through the filters with their bodies.

use std::rc::Rc;

use http::Response;
use http_body::Body as _;

use super::{Answer, Chain, ClientBodyFailed, Exchange, StreamClosedByFilter};
use crate::admin::RouteStats;
use crate::http::body::{BoxError, ProxyBody};
use crate::http::local_reply::{LocalReply, Reason};
use crate::wasm::{self, FilteredBody, Interruption};

impl Exchange<'_> {
    /// Request headers through `specs` (appended to the chain), written back into `parts`.
    /// A filter that pauses the request gets the stream idle timeout (`filter_idle`) to resume
    /// it, as in Envoy.
    pub(super) async fn run_request_filters(
        &self,
        filters: &[wasm::ConfiguredFilter],
        parts: &mut http::request::Parts,
        end_of_stream: bool,
        body: &mut ProxyBody,
    ) -> Result<(), Interruption> {
        let Some(chain) = &self.chain else {
            return Ok(());
        };
        if filters.is_empty() {
            return Ok(());
        }
        let from = {
            let mut chain = chain.borrow_mut();
            let from = chain.len();
            chain.extend(
                &self.conn.worker.plugins,
                filters.iter().map(wasm::ConfiguredFilter::pick),
            );
            if let Some(failure) = chain.take_start_failure() {
                return Err(failure);
            }
            from
        };
        let pairs = wasm::request_pairs(parts, self.conn.scheme);
        let peer = wasm::PeerBody::new(body, self.http1_client);
        let filtering = wasm::request_headers(chain, pairs, end_of_stream, from, Some(peer));
        let pairs = match self.filter_idle {
            Some(idle) => tokio::time::timeout(idle, filtering)
                .await
                .map_err(|_elapsed| Interruption::TimedOut)??,
            None => filtering.await?,
        };
        let applied = wasm::apply_request_pairs(parts, &pairs);
        if let Err(invalid) = applied {
            return Err(Interruption::InvalidHeader(invalid.to_string()));
        }
        chain.borrow_mut().remember_for_log(Some(pairs), None);
        Ok(())
    }

    /// A reply the proxy makes itself, counted, passed through the response filters, and
    /// shaped as Envoy sends its replies (`shape_local`).
    pub(super) async fn local(
        &self,
        stats: &RouteStats,
        reply: LocalReply,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let answered = self.unshaped_local(stats, reply).await;
        answered.map(|response| self.shape_local(response))
    }

    /// `local` without the shaping, for callers that shape their own answer once.
    async fn unshaped_local(
        &self,
        stats: &RouteStats,
        reply: LocalReply,
    ) -> Result<Response<ProxyBody>, BoxError> {
        self.count_local(stats, reply.status, reply.reason);
        let response = reply.into_response(self.grpc_request);
        match &self.chain {
            Some(chain) => {
                let last = chain.borrow().len().saturating_sub(1);
                self.through_response_filters(response, last).await
            }
            None => Ok(response),
        }
    }

    /// A local reply in the request phase as Envoy sends it: to HEAD with its length and no
    /// body; over HTTP/1, with `connection: close` when the request body was not read (the
    /// connection cannot carry another request until it is).
    fn shape_local(&self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        let body = if self.head_request {
            if !parts.headers.contains_key(http::header::CONTENT_LENGTH)
                && let Some(length) = body.size_hint().exact()
            {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, length.into());
            }
            // Dropping the body ends the response filters' contexts.
            ProxyBody::Empty
        } else {
            body
        };
        let body_read = self
            .chain
            .as_ref()
            .is_some_and(|chain| chain.borrow().request_body_read());
        if self.http1_with_body && !body_read {
            parts.headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        Response::from_parts(parts, body)
    }

    pub(super) fn count_local(&self, stats: &RouteStats, status: http::StatusCode, reason: Reason) {
        self.conn
            .worker
            .state
            .metrics
            .local_reply(&self.listener.name, reason.as_str());
        stats.record(status, self.started.elapsed());
    }

    /// The answer to a filter stopping the stream.
    pub(super) async fn interrupted(
        &self,
        stats: &RouteStats,
        interruption: Interruption,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let answered = self.interruption_reply(stats, interruption).await;
        answered.map(|response| self.shape_local(response))
    }

    async fn interruption_reply(
        &self,
        stats: &RouteStats,
        interruption: Interruption,
    ) -> Result<Response<ProxyBody>, BoxError> {
        match interruption {
            Interruption::Local { response, filter } => {
                let response = wasm::local_response(response, self.grpc_request);
                self.count_local(stats, response.status(), Reason::FilterLocalReply);
                // The reply goes back through the filter that sent it and those before it.
                self.through_response_filters(response, filter).await
            }
            Interruption::Failed { plugin } => {
                tracing::debug!(%plugin, "answering 503 for a failed fail-closed plugin");
                let reply = LocalReply::wasm_fail_stream();
                self.count_local(stats, reply.status, reply.reason);
                self.finish_chain();
                Ok(reply.into_response(self.grpc_request))
            }
            Interruption::Reset => {
                self.finish_chain();
                Err(Box::new(StreamClosedByFilter))
            }
            Interruption::TimedOut => {
                self.unshaped_local(stats, LocalReply::stream_idle_timeout())
                    .await
            }
            Interruption::BodyTooLarge { plugin, limit } => {
                self.unshaped_local(stats, LocalReply::body_too_large(&plugin, limit))
                    .await
            }
            Interruption::InvalidHeader(message) => {
                // Envoy's details: the message in braces, with `_` for spaces.
                let details = format!(
                    "{}{{{}}}",
                    Reason::FilterInvalidHeader.envoy_details(),
                    message.replace(' ', "_")
                );
                let reply = LocalReply::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    Reason::FilterInvalidHeader,
                    message,
                )
                .with_details(details);
                self.unshaped_local(stats, reply).await
            }
            Interruption::BodyFailed(error) => {
                // Nobody is left to answer: the client broke off its own request.
                tracing::debug!(%error, "the client's request body failed while a filter held the headers");
                self.finish_chain();
                Err(Box::new(ClientBodyFailed(error)))
            }
        }
    }

    pub(super) fn finish_chain(&self) {
        if let Some(chain) = &self.chain {
            chain.borrow_mut().finish();
        }
    }

    /// Response headers through filters `..=upto` in reverse, and the body wrapped so its
    /// chunks pass them too (the chain's contexts end with the body). Not an attempt's
    /// answer, so not replayable.
    pub(super) async fn through_response_filters(
        &self,
        response: Response<ProxyBody>,
        upto: usize,
    ) -> Result<Response<ProxyBody>, BoxError> {
        match self.answer(response, upto, false).await {
            Answer::Deliver(result) => result,
            // Refused by the host outside an attempt's window; never reached.
            Answer::Replay(_) => Err(Box::new(StreamClosedByFilter)),
        }
    }

    /// `through_response_filters`; `replayable` for an upstream attempt's answer, which a
    /// filter may replay instead.
    pub(super) async fn answer(
        &self,
        response: Response<ProxyBody>,
        upto: usize,
        replayable: bool,
    ) -> Answer {
        let Some(chain) = &self.chain else {
            return Answer::Deliver(Ok(response));
        };
        // Only other routes have filters: nothing to run, nothing to convert.
        if chain.borrow().is_empty() {
            return Answer::Deliver(Ok(response));
        }
        let (parts, mut body) = response.into_parts();
        let end_of_stream = body.is_end_stream();
        // An HTTP/1 upstream's body ends with an empty chunk for filters, as in Envoy; the
        // proxy's own replies end with their data.
        let split_end =
            matches!(body, ProxyBody::Upstream(_)) && parts.version < http::Version::HTTP_2;
        chain.borrow_mut().set_response_code(parts.status.as_u16());
        let info = Rc::clone(chain.borrow().info());
        let (details, flags) = response_facts(&parts, &body);
        info.response_details.replace(Some(details));
        info.response_flags.set(flags);
        if replayable {
            info.replay.borrow_mut().open_window();
        }
        let pairs = wasm::response_pairs(&parts);
        let peer = wasm::PeerBody::new(&mut body, split_end);
        let filtering = wasm::response_headers(chain, pairs, end_of_stream, upto, Some(peer));
        let filtered = match self.filter_idle {
            Some(idle) => tokio::time::timeout(idle, filtering)
                .await
                .unwrap_or(Err(Interruption::TimedOut)),
            None => filtering.await,
        };
        let replay = {
            let mut replay = info.replay.borrow_mut();
            replay.close_window();
            replay.take_requested()
        };
        if let (Some(delay), Ok(_)) = (replay, &filtered) {
            // Nothing of this response left: it is dropped, and the request goes again.
            if let ProxyBody::Upstream(upstream) = body {
                upstream.abandon();
            }
            return Answer::Replay(delay);
        }
        let body = Delivered {
            body,
            end_of_stream,
            split_end,
        };
        Answer::Deliver(self.deliver(chain, parts, body, upto, filtered))
    }

    /// The response as the filters left it (or their reply instead).
    fn deliver(
        &self,
        chain: &Chain,
        mut parts: http::response::Parts,
        body: Delivered,
        upto: usize,
        filtered: Result<Vec<wasm::Pair>, Interruption>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let Delivered {
            body,
            end_of_stream,
            split_end,
        } = body;
        match filtered {
            Ok(pairs) => {
                wasm::apply_response_pairs(&mut parts, &pairs);
                chain.borrow_mut().remember_for_log(None, Some(pairs));
                if end_of_stream {
                    // No body follows the headers: no body callbacks, as in Envoy.
                    self.finish_chain();
                    return Ok(Response::from_parts(parts, body));
                }
                let body = FilteredBody::response(body, Rc::clone(chain), upto, split_end);
                Ok(Response::from_parts(
                    parts,
                    ProxyBody::Filtered(Box::new(body)),
                ))
            }
            // Headers have not left yet: a filter's own reply replaces the response as is.
            Err(Interruption::Local { response, .. }) => {
                let response = wasm::local_response(response, self.grpc_request);
                self.conn
                    .worker
                    .state
                    .metrics
                    .local_reply(&self.listener.name, Reason::FilterLocalReply.as_str());
                self.finish_chain();
                Ok(response)
            }
            Err(Interruption::Failed { .. }) => {
                Ok(self.reply_instead(LocalReply::wasm_fail_stream()))
            }
            // A filter held the headers to wait for the body, so the proxy can still answer.
            Err(Interruption::BodyTooLarge { plugin, limit }) if !end_of_stream => {
                let mut reply = LocalReply::body_too_large(&plugin, limit);
                // The response is too large, not the request: Envoy answers 500 here.
                reply.status = http::StatusCode::INTERNAL_SERVER_ERROR;
                Ok(self.reply_instead(reply))
            }
            Err(Interruption::BodyFailed(error)) => Ok(self.reply_instead(LocalReply::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                Reason::UpstreamReset,
                format!(
                    "the upstream's response body failed while a filter held the headers: {error}"
                ),
            ))),
            Err(
                Interruption::Reset
                | Interruption::BodyTooLarge { .. }
                | Interruption::TimedOut
                | Interruption::InvalidHeader(_),
            ) => {
                self.finish_chain();
                Err(Box::new(StreamClosedByFilter))
            }
        }
    }

    /// The proxy's reply in place of a response whose headers have not left yet.
    fn reply_instead(&self, reply: LocalReply) -> Response<ProxyBody> {
        self.conn
            .worker
            .state
            .metrics
            .local_reply(&self.listener.name, reply.reason.as_str());
        self.finish_chain();
        reply.into_response(self.grpc_request)
    }
}

/// A response body as the response filters leave it to `deliver`.
struct Delivered {
    body: ProxyBody,
    /// No body follows the headers.
    end_of_stream: bool,
    /// It is an HTTP/1 upstream's (see `FilteredBody::response`).
    split_end: bool,
}

/// Envoy's `response.code_details` and `response.flags` for a response the filters see: the
/// upstream's, a filter's own reply, or the proxy's (named by its reason header).
fn response_facts(
    parts: &http::response::Parts,
    body: &ProxyBody,
) -> (std::borrow::Cow<'static, str>, u64) {
    if matches!(body, ProxyBody::Upstream(_)) {
        return ("via_upstream".into(), 0);
    }
    let reason = parts
        .headers
        .get(crate::http::local_reply::REASON_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(Reason::parse);
    let flags = reason.map_or(0, Reason::envoy_flags);
    let details = match (parts.extensions.get::<crate::http::ReplyDetails>(), reason) {
        (Some(details), _) => details.0.clone().into(),
        (None, Some(reason)) => reason.envoy_details().into(),
        (None, None) => "".into(),
    };
    (details, flags)
}
