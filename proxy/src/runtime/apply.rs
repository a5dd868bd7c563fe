//! Applying a config change to a running proxy: build the new snapshot off the data path
//! (modules compiled and canaried), bind the sockets of new listeners, start new clusters,
//! then publish it in one atomic swap. Any failure before the swap changes nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::listeners::ListenerSet;
use super::state::ProxyState;
use crate::config::{ConfigError, LoadedConfig, Snapshot};
use crate::listener::BindError;
use crate::upstream::{Cluster, spawn_cluster_tasks};

/// Why a config change was not applied. The running config keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(
        "{field}: changing it (from {running} to {wanted}) needs a restart; keeping the running config"
    )]
    NeedsRestart {
        field: &'static str,
        running: String,
        wanted: String,
    },
    #[error("building the new config was interrupted: {0}")]
    Interrupted(String),
}

/// Applies config changes to one running proxy; clones share it.
#[derive(Clone)]
pub struct ConfigApplier(Arc<Applier>);

struct Applier {
    state: Arc<ProxyState>,
    listeners: Mutex<ListenerSet>,
    /// One change at a time: each is built on the snapshot the previous one published.
    applying: tokio::sync::Mutex<()>,
}

// === impl ConfigApplier ===

impl ConfigApplier {
    pub(super) fn new(state: Arc<ProxyState>, listeners: ListenerSet) -> Self {
        Self(Arc::new(Applier {
            state,
            listeners: Mutex::new(listeners),
            applying: tokio::sync::Mutex::new(()),
        }))
    }

    /// Applies a new config while serving, whole or not at all. Its plugins are compiled and
    /// canaried and its new listeners bound before anything changes; then one atomic swap.
    /// Requests in flight finish on the snapshot they started with; new requests, even on
    /// an open keep-alive or HTTP/2 connection, get the new one. Returns the new version.
    pub async fn apply(&self, loaded: LoadedConfig) -> Result<u64, ApplyError> {
        let _one_at_a_time = self.0.applying.lock().await;
        match self.apply_now(loaded).await {
            Ok(version) => {
                self.0.state.metrics.count_config_change(true);
                tracing::info!(version, "config applied");
                Ok(version)
            }
            Err(error) => {
                self.count_rejected(&error);
                Err(error)
            }
        }
    }

    /// Logs and counts a change that was refused, here or before it got here (a config file
    /// that does not parse).
    pub fn count_rejected(&self, error: &ApplyError) {
        self.0.state.metrics.count_config_change(false);
        tracing::error!(%error, "config change rejected; the running config keeps serving");
    }

    async fn apply_now(&self, loaded: LoadedConfig) -> Result<u64, ApplyError> {
        let running = self.0.state.snapshot();
        let version = running.version + 1;
        // Compiling and canarying modules takes milliseconds to seconds: not on this runtime.
        let (metrics, previous) = (Arc::clone(&self.0.state.metrics), Arc::clone(&running));
        let snapshot = tokio::task::spawn_blocking(move || {
            Snapshot::build(&loaded, version, &metrics, Some(&previous))
        })
        .await
        .map_err(|e| ApplyError::Interrupted(e.to_string()))??;
        if snapshot.workers != running.workers {
            return Err(ApplyError::NeedsRestart {
                field: "workers",
                running: running.workers.to_string(),
                wanted: snapshot.workers.to_string(),
            });
        }
        if snapshot.admin_address != running.admin_address {
            let show = |a: Option<SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
            return Err(ApplyError::NeedsRestart {
                field: "admin.address",
                running: show(running.admin_address),
                wanted: show(snapshot.admin_address),
            });
        }
        let fresh = self.listener_set().bind_new(&snapshot)?;
        start_new_clusters(&snapshot, Some(&running)).await;

        let snapshot = Arc::new(snapshot);
        self.0.state.publish(Arc::clone(&snapshot));
        self.listener_set().commit(fresh, &snapshot);
        Ok(version)
    }

    /// The version of the snapshot new requests run on.
    pub fn version(&self) -> u64 {
        self.0.state.snapshot().version
    }

    fn listener_set(&self) -> MutexGuard<'_, ListenerSet> {
        // The set is only touched between awaits; a panic while holding it leaves it usable.
        self.0
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listener_set().local_address(name)
    }
}

/// Resolves the host names of clusters `snapshot` has and `running` has not, and starts their
/// DNS and health-check loops (which end by themselves when the cluster is dropped).
pub(super) async fn start_new_clusters(snapshot: &Snapshot, running: Option<&Snapshot>) {
    let is_new = |cluster: &Arc<Cluster>| {
        running.is_none_or(|running| !running.clusters.iter().any(|c| Arc::ptr_eq(c, cluster)))
    };
    for cluster in snapshot.clusters.iter().filter(|c| is_new(c)) {
        if cluster.has_host_names() {
            cluster.refresh_dns().await;
        }
        spawn_cluster_tasks(cluster);
    }
}
