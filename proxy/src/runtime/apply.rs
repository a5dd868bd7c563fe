//! Applying a config change to a running proxy: build the new snapshot off the data path
//! (modules compiled and canaried), bind the sockets of new listeners, start new clusters,
//! then publish it in one atomic swap. Any failure before the swap changes nothing.
//!
//! A proxy's config has two sources: its file, and the overlay of a control service it
//! subscribes to. A change to either is composed with the latest of the other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::listeners::ListenerSet;
use super::state::ProxyState;
use sluice_control::Overlay;
use tokio::sync::watch;

use crate::config::{
    ConfigError, LoadedConfig, SentModules, ServiceRegistration, Snapshot, with_overlay,
};
use crate::discovery::Discovery;
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
    sources: tokio::sync::Mutex<Sources>,
    /// The control version running, for the subscriber (an overlay refused when it came can
    /// apply later, with a file that fits it).
    overlay_applied: watch::Sender<u64>,
    /// The file's `register:` entries running, for the subscriber, which registers them.
    registrations: watch::Sender<Vec<ServiceRegistration>>,
}

/// What the running config was composed from.
struct Sources {
    file: LoadedConfig,
    /// The control overlay running, once a control service sent one.
    overlay: Option<ControlOverlay>,
    /// The newest overlay, when it was refused: retried with each new file config.
    refused: Option<ControlOverlay>,
}

/// One version of a control service's overlay, with the modules it names.
#[derive(Clone)]
pub struct ControlOverlay {
    pub version: u64,
    pub overlay: Overlay,
    pub modules: Arc<SentModules>,
}

impl ControlOverlay {
    fn over(&self, file: &LoadedConfig) -> Result<LoadedConfig, ConfigError> {
        with_overlay(file, &self.overlay, self.version, &self.modules)
    }
}

// === impl ConfigApplier ===

impl ConfigApplier {
    pub(super) fn new(state: Arc<ProxyState>, listeners: ListenerSet, file: LoadedConfig) -> Self {
        let registrations = watch::channel(file.config.register.clone()).0;
        Self(Arc::new(Applier {
            registrations,
            state,
            listeners: Mutex::new(listeners),
            sources: tokio::sync::Mutex::new(Sources {
                file,
                overlay: None,
                refused: None,
            }),
            overlay_applied: watch::channel(0).0,
        }))
    }

    /// Applies a new file config (with the control overlay, if any) while serving, whole or
    /// not at all. Its plugins are compiled and canaried and its new listeners bound before
    /// anything changes; then one atomic swap. Requests in flight finish on the snapshot they
    /// started with; new requests, even on an open keep-alive or HTTP/2 connection, get the
    /// new one. Returns the new snapshot version.
    pub async fn apply(&self, mut loaded: LoadedConfig) -> Result<u64, ApplyError> {
        let mut sources = self.0.sources.lock().await;
        // A re-read file knows nothing of the process's workload identity; it stays.
        if loaded.mesh.is_none() {
            loaded.mesh = sources.file.mesh.clone();
        }
        // An overlay refused for want of something in the file may fit this file.
        if let Some(refused) = sources.refused.clone()
            && let Ok(composed) = refused.over(&loaded)
            && let Ok(version) = self.apply_now(composed).await
        {
            let _ = self.settle(Ok(version));
            tracing::info!(
                control_version = refused.version,
                "the refused control overlay fits the new file; applied"
            );
            self.0.overlay_applied.send_replace(refused.version);
            self.set_registrations(&loaded);
            sources.file = loaded;
            sources.overlay = Some(refused);
            sources.refused = None;
            return Ok(version);
        }
        let composed = match &sources.overlay {
            Some(overlay) => overlay.over(&loaded),
            None => Ok(loaded.clone()),
        };
        let applied = self.settle(self.apply_composed(composed).await);
        if applied.is_ok() {
            self.set_registrations(&loaded);
            sources.file = loaded;
        }
        applied
    }

