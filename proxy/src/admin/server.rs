//! The admin endpoint: `/metrics` (Prometheus text), `/ready`, `/config` (the running
//! snapshot as JSON). Runs on the control runtime, never on a worker.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::runtime::{NotReady, ProxyState};

pub async fn serve_admin(socket: TcpListener, state: Arc<ProxyState>) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            // The same head timeout as a listener's default: a slow client holds nothing long.
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "admin connection failed");
            }
        });
    }
}

/// How long an admin request head may take to arrive (listeners' `request_header_timeout`).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn respond(state: &ProxyState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin endpoint only answers GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let snapshot = state.snapshot();
            for cluster in &snapshot.clusters {
                let now = cluster.now_ms();
                for endpoint in cluster.endpoints().iter() {
                    endpoint.refresh_gauge(now);
                }
            }
            let mut response = text(StatusCode::OK, state.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/ready" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(NotReady::Starting) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: listeners are not bound yet\n".into(),
            ),
            Err(NotReady::Draining) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: draining\n".into(),
            ),
            Err(NotReady::PluginCrashLooping(plugin)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: plugin {plugin} is crash-looping (its VM keeps failing and is rebuilt with backoff)\n"
                ),
            ),
            Err(NotReady::Discovering(services)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: waiting for the control service's first answer for services {} (at most 15s after the start)\n",
                    services.join(", ")
                ),
            ),
        },
        "/config" => {
            let body =
                serde_json::to_string_pretty(&state.snapshot().to_json()).unwrap_or_default();
            let mut response = text(StatusCode::OK, body + "\n");
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /metrics /ready /config\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
