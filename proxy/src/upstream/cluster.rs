//! A cluster: its settings, its endpoints (swapped whole when DNS answers change), and the
//! load balancer over them. Shared by every worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointStats, OutlierPolicy};
use super::lb::LoadBalancer;
use super::target::EndpointTarget;
use crate::admin::Metrics;
use crate::config::{ClusterConfig, UpstreamProtocol};

/// Active health checking, with defaults filled in.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// A cluster's settings with every default filled in.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub dns_refresh: Duration,
    pub pool_idle_timeout: Duration,
    pub max_idle_connections: usize,
    pub outlier: OutlierPolicy,
    pub health_check: Option<HealthCheckSettings>,
}

pub struct Cluster {
    pub name: String,
    /// The config it was built from: a new snapshot with the same config keeps this cluster
    /// (and its endpoint health, ejections and DNS answers).
    pub config: ClusterConfig,
    pub settings: ClusterSettings,
    targets: Vec<EndpointTarget>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: LoadBalancer,
    /// Ejection deadlines are kept as milliseconds since this instant, so they fit an atomic
    /// and follow tokio's clock (which tests can pause).
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// TLS to the endpoints; replaced when a kept cluster's certificate files change.
    tls: arc_swap::ArcSwapOption<crate::tls::ClientTls>,
}

// === impl ClusterSettings ===

impl ClusterSettings {
    pub fn from_config(config: &ClusterConfig) -> Self {
        let outlier = config.outlier_detection.as_ref();
        Self {
            protocol: config.protocol,
            connect_timeout: config
                .connect_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            dns_refresh: config.dns_refresh.map_or(Duration::from_secs(5), |d| d.0),
            pool_idle_timeout: config
                .pool_idle_timeout
                .map_or(Duration::from_secs(60), |d| d.0),
            max_idle_connections: config.max_idle_connections.unwrap_or(64),
            outlier: OutlierPolicy {
                consecutive_connect_failures: outlier
                    .and_then(|o| o.consecutive_connect_failures)
                    .unwrap_or(5),
                ejection_time: outlier
                    .and_then(|o| o.ejection_time)
                    .map_or(Duration::from_secs(30), |d| d.0),
            },
            health_check: config.health_check.as_ref().map(|hc| HealthCheckSettings {
                path: hc.path.clone().unwrap_or_else(|| "/".to_owned()),
                interval: hc.interval.map_or(Duration::from_secs(5), |d| d.0),
                timeout: hc.timeout.map_or(Duration::from_secs(1), |d| d.0),
                healthy_threshold: hc.healthy_threshold.unwrap_or(2),
                unhealthy_threshold: hc.unhealthy_threshold.unwrap_or(3),
            }),
        }
    }
}

// === impl Cluster ===

impl Cluster {
    /// Builds the cluster with its literal IP endpoints; host names join after
    /// [`Cluster::refresh_dns`].
    pub fn new(config: &ClusterConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let targets: Vec<EndpointTarget> = config
            .endpoints
            .iter()
            .filter_map(|text| EndpointTarget::parse(text).ok())
            .collect();
        let cluster = Arc::new(Self {
            name: config.name.clone(),
            config: config.clone(),
            settings: ClusterSettings::from_config(config),
            targets,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            balancer: LoadBalancer::new(config.lb_policy),
            epoch: Instant::now(),
            metrics,
            tls: arc_swap::ArcSwapOption::empty(),
        });
        let literal: Vec<SocketAddr> = cluster
            .targets
            .iter()
            .filter_map(|t| match t {
                EndpointTarget::Address(address) => Some(*address),
                EndpointTarget::Host { .. } => None,
            })
            .collect();
        cluster.replace_endpoints(&literal);
        cluster
    }

    /// TLS to the endpoints, if the cluster speaks it.
    pub fn tls(&self) -> Option<Arc<crate::tls::ClientTls>> {
        self.tls.load_full()
    }

    /// Sets (or replaces) the cluster's TLS; connections opened before keep theirs.
    pub fn set_tls(&self, tls: Option<Arc<crate::tls::ClientTls>>) {
        self.tls.store(tls);
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Picks an endpoint for one request; `None` when no endpoint is available.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        self.balancer.pick(&endpoints, self.now_ms())
    }

    /// An endpoint for another attempt of a request that tried `avoid` already.
    pub fn pick_avoiding(&self, avoid: &[std::net::SocketAddr]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        self.balancer
            .pick_avoiding(&endpoints, self.now_ms(), avoid)
    }

    pub fn has_host_names(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t, EndpointTarget::Host { .. }))
    }

    /// Resolves every target again and swaps in the new endpoint set. A target that fails to
    /// resolve keeps its previous addresses, so a DNS hiccup never empties a cluster.
    pub async fn refresh_dns(&self) {
        let current = self.endpoints();
        let mut addresses = Vec::new();
        for target in &self.targets {
            match target.resolve().await {
                Ok(resolved) => addresses.extend(resolved),
                Err(error) => {
                    tracing::warn!(cluster = %self.name, ?target, %error, "DNS resolution failed; keeping previous addresses");
                    if let EndpointTarget::Host { port, .. } = target {
                        addresses
                            .extend(current.iter().map(|e| e.addr).filter(|a| a.port() == *port));
                    }
                }
            }
        }
        addresses.sort_unstable();
        addresses.dedup();
        let unchanged = addresses.len() == current.len()
            && addresses
                .iter()
                .zip(current.iter())
                .all(|(a, e)| *a == e.addr);
        if !unchanged {
            tracing::info!(cluster = %self.name, endpoints = ?addresses, "cluster endpoints changed");
            self.replace_endpoints(&addresses);
        }
    }

    /// Swaps in a new endpoint set, keeping the state (health, in-flight counts) of addresses
    /// that stay.
    fn replace_endpoints(&self, addresses: &[SocketAddr]) {
        let current = self.endpoints();
        let known: HashMap<SocketAddr, &Arc<Endpoint>> =
            current.iter().map(|e| (e.addr, e)).collect();
        let mut next: Vec<Arc<Endpoint>> = addresses
            .iter()
            .map(|address| match known.get(address) {
                Some(existing) => Arc::clone(existing),
                None => Arc::new(Endpoint::new(*address, self.endpoint_stats(address))),
            })
            .collect();
        next.sort_by_key(|e| e.addr);
        next.dedup_by_key(|e| e.addr);
        for gone in current.iter().filter(|e| !addresses.contains(&e.addr)) {
            self.metrics
                .forget_endpoint(&self.name, &gone.addr.to_string());
        }
        self.endpoints.store(Arc::new(next));
    }

    fn endpoint_stats(&self, address: &SocketAddr) -> EndpointStats {
        self.metrics
            .endpoint_stats(&self.name, &address.to_string())
    }

    pub fn record_connect_failure(&self, endpoint: &Endpoint) {
        endpoint.record_connect_failure(&self.settings.outlier, self.now_ms());
    }
}
