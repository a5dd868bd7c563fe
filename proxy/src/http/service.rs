//! One HTTP request through the proxy: pin the snapshot, run the listener's Wasm filters,
//! route, run the route's filters, pick an endpoint, forward, and stream the response back
//! through the filters in reverse. Failures become local replies (see `local_reply`), which
//! pass back through the filters that saw the request, as in Envoy.

use std::cell::RefCell;
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
    add_request_identity, append_forwarded_for, is_upgrade_request, remove_hop_by_hop,
    shape_for_upstream,
};
use super::local_reply::{LocalReply, Reason};
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
    Timeout,
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
        return Ok(LocalReply::no_route(request.method(), request.uri().path()).into_response());
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
        // hyper answers `100 Continue` itself when the body is first read, which is when the
        // upstream connection is ready for it.
        parts.headers.remove(header::EXPECT);
        add_request_identity(&mut parts.headers, self.conn.scheme);

        if !listener.filters.is_empty() || listener.routes.has_filters() {
            let info = Rc::new(StreamInfo {
                connection_id: self.conn.id,
                source: self.conn.peer,
                destination: self.conn.local,
                protocol: protocol_name(parts.version),
                start: std::time::SystemTime::now(),
                routed: std::cell::OnceCell::new(),
                upstream: std::cell::OnceCell::new(),
                upstream_failure: std::cell::OnceCell::new(),
            });
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
        let Some(endpoint) = target.cluster.pick() else {
            return self
                .local(
                    &target.stats,
                    LocalReply::no_healthy_upstream(&target.cluster.name),
                )
                .await;
        };
        let active = endpoint.begin_request();
        if let Some(chain) = &self.chain {
            let _ = chain.borrow().info().upstream.set(endpoint.addr);
        }

        append_forwarded_for(&mut parts.headers, self.conn.peer);
        let cluster = &target.cluster;
        shape_for_upstream(
            &mut parts.uri,
            &mut parts.version,
            &mut parts.headers,
            cluster.settings.protocol,
        );
        let downstream_upgrade = upgrade
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let request_body = match &self.chain {
            Some(chain) if !end_of_stream => ProxyBody::Filtered(Box::new(FilteredBody::request(
                ProxyBody::Downstream(body),
                Rc::clone(chain),
            ))),
            _ => ProxyBody::Downstream(body),
        };
        let upstream_request = Request::from_parts(parts, request_body);

        let is_upgrade = downstream_upgrade.is_some();
        let pools = &self.conn.worker.pools;
        let sending = async {
            if is_upgrade {
                let response = pools
                    .send_upgrade(cluster, &endpoint, upstream_request)
                    .await?;
                Ok(UpstreamResponse {
                    response,
                    conn_return: None,
                })
            } else {
                pools.send(cluster, &endpoint, upstream_request).await
            }
        };
        let outcome = match deadline {
            Some(at) => match tokio::time::timeout_at(at, sending).await {
                Ok(result) => result.map_err(Failure::Upstream),
                Err(_elapsed) => Err(Failure::Timeout),
            },
            None => sending.await.map_err(Failure::Upstream),
        };
        let UpstreamResponse {
            mut response,
            conn_return,
        } = match outcome {
            Ok(response) => response,
            Err(failure) => {
                // A filter that stopped the request body is why the exchange failed.
                if let Some(interruption) = self
                    .chain
                    .as_ref()
                    .and_then(|c| c.borrow_mut().take_interruption())
                {
                    return self.interrupted(&target.stats, interruption).await;
                }
                let reply = match failure {
                    Failure::Timeout => LocalReply::upstream_timeout(&cluster.name),
                    Failure::Upstream(error) => {
                        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, %error, "upstream request failed");
                        LocalReply::from_upstream(&cluster.name, &error)
                    }
                };
                return self.local(&target.stats, reply).await;
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
        let completion =
            Completion::new(target.stats.clone(), parts.status, self.started).hold(guards);
        let body = UpstreamBody::new(
            body,
            deadline,
            route.idle_timeout,
            conn_return,
            completion,
            active,
        );
        let response = Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)));
        match &self.chain {
            Some(chain) => {
                let last = chain.borrow().len().saturating_sub(1);
                self.through_response_filters(response, last).await
            }
            None => Ok(response),
        }
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
        if let Some(chain) = &self.chain
            && reply.reason.is_upstream_failure()
        {
            let _ = chain
                .borrow()
                .info()
                .upstream_failure
                .set(reply.reason.as_str());
        }
        let response = reply.into_response();
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
                let response = wasm::local_response(response);
                self.count_local(stats, response.status(), Reason::FilterLocalReply);
                // The reply goes back through the filter that sent it and those before it.
                self.through_response_filters(response, filter).await
            }
            Interruption::Failed { plugin } => {
                tracing::debug!(%plugin, "answering 503 for a failed fail-closed plugin");
                let reply = LocalReply::wasm_fail_stream();
                self.count_local(stats, reply.status, reply.reason);
                self.finish_chain();
                Ok(reply.into_response())
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
    /// chunks pass them too (the chain's contexts end with the body).
    async fn through_response_filters(
        &self,
        response: Response<ProxyBody>,
        upto: usize,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let Some(chain) = &self.chain else {
            return Ok(response);
        };
        // Only other routes have filters: nothing to run, nothing to convert.
        if chain.borrow().is_empty() {
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        let end_of_stream = body.is_end_stream();
        chain.borrow_mut().set_response_code(parts.status.as_u16());
        let pairs = wasm::response_pairs(&parts);
        let filtering = wasm::response_headers(chain, pairs, end_of_stream, upto);
        let filtered = match self.filter_idle {
            Some(idle) => tokio::time::timeout(idle, filtering)
                .await
                .unwrap_or(Err(Interruption::TimedOut)),
            None => filtering.await,
        };
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
                let response = wasm::local_response(response);
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
                Ok(reply.into_response())
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
