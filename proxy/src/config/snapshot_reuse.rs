//! What a new [`Snapshot`] keeps from the one it replaces (clusters with their health,
//! plugins with their warm VMs), and loading the plugins it cannot keep.

use std::sync::Arc;

use super::error::ConfigError;
use super::load::LoadedConfig;
use super::snapshot::Snapshot;
use super::{ClusterConfig, FilterConfig};
use crate::admin::Metrics;
use crate::upstream::Cluster;
use crate::wasm::{Canary, Clusters, ConfiguredFilter, PluginSpec, WasmError};

/// Loads (verifies, compiles, canaries) the plugins of one filter chain, or keeps the
/// previous snapshot's.
pub(super) fn load_filters(
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
pub(super) struct Reuse<'a> {
    clusters: Vec<&'a Arc<Cluster>>,
    plugins: Vec<&'a Arc<PluginSpec>>,
}

impl<'a> Reuse<'a> {
    pub(super) fn from(previous: Option<&'a Snapshot>) -> Self {
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

    pub(super) fn cluster(
        &self,
        config: &ClusterConfig,
        zone: Option<&str>,
    ) -> Option<Arc<Cluster>> {
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
