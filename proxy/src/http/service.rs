//! One HTTP request through the proxy: pin the snapshot, run the listener's Wasm filters,
//! route, run the route's filters, pick an endpoint, forward, and stream the response back
//! through the filters in reverse. Failures become local replies (see `local_reply`), which
//! pass back through the filters that saw the request, as in Envoy.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use prometheus::IntGauge;
use tokio::time::Instant;

use super::body::{BoxError, Completion, ProxyBody, UpstreamBody};
use super::connection::DownstreamConn;
use super::deadline::request_deadline;
use super::headers::{
    add_request_identity, append_forwarded_for, is_upgrade_request, join_http2_cookies,
    remove_hop_by_hop, shape_for_upstream,
};
use super::local_reply::{LocalReply, Reason};
use super::replay::ReplayableBody;
use super::route::ClusterTarget;
use super::upgrade::spawn_tunnel;
use crate::admin::RouteStats;
use crate::config::ListenerSnapshot;
use crate::upstream::{UpstreamError, UpstreamResponse};
use crate::wasm::{self, FilterChain, FilteredBody, Interruption, StreamInfo};

/// Decrements a gauge when dropped: requests in flight.
struct InFlight(IntGauge);

impl InFlight {
    fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

enum Failure {
    Upstream(UpstreamError),
    /// The route's timeout (or `x-envoy-upstream-rq-timeout-ms`), which spans all attempts.
    Timeout,
    /// The per-try timeout a filter set when it armed replay.
    PerTryTimeout(std::time::Duration),
}

/// What an attempt (or a reply) turned into after the response filters.
enum Answer {
    Deliver(Result<Response<ProxyBody>, BoxError>),
    /// A filter asked to send the request again after this delay (`sluice_replay`).
    Replay(std::time::Duration),
}

/// What every attempt of one request shares.
struct Attempt<'a> {
    target: &'a ClusterTarget,
    idle_timeout: Option<std::time::Duration>,
    deadline: Option<Instant>,
    /// In-flight gauges and the connection's stream count, held by the answer's body.
    guards: Rc<dyn std::any::Any>,
}

/// A filter closed the stream: hyper resets it (HTTP/2) or closes the connection (HTTP/1).
#[derive(Debug, thiserror::Error)]
#[error("a filter closed the stream")]
struct StreamClosedByFilter;

type Chain = Rc<RefCell<FilterChain>>;

/// How long a listener filter may hold a request paused before a route (and its
/// `idle_timeout`) is known: Envoy's default stream idle timeout.
const IDLE_BEFORE_ROUTE: std::time::Duration = std::time::Duration::from_secs(300);

/// hyper's service entry point for every downstream request.
pub async fn handle(
    conn: Rc<DownstreamConn>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let started = Instant::now();
    // Pinned once: the whole request runs on the config it started with.
    let snapshot = conn.worker.snapshot();
    // A listener that a new config removed: its connections are closing already.
    let Some(listener) = snapshot.listener(&conn.listener) else {
        let grpc = super::grpc_reply::is_grpc_request(request.headers());
        return Ok(LocalReply::no_route(request.method(), request.uri().path()).into_response(grpc));
    };
    let guards = (
        InFlight::start(&listener.stats.requests_active),
        conn.activity.stream(),
    );
    let exchange = Exchange {
        conn: &conn,
        listener,
        started,
        chain: None,
        filter_idle: Some(IDLE_BEFORE_ROUTE),
        grpc_request: false,
    };
    exchange.forward(request, guards).await
}

/// One request's journey, with what every step needs.
struct Exchange<'a> {
    conn: &'a DownstreamConn,
    listener: &'a ListenerSnapshot,
    started: Instant,
    chain: Option<Chain>,
    /// How long a paused filter may hold the stream: the route's `idle_timeout` once the route
    /// is known.
    filter_idle: Option<std::time::Duration>,
    /// Whether the request came in as gRPC (by its content type, before any filter ran):
    /// local replies to it, the proxy's and the filters', are gRPC replies, as in Envoy.
    grpc_request: bool,
}

