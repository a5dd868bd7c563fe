//! Who follows the registry: discovery streams watch its changes and report how far they
//! have sent them on (so a deregistration can wait for every caller to hear), and count the
//! services they ask for (so `sluice services` shows those nobody registered yet).

use std::collections::BTreeMap;
use std::sync::{Arc, MutexGuard};

use tokio::sync::{broadcast, watch};

use super::{Change, Registry};

/// Counts a discovery stream's services as watched until dropped.
pub struct WatchedServices {
    registry: Arc<Registry>,
    services: Vec<String>,
}

/// A watcher's handle on its progress: it reports each change it has dealt with.
pub struct WatcherProgress(watch::Sender<u64>);

// === impl Registry (watchers) ===

impl Registry {
    /// Changes from now on, and a progress handle the watcher reports through.
    pub fn watch(&self) -> (broadcast::Receiver<Change>, WatcherProgress) {
        let receiver = self.changes.subscribe();
        let sequence = self.view().sequence();
        let (progress, watched) = watch::channel(sequence);
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(watched);
        (receiver, WatcherProgress(progress))
    }

    /// The number of the latest change.
    pub fn sequence(&self) -> u64 {
        self.view().sequence()
    }

    /// Counts `services` as asked for by one more discovery stream, until the guard drops.
    pub fn watch_services(self: &Arc<Self>, services: &[String]) -> WatchedServices {
        let mut watched = self.watched();
        for service in services {
            *watched.entry(service.clone()).or_default() += 1;
        }
        WatchedServices {
            registry: Arc::clone(self),
            services: services.to_vec(),
        }
    }

    /// Services some discovery stream asks for that have no instance, with how many ask.
    pub fn unregistered_wanted(&self) -> Vec<(String, usize)> {
        let view = self.view();
        self.watched()
            .iter()
            .filter(|(service, _)| view.instances(service).is_empty())
            .map(|(service, watchers)| (service.clone(), *watchers))
            .collect()
    }

    fn watched(&self) -> MutexGuard<'_, BTreeMap<String, usize>> {
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// === impl WatchedServices ===

impl Drop for WatchedServices {
    fn drop(&mut self) {
        let mut watched = self.registry.watched();
        for service in &self.services {
            if let Some(count) = watched.get_mut(service) {
                *count -= 1;
                if *count == 0 {
                    watched.remove(service);
                }
            }
        }
    }
}

// === impl WatcherProgress ===

impl WatcherProgress {
    /// The watcher has sent on every change up to `sequence`.
    pub fn sent(&self, sequence: u64) {
        self.0.send_if_modified(|sent| {
            let newer = sequence > *sent;
            if newer {
                *sent = sequence;
            }
            newer
        });
    }
}
