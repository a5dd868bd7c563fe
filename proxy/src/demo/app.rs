//! The demo app: answers every request with who it is and what it received, which makes the
//! proxy's work (balancing, `x-forwarded-for`, `x-request-id`, the caller's identity) visible
//! with plain curl. `/flaky` fails, and `/unsteady` fails every other request.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Starts one demo app on an ephemeral loopback port; it serves until the runtime stops.
pub async fn start_demo_app(name: &'static str) -> std::io::Result<SocketAddr> {
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    let unsteady = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            let unsteady = std::sync::Arc::clone(&unsteady);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let unsteady = std::sync::Arc::clone(&unsteady);
                    async move { Ok::<_, Infallible>(answer(name, address, &request, &unsteady)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// `unsteady` counts this instance's `/unsteady` requests.
fn answer(
    name: &str,
    address: SocketAddr,
    request: &Request<Incoming>,
    unsteady: &std::sync::atomic::AtomicU64,
) -> Response<Full<Bytes>> {
    let header = |key: &str| {
        request
            .headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "hello from {name} at {address}\n{} {}\nx-forwarded-for: {}\nx-request-id: {}\ncaller (its mTLS identity, checked by the sidecar): {}\n",
        request.method(),
        request.uri(),
        header("x-forwarded-for"),
        header("x-request-id"),
        header("x-authz-principal"),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    // `/flaky/...` fails, so the circuit breaker has something to do.
    if request.uri().path().starts_with("/flaky") {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    // `/unsteady/...` fails every other time on each instance, so retries have work.
    if request.uri().path().starts_with("/unsteady")
        && unsteady
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(2)
    {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}
