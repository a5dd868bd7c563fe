//! One HTTP request through the proxy: pin the snapshot, run the listener's Wasm filters,
//! route, run the route's filters, pick an endpoint, forward, and stream the response back
//! through the filters in reverse. Failures become local replies (see `local_reply`), which
//! pass back through the filters that saw the request, as in Envoy.

mod attempt;
mod filters;

use std::cell::RefCell;
use std::rc::Rc;

use http::{Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use prometheus::IntGauge;
use tokio::time::Instant;

use super::body::{BoxError, ClientBodyError, ClientBodyWatch, DownstreamBody, ProxyBody};
use super::connection::DownstreamConn;
use super::deadline::request_deadline;
use super::headers::{
    add_request_identity, append_forwarded_for, is_upgrade_request, join_http2_cookies,
    remove_hop_by_hop, shape_for_upstream,
};
use super::local_reply::LocalReply;
use super::replay::ReplayableBody;
use super::route::ClusterTarget;
use crate::config::ListenerSnapshot;
use crate::upstream::UpstreamError;
use crate::wasm::{FilterChain, FilteredBody, StreamInfo};

/// What one request holds until its response ends (the in-flight counts), and how its
/// client's body failed, if it did: one allocation serves both.
struct RequestScope {
    _in_flight: InFlight,
    _stream: crate::http::connection::StreamGuard,
    client_body_failure: RefCell<Option<ClientBodyError>>,
    /// Set when the upstream's response headers arrive.
    response_started: std::cell::Cell<bool>,
}

impl ClientBodyWatch for RequestScope {
    fn body_failed(&self, failure: ClientBodyError) {
        self.client_body_failure.borrow_mut().get_or_insert(failure);
    }

    fn response_started(&self) -> bool {
        self.response_started.get()
    }
}

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

/// The client's request body failed (a reset, a broken connection) while a filter held the
/// request headers to wait for it.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed while a filter waited for it: {0}")]
struct ClientBodyFailed(String);

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
    let mut reset_watch = conn.activity.watch_reset();
    let scope = Rc::new(RequestScope {
        _in_flight: InFlight::start(&listener.stats.requests_active),
        _stream: conn.activity.stream(),
        client_body_failure: RefCell::new(None),
        response_started: std::cell::Cell::new(false),
    });
    let exchange = Exchange {
        conn: &conn,
        listener,
        started,
        chain: None,
        filter_idle: Some(IDLE_BEFORE_ROUTE),
        grpc_request: false,
        head_request: false,
        http1_client: false,
        http1_with_body: false,
        scope: Rc::clone(&scope),
    };
    let version = request.version();
    let limit = listener.max_requests_per_connection;
    let mut response = exchange.forward(request).await;
    reset_watch.answered();
    let last_request =
        limit.is_some_and(|limit| conn.activity.requests_started() >= u64::from(limit));
    // While shedding load, connections close too, so their memory can go.
    if last_request || listener.stats.overload.is_shedding() {
        // Its last request: HTTP/1.1 says so on the response, HTTP/2 with a GOAWAY.
        match (&mut response, version < http::Version::HTTP_2) {
            (Ok(response), true) => {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            _ => conn.activity.retire(),
        }
    }
    response
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
    /// What the request holds for its whole life, and how its client's body failed.
    scope: Rc<RequestScope>,
    /// A HEAD request: local replies keep their length and lose their body.
    head_request: bool,
    /// The client speaks HTTP/1: Envoy's codec ends its request body with an empty chunk of
    /// its own, and filters see the same sequence (see `FilteredBody::request`).
    http1_client: bool,
    /// An HTTP/1 request with a body: a local reply sent before the body was read closes the
    /// connection (see `filters::shape_local`).
    http1_with_body: bool,
}

impl Exchange<'_> {
    async fn forward(
        mut self,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let listener = self.listener;
        let (mut parts, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        let watch: Rc<dyn ClientBodyWatch> = self.scope.clone();
        let mut body = ProxyBody::Downstream(DownstreamBody::new(
            body,
            watch,
            listener.request_body_timeout,
        ));
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
        self.head_request = parts.method == http::Method::HEAD;
        self.http1_client = parts.version < http::Version::HTTP_2;
        self.http1_with_body = self.http1_client && !end_of_stream;
        // Past `overload.max_memory`: shed before any work, as Envoy's overload manager does.
        if listener.stats.overload.is_shedding() {
            return self.local(&listener.unrouted, LocalReply::overload()).await;
        }

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
                .run_request_filters(&listener.filters, &mut parts, end_of_stream, &mut body)
                .await
            {
                // Envoy routes before any filter runs, so the filters that see this reply know
                // the route's cluster (`xds.cluster_name`); the request goes nowhere.
                if let Some(route) =
                    listener
                        .routes
                        .find(&parts.method, parts.uri.path(), &parts.headers)
                {
                    self.note_route(route, route.pick_target());
                }
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
        self.note_route(route, target);
        self.filter_idle = route.idle_timeout;
        if !route.filters.is_empty()
            && let Err(interruption) = self
                .run_request_filters(&route.filters, &mut parts, end_of_stream, &mut body)
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
                    body,
                    Rc::clone(chain),
                    self.http1_client,
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
            _ => body,
        };
        let mut request = Request::from_parts(parts, request_body);

        let attempt = Attempt {
            target,
            idle_timeout: route.idle_timeout,
            deadline,
            guards: self.scope.clone(),
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

    /// Where the request is routed, for the filters (`xds.route_name`, `xds.cluster_name`).
    fn note_route(&self, route: &super::route::Route, target: &ClusterTarget) {
        if let Some(chain) = &self.chain {
            let route_name = route.configured_name.as_deref().unwrap_or_default();
            chain
                .borrow()
                .info()
                .set_routed(route_name, &target.cluster.name);
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
}

fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
