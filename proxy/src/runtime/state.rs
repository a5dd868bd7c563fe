//! Process-wide state every worker and the admin endpoint share: the current snapshot, the
//! metrics registry, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin::Metrics;
use crate::config::Snapshot;
use crate::discovery::Discovery;

pub struct ProxyState {
    snapshot: ArcSwap<Snapshot>,
    /// The published snapshot's version; workers follow it to retire old VMs and warm new ones.
    published: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// The registry's instances, for clusters that discover their endpoints.
    pub discovery: Arc<Discovery>,
    listeners_bound: AtomicBool,
    draining: AtomicBool,
}

/// Why the proxy is not ready, for `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    Draining,
    /// A plugin's VM keeps failing on some worker (named).
    PluginCrashLooping(String),
    /// Clusters discover these services and the control service has not answered for them
    /// yet (for at most 15s after the start).
    Discovering(Vec<String>),
}

// === impl ProxyState ===

impl ProxyState {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>, discovery: Arc<Discovery>) -> Arc<Self> {
        metrics.set_config_version(snapshot.version);
        metrics.overload.set_limit(overload_limit(&snapshot));
        Arc::new(Self {
            published: watch::channel(snapshot.version).0,
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            discovery,
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// The snapshot new requests run on. Callers keep the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the one new requests run on. Requests in flight keep theirs.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        let version = snapshot.version;
        self.metrics.overload.set_limit(overload_limit(&snapshot));
        self.snapshot.store(snapshot);
        self.metrics.set_config_version(version);
        self.published.send_replace(version);
    }

    /// Wakes on every [`ProxyState::publish`].
    pub fn follow(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn mark_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            Err(NotReady::Draining)
        } else if !self.listeners_bound.load(Ordering::Acquire) {
            Err(NotReady::Starting)
        } else if let Some(plugin) = self.snapshot().plugins().find(|p| p.is_crash_looping()) {
            Err(NotReady::PluginCrashLooping(plugin.info.name.clone()))
        } else {
            let waiting = self.discovery.awaiting_first_answers();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(NotReady::Discovering(waiting))
            }
        }
    }
}

/// The config's `overload.max_memory`, in bytes.
fn overload_limit(snapshot: &Snapshot) -> Option<u64> {
    snapshot.config.overload.as_ref().map(|o| o.max_memory.0)
}
