//! A [`Snapshot`] is one immutable, versioned, fully built configuration: route tables,
//! clusters, metric handles. Requests pin the snapshot they start with; a new config is a
//! new snapshot, swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::load::LoadedConfig;
use super::snapshot_reuse::{Reuse, load_filters};
use super::{ListenerProtocol, ProxyConfig};
use crate::admin::{ListenerStats, Metrics, RouteStats};
use crate::http::RouteTable;
use crate::upstream::Cluster;
use crate::wasm::{ConfiguredFilter, PluginSpec};

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
    pub filters: Vec<ConfiguredFilter>,
    pub routes: RouteTable,
    /// `protocol: tcp` only: every connection's cluster, or with `sni_routes` the one for
    /// names no route lists.
    pub tcp_cluster: Option<Arc<Cluster>>,
    /// `protocol: tcp` with `sni_routes`: the cluster by the server name of the TLS hello.
    pub sni_routes: Option<Arc<crate::tls::NameTable<Arc<Cluster>>>>,
    pub idle_timeout: Option<Duration>,
    pub request_header_timeout: Option<Duration>,
    pub request_body_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub max_connections: Option<u32>,
    pub max_concurrent_streams: u32,
    pub max_requests_per_connection: Option<u32>,
    pub max_request_headers_size: usize,
    pub max_body_buffer: usize,
    /// Set on a TLS listener.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub stats: ListenerStats,
    /// Where requests that matched no route are counted (`route="none"`).
    pub unrouted: RouteStats,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the runtime form of a validated config. Host-name endpoints of new clusters are
    /// not resolved yet; see [`Cluster::refresh_dns`].
    ///
    /// With `previous` (the snapshot this one replaces), clusters whose config is unchanged
    /// are kept as they are (endpoint health, ejections, DNS answers), and so are plugins whose
    /// entry, module digest and clusters are unchanged (their VMs stay warm).
    pub fn build(
        loaded: &LoadedConfig,
        version: u64,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigError> {
        let config = &loaded.config;
        let invalid =
            |path: String, reason: String| ConfigError::invalid(&loaded.file, path, reason);
        let mut reuse = Reuse::from(previous);

        let mut built = HashMap::with_capacity(config.clusters.len());
        let zone = config.zone();
        for (index, c) in config.clusters.iter().enumerate() {
            // Read every time, even for a kept cluster: its certificate files may be new.
            let tls = match &c.tls {
                Some(tls) => Some(Arc::new(
                    crate::tls::ClientTls::load(tls, c, loaded.base_dir(), loaded.mesh.as_ref())
                        .map_err(|e| {
                            invalid(format!("clusters[{index}].tls.{}", e.path), e.reason)
                        })?,
                )),
                None => None,
            };
            let cluster = reuse
                .cluster(c, zone)
                .unwrap_or_else(|| Cluster::new(c, Arc::clone(metrics), zone));
            cluster.set_tls(tls);
            built.insert(c.name.clone(), cluster);
        }
        let clusters: Arc<HashMap<String, Arc<Cluster>>> = built.into();

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
                &mut reuse,
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
                        &mut reuse,
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
            let sni_routes = if listener.sni_routes.is_empty() {
                None
            } else {
                let mut entries = Vec::with_capacity(listener.sni_routes.len());
                for (r, route) in listener.sni_routes.iter().enumerate() {
                    let cluster = clusters.get(&route.cluster).ok_or_else(|| {
                        invalid(
                            format!("{path}.sni_routes[{r}].cluster"),
                            format!("unknown cluster {:?}", route.cluster),
                        )
                    })?;
                    entries.push((Arc::clone(cluster), route.server_names.clone()));
                }
                Some(Arc::new(crate::tls::NameTable::new(entries)))
            };
            let tls = match &listener.tls {
                Some(_) if listener.protocol == ListenerProtocol::Tcp => {
                    return Err(invalid(
                        format!("{path}.tls"),
                        "TLS termination works on http listeners only, for now".into(),
                    ));
                }
                Some(tls) => Some(Arc::new(
                    crate::tls::ServerTls::load(tls, loaded.base_dir(), loaded.mesh.as_ref())
                        .map_err(|e| invalid(format!("{path}.tls.{}", e.path), e.reason))?,
                )),
                None => None,
            };
            listeners.push(ListenerSnapshot {
                name: listener.name.clone(),
                address,
                protocol: listener.protocol,
                filters,
                routes,
                tcp_cluster,
                sni_routes,
                idle_timeout: listener
                    .idle_timeout
                    .map_or(Some(Duration::from_secs(3600)), |t| t.non_zero()),
                request_header_timeout: listener
                    .request_header_timeout
                    .map_or(Some(Duration::from_secs(10)), |t| t.non_zero()),
                request_body_timeout: listener
                    .request_body_timeout
                    .map_or(Some(Duration::from_secs(60)), |t| t.non_zero()),
                send_timeout: listener
                    .send_timeout
                    .map_or(Some(Duration::from_secs(30)), |t| t.non_zero()),
                max_connections: listener.max_connections,
                max_concurrent_streams: listener.max_concurrent_streams.unwrap_or(100),
                max_requests_per_connection: listener.max_requests_per_connection,
                max_request_headers_size: listener
                    .max_request_headers_size
                    .map_or(60 * 1024, |s| s.0 as usize),
                max_body_buffer: listener.max_body_buffer.map_or(1 << 20, |s| s.0 as usize),
                tls,
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

    pub fn listener(&self, name: &str) -> Option<&ListenerSnapshot> {
        self.listeners.iter().find(|listener| listener.name == name)
    }

    /// Every plugin of the snapshot: listener filters, then route filters (canaries with them).
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<PluginSpec>> {
        self.filters().flat_map(ConfiguredFilter::plugins)
    }

    /// Every filter of the snapshot: listener filters, then route filters.
    pub fn filters(&self) -> impl Iterator<Item = &ConfiguredFilter> {
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
            .filters()
            .map(|filter| {
                let plugin = &filter.plugin;
                let mut module = serde_json::json!({
                    "plugin": plugin.info.name,
                    "sha256": plugin.digest,
                    "abi": plugin.abi.as_str(),
                });
                if let Some(canary) = &filter.canary {
                    module["canary"] = serde_json::json!({
                        "sha256": canary.plugin.digest,
                        "percent": canary.percent,
                    });
                }
                module
            })
            .collect();
        serde_json::json!({
            "version": self.version,
            "config": self.config,
            "modules": modules,
        })
    }
}
