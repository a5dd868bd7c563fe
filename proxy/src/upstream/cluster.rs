//! A cluster: its settings, its endpoints (swapped whole when DNS answers change), and the
//! load balancer over them. Shared by every worker.

use super::limits::{DEFAULT_LIMIT, Limits, Load};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointStats, OutlierPolicy};
use super::endpoint_set::EndpointSet;
use super::lb::LoadBalancer;
use super::ring::stable_hash;
use super::target::EndpointTarget;
use crate::admin::Metrics;
use crate::config::{ClusterConfig, HashOn, LbPolicy, UpstreamProtocol};

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
    pub limits: Limits,
    pub outlier: OutlierPolicy,
    pub health_check: Option<HealthCheckSettings>,
}

/// An instance of a registry service, as the control service sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredInstance {
    pub addr: SocketAddr,
    pub identity: Option<Arc<str>>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What an endpoint is made from.
struct EndpointSpec {
    addr: SocketAddr,
    identity: Option<Arc<str>>,
    zone: Option<Arc<str>>,
}

impl EndpointSpec {
    fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            zone: None,
        }
    }
}

pub struct Cluster {
    pub name: String,
    /// The config it was built from: a new snapshot with the same config keeps this cluster
    /// (and its endpoint health, ejections and DNS answers).
    pub config: ClusterConfig,
    pub settings: ClusterSettings,
    targets: Vec<EndpointTarget>,
    endpoints: ArcSwap<EndpointSet>,
    balancer: LoadBalancer,
    /// This proxy's zone: endpoints in it are preferred.
    pub local_zone: Option<Arc<str>>,
    /// Ejection deadlines are kept as milliseconds since this instant, so they fit an atomic
    /// and follow tokio's clock (which tests can pause).
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// TLS to the endpoints; replaced when a kept cluster's certificate files change.
    tls: arc_swap::ArcSwapOption<crate::tls::ClientTls>,
    /// Requests and connections in flight, against `settings.limits`.
    pub load: Arc<Load>,
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
            limits: Limits {
                max_connections: config.max_connections.unwrap_or(DEFAULT_LIMIT),
                max_pending_requests: config.max_pending_requests.unwrap_or(DEFAULT_LIMIT),
                max_requests: config.max_requests.unwrap_or(DEFAULT_LIMIT),
            },
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
    pub fn new(
        config: &ClusterConfig,
        metrics: Arc<Metrics>,
        local_zone: Option<&str>,
    ) -> Arc<Self> {
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
            endpoints: ArcSwap::from_pointee(EndpointSet::empty()),
            balancer: LoadBalancer::new(config.lb_policy),
            local_zone: local_zone.map(Arc::from),
            epoch: Instant::now(),
            metrics,
            tls: arc_swap::ArcSwapOption::empty(),
            load: Arc::default(),
        });
        let literal: Vec<SocketAddr> = cluster
            .targets
            .iter()
            .filter_map(|t| match t {
                EndpointTarget::Address(address) => Some(*address),
                EndpointTarget::Host { .. } => None,
            })
            .collect();
        let literal: Vec<EndpointSpec> = literal.into_iter().map(EndpointSpec::plain).collect();
        cluster.replace_endpoints(&literal);
        cluster
    }

    /// The registry service this cluster discovers its endpoints from, if any.
    pub fn discovered_service(&self) -> Option<&str> {
        self.config.service.as_deref()
    }

    /// Takes the instances of its service that match its `subset` as its endpoints.
    /// Endpoints that stay keep their health, ejections and in-flight counts.
    pub fn set_discovered(&self, instances: &[DiscoveredInstance]) {
        let subset = self.config.subset.as_ref();
        let mut specs: Vec<EndpointSpec> = instances
            .iter()
            .filter(|instance| {
                subset.is_none_or(|subset| {
                    subset
                        .iter()
                        .all(|(key, value)| instance.labels.get(key) == Some(value))
                })
            })
            .map(|instance| EndpointSpec {
                addr: instance.addr,
                identity: instance.identity.clone(),
                zone: instance.labels.get("zone").map(|z| Arc::from(z.as_str())),
            })
            .collect();
        specs.sort_by_key(|spec| spec.addr);
        let current = self.endpoints();
        let unchanged = specs.len() == current.len()
            && specs.iter().zip(current.iter()).all(|(spec, endpoint)| {
                spec.addr == endpoint.addr
                    && spec.identity == endpoint.identity
                    && spec.zone == endpoint.zone
            });
        if !unchanged {
            let addresses: Vec<SocketAddr> = specs.iter().map(|s| s.addr).collect();
            tracing::info!(cluster = %self.name, service = ?self.config.service, endpoints = ?addresses, "discovered endpoints changed");
            self.replace_endpoints(&specs);
        }
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

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Picks an endpoint for a connection or call with no request to hash; `None` when no
    /// endpoint is available.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        self.balancer.pick(&endpoints, self.now_ms(), None)
    }

    /// An endpoint for an attempt of a request (hashed to `key` for `ring_hash`) that tried
    /// `avoid` already.
    pub fn pick_avoiding(
        &self,
        avoid: &[std::net::SocketAddr],
        key: Option<u64>,
    ) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        self.balancer
            .pick_avoiding(&endpoints, self.now_ms(), avoid, key)
    }

    /// Whether its balancer wants each response's latency (`ewma`).
    pub fn tracks_latency(&self) -> bool {
        self.config.lb_policy == LbPolicy::Ewma
    }

    /// What a `ring_hash` cluster hashes of a request; `None` for other policies, and for a
    /// request without the header or cookie.
    pub fn hash_key(&self, headers: &http::HeaderMap, client: SocketAddr) -> Option<u64> {
        if self.config.lb_policy != LbPolicy::RingHash {
            return None;
        }
        match self.config.hash_on.as_ref().unwrap_or(&HashOn::SourceIp) {
            HashOn::SourceIp => Some(stable_hash(&client.ip())),
            HashOn::Header(name) => headers
                .get(name.as_str())
                .map(|value| stable_hash(&value.as_bytes())),
            HashOn::Cookie(name) => cookie(headers, name).map(|value| stable_hash(&value)),
        }
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
            let specs: Vec<EndpointSpec> = addresses.into_iter().map(EndpointSpec::plain).collect();
            self.replace_endpoints(&specs);
        }
    }

    /// Swaps in a new endpoint set, keeping the state (health, in-flight counts) of endpoints
    /// that stay: same address, and for discovered ones the same identity and zone.
    fn replace_endpoints(&self, specs: &[EndpointSpec]) {
        let current = self.endpoints();
        let known: HashMap<SocketAddr, &Arc<Endpoint>> =
            current.iter().map(|e| (e.addr, e)).collect();
        let mut next: Vec<Arc<Endpoint>> = specs
            .iter()
            .map(|spec| match known.get(&spec.addr) {
                Some(existing)
                    if existing.identity == spec.identity && existing.zone == spec.zone =>
                {
                    Arc::clone(existing)
                }
                _ => Arc::new(Endpoint::discovered(
                    spec.addr,
                    spec.identity.clone(),
                    spec.zone.clone(),
                    self.endpoint_stats(&spec.addr),
                )),
            })
            .collect();
        next.sort_by_key(|e| e.addr);
        next.dedup_by_key(|e| e.addr);
        let with_ring = self.config.lb_policy == LbPolicy::RingHash;
        let next = EndpointSet::new(next, self.local_zone.as_deref(), with_ring);
        for gone in current
            .iter()
            .filter(|e| !specs.iter().any(|s| s.addr == e.addr))
        {
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

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (key == name.as_bytes()).then(|| &value[1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_in_any_header() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; session=abc".parse().unwrap());
        headers.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&headers, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&headers, "sess"), None);
    }
}
