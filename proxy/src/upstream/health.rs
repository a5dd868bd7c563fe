//! Background work per cluster, on the control runtime (never on a worker): DNS
//! re-resolution and active HTTP health checks. Each task holds only a weak reference, so it
//! ends by itself when the cluster is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cluster::{Cluster, HealthCheckSettings};
use super::endpoint::Endpoint;

/// Starts the DNS and health-check loops a cluster needs (none for a static cluster without
/// health checks). Must be called inside a multi-threaded tokio runtime.
pub fn spawn_cluster_tasks(cluster: &Arc<Cluster>) {
    if cluster.has_host_names() {
        let weak = Arc::downgrade(cluster);
        let period = cluster.settings.dns_refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                cluster.refresh_dns().await;
            }
        });
    }
    if let Some(settings) = cluster.settings.health_check.clone() {
        tokio::spawn(health_check_loop(Arc::downgrade(cluster), settings));
    }
}

/// Consecutive results per endpoint, compared with the thresholds.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

async fn health_check_loop(weak: Weak<Cluster>, settings: HealthCheckSettings) {
    let mut streaks: HashMap<SocketAddr, Streak> = HashMap::new();
    loop {
        let Some(cluster) = weak.upgrade() else {
            return;
        };
        let endpoints = cluster.endpoints();
        let probes: Vec<_> = endpoints
            .iter()
            .map(|endpoint| {
                let (endpoint, cluster_name, settings, tls) = (
                    Arc::clone(endpoint),
                    cluster.name.clone(),
                    settings.clone(),
                    cluster.tls(),
                );
                tokio::spawn(async move { probe(&endpoint, &cluster_name, &settings, tls).await })
            })
            .collect();
        for (endpoint, probe) in endpoints.iter().zip(probes) {
            let outcome = probe
                .await
                .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            let streak = streaks.entry(endpoint.addr).or_default();
            apply_outcome(
                endpoint,
                streak,
                &outcome,
                &settings,
                cluster.now_ms(),
                &cluster.name,
            );
        }
        streaks.retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
        drop(cluster);
        tokio::time::sleep(settings.interval).await;
    }
}

fn apply_outcome(
    endpoint: &Endpoint,
    streak: &mut Streak,
    outcome: &Result<(), String>,
    settings: &HealthCheckSettings,
    now_ms: u64,
    cluster: &str,
) {
    match outcome {
        Ok(()) => {
            streak.passes += 1;
            streak.failures = 0;
            if !endpoint.is_actively_healthy() && streak.passes >= settings.healthy_threshold {
                endpoint.set_actively_healthy(true, now_ms);
            }
        }
        Err(reason) => {
            streak.failures += 1;
            streak.passes = 0;
            tracing::debug!(cluster, endpoint = %endpoint.addr, %reason, "health check failed");
            if endpoint.is_actively_healthy() && streak.failures >= settings.unhealthy_threshold {
                tracing::warn!(cluster, endpoint = %endpoint.addr, %reason, "endpoint failed its health checks");
                endpoint.set_actively_healthy(false, now_ms);
            }
        }
    }
}

/// One `GET <path>` on a fresh connection (TLS when the cluster speaks it); any 2xx within
/// the timeout passes.
async fn probe(
    endpoint: &Endpoint,
    cluster: &str,
    settings: &HealthCheckSettings,
    tls: Option<Arc<crate::tls::ClientTls>>,
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(tls) = tls else {
            return get_over(stream, false, cluster, settings).await;
        };
        let stream = tls
            .connect(stream, endpoint.identity.as_ref())
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        get_over(stream, h2, cluster, settings).await
    };
    tokio::time::timeout(settings.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", settings.timeout)))
}

/// The probe's request on an open connection, in HTTP/2 when `h2` (ALPN chose it).
async fn get_over<S>(
    stream: S,
    h2: bool,
    cluster: &str,
    settings: &HealthCheckSettings,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // HTTP/2 carries the host in the URI (`:authority`), not in a header.
    let uri = if h2 {
        format!("https://{cluster}{}", settings.path)
    } else {
        settings.path.clone()
    };
    let request = http::Request::get(uri)
        .header(http::header::HOST, cluster)
        .header(http::header::USER_AGENT, "sluice-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::endpoint::tests::test_stats;

    fn settings() -> HealthCheckSettings {
        HealthCheckSettings {
            path: "/".into(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn thresholds_decide_state_changes() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().unwrap(), test_stats());
        let mut streak = Streak::default();
        let fail = Err("status 500".to_owned());
        for _ in 0..2 {
            apply_outcome(&endpoint, &mut streak, &fail, &settings(), 0, "c");
            assert!(
                endpoint.is_actively_healthy(),
                "two failures stay under the threshold"
            );
        }
        apply_outcome(&endpoint, &mut streak, &fail, &settings(), 0, "c");
        assert!(!endpoint.is_actively_healthy());
        apply_outcome(&endpoint, &mut streak, &Ok(()), &settings(), 0, "c");
        assert!(!endpoint.is_actively_healthy(), "one pass is not enough");
        apply_outcome(&endpoint, &mut streak, &Ok(()), &settings(), 0, "c");
        assert!(endpoint.is_actively_healthy());
    }
}
