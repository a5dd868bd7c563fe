//! What service discovery costs and how fast it is, on loopback, with the control service as
//! its own process (the release `sluice` binary; `SLUICE_BIN` overrides where it is).
//!
//! 1. **Propagation.** Ten caller proxies (in this process, one worker each) have a cluster
//!    `service: hello`. An instance (a proxy with `register:`) registers, then leaves as
//!    SIGTERM makes it (`ControlSubscription::leave`), 30 times. Timed: from the start of
//!    each to the moment the last of the ten callers' endpoint sets shows it.
//! 2. **Rolling restart under load.** A caller in front of three instances (sidecar proxies in
//!    front of a small app); eight keep-alive clients send requests back to back while each
//!    instance in turn leaves, drains and comes back. Counted: failed requests.
//! 3. **Scale.** 1,000 services × 5 instances registered by plain subscription clients, and
//!    100 plain discovery streams that each watch all 1,000 services. Then 100 membership
//!    changes (an instance joins one service, then leaves it). Measured: the control
//!    service's CPU and memory, the payload bytes pushed per change over all watchers, and
//!    the time until all 100 watchers have it.
//!
//! Run: `cargo bench -p sluice-benches --bench discovery`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::RunningProxy;
use sluice::control::{ControlSubscription, SubscriberSettings};
use sluice_benches::{ms, percentile};
use tokio::time::Instant;

const CALLERS: usize = 10;
const ROUNDS: usize = 30;

mod control;
mod scale;

use control::{ControlProcess, create_token};

fn main() {
    sluice_benches::block_on(run());
}

async fn run() {
    let control = ControlProcess::start();
    let token = create_token(&control.url).await;
    propagation(&control, &token).await;
    rolling_restart(&control, &token).await;
    scale::scale(&control, &token).await;
}

// === 1. propagation ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_proxy(yaml: &str) -> RunningProxy {
    let loaded = sluice::config::load_str(yaml, Path::new("bench.yaml")).unwrap();
    RunningProxy::start(&loaded).await.unwrap()
}

fn subscribe(
    url: &str,
    id: &str,
    token: Option<&str>,
    proxy: &RunningProxy,
) -> ControlSubscription {
    ControlSubscription::start(
        SubscriberSettings {
            url: url.to_owned(),
            token: None,
            proxy_id: id.to_owned(),
            join_token: token.map(str::to_owned),
            trust: sluice_control::ControlTrust::default(),
        },
        proxy.applier(),
    )
}

fn caller_yaml(extra_cluster: &str) -> String {
    format!(
        "workers: 1\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    routes: [{{ match: {{ prefix: / }}, cluster: hello }}]\nclusters:\n  - name: hello\n    service: hello\n{extra_cluster}"
    )
}

fn instance_yaml(port: u16, app: SocketAddr) -> String {
    format!(
        "workers: 1\nregister: [{{ service: hello, address: \"127.0.0.1:{port}\" }}]\nlisteners:\n  - name: main\n    address: 127.0.0.1:{port}\n    routes: [{{ match: {{ prefix: / }}, cluster: app }}]\nclusters: [{{ name: app, endpoints: [\"{app}\"] }}]\n"
    )
}

/// Whether `proxy`'s cluster `hello` has `address` among its endpoints.
fn has_endpoint(proxy: &RunningProxy, address: SocketAddr) -> bool {
    proxy
        .state()
        .snapshot()
        .clusters
        .iter()
        .find(|c| c.name == "hello")
        .is_some_and(|c| c.endpoints().iter().any(|e| e.addr == address))
}

