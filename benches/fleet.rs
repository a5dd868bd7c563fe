//! What the control-plane benchmarks share: an upstream that answers `ok`, and clients that
//! send requests back to back through a proxy and report which filter configuration served
//! each response (the `x-wasm-tag` the headers fixture adds).

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// A proxy (one worker) in front of `upstream`, subscribed to `control` as `proxy_id`.
pub async fn subscribed_proxy(
    upstream: SocketAddr,
    control: String,
    proxy_id: String,
) -> (sluice::RunningProxy, sluice::control::ControlSubscription) {
    let yaml = format!(
        "workers: 1\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    routes: [{{ match: {{ prefix: / }}, cluster: app }}]\nclusters: [{{ name: app, endpoints: [\"{upstream}\"] }}]\n"
    );
    let loaded = sluice::config::load_str(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let proxy = sluice::RunningProxy::start(&loaded).await.unwrap();
    let subscription = sluice::control::ControlSubscription::start(
        sluice::control::SubscriberSettings {
            url: control,
            join_token: None,
            trust: sluice_control::ControlTrust::default(),
            token: None,
            proxy_id,
        },
        proxy.applier(),
    );
    (proxy, subscription)
}

/// Sets `module` (the headers fixture) as filter `tagger`, tagging responses with `tag`.
pub fn tagger_push(module: &std::path::Path, tag: &str) -> sluice::control::PushRequest {
    sluice::control::PushRequest {
        to: None,
        module: module.to_owned(),
        name: "tagger".into(),
        config: Some(tag.to_owned()),
        vm_config: None,
        listener: None,
        fail_open: false,
        canary_percent: None,
        route: None,
    }
}

/// Sends requests back to back; publishes each response's tag. With `measure`, also returns
/// its latencies: the first 2000 before any tag, then those with one.
pub async fn client_loop(
    address: SocketAddr,
    tags: watch::Sender<String>,
    stop: Arc<AtomicBool>,
    measure: bool,
) -> Option<(Vec<Duration>, Vec<Duration>)> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (mut quiet, mut swapping) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let request = http::Request::get("/")
            .header("host", "bench")
            .body(Full::<Bytes>::default())
            .unwrap();
        // The proxy going away ends the client; a bench reads what it reported until then.
        let Ok(response) = sender.send_request(request).await else {
            break;
        };
        let tag = response
            .headers()
            .get("x-wasm-tag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if response.into_body().collect().await.is_err() {
            break;
        }
        if measure {
            if tag.is_empty() && quiet.len() < 2000 {
                quiet.push(started.elapsed());
            } else if !tag.is_empty() {
                swapping.push(started.elapsed());
            }
        }
        tags.send_if_modified(|seen| {
            let changed = *seen != tag;
            *seen = tag;
            changed
        });
        if sender.ready().await.is_err() {
            break;
        }
    }
    measure.then_some((quiet, swapping))
}

/// An HTTP/1.1 upstream on loopback answering `ok` to everything.
pub async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"ok\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}
