//! A [`Snapshot`] is one immutable, versioned, fully built configuration: route tables,
//! clusters, metric handles. Requests pin the snapshot they start with; a new config is a
//! new snapshot, swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::load::LoadedConfig;
use super::model::{ListenerProtocol, ProxyConfig};
use crate::admin::{ListenerStats, Metrics, RouteStats};
use crate::http::RouteTable;
use crate::upstream::Cluster;

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
    pub routes: RouteTable,
    /// `protocol: tcp` only.
    pub tcp_cluster: Option<Arc<Cluster>>,
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_size: usize,
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

        let clusters: HashMap<String, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Cluster::new(c, Arc::clone(metrics))))
            .collect();

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{index}]");
            let address = listener
                .address
                .parse()
                .map_err(|e| invalid(format!("{path}.address"), format!("{e}")))?;
            let routes = RouteTable::build(&listener.name, &listener.routes, &clusters, metrics)
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
                routes,
                tcp_cluster,
                idle_timeout: listener
                    .idle_timeout
                    .map_or(Some(Duration::from_secs(3600)), |t| t.non_zero()),
                max_request_headers_size: listener
                    .max_request_headers_size
                    .map_or(60 * 1024, |s| s.0 as usize),
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

    /// The running snapshot as `/config` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "config": self.config,
            "modules": serde_json::Value::Array(Vec::new()),
        })
    }
}
