//! The sockets the workers accept on, per listener, and how a new config changes them: a
//! listener that keeps its name, configured address and protocol keeps its sockets (and
//! connections); a new, moved or re-purposed one gets fresh sockets, bound before the config is published so a taken port
//! rejects the change; a removed or moved one is retired after the config is published.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::drain::{DrainTrigger, drain_channel};
use super::worker::WorkerSocket;
use crate::config::{ListenerProtocol, Snapshot};
use crate::listener::{BindError, bind_reuseport};

/// The listeners being served, and the channels that hand new sockets to the workers.
pub struct ListenerSet {
    bound: Vec<BoundListener>,
    workers: Vec<mpsc::UnboundedSender<WorkerSocket>>,
}

struct BoundListener {
    name: Arc<str>,
    /// As written in the config (port 0 stays 0, so an unchanged config keeps its port).
    configured: SocketAddr,
    /// Connections of one protocol cannot be served as the other.
    protocol: ListenerProtocol,
    local: SocketAddr,
    /// Dropping it retires the listener's sockets on every worker.
    _retire: DrainTrigger,
}

/// Sockets bound for a snapshot that is not published yet.
pub struct BoundForSnapshot {
    listeners: Vec<NewSockets>,
}

struct NewSockets {
    name: Arc<str>,
    configured: SocketAddr,
    protocol: ListenerProtocol,
    local: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

// === impl ListenerSet ===

impl ListenerSet {
    pub fn new(workers: Vec<mpsc::UnboundedSender<WorkerSocket>>) -> Self {
        Self {
            bound: Vec::new(),
            workers,
        }
    }

    /// Binds one socket per worker for every listener of `snapshot` that is not served yet at
    /// its configured address. Nothing changes for running listeners.
    pub fn bind_new(&self, snapshot: &Snapshot) -> Result<BoundForSnapshot, BindError> {
        let mut listeners = Vec::new();
        for listener in &snapshot.listeners {
            let served = self.bound.iter().any(|b| {
                *b.name == *listener.name
                    && b.configured == listener.address
                    && b.protocol == listener.protocol
            });
            if served {
                continue;
            }
            let sockets = bind_reuseport(&listener.name, listener.address, self.workers.len())?;
            let local = sockets[0].local_addr().map_err(|source| BindError {
                listener: listener.name.clone(),
                address: listener.address,
                source,
            })?;
            listeners.push(NewSockets {
                name: Arc::from(listener.name.as_str()),
                configured: listener.address,
                protocol: listener.protocol,
                local,
                sockets,
            });
        }
        Ok(BoundForSnapshot { listeners })
    }

    /// After `snapshot` is published: hands the new sockets to the workers, and retires the
    /// sockets of listeners the snapshot removed or moved (their connections close gracefully).
    pub fn commit(&mut self, fresh: BoundForSnapshot, snapshot: &Snapshot) {
        for NewSockets {
            name,
            configured,
            protocol,
            local,
            sockets,
        } in fresh.listeners
        {
            let (retire, retired) = drain_channel();
            for (sender, socket) in self.workers.iter().zip(sockets) {
                let socket = WorkerSocket {
                    listener: Arc::clone(&name),
                    socket,
                    retired: retired.clone(),
                };
                if sender.send(socket).is_err() {
                    tracing::warn!(listener = %name, "a worker has stopped; it will not serve the new listener");
                }
            }
            if let Some(old) = self.bound.iter().position(|b| b.name == name) {
                let old = self.bound.remove(old);
                tracing::info!(listener = %name, from = %old.local, to = %local, "listener moved or changed protocol; connections to its old sockets drain");
            } else {
                tracing::info!(listener = %name, address = %local, "listener added");
            }
            self.bound.push(BoundListener {
                name,
                configured,
                protocol,
                local,
                _retire: retire,
            });
        }
        self.bound.retain(|b| {
            let kept = snapshot.listener(&b.name).is_some();
            if !kept {
                tracing::info!(listener = %b.name, address = %b.local, "listener removed; its connections drain");
            }
            kept
        });
    }

    /// The address a listener actually bound (port 0 in the config becomes a real port).
    pub fn local_address(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| *b.name == *name)
            .map(|b| b.local)
    }

    pub fn addresses(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.bound.iter().map(|b| (&*b.name, b.local))
    }
}
