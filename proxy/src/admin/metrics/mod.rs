//! Every metric the proxy exports, in one registry. Label values come from the config
//! (listener, route and cluster names, endpoint addresses) or from small fixed sets (status
//! class, local-reply reason), so cardinality stays bounded whatever the traffic.
//!
//! Hot-path handles ([`RouteStats`], [`ListenerStats`], [`EndpointStats`]) are resolved once
//! when a snapshot is built; requests only bump atomics.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::upstream::EndpointStats;
use crate::wasm::{PluginHealth, WasmMetricFamilies};

mod plugins;
mod stats;
pub use stats::{ListenerStats, RouteStats};

/// Latency buckets in seconds, from 250µs (a loopback hop) up to the 15s default timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    15.0,
];

pub struct Metrics {
    registry: Registry,
    /// Whether the proxy sheds load (`overload.max_memory`). Kept here because every
    /// listener's stats carry it to the accept loops and the request path.
    pub overload: Arc<crate::runtime::overload::Overload>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    local_replies: IntCounterVec,
    cutoffs: IntCounterVec,
    replays: IntCounterVec,
    tls_handshakes: IntCounterVec,
    sni_routing: IntCounterVec,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    requests_active: IntGaugeVec,
    tcp_bytes: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    upstream_connect_failures: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    wasm: WasmMetricFamilies,
    plugin_failures: IntCounterVec,
    plugin_vm_starts: IntCounterVec,
    plugin_fail_policy: IntCounterVec,
    plugin_crash_looping: IntGaugeVec,
    plugin_vms: IntGaugeVec,
    config_version: IntGauge,
    config_changes: IntCounterVec,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let overloaded = register(
            &registry,
            IntGauge::new(
                "sluice_overloaded",
                "Whether the proxy sheds new connections and requests: its memory is past overload.max_memory",
            ),
        );
        let metrics = Self {
            overload: crate::runtime::overload::Overload::new(overloaded),
            requests: counter_vec(
                &registry,
                "sluice_http_requests_total",
                "HTTP requests completed, by listener, route, cluster and status class (2xx, 4xx, ...)",
                &["listener", "route", "cluster", "status_class"],
            ),
            request_duration: {
                let opts = HistogramOpts::new(
                    "sluice_http_request_duration_seconds",
                    "Time from the request's arrival to the response's last byte",
                )
                .buckets(LATENCY_BUCKETS.to_vec());
                register(
                    &registry,
                    HistogramVec::new(opts, &["listener", "route", "cluster"]),
                )
            },
            local_replies: counter_vec(
                &registry,
                "sluice_http_local_replies_total",
                "Responses the proxy generated itself instead of forwarding, by reason",
                &["listener", "reason"],
            ),
            cutoffs: counter_vec(
                &registry,
                "sluice_downstream_cutoffs_total",
                "Downstream connections the proxy cut off, by reason: request_header_timeout (the request head took too long), send_timeout (the client accepted no response bytes), max_connections (refused at accept), premature_resets (a client that reset too many requests before their answer), frame_flood (HTTP/2 frames far beyond its requests), overload (closed at accept while shedding load)",
                &["listener", "reason"],
            ),
            replays: counter_vec(
                &registry,
                "sluice_http_replays_total",
                "Requests sent again because a filter asked (sluice_replay), by cluster",
                &["listener", "cluster"],
            ),
            tls_handshakes: counter_vec(
                &registry,
                "sluice_tls_handshakes_total",
                "TLS handshakes on listeners, by result: ok, or why it failed (timeout, unknown_ca, no_client_certificate, certificate_expired, protocol_error, ...)",
                &["listener", "result"],
            ),
            sni_routing: counter_vec(
                &registry,
                "sluice_tcp_sni_routing_total",
                "TLS passthrough connections by how their server name routed them: routed, default (the listener's cluster), no_route, or why the TLS hello could not be read (not_tls, timeout, ...)",
                &["listener", "result"],
            ),
            connections_active: gauge_vec(
                &registry,
                "sluice_downstream_connections_active",
                "Open downstream connections",
                &["listener"],
            ),
            connections_total: counter_vec(
                &registry,
                "sluice_downstream_connections_total",
                "Downstream connections accepted",
                &["listener"],
            ),
            requests_active: gauge_vec(
                &registry,
                "sluice_http_requests_active",
                "HTTP requests in flight",
                &["listener"],
            ),
            tcp_bytes: counter_vec(
                &registry,
                "sluice_tcp_bytes_total",
                "Bytes proxied by tcp listeners, by direction",
                &["listener", "direction"],
            ),
            endpoint_healthy: gauge_vec(
                &registry,
                "sluice_upstream_endpoint_healthy",
                "1 when the endpoint may receive traffic (passing health checks, not ejected)",
                &["cluster", "endpoint"],
            ),
            upstream_connect_failures: counter_vec(
                &registry,
                "sluice_upstream_connect_failures_total",
                "Failed or timed-out connection attempts to an upstream endpoint",
                &["cluster", "endpoint"],
            ),
            endpoint_ejections: counter_vec(
                &registry,
                "sluice_upstream_endpoint_ejections_total",
                "Times an endpoint was ejected after consecutive connect failures",
                &["cluster", "endpoint"],
            ),
            wasm: plugins::plugin_families(&registry),
            plugin_failures: counter_vec(
                &registry,
                "sluice_wasm_vm_failures_total",
                "Plugin VMs that failed, by reason (trap, timeout, memory, start)",
                &["plugin", "reason"],
            ),
            plugin_vm_starts: counter_vec(
                &registry,
                "sluice_wasm_vm_starts_total",
                "Plugin VMs started (first start and rebuilds after failures)",
                &["plugin"],
            ),
            plugin_fail_policy: counter_vec(
                &registry,
                "sluice_wasm_fail_policy_total",
                "Streams that got a plugin's fail policy, by policy (open: skipped, closed: 503)",
                &["plugin", "policy"],
            ),
            plugin_crash_looping: gauge_vec(
                &registry,
                "sluice_wasm_plugin_crash_looping",
                "Workers whose VM of the plugin is rebuilding with backoff after repeated failures",
                &["plugin"],
            ),
            plugin_vms: gauge_vec(
                &registry,
                "sluice_wasm_vms",
                "Plugin VMs alive on the workers (a replaced plugin's VMs leave once its streams end)",
                &["plugin"],
            ),
            config_version: register(
                &registry,
                IntGauge::new(
                    "sluice_config_version",
                    "Version of the snapshot new requests run on (1 at start, +1 per applied change)",
                ),
            ),
            config_changes: counter_vec(
                &registry,
                "sluice_config_changes_total",
                "Config changes offered to the running proxy, by result (applied, rejected)",
                &["result"],
            ),
            registry,
        };
        Arc::new(metrics)
    }

    pub fn route_stats(&self, listener: &str, route: &str, cluster: &str) -> RouteStats {
        let class = |c: &str| {
            self.requests
                .with_label_values(&[listener, route, cluster, c])
        };
        RouteStats {
            by_status_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self
                .request_duration
                .with_label_values(&[listener, route, cluster]),
        }
    }

    pub fn listener_stats(&self, listener: &str) -> ListenerStats {
        ListenerStats {
            listener: listener.into(),
            connections_active: self.connections_active.with_label_values(&[listener]),
            connections_total: self.connections_total.with_label_values(&[listener]),
            requests_active: self.requests_active.with_label_values(&[listener]),
            tcp_bytes_downstream_to_upstream: self
                .tcp_bytes
                .with_label_values(&[listener, "downstream_to_upstream"]),
            tcp_bytes_upstream_to_downstream: self
                .tcp_bytes
                .with_label_values(&[listener, "upstream_to_downstream"]),
            header_timeouts: self.cutoff(listener, "request_header_timeout"),
            send_timeouts: self.cutoff(listener, "send_timeout"),
            max_connections_refused: self.cutoff(listener, "max_connections"),
            reset_floods: self.cutoff(listener, "premature_resets"),
            frame_floods: self.cutoff(listener, "frame_flood"),
            overload_refused: self.cutoff(listener, "overload"),
            overload: Arc::clone(&self.overload),
        }
    }

    pub fn endpoint_stats(&self, cluster: &str, endpoint: &str) -> EndpointStats {
        EndpointStats {
            healthy: self
                .endpoint_healthy
                .with_label_values(&[cluster, endpoint]),
            connect_failures: self
                .upstream_connect_failures
                .with_label_values(&[cluster, endpoint]),
            ejections: self
                .endpoint_ejections
                .with_label_values(&[cluster, endpoint]),
        }
    }

    /// Drops the series of an endpoint that left its cluster, so DNS churn does not grow
    /// `/metrics` forever.
    pub fn forget_endpoint(&self, cluster: &str, endpoint: &str) {
        let labels = [cluster, endpoint];
        for result in [
            self.endpoint_healthy.remove_label_values(&labels),
            self.upstream_connect_failures.remove_label_values(&labels),
            self.endpoint_ejections.remove_label_values(&labels),
        ] {
            if let Err(error) = result {
                tracing::debug!(cluster, endpoint, %error, "endpoint series already gone");
            }
        }
    }

    pub fn wasm_families(&self) -> WasmMetricFamilies {
        self.wasm.clone()
    }

    pub fn plugin_health(&self, plugin: &str) -> PluginHealth {
        PluginHealth {
            label: plugin.to_owned(),
            crash_looping: std::sync::atomic::AtomicUsize::new(0),
            failures: self.plugin_failures.clone(),
            vm_starts: self.plugin_vm_starts.with_label_values(&[plugin]),
            fail_open_applied: self.plugin_fail_policy.with_label_values(&[plugin, "open"]),
            fail_closed_applied: self
                .plugin_fail_policy
                .with_label_values(&[plugin, "closed"]),
            crash_looping_gauge: self.plugin_crash_looping.with_label_values(&[plugin]),
            vms_live: self.plugin_vms.with_label_values(&[plugin]),
        }
    }

    pub fn set_config_version(&self, version: u64) {
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn count_config_change(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_changes.with_label_values(&[result]).inc();
    }

    /// Counts a local reply. Local replies are the uncommon path, so a label lookup is fine.
    pub fn local_reply(&self, listener: &str, reason: &str) {
        self.local_replies
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Counts a TLS handshake on a listener: `ok` or the reason it failed.
    /// A handle that counts cut-offs of one (listener, reason).
    pub fn cutoff(&self, listener: &str, reason: &str) -> IntCounter {
        self.cutoffs.with_label_values(&[listener, reason])
    }

    pub fn tls_handshake(&self, listener: &str, result: &str) {
        self.tls_handshakes
            .with_label_values(&[listener, result])
            .inc();
    }

    /// Counts how a TLS passthrough connection was routed.
    pub fn sni_routing(&self, listener: &str, result: &str) {
        self.sni_routing
            .with_label_values(&[listener, result])
            .inc();
    }

    /// Counts a replayed attempt.
    pub fn replay(&self, listener: &str, cluster: &str) {
        self.replays.with_label_values(&[listener, cluster]).inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> M {
    // Names and labels are constants of this file; a failure here is a programming error
    // caught by every test that builds `Metrics`.
    #[allow(clippy::expect_used)]
    let metric = metric.expect("metric definition is valid");
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

// === impl RouteStats ===

#[cfg(test)]
mod tests;