impl Exchange<'_> {
    async fn forward(
        mut self,
        request: Request<Incoming>,
        guards: impl std::any::Any,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let listener = self.listener;
        let (mut parts, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        // What a hop does to every request happens before the filters, as in Envoy, so they
        // see `x-request-id` and `x-forwarded-proto` and never hop-by-hop headers.
        let upgrade = is_upgrade_request(parts.version, &parts.headers);
        remove_hop_by_hop(&mut parts.headers, upgrade);
        join_http2_cookies(parts.version, &mut parts.headers);
        // hyper answers `100 Continue` itself when the body is first read, which is when the
        // upstream connection is ready for it.
        parts.headers.remove(header::EXPECT);
        add_request_identity(&mut parts.headers, self.conn.scheme);
        self.grpc_request = super::grpc_reply::is_grpc_request(&parts.headers);

        if !listener.filters.is_empty() || listener.routes.has_filters() {
            let info = Rc::new(
                StreamInfo::new(
                    self.conn.id,
                    self.conn.peer,
                    self.conn.local,
                    protocol_name(parts.version),
                )
                .with_tls(self.conn.tls.clone()),
            );
            self.chain = Some(Rc::new(RefCell::new(FilterChain::new(
                info,
                listener.max_body_buffer,
            ))));
            if let Err(interruption) = self
                .run_request_filters(&listener.filters, &mut parts, end_of_stream)
                .await
            {
                return self.interrupted(&listener.unrouted, interruption).await;
            }
        }

        let Some(route) = listener
            .routes
            .find(&parts.method, parts.uri.path(), &parts.headers)
        else {
            let reply = LocalReply::no_route(&parts.method, parts.uri.path());
            return self.local(&listener.unrouted, reply).await;
        };
        let target = route.pick_target();
        if let Some(chain) = &self.chain {
            let route_name = route.configured_name.as_deref().unwrap_or_default();
            chain
                .borrow()
                .info()
                .set_routed(route_name, &target.cluster.name);
        }
        self.filter_idle = route.idle_timeout;
        if !route.filters.is_empty()
            && let Err(interruption) = self
                .run_request_filters(&route.filters, &mut parts, end_of_stream)
                .await
        {
            return self.interrupted(&target.stats, interruption).await;
        }
        let deadline = request_deadline(route.timeout, &parts.headers, self.started);
        append_forwarded_for(&mut parts.headers, &self.conn.client_address);
        let cluster = &target.cluster;
        shape_for_upstream(
            &mut parts.uri,
            &mut parts.version,
            &mut parts.headers,
            cluster.settings.protocol,
        );
        let mut downstream_upgrade = upgrade
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let replay_head = self.replay_head(&parts, downstream_upgrade.is_some(), deadline);
        let mut rest_of_body = None;
        let request_body = match &self.chain {
            Some(chain) if !end_of_stream => {
                let filtered = ProxyBody::Filtered(Box::new(FilteredBody::request(
                    ProxyBody::Downstream(body),
                    Rc::clone(chain),
                )));
                match replay_head {
                    Some(_) => {
                        let info = Rc::clone(chain.borrow().info());
                        let (first, rest) = ReplayableBody::first(filtered, info);
                        rest_of_body = Some(rest);
                        ProxyBody::Replayable(Box::new(first))
                    }
                    None => filtered,
                }
            }
            _ => ProxyBody::Downstream(body),
        };
        let mut request = Request::from_parts(parts, request_body);

        let attempt = Attempt {
            target,
            idle_timeout: route.idle_timeout,
            deadline,
            guards: Rc::new(guards),
        };
        // Endpoints earlier attempts went to; filled only when a replay happens, so a request
        // that is never replayed allocates nothing for it.
        let mut tried = Vec::new();
        loop {
            let answer = self
                .attempt(&attempt, request, &tried, downstream_upgrade.take())
                .await;
            let delay = match answer {
                Answer::Deliver(result) => return result,
                Answer::Replay(delay) => delay,
            };
            // A replay is refused unless the head was kept; this is only belt and braces.
            let (Some(head), Some(chain)) = (&replay_head, &self.chain) else {
                return Err(Box::new(StreamClosedByFilter));
            };
            tried.extend(chain.borrow().info().upstream.get());
            if let Some(rest) = &rest_of_body {
                rest.supersede();
            }
            self.conn
                .worker
                .state
                .metrics
                .replay(&listener.name, &cluster.name);
            tokio::time::sleep(delay).await;
            let body = match &rest_of_body {
                Some(rest) => {
                    let kept = chain.borrow().info().replay.borrow().body();
                    ProxyBody::Replayable(Box::new(ReplayableBody::again(rest, kept)))
                }
                None => ProxyBody::Empty,
            };
            request = Request::from_parts(head.clone(), body);
        }
    }

    /// A copy of the request head when a filter armed replay (`sluice_prepare_replay`).
    fn replay_head(
        &self,
        parts: &http::request::Parts,
        is_upgrade: bool,
        deadline: Option<Instant>,
    ) -> Option<http::request::Parts> {
        let chain = self.chain.as_ref()?.borrow();
        let mut replay = chain.info().replay.borrow_mut();
        replay.plan()?;
        replay.set_deadline(deadline);
        if is_upgrade {
            replay.lose("an upgrade request cannot be replayed");
            return None;
        }
        // Extensions (hyper's connection state) belong to the first attempt only.
        let mut head = parts.clone();
        head.extensions.clear();
        Some(head)
    }

    /// One attempt: pick an endpoint (one not tried yet, when there is one), send, and run
    /// the response filters over what came back; they may ask for a replay instead.
    async fn attempt(
        &self,
        attempt: &Attempt<'_>,
        request: Request<ProxyBody>,
        tried: &[SocketAddr],
        downstream_upgrade: Option<OnUpgrade>,
    ) -> Answer {
        let cluster = &attempt.target.cluster;
        let stats = &attempt.target.stats;
        // An attempt counts from here, even one that finds no endpoint: the host's attempt
        // limit holds whatever the filters ask.
        let per_try_timeout = self.chain.as_ref().and_then(|chain| {
            let chain = chain.borrow();
            let info = chain.info();
            info.upstream.set(None);
            info.upstream_failure.set(None);
            let mut replay = info.replay.borrow_mut();
            replay.start_attempt();
            replay.plan().and_then(|plan| plan.per_try_timeout)
        });
        let key = cluster.hash_key(request.headers(), self.conn.peer);
        let Some(endpoint) = cluster.pick_avoiding(tried, key) else {
            let reply =
                LocalReply::no_healthy_upstream(&cluster.name, cluster.discovered_service());
            return self.upstream_failed(stats, reply).await;
        };
        let active = endpoint.begin_request();
        if let Some(chain) = &self.chain {
            chain.borrow().info().upstream.set(Some(endpoint.addr));
        }

        let pools = &self.conn.worker.pools;
        let sending = async {
            if downstream_upgrade.is_some() {
                let response = pools.send_upgrade(cluster, &endpoint, request).await?;
                Ok(UpstreamResponse {
                    response,
                    conn_return: None,
                })
            } else {
                pools.send(cluster, &endpoint, request).await
            }
        };
        // Only `ewma` balancing reads response latency; others skip the clock.
        let sent_at = cluster.tracks_latency().then(Instant::now);
        // The route's deadline spans every attempt; the per-try timeout is this one's.
        let per_try_at = per_try_timeout.map(|timeout| Instant::now() + timeout);
        let stop = match (attempt.deadline, per_try_at) {
            (Some(deadline), Some(per_try)) => Some(deadline.min(per_try)),
            (deadline, per_try) => deadline.or(per_try),
        };
        let outcome = match stop {
            Some(at) => match tokio::time::timeout_at(at, sending).await {
                Ok(result) => result.map_err(Failure::Upstream),
                Err(_elapsed) => match per_try_timeout {
                    Some(timeout) if attempt.deadline.is_none_or(|deadline| deadline > at) => {
                        Err(Failure::PerTryTimeout(timeout))
                    }
                    _ => Err(Failure::Timeout),
                },
            },
            None => sending.await.map_err(Failure::Upstream),
        };
        let UpstreamResponse {
            mut response,
            conn_return,
        } = match outcome {
            Ok(response) => {
                if let Some(sent_at) = sent_at {
                    endpoint.observe_latency(sent_at.elapsed(), cluster.now_ms());
                }
                response
            }
            Err(failure) => {
                // A filter that stopped the request body is why the exchange failed.
                if let Some(interruption) = self
                    .chain
                    .as_ref()
                    .and_then(|c| c.borrow_mut().take_interruption())
                {
                    return Answer::Deliver(self.interrupted(stats, interruption).await);
                }
                let reply = match failure {
                    Failure::Timeout => LocalReply::upstream_timeout(&cluster.name),
                    Failure::PerTryTimeout(timeout) => {
                        LocalReply::upstream_per_try_timeout(&cluster.name, timeout)
                    }
                    Failure::Upstream(error) => {
                        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, %error, "upstream request failed");
                        LocalReply::from_upstream(&cluster.name, &error)
                    }
                };
                return self.upstream_failed(stats, reply).await;
            }
        };

        let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        remove_hop_by_hop(response.headers_mut(), switched);
        let mut active = Some(active);
        if switched && let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            spawn_tunnel(downstream, upstream, active.take());
        }
        let (parts, body) = response.into_parts();
        let completion = Completion::new(stats.clone(), parts.status, self.started)
            .hold(Rc::clone(&attempt.guards));
        let body = UpstreamBody::new(
            body,
            attempt.deadline,
            attempt.idle_timeout,
            conn_return,
            completion,
            active,
        );
        let response = Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)));
        self.answer_attempt(response).await
    }

    /// An attempt that got no response: the proxy's reply goes through the response filters,
    /// which may replay the request; it is counted only if it is the answer.
    async fn upstream_failed(&self, stats: &RouteStats, reply: LocalReply) -> Answer {
        if let Some(chain) = &self.chain {
            chain
                .borrow()
                .info()
                .upstream_failure
                .set(Some(reply.reason.as_str()));
        }
        let (status, reason) = (reply.status, reply.reason);
        let answer = self
            .answer_attempt(reply.into_response(self.grpc_request))
            .await;
        if matches!(answer, Answer::Deliver(_)) {
            self.count_local(stats, status, reason);
        }
        answer
    }

    /// An attempt's answer through every response filter, which may replay the request.
    async fn answer_attempt(&self, response: Response<ProxyBody>) -> Answer {
        let Some(chain) = &self.chain else {
            return Answer::Deliver(Ok(response));
        };
        let last = chain.borrow().len().saturating_sub(1);
        self.answer(response, last, true).await
    }

    /// Request headers through `specs` (appended to the chain), written back into `parts`.
    /// A filter that pauses the request gets the stream idle timeout (`filter_idle`) to resume
    /// it, as in Envoy.
    async fn run_request_filters(
        &self,
        filters: &[wasm::ConfiguredFilter],
        parts: &mut http::request::Parts,
        end_of_stream: bool,
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
        let filtering = wasm::request_headers(chain, pairs, end_of_stream, from);
        let pairs = match self.filter_idle {
            Some(idle) => tokio::time::timeout(idle, filtering)
                .await
                .map_err(|_elapsed| Interruption::TimedOut)??,
            None => filtering.await?,
        };
        wasm::apply_request_pairs(parts, &pairs);
        chain.borrow_mut().remember_for_log(Some(pairs), None);
        Ok(())
    }

    /// A reply the proxy makes itself, counted, and passed through the response filters.
    async fn local(
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

    fn count_local(&self, stats: &RouteStats, status: http::StatusCode, reason: Reason) {
        self.conn
            .worker
            .state
            .metrics
            .local_reply(&self.listener.name, reason.as_str());
        stats.record(status, self.started.elapsed());
    }

    /// The answer to a filter stopping the stream.
    async fn interrupted(
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
            Interruption::TimedOut => self.local(stats, LocalReply::stream_idle_timeout()).await,
            Interruption::BodyTooLarge { plugin, limit } => {
                self.local(stats, LocalReply::body_too_large(&plugin, limit))
                    .await
            }
        }
    }

    fn finish_chain(&self) {
        if let Some(chain) = &self.chain {
            chain.borrow_mut().finish();
        }
    }

    /// Response headers through filters `..=upto` in reverse, and the body wrapped so its
    /// chunks pass them too (the chain's contexts end with the body). Not an attempt's
    /// answer, so not replayable.
    async fn through_response_filters(
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
    async fn answer(&self, response: Response<ProxyBody>, upto: usize, replayable: bool) -> Answer {
        let Some(chain) = &self.chain else {
            return Answer::Deliver(Ok(response));
        };
        // Only other routes have filters: nothing to run, nothing to convert.
        if chain.borrow().is_empty() {
            return Answer::Deliver(Ok(response));
        }
        let (parts, body) = response.into_parts();
        let end_of_stream = body.is_end_stream();
        chain.borrow_mut().set_response_code(parts.status.as_u16());
        let info = Rc::clone(chain.borrow().info());
        if replayable {
            info.replay.borrow_mut().open_window();
        }
        let pairs = wasm::response_pairs(&parts);
        let filtering = wasm::response_headers(chain, pairs, end_of_stream, upto);
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
        Answer::Deliver(self.deliver(chain, parts, body, end_of_stream, upto, filtered))
    }

    /// The response as the filters left it (or their reply instead).
    fn deliver(
        &self,
        chain: &Chain,
        mut parts: http::response::Parts,
        body: ProxyBody,
        end_of_stream: bool,
        upto: usize,
        filtered: Result<Vec<wasm::Pair>, Interruption>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        match filtered {
            Ok(pairs) => {
                wasm::apply_response_pairs(&mut parts, &pairs);
                chain.borrow_mut().remember_for_log(None, Some(pairs));
                if end_of_stream {
                    // No body follows the headers: no body callbacks, as in Envoy.
                    self.finish_chain();
                    return Ok(Response::from_parts(parts, body));
                }
                let body = FilteredBody::response(body, Rc::clone(chain), upto);
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
                let reply = LocalReply::wasm_fail_stream();
                self.conn
                    .worker
                    .state
                    .metrics
                    .local_reply(&self.listener.name, reply.reason.as_str());
                self.finish_chain();
                Ok(reply.into_response(self.grpc_request))
            }
            Err(
                Interruption::Reset | Interruption::BodyTooLarge { .. } | Interruption::TimedOut,
            ) => {
                self.finish_chain();
                Err(Box::new(StreamClosedByFilter))
            }
        }
    }
}

fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