    fn set_registrations(&self, loaded: &LoadedConfig) {
        self.0.registrations.send_if_modified(|running| {
            let changed = *running != loaded.config.register;
            if changed {
                running.clone_from(&loaded.config.register);
            }
            changed
        });
    }

    /// The services this proxy registers (the file's `register:`), as edits change them.
    pub fn follow_registrations(&self) -> watch::Receiver<Vec<ServiceRegistration>> {
        self.0.registrations.subscribe()
    }

    /// The registry's instances this proxy knows, for its discovering clusters.
    pub fn discovery(&self) -> Arc<Discovery> {
        Arc::clone(&self.0.state.discovery)
    }

    /// Applies a control service's overlay over the file's config, the same way.
    pub async fn apply_overlay(&self, overlay: ControlOverlay) -> Result<u64, ApplyError> {
        let mut sources = self.0.sources.lock().await;
        let composed = overlay.over(&sources.file);
        let applied = self.settle(self.apply_composed(composed).await);
        match applied {
            Ok(_) => {
                tracing::info!(control_version = overlay.version, "control overlay applied");
                self.0.overlay_applied.send_replace(overlay.version);
                sources.overlay = Some(overlay);
                sources.refused = None;
            }
            Err(_) => sources.refused = Some(overlay),
        }
        applied
    }

    /// The control version running; changes when an overlay applies, also one that was
    /// refused when it came and fits a later file.
    pub fn follow_overlay(&self) -> watch::Receiver<u64> {
        self.0.overlay_applied.subscribe()
    }

    async fn apply_composed(
        &self,
        composed: Result<LoadedConfig, ConfigError>,
    ) -> Result<u64, ApplyError> {
        self.apply_now(composed?).await
    }

    /// Counts and logs the outcome of a change.
    fn settle(&self, applied: Result<u64, ApplyError>) -> Result<u64, ApplyError> {
        match &applied {
            Ok(version) => {
                self.0.state.metrics.count_config_change(true);
                tracing::info!(version, "config applied");
            }
            Err(error) => self.count_rejected(error),
        }
        applied
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
        let workers_unset = loaded.config.workers.is_none();
        let mut snapshot = tokio::task::spawn_blocking(move || {
            Snapshot::build(&loaded, version, &metrics, Some(&previous))
        })
        .await
        .map_err(|e| ApplyError::Interrupted(e.to_string()))??;
        // Left to the CPU count, which may have changed since the start: keep what runs.
        if workers_unset {
            snapshot.workers = running.workers;
        }
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
        start_new_clusters(&snapshot, Some(&running), &self.0.state.discovery).await;

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

/// Resolves the host names of clusters `snapshot` has and `running` has not, hands those that
/// name a registry service to discovery (waiting briefly for a first answer of a service
/// no cluster followed before), and starts their DNS and health-check loops (which end by
/// themselves when the cluster is dropped).
pub(super) async fn start_new_clusters(
    snapshot: &Snapshot,
    running: Option<&Snapshot>,
    discovery: &Discovery,
) {
    let is_new = |cluster: &Arc<Cluster>| {
        running.is_none_or(|running| !running.clusters.iter().any(|c| Arc::ptr_eq(c, cluster)))
    };
    let mut unheard = Vec::new();
    for cluster in snapshot.clusters.iter().filter(|c| is_new(c)) {
        if cluster.has_host_names() {
            cluster.refresh_dns().await;
        }
        if let Some(service) = cluster.discovered_service() {
            if discovery.instances(service).is_none() {
                unheard.push(service.to_owned());
            }
            discovery.attach(cluster);
        }
        spawn_cluster_tasks(cluster);
    }
    discovery
        .wait_for_answers(&unheard, FIRST_ANSWER_LIMIT)
        .await;
}

/// How long a config change that adds a cluster of a new service waits for its instances
/// before it is published anyway (the cluster then fills in when they come).
const FIRST_ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
