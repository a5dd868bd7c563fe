//! A plugin as configured: its module (verified by sha256, compiled once), identity,
//! configuration, limits and fail policy. Loading one runs a canary VM, so a module that
//! does not link, traps on start, or rejects its configuration is refused before it serves.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use wasmtime::{Engine, InstancePre, Linker, Module};

use super::callout::Clusters;
use super::error::WasmError;
use super::hostcalls;
use super::metrics::WasmMetricFamilies;
use super::runtime::{EPOCH_TICK, MAX_MEMORY_LIMIT, ModuleBytes, WasmRuntime};
use super::shared::VmIdHold;
use super::state::{HostState, PluginInfo};
use super::status::AbiVersion;
use super::vm::PluginVm;
use crate::config::{FilterConfig, PluginLogLevel, SentModules};

/// Per-plugin health, shared by every worker's VM of the plugin.
pub struct PluginHealth {
    /// The `plugin` label of its metrics (and of the metrics it defines): the filter's name,
    /// with `@canary` for the canary of a gradual rollout.
    pub label: String,
    /// Workers whose VM of this plugin is in crash-loop backoff.
    pub crash_looping: AtomicUsize,
    pub failures: IntCounterVec,
    pub vm_starts: IntCounter,
    pub fail_open_applied: IntCounter,
    pub fail_closed_applied: IntCounter,
    pub crash_looping_gauge: IntGauge,
    /// Worker VMs alive (not counting canaries): after a change, the old plugin's VMs leave
    /// this count once their last stream ends.
    pub vms_live: IntGauge,
}

pub struct PluginSpec {
    /// The filter entry it was loaded from: with the same digest and clusters, a new snapshot
    /// keeps this plugin (and its warm VMs) instead of loading it again.
    pub source: FilterConfig,
    pub info: Arc<PluginInfo>,
    pub digest: String,
    pub abi: AbiVersion,
    pub(super) instance_pre: InstancePre<HostState>,
    pub fail_open: bool,
    pub memory_limit: usize,
    pub callback_deadline_ticks: u64,
    pub start_deadline_ticks: u64,
    pub metric_families: Option<WasmMetricFamilies>,
    pub health: PluginHealth,
    /// Where `proxy_http_call` may send (the clusters of the plugin's snapshot).
    pub clusters: Clusters,
    _module: Arc<Module>,
    /// Keeps the shared data and queues of the plugin's vm_id while the plugin lives.
    _shared: VmIdHold,
}

// === impl PluginSpec ===

impl PluginSpec {
    /// Reads, verifies, compiles and canaries the plugin of one filter entry.
    pub fn load(
        filter: &FilterConfig,
        base_dir: &Path,
        metric_families: Option<WasmMetricFamilies>,
        health: PluginHealth,
        clusters: Clusters,
    ) -> Result<Arc<Self>, WasmError> {
        let bytes = Self::read_module(&filter.module, base_dir, &SentModules::new())?;
        Self::from_module(filter, bytes, metric_families, health, clusters)
    }

    /// Compiles (or takes from the cache) and canaries a module already read.
    pub fn from_module(
        filter: &FilterConfig,
        bytes: ModuleBytes,
        metric_families: Option<WasmMetricFamilies>,
        health: PluginHealth,
        clusters: Clusters,
    ) -> Result<Arc<Self>, WasmError> {
        let runtime = WasmRuntime::global()?;
        let module = runtime.compile(&bytes)?;
        let digest = bytes.digest.clone();
        let abi = AbiVersion::detect(&module).ok_or_else(|| WasmError::NoAbiVersion {
            digest: digest.clone(),
        })?;
        let instance_pre = linker(runtime.engine())?
            .instantiate_pre(&module)
            .map_err(|e| WasmError::Link {
                digest: digest.clone(),
                reason: format!("{e:#}"),
            })?;

        let limits = filter.limits.as_ref();
        let memory_limit = limits
            .and_then(|l| l.memory)
            .map_or(256 << 20, |m| m.0.min(MAX_MEMORY_LIMIT)) as usize;
        let callback_time = limits
            .and_then(|l| l.callback_time)
            .map_or(std::time::Duration::from_millis(100), |t| t.0);
        let callback_deadline_ticks =
            callback_time.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1;

        let spec = Arc::new(Self {
            source: filter.clone(),
            info: Arc::new(PluginInfo {
                name: filter.name.clone(),
                root_id: filter.root_id.clone().unwrap_or_default(),
                vm_id: filter.vm_id.clone().unwrap_or_default(),
                vm_config: config_bytes(filter.vm_config.as_ref()),
                plugin_config: config_bytes(filter.config.as_ref()),
                log_level: log_level(filter.log_level),
                warned_invalid_header: Default::default(),
            }),
            digest,
            abi,
            instance_pre,
            fail_open: filter.fail_open,
            memory_limit,
            callback_deadline_ticks,
            // Initializers (Go's runtime, big static tables) get at least a second.
            start_deadline_ticks: callback_deadline_ticks.max(1000 / EPOCH_TICK.as_millis() as u64),
            metric_families,
            health,
            clusters,
            _module: module,
            _shared: VmIdHold::new(filter.vm_id.as_deref().unwrap_or_default()),
        });
        spec.canary()?;
        tracing::info!(plugin = %filter.name, digest = %spec.digest, abi = spec.abi.as_str(), "plugin loaded");
        Ok(spec)
    }

