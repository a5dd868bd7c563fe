//! Layer 1 of the host: one process-wide wasmtime `Engine` (pooling allocator, copy-on-write
//! memory images, epoch interruption), the epoch ticker, and compiled modules cached by
//! sha256 in memory and on disk, so neither a second plugin nor a restart recompiles.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use super::WasmError;

/// How often the epoch advances: the granularity of per-callback CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest linear memory any plugin may be configured with.
pub const MAX_MEMORY_LIMIT: u64 = 1 << 30;

/// VMs the instance pool holds at once, over all plugins and workers.
const POOL_SLOTS: u32 = 1000;

pub struct WasmRuntime {
    engine: Engine,
    /// Compiled modules by digest; weak, so a module nobody uses any more is freed.
    modules: Mutex<HashMap<String, Weak<Module>>>,
    cache_dir: Option<PathBuf>,
    /// Distinguishes artifacts of different wasmtime builds and settings in the cache dir.
    engine_fingerprint: u64,
}

/// A module's bytes with their sha256, as `sha256:<hex>` names it.
pub struct ModuleBytes {
    pub digest: String,
    pub bytes: Vec<u8>,
}

// === impl ModuleBytes ===

impl ModuleBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = hex(&Sha256::digest(&bytes));
        Self { digest, bytes }
    }
}

/// Set to `1`, the engine writes `/tmp/perf-<pid>.map`, which names the guest functions it
/// compiled, so `perf` and `benches/instructions.sh` can say where a filter's time goes.
const PERF_MAP_ENV: &str = "SLUICE_WASM_PERFMAP";

/// The engine's settings, with the pooling instance allocator (`pooled`) or VMs allocated one
/// by one. Cached artifacts are keyed by the engine's compatibility hash, so neither engine
/// loads what the other compiled unless it can run it.
fn engine_config(pooled: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true).memory_init_cow(true);
    if std::env::var_os(PERF_MAP_ENV).is_some_and(|value| value == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooled {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .max_memory_size(MAX_MEMORY_LIMIT as usize)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

// === impl WasmRuntime ===

impl WasmRuntime {
    /// The process-wide runtime, created on first use.
    pub fn global() -> Result<&'static WasmRuntime, WasmError> {
        static RUNTIME: OnceLock<Result<WasmRuntime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                // Kept as the bare reason, so the error says "engine is unavailable" once.
                WasmRuntime::new(cache_dir()).map_err(|error| match error {
                    WasmError::Engine(reason) => reason,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(|reason| WasmError::Engine(reason.clone()))
    }

    fn new(cache_dir: Option<PathBuf>) -> Result<Self, WasmError> {
        let engine = match Engine::new(&engine_config(true)) {
            Ok(engine) => engine,
            // The pool reserves the address space of all its slots at once (terabytes of
            // virtual memory, none of it resident), which an address-space limit refuses:
            // `ulimit -v`, some sandboxes, valgrind. Without the pool every VM maps its own
            // memory as it starts: slower starts, the same limits and copy-on-write images.
            Err(pooled) => {
                tracing::warn!(
                    reason = %format!("{pooled:#}"),
                    "cannot reserve the Wasm instance pool; each VM will map its own memory"
                );
                Engine::new(&engine_config(false))
                    .map_err(|e| WasmError::Engine(format!("{e:#}")))?
            }
        };

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Self {
            engine,
            modules: Mutex::new(HashMap::new()),
            cache_dir,
            engine_fingerprint: hasher.finish(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled module for `bytes`: from memory, else from the disk cache, else compiled
    /// (and then written to the disk cache).
    pub fn compile(&self, bytes: &ModuleBytes) -> Result<Arc<Module>, WasmError> {
        let digest = &bytes.digest;
        if let Some(module) = self.lock_modules().get(digest).and_then(Weak::upgrade) {
            return Ok(module);
        }
        let module = match self.load_cached(digest) {
            Some(module) => module,
            None => {
                let module =
                    Module::new(&self.engine, &bytes.bytes).map_err(|e| WasmError::Compile {
                        digest: digest.clone(),
                        // wasmparser spreads byte dumps over lines; a log line keeps one.
                        reason: format!("{e:#}")
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" "),
                    })?;
                self.store_cached(digest, &module);
                module
            }
        };
        let module = Arc::new(module);
        let mut modules = self.lock_modules();
        modules.retain(|_, weak| weak.strong_count() > 0);
        modules.insert(digest.clone(), Arc::downgrade(&module));
        Ok(module)
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Module>>> {
        // A panic while holding this lock leaves only a cache behind: keep using it.
        self.modules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{digest}-{:016x}.cwasm", self.engine_fingerprint)))
    }

    fn load_cached(&self, digest: &str) -> Option<Module> {
        let path = self.artifact_path(digest)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes come from `Module::serialize` of a
        // compatible engine. The file lives in our private cache dir (created 0700), is named
        // by the module digest and this engine's fingerprint, and is only ever written by
        // `store_cached` below; wasmtime also checks the engine compatibility header itself.
        #[allow(unsafe_code)]
        let loaded = unsafe { Module::deserialize_file(&self.engine, &path) };
        match loaded {
            Ok(module) => {
                tracing::debug!(digest, path = %path.display(), "loaded precompiled module from the cache");
                Some(module)
            }
            Err(error) => {
                tracing::warn!(digest, path = %path.display(), error = %format!("{error:#}"), "ignoring unusable cached module");
                None
            }
        }
    }

    fn store_cached(&self, digest: &str, module: &Module) {
        let Some(path) = self.artifact_path(digest) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let bytes = module
                .serialize()
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            // Write then rename, so a crash never leaves a half-written artifact under the
            // final name.
            let temporary = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&temporary, bytes)?;
            std::fs::rename(&temporary, &path)
        };
        if let Err(error) = write() {
            tracing::warn!(digest, path = %path.display(), %error, "could not cache the compiled module");
        }
    }
}

/// `SLUICE_MODULE_CACHE`, else `$XDG_CACHE_HOME/sluice/modules`, else `~/.cache/sluice/modules`.
/// Created private to this user; `None` (no disk cache) if that fails.
fn cache_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SLUICE_MODULE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sluice/modules"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice/modules"))
        })?;
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => Some(dir),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "no module cache on disk");
            None
        }
    }
}
