//! A [`Snapshot`] is one immutable, versioned, fully built configuration: route tables,
//! clusters, metric handles. Requests pin the snapshot they start with; a new config is a
//! new snapshot, swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::load::LoadedConfig;
use super::{ClusterConfig, FilterConfig, ListenerProtocol, ProxyConfig};
use crate::admin::{ListenerStats, Metrics, RouteStats};
use crate::http::RouteTable;
use crate::upstream::Cluster;
use crate::wasm::{Canary, Clusters, ConfiguredFilter, PluginSpec, WasmError};

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

/// Loads (verifies, compiles, canaries) the plugins of one filter chain, or keeps the
/// previous snapshot's.
fn load_filters(
    loaded: &LoadedConfig,
    path: &str,
    filters: &[FilterConfig],
    metrics: &Arc<Metrics>,
    clusters: &Clusters,
    reuse: &mut Reuse<'_>,
) -> Result<Vec<ConfiguredFilter>, ConfigError> {
    let mut chain = Vec::with_capacity(filters.len());
    for (index, filter) in filters.iter().enumerate() {
        let path = format!("{path}[{index}]");
        let mut load = |entry: &FilterConfig, label: String, path: String| {
            load_plugin(loaded, entry, label, metrics, clusters, reuse)
                .map_err(|reason| ConfigError::invalid(&loaded.file, path, reason))
        };
        // The stable plugin is loaded without the canary, so starting or ending a rollout
        // keeps its warm VMs.
        let stable = FilterConfig {
            canary: None,
            ..filter.clone()
        };
        let plugin = load(&stable, filter.name.clone(), path.clone())?;
        let canary = match &filter.canary {
            Some(canary) => {
                let entry = FilterConfig {
                    module: canary.module.clone(),
                    config: canary.config.clone(),
                    vm_config: canary.vm_config.clone(),
                    ..stable.clone()
                };
                let label = format!("{}@canary", filter.name);
                Some(Canary {
                    plugin: load(&entry, label, format!("{path}.canary"))?,
                    percent: canary.percent,
                })
            }
            None => None,
        };
        chain.push(ConfiguredFilter { plugin, canary });
    }
    Ok(chain)
}

/// One plugin, kept from the previous snapshot when nothing it could observe changed.
fn load_plugin(
    loaded: &LoadedConfig,
    filter: &FilterConfig,
    label: String,
    metrics: &Arc<Metrics>,
    clusters: &Clusters,
    reuse: &mut Reuse<'_>,
) -> Result<Arc<PluginSpec>, String> {
    let loaded_plugin =
        PluginSpec::read_module(&filter.module, loaded.base_dir(), &loaded.sent_modules).and_then(
            |bytes| match reuse.plugin(filter, &label, &bytes.digest, clusters) {
                Some(spec) => Ok(spec),
                None => PluginSpec::from_module(
                    filter,
                    bytes,
                    Some(metrics.wasm_families()),
                    metrics.plugin_health(&label),
                    Arc::clone(clusters),
                ),
            },
        );
    // Say which file, unless the error does already.
    loaded_plugin.map_err(|error| match error {
        WasmError::Read { .. } => error.to_string(),
        _ => format!("{}: {error}", filter.module),
    })
}

/// What a new snapshot may keep from the one it replaces. Each previous plugin is kept at
/// most once, so two identical entries still get a plugin (and VMs) each, as they did before.
struct Reuse<'a> {
    clusters: Vec<&'a Arc<Cluster>>,
    plugins: Vec<&'a Arc<PluginSpec>>,
}

impl<'a> Reuse<'a> {
    fn from(previous: Option<&'a Snapshot>) -> Self {
        match previous {
            Some(snapshot) => Self {
                clusters: snapshot.clusters.iter().collect(),
                plugins: snapshot.plugins().collect(),
            },
            None => Self {
                clusters: Vec::new(),
                plugins: Vec::new(),
            },
        }
    }

    fn cluster(&self, config: &ClusterConfig, zone: Option<&str>) -> Option<Arc<Cluster>> {
        self.clusters
            .iter()
            .find(|cluster| cluster.config == *config && cluster.local_zone.as_deref() == zone)
            .map(|cluster| Arc::clone(cluster))
    }

    /// A plugin loaded from the same entry and module that calls out to the very same
    /// clusters: nothing it could observe has changed.
    fn plugin(
        &mut self,
        filter: &FilterConfig,
        label: &str,
        digest: &str,
        clusters: &Clusters,
    ) -> Option<Arc<PluginSpec>> {
        let same_clusters = |theirs: &Clusters| {
            theirs.len() == clusters.len()
                && theirs
                    .iter()
                    .all(|(name, c)| clusters.get(name).is_some_and(|ours| Arc::ptr_eq(c, ours)))
        };
        let index = self.plugins.iter().position(|spec| {
            spec.source == *filter
                && spec.health.label == label
                && spec.digest == digest
                && same_clusters(&spec.clusters)
        })?;
        Some(Arc::clone(self.plugins.swap_remove(index)))
    }
}