    /// Starts a throwaway VM: it must instantiate, initialize and accept its configuration.
    pub fn canary(self: &Arc<Self>) -> Result<(), WasmError> {
        PluginVm::start(self, None).map(drop)
    }

    pub fn runtime_engine(&self) -> &Engine {
        self.instance_pre.module().engine()
    }

    /// Applies the fail policy after `failure` and counts it: `Ok` when the filter is skipped
    /// (fail open), `Err(plugin name)` when the stream or connection must fail (fail closed).
    pub fn apply_fail_policy(&self, failure: &super::VmFailure) -> Result<(), String> {
        if self.fail_open {
            self.health.fail_open_applied.inc();
            tracing::warn!(plugin = %self.info.name, %failure, "plugin failed; fail_open skips it for this stream");
            Ok(())
        } else {
            self.health.fail_closed_applied.inc();
            tracing::warn!(plugin = %self.info.name, %failure, "plugin failed; failing the stream (fail closed)");
            Err(self.info.name.clone())
        }
    }

    pub fn is_crash_looping(&self) -> bool {
        self.health.crash_looping.load(Ordering::Relaxed) > 0
    }
}

fn linker(engine: &Engine) -> Result<&'static Linker<HostState>, WasmError> {
    static LINKER: std::sync::OnceLock<Result<Linker<HostState>, String>> =
        std::sync::OnceLock::new();
    LINKER
        .get_or_init(|| hostcalls::linker(engine).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|reason| WasmError::Engine(reason.clone()))
}

impl PluginSpec {
    /// The module a filter entry names, with its digest: a file (relative paths resolve
    /// against `base_dir`), or `sha256:<hex>` from what a control service `sent`.
    pub fn read_module(
        reference: &str,
        base_dir: &Path,
        sent: &SentModules,
    ) -> Result<ModuleBytes, WasmError> {
        if let Some(digest) = reference.strip_prefix("sha256:") {
            let held = sent.get(&digest.to_ascii_lowercase());
            return held
                .map(|bytes| ModuleBytes::new(bytes.to_vec()))
                .ok_or_else(|| WasmError::Read {
                    path: reference.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no control service sent this module; a config file names modules by path",
                    ),
                });
        }
        let path = base_dir.join(reference);
        let bytes = std::fs::read(&path).map_err(|source| WasmError::Read { path, source })?;
        Ok(ModuleBytes::new(bytes))
    }
}

/// Plugin and VM configuration bytes: a string as is, a mapping or list as JSON text (as
/// Envoy passes a `Struct`), a scalar as its text, nothing as empty.
fn config_bytes(value: Option<&serde_yaml::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(serde_yaml::Value::String(text)) => text.clone().into_bytes(),
        Some(serde_yaml::Value::Bool(b)) => b.to_string().into_bytes(),
        Some(serde_yaml::Value::Number(n)) => n.to_string().into_bytes(),
        Some(structured) => serde_json::to_vec(structured).unwrap_or_default(),
    }
}

fn log_level(level: Option<PluginLogLevel>) -> u32 {
    match level.unwrap_or(PluginLogLevel::Info) {
        PluginLogLevel::Trace => 0,
        PluginLogLevel::Debug => 1,
        PluginLogLevel::Info => 2,
        PluginLogLevel::Warn => 3,
        PluginLogLevel::Error => 4,
        PluginLogLevel::Critical => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_passed_as_envoy_does() {
        let yaml = |text: &str| serde_yaml::from_str::<serde_yaml::Value>(text).unwrap();
        assert_eq!(config_bytes(None), b"");
        assert_eq!(config_bytes(Some(&yaml("plain text"))), b"plain text");
        assert_eq!(
            config_bytes(Some(&yaml("{ header: x-a, value: 1 }"))),
            br#"{"header":"x-a","value":1}"#
        );
        assert_eq!(config_bytes(Some(&yaml("42"))), b"42");
    }
}
