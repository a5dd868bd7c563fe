//! A [`Snapshot`] is one immutable, versioned, fully built configuration: route tables,
//! clusters, metric handles. Requests pin the snapshot they start with; a new config is a
//! new snapshot, swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::load::LoadedConfig;
use super::model::{FilterConfig, ListenerProtocol, ProxyConfig};
use crate::admin::{ListenerStats, Metrics, RouteStats};
use crate::http::RouteTable;
use crate::upstream::Cluster;
use crate::wasm::{Clusters, PluginSpec};

pub struct Snapshot {
    pub version: u64,
    pub config: ProxyConfig,
    pub workers: usize,
    pub drain_timeout: Duration,
    pub admin_address: Option<SocketAddr>,
    pub listeners: Vec<ListenerSnapshot>,
    pub clusters: Vec<Arc<Cluster>>,
}

pub struct ListenerSnapshot {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Wasm filters every request on this listener passes, in order.
    pub filters: Vec<Arc<PluginSpec>>,
    pub routes: RouteTable,
    /// `protocol: tcp` only.
    pub tcp_cluster: Option<Arc<Cluster>>,
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_size: usize,
    pub max_body_buffer: usize,
    pub stats: ListenerStats,
    /// Where requests that matched no route are counted (`route="none"`).
    pub unrouted: RouteStats,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the runtime form of a validated config. Host-name endpoints are not resolved
    /// yet; see [`Cluster::refresh_dns`].
    pub fn build(
        loaded: &LoadedConfig,
        version: u64,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let config = &loaded.config;
        let invalid =
            |path: String, reason: String| ConfigError::invalid(&loaded.file, path, reason);

        let clusters: Arc<HashMap<String, Arc<Cluster>>> = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Cluster::new(c, Arc::clone(metrics))))
            .collect::<HashMap<_, _>>()
            .into();

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{index}]");
            let address = listener
                .address
                .parse()
                .map_err(|e| invalid(format!("{path}.address"), format!("{e}")))?;
            let filters = load_filters(
                loaded,
                &format!("{path}.filters"),
                &listener.filters,
                metrics,
                &clusters,
            )?;
            let route_filters = listener
                .routes
                .iter()
                .enumerate()
                .map(|(r, route)| {
                    load_filters(
                        loaded,
                        &format!("{path}.routes[{r}].filters"),
                        &route.filters,
                        metrics,
                        &clusters,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let routes = RouteTable::build(
                &listener.name,
                &listener.routes,
                &clusters,
                metrics,
                route_filters,
            )
            .map_err(|reason| invalid(format!("{path}.routes"), reason))?;
            let tcp_cluster = match &listener.cluster {
                Some(name) => Some(Arc::clone(clusters.get(name).ok_or_else(|| {
                    invalid(
                        format!("{path}.cluster"),
                        format!("unknown cluster {name:?}"),
                    )
                })?)),
                None => None,
            };
            listeners.push(ListenerSnapshot {
                name: listener.name.clone(),
                address,
                protocol: listener.protocol,
                filters,
                routes,
                tcp_cluster,
                idle_timeout: listener
                    .idle_timeout
                    .map_or(Some(Duration::from_secs(3600)), |t| t.non_zero()),
                max_request_headers_size: listener
                    .max_request_headers_size
                    .map_or(60 * 1024, |s| s.0 as usize),
                max_body_buffer: listener.max_body_buffer.map_or(1 << 20, |s| s.0 as usize),
                stats: metrics.listener_stats(&listener.name),
                unrouted: metrics.route_stats(&listener.name, "none", "none"),
            });
        }

        let admin_address = match &config.admin {
            Some(admin) => Some(
                admin
                    .address
                    .parse()
                    .map_err(|e| invalid("admin.address".into(), format!("{e}")))?,
            ),
            None => None,
        };
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

        // Keep the config's order so /config and the logs read like the file.
        let clusters = config
            .clusters
            .iter()
            .filter_map(|c| clusters.get(&c.name).cloned())
            .collect();
        Ok(Self {
            version,
            config: config.clone(),
            workers,
            drain_timeout: config
                .drain_timeout
                .map_or(Duration::from_secs(10), |d| d.0),
            admin_address,
            listeners,
            clusters,
        })
    }

    /// Every plugin of the snapshot: listener filters, then route filters.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<PluginSpec>> {
        self.listeners.iter().flat_map(|listener| {
            listener.filters.iter().chain(
                listener
                    .routes
                    .routes()
                    .flat_map(|route| route.filters.iter()),
            )
        })
    }

    /// The running snapshot as `/config` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let modules: Vec<serde_json::Value> = self
            .plugins()
            .map(|plugin| {
                serde_json::json!({
                    "plugin": plugin.info.name,
                    "sha256": plugin.digest,
                    "abi": plugin.abi.as_str(),
                })
            })
            .collect();
        serde_json::json!({
            "version": self.version,
            "config": self.config,
            "modules": modules,
        })
    }
}

/// Loads (verifies, compiles, canaries) the plugins of one filter chain.
fn load_filters(
    loaded: &LoadedConfig,
    path: &str,
    filters: &[FilterConfig],
    metrics: &Arc<Metrics>,
    clusters: &Clusters,
) -> Result<Vec<Arc<PluginSpec>>, ConfigError> {
    filters
        .iter()
        .enumerate()
        .map(|(index, filter)| {
            PluginSpec::load(
                filter,
                loaded.base_dir(),
                Some(metrics.wasm_families()),
                metrics.plugin_health(&filter.name),
                Arc::clone(clusters),
            )
            .map_err(|error| {
                ConfigError::invalid(&loaded.file, format!("{path}[{index}]"), error.to_string())
            })
        })
        .collect()
}
