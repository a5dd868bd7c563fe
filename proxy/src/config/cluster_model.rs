//! The `clusters:` part of the proxy config: where requests go, how they are balanced, and
//! how the proxy talks to the endpoints (protocol, TLS, pools, limits, health).

use serde::{Deserialize, Serialize};

use super::discovery_model::HashOn;
use super::units::ConfigDuration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    Random,
    /// Power of two choices over in-flight request counts.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency times in-flight requests (Linkerd's
    /// default): slow instances get less.
    Ewma,
    /// Consistent hashing of `hash_on` over a ring (Envoy's `ring_hash`): a key stays on one
    /// endpoint while that endpoint stays.
    RingHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive pooling (Envoy's default for clusters).
    #[default]
    Http1,
    /// HTTP/2 prior knowledge (h2c); needed for gRPC.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// `host:port` entries; host names are resolved and re-resolved every `dns_refresh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Instead of `endpoints`: the instances of this service in the mesh registry, as the
    /// control service pushes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// With `service`: only the instances that carry all these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// With `lb_policy: ring_hash`: what to hash. [source_ip]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// [5s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
    /// [5s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<ConfigDuration>,
    /// Pooled upstream connections idle longer than this are closed. [60s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_idle_timeout: Option<ConfigDuration>,
    /// Idle connections kept per endpoint and worker. [64]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_connections: Option<usize>,
    /// Circuit breaker (Envoy's thresholds): most HTTP/1.1 connections open to the cluster,
    /// across workers; requests that find them all busy wait for one. [1024]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection; more get 503 `upstream_overflow`. [1024]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight to the cluster; more get 503 `upstream_overflow`. [1024]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection; on by default (5 consecutive connect failures eject for 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Speak TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
}

/// TLS to a cluster's endpoints. Paths are relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM bundle of the CAs the endpoints' certificates must chain to (unless `mesh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Mesh mTLS with this proxy's workload identity: the endpoints must show a mesh
    /// certificate, whose SPIFFE ID `peers` may narrow. [false]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh: bool,
    /// With `mesh`: the SPIFFE IDs the endpoints may have (exact, or a prefix ending in `*`).
    /// [any mesh identity]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// The name sent as SNI and required in the endpoints' certificates. [the endpoints'
    /// host name; needed when they are IP addresses]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM), for upstreams that require mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// [/]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// [5s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<ConfigDuration>,
    /// [1s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
    /// Consecutive passes that make an unhealthy endpoint healthy. [2]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy endpoint unhealthy. [3]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// `0` turns passive ejection off. [5]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_connect_failures: Option<u32>,
    /// [30s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_time: Option<ConfigDuration>,
}
