//! A filter as a chain holds it: its plugin, and during a gradual rollout a canary plugin
//! that takes a share of the streams. Each stream (or TCP connection) picks one when its
//! chain is built and keeps it to the end.

use std::sync::Arc;

use super::plugin::PluginSpec;

#[derive(Clone)]
pub struct ConfiguredFilter {
    pub plugin: Arc<PluginSpec>,
    pub canary: Option<Canary>,
}

#[derive(Clone)]
pub struct Canary {
    pub plugin: Arc<PluginSpec>,
    /// 0 to 100.
    pub percent: f64,
}

impl ConfiguredFilter {
    pub fn plain(plugin: Arc<PluginSpec>) -> Self {
        Self {
            plugin,
            canary: None,
        }
    }

    /// The plugin one new stream runs.
    pub fn pick(&self) -> &Arc<PluginSpec> {
        match &self.canary {
            Some(canary) if fastrand::f64() * 100.0 < canary.percent => &canary.plugin,
            _ => &self.plugin,
        }
    }

    /// The plugin and the canary, if any.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<PluginSpec>> {
        std::iter::once(&self.plugin).chain(self.canary.as_ref().map(|c| &c.plugin))
    }
}
