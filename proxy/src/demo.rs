//! `sluice demo`: a small mesh on loopback with nothing to install. For now: two instances
//! of a demo app behind a gateway listener with round-robin balancing and health checks.
//!
//! The demo app answers every request with who it is and what it received, which makes the
//! proxy's work (balancing, `x-forwarded-for`, `x-request-id`) visible with plain curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{LoadedConfig, load_str};

/// Where the demo's gateway and admin endpoint listen.
pub const GATEWAY_ADDRESS: &str = "127.0.0.1:10000";
pub const ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Starts one demo app on an ephemeral loopback port; it serves until the runtime stops.
pub async fn start_demo_app(name: &'static str) -> std::io::Result<SocketAddr> {
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |request| async move {
                    Ok::<_, Infallible>(answer(name, address, &request))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

fn answer(name: &str, address: SocketAddr, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |key: &str| {
        request
            .headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "hello from {name} at {address}\n{} {}\nx-forwarded-for: {}\nx-request-id: {}\n",
        request.method(),
        request.uri(),
        header("x-forwarded-for"),
        header("x-request-id"),
    );
    Response::new(Full::new(Bytes::from(body)))
}

/// The demo's proxy config: a gateway in front of the given app instances.
pub fn demo_config(apps: &[SocketAddr]) -> Result<LoadedConfig, crate::config::ConfigError> {
    let endpoints: Vec<String> = apps.iter().map(|a| format!("\"{a}\"")).collect();
    let yaml = format!(
        r#"
admin: {{ address: "{ADMIN_ADDRESS}" }}
workers: 2
listeners:
  - name: gateway
    address: "{GATEWAY_ADDRESS}"
    routes:
      - name: hello
        match: {{ prefix: / }}
        cluster: hello
        timeout: 5s
clusters:
  - name: hello
    endpoints: [{}]
    lb_policy: round_robin
    health_check: {{ path: /healthz, interval: 2s }}
"#,
        endpoints.join(", ")
    );
    load_str(&yaml, Path::new("<sluice demo>"))
}
