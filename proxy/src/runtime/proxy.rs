//! [`RunningProxy`]: builds the snapshot, binds every socket, starts the workers and the admin
//! endpoint, applies config changes while serving, and drains on shutdown. The binary and the
//! tests start the proxy the same way, through this type.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::apply::{ConfigApplier, start_new_clusters};
use super::drain::{DrainTrigger, drain_channel};
use super::listeners::ListenerSet;
use super::state::ProxyState;
use super::worker::spawn_worker;
use crate::admin::{Metrics, serve_admin};
use crate::config::{ConfigError, LoadedConfig, Snapshot};
use crate::listener::BindError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin endpoint: cannot bind {address}: {source}")]
    Admin {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the workers: {0}")]
    Workers(String),
}

pub struct RunningProxy {
    state: Arc<ProxyState>,
    drain: DrainTrigger,
    workers: Vec<JoinHandle<()>>,
    applier: ConfigApplier,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

// === impl RunningProxy ===

impl RunningProxy {
    /// Starts serving `loaded`. Call from inside a multi-threaded tokio runtime: the admin
    /// endpoint, DNS refresh and health checks run there, off the workers.
    pub async fn start(loaded: &LoadedConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(loaded, 1, &metrics, None)?;
        let discovery = crate::discovery::Discovery::new();
        start_new_clusters(&snapshot, None, &discovery).await;

        // Bind everything before starting anything: a taken port must leave nothing running.
        let worker_count = snapshot.workers;
        let (socket_senders, socket_receivers): (Vec<_>, Vec<_>) = (0..worker_count)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let mut listeners = ListenerSet::new(socket_senders);
        let sockets = listeners.bind_new(&snapshot)?;
        let admin_socket = match snapshot.admin_address {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Admin { address, source })?,
            ),
            None => None,
        };

        let admin_configured = snapshot.admin_address;
        let state = ProxyState::new(snapshot, metrics, discovery);
        let (drain, drain_watch) = drain_channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::with_capacity(worker_count);
        for (id, worker_sockets) in socket_receivers.into_iter().enumerate() {
            let handle = spawn_worker(
                id,
                Arc::clone(&state),
                worker_sockets,
                drain_watch.clone(),
                started_tx.clone(),
            )
            .map_err(|e| {
                StartError::Workers(format!("worker {id}: cannot spawn its thread: {e}"))
            })?;
            workers.push(handle);
        }
        drop(started_tx);
        // Workers report within microseconds; waiting on a blocking thread keeps the runtime free.
        let reports = tokio::task::spawn_blocking(move || {
            started_rx.iter().take(worker_count).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StartError::Workers(e.to_string()))?;
        if let Some(Err(reason)) = reports.into_iter().find(Result::is_err) {
            drain.drain();
            return Err(StartError::Workers(reason));
        }
        listeners.commit(sockets, &state.snapshot());
        state.mark_listeners_bound();

        let admin = match (admin_socket, admin_configured) {
            (Some(socket), Some(configured)) => {
                let address = socket.local_addr().map_err(|source| StartError::Admin {
                    address: configured,
                    source,
                })?;
                Some((
                    address,
                    tokio::spawn(serve_admin(socket, Arc::clone(&state))),
                ))
            }
            _ => None,
        };
        for (name, address) in listeners.addresses() {
            tracing::info!(listener = %name, %address, workers = worker_count, "listening");
        }
        if let Some((address, _)) = &admin {
            tracing::info!(%address, "admin endpoint listening");
        }
        Ok(Self {
            applier: ConfigApplier::new(Arc::clone(&state), listeners, loaded.clone()),
            state,
            drain,
            workers,
            admin,
        })
    }

    /// The handle that applies config changes to this proxy (file watcher, control client).
    pub fn applier(&self) -> ConfigApplier {
        self.applier.clone()
    }

    /// The address a listener actually bound (port 0 in the config becomes a real port).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.applier.listener_address(name)
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(address, _)| *address)
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Drains: stop accepting, let in-flight requests finish (up to the drain timeout), then
    /// stop the workers and the admin endpoint.
    pub async fn shutdown(mut self) {
        tracing::info!(timeout = ?self.state.snapshot().drain_timeout, "draining");
        self.state.mark_draining();
        self.drain.drain();
        let workers = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        })
        .await;
        if let Err(error) = joined {
            tracing::error!(%error, "waiting for the workers failed");
        }
        if let Some((_, admin)) = self.admin.take() {
            admin.abort();
        }
        tracing::info!("drained");
    }
}

impl Drop for RunningProxy {
    /// A proxy dropped without `shutdown` still stops: its workers drain and exit on their own.
    fn drop(&mut self) {
        self.drain.drain();
        if let Some((_, admin)) = self.admin.take() {
            admin.abort();
        }
    }
}
