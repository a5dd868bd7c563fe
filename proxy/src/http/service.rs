//! One HTTP request through the proxy: pin the snapshot, route, pick an endpoint, forward,
//! and stream the response back. Failures become local replies (see `local_reply`).

use std::convert::Infallible;
use std::rc::Rc;

use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use prometheus::IntGauge;
use tokio::time::Instant;

use super::body::{Completion, ProxyBody, UpstreamBody};
use super::connection::DownstreamConn;
use super::deadline::request_deadline;
use super::headers::{
    add_forwarding_headers, is_upgrade_request, remove_hop_by_hop, shape_for_upstream,
};
use super::local_reply::LocalReply;
use super::upgrade::spawn_tunnel;
use crate::admin::RouteStats;
use crate::config::ListenerSnapshot;
use crate::upstream::{UpstreamError, UpstreamResponse};

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

/// hyper's service entry point for every downstream request.
pub async fn handle(
    conn: Rc<DownstreamConn>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    // Pinned once: the whole request runs on the config it started with.
    let snapshot = conn.worker.state.snapshot();
    let Some(listener) = snapshot.listeners.get(conn.listener) else {
        return Ok(LocalReply::no_route(request.method(), request.uri().path()).into_response());
    };
    let guards = (
        InFlight::start(&listener.stats.requests_active),
        conn.activity.stream(),
    );
    Ok(forward(&conn, listener, request, started, guards).await)
}

async fn forward(
    conn: &DownstreamConn,
    listener: &ListenerSnapshot,
    request: Request<Incoming>,
    started: Instant,
    guards: impl std::any::Any,
) -> Response<ProxyBody> {
    let local = |stats: &RouteStats, reply: LocalReply| {
        conn.worker
            .state
            .metrics
            .local_reply(&listener.name, reply.reason.as_str());
        stats.record(reply.status, started.elapsed());
        reply.into_response()
    };
    let Some(route) =
        listener
            .routes
            .find(request.method(), request.uri().path(), request.headers())
    else {
        return local(
            &listener.unrouted,
            LocalReply::no_route(request.method(), request.uri().path()),
        );
    };
    let target = route.pick_target();
    let deadline = request_deadline(route.timeout, request.headers(), started);
    let Some(endpoint) = target.cluster.pick() else {
        return local(
            &target.stats,
            LocalReply::no_healthy_upstream(&target.cluster.name),
        );
    };
    let active = endpoint.begin_request();

    let upgrade = is_upgrade_request(request.version(), request.headers());
    let (mut parts, body) = request.into_parts();
    remove_hop_by_hop(&mut parts.headers, upgrade);
    // hyper answers `100 Continue` itself when the body is first read, which is when the
    // upstream connection is ready for it.
    parts.headers.remove(header::EXPECT);
    add_forwarding_headers(&mut parts.headers, conn.peer, conn.scheme);
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
    let upstream_request = Request::from_parts(parts, ProxyBody::Downstream(body));

    let is_upgrade = downstream_upgrade.is_some();
    let sending = async {
        if is_upgrade {
            let response = conn
                .worker
                .pools
                .send_upgrade(cluster, &endpoint, upstream_request)
                .await?;
            Ok(UpstreamResponse {
                response,
                conn_return: None,
            })
        } else {
            conn.worker
                .pools
                .send(cluster, &endpoint, upstream_request)
                .await
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
        Err(Failure::Timeout) => {
            return local(&target.stats, LocalReply::upstream_timeout(&cluster.name));
        }
        Err(Failure::Upstream(error)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, %error, "upstream request failed");
            return local(
                &target.stats,
                LocalReply::from_upstream(&cluster.name, &error),
            );
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
    let completion = Completion::new(target.stats.clone(), parts.status, started).hold(guards);
    let body = UpstreamBody::new(
        body,
        deadline,
        route.idle_timeout,
        conn_return,
        completion,
        active,
    );
    Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)))
}