/// Waits until every caller agrees that `address` is (or is not) an endpoint.
async fn until_all(
    callers: &[(RunningProxy, ControlSubscription)],
    address: SocketAddr,
    present: bool,
) {
    while !callers
        .iter()
        .all(|(c, _)| has_endpoint(c, address) == present)
    {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn propagation(control: &ControlProcess, token: &str) {
    let app = start_app().await;
    let mut callers = Vec::new();
    for index in 0..CALLERS {
        let proxy = start_proxy(&caller_yaml("")).await;
        let subscription = subscribe(&control.url, &format!("caller-{index}"), None, &proxy);
        callers.push((proxy, subscription));
    }
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let port = free_port();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let instance = start_proxy(&instance_yaml(port, app)).await;
        let started = Instant::now();
        let subscription = subscribe(
            &control.url,
            &format!("instance-{round}"),
            Some(token),
            &instance,
        );
        until_all(&callers, address, true).await;
        joins.push(started.elapsed());
        let started = Instant::now();
        let leaving = tokio::spawn(subscription.leave());
        until_all(&callers, address, false).await;
        leaves.push(started.elapsed());
        leaving.await.unwrap();
        instance.shutdown().await;
    }
    joins.sort();
    leaves.sort();
    println!("\n1. Propagation to {CALLERS} callers ({ROUNDS} rounds)\n");
    println!("| event | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    for (event, times) in [
        ("registration → all callers route to it", &joins),
        ("SIGTERM (deregistration) → no caller routes to it", &leaves),
    ] {
        println!(
            "| {event} | {} | {} | {} |",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
    for (proxy, subscription) in callers {
        drop(subscription);
        proxy.shutdown().await;
    }
}

// === 2. rolling restart under load ===

/// A small HTTP/1.1 app that answers 200 to everything.
async fn start_app() -> SocketAddr {
    use hyper::service::service_fn;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Keep-alive clients sending `GET /` back to back; counts (served, failed).
fn start_load(
    target: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks = (0..clients)
        .map(|_| {
            let (served, failed, stop) =
                (Arc::clone(&served), Arc::clone(&failed), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(stream) = tokio::net::TcpStream::connect(target).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Ok((mut sender, connection)) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                    else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    tokio::spawn(connection);
                    while !stop.load(Ordering::Relaxed) {
                        let request = hyper::Request::get("/")
                            .header("host", "bench")
                            .body(http_body_util::Full::<bytes::Bytes>::default())
                            .unwrap();
                        let ok = match sender.send_request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                http_body_util::BodyExt::collect(response.into_body())
                                    .await
                                    .is_ok()
                                    && status == 200
                            }
                            Err(_) => false,
                        };
                        (if ok { &served } else { &failed }).fetch_add(1, Ordering::Relaxed);
                        if sender.ready().await.is_err() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    (served, failed, tasks)
}

async fn rolling_restart(control: &ControlProcess, token: &str) {
    let app = start_app().await;
    let caller = start_proxy(&caller_yaml("")).await;
    let caller_subscription = subscribe(&control.url, "rolling-caller", None, &caller);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut instances = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let proxy = start_proxy(&instance_yaml(*port, app)).await;
        let subscription = subscribe(
            &control.url,
            &format!("rolling-{index}"),
            Some(token),
            &proxy,
        );
        instances.push((proxy, subscription));
    }
    let callers = [(caller, caller_subscription)];
    for port in &ports {
        until_all(&callers, ([127, 0, 0, 1], *port).into(), true).await;
    }
    let target = callers[0].0.listener_address("main").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed, tasks) = start_load(target, 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for (index, port) in ports.iter().enumerate() {
        let (proxy, subscription) = instances.remove(0);
        subscription.leave().await;
        proxy.shutdown().await;
        let proxy = start_proxy(&instance_yaml(*port, app)).await;
        let subscription = subscribe(
            &control.url,
            &format!("rolling-{index}-again"),
            Some(token),
            &proxy,
        );
        until_all(&callers, ([127, 0, 0, 1], *port).into(), true).await;
        instances.push((proxy, subscription));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    println!("\n2. Rolling restart of 3 instances under load (8 keep-alive clients, {took:.1?})\n");
    println!("| requests served | requests failed |");
    println!("|---:|---:|");
    println!(
        "| {} | {} |",
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    for (proxy, subscription) in instances {
        subscription.leave().await;
        proxy.shutdown().await;
    }
    let [(caller, subscription)] = callers;
    drop(subscription);
    caller.shutdown().await;
}
