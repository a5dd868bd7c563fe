//! [`ChangeValidator`] with the real Wasm host and config model: a pushed filter is compiled
//! and canaried with its configuration before the control service accepts it.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_control::{ChangeValidator, FilterAttachment};

use crate::admin::Metrics;
use crate::config::{ClusterConfig, RouteConfig, filter_config};
use crate::wasm::{ModuleBytes, PluginSpec};

pub struct ProxyValidator {
    /// Canaries count their VM starts here, not in any proxy's metrics.
    metrics: Arc<Metrics>,
}

impl ProxyValidator {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::new(),
        })
    }
}

impl ChangeValidator for ProxyValidator {
    fn validate_filter(&self, filter: &FilterAttachment, module: &[u8]) -> Result<(), String> {
        let config = filter_config(filter);
        // Callouts need a proxy's clusters; a canary has none, as Envoy's has none either.
        PluginSpec::from_module(
            &config,
            ModuleBytes::new(module.to_vec()),
            None,
            self.metrics.plugin_health(&filter.name),
            Arc::new(HashMap::new()),
        )
        .map(drop)
        .map_err(|error| error.to_string())
    }

    fn validate_cluster(&self, cluster: &serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<ClusterConfig>(cluster.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn validate_routes(&self, routes: &serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<Vec<RouteConfig>>(routes.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
