//! Service discovery on the proxy's side: what the control service said each registry
//! service's instances are, and the clusters (`service: NAME`) that take them as endpoints.
//!
//! The last answer for a service is kept whatever happens to the control service, so losing
//! it never empties a cluster. A cluster made later (a config change) starts with what is
//! known already; updates reach every live cluster of the service, published or still being
//! built, because they are found here rather than through the running snapshot.

mod follower;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sluice_control::proto::{EndpointUpdate, ServiceInstances};
use tokio::sync::watch;

pub use follower::DiscoveryFollower;

use crate::upstream::{Cluster, DiscoveredInstance};

/// How long `/ready` waits at start for the control service's first answer about each
/// discovered service (Envoy's `initial_fetch_timeout` default): after that the proxy is
/// ready anyway, and its discovering clusters fill in when the answers come.
const FIRST_ANSWER_AT_START: Duration = Duration::from_secs(15);

pub struct Discovery {
    state: Mutex<State>,
    /// When the proxy started, for [`Discovery::awaiting_first_answers`].
    started: tokio::time::Instant,
    /// The services clusters name; the follower asks the control service for these.
    wanted: watch::Sender<BTreeSet<String>>,
    /// Bumped whenever an answer arrives, for [`Discovery::wait_for_answers`].
    answered: watch::Sender<u64>,
    /// Whether a follower is talking to a control service right now.
    connected: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// Per service, the last instances heard of; absent: no answer yet.
    known: HashMap<String, Arc<[DiscoveredInstance]>>,
    clusters: HashMap<String, Vec<Weak<Cluster>>>,
}

// === impl Discovery ===

impl Discovery {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            started: tokio::time::Instant::now(),
            wanted: watch::Sender::default(),
            answered: watch::Sender::default(),
            connected: watch::Sender::default(),
        })
    }

    /// The discovered services the control service has not answered for yet, while the
    /// proxy is young enough to wait for them before it calls itself ready.
    pub fn awaiting_first_answers(&self) -> Vec<String> {
        if self.started.elapsed() >= FIRST_ANSWER_AT_START {
            return Vec::new();
        }
        let state = self.state();
        state
            .wanted()
            .into_iter()
            .filter(|service| !state.known.contains_key(service))
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Feeds `cluster` (if it names a service) from now on, starting with what is known.
    pub fn attach(&self, cluster: &Arc<Cluster>) {
        let Some(service) = cluster.discovered_service() else {
            return;
        };
        let wanted = {
            let mut state = self.state();
            if let Some(known) = state.known.get(service) {
                cluster.set_discovered(known);
            }
            let live = state.clusters.entry(service.to_owned()).or_default();
            live.retain(|weak| weak.strong_count() > 0);
            live.push(Arc::downgrade(cluster));
            state.wanted()
        };
        self.wanted.send_if_modified(|current| {
            let grew = !wanted.is_subset(current);
            // Services no cluster names any more are dropped along with a new one.
            if grew {
                *current = wanted;
            }
            grew
        });
    }

    /// The services to ask the control service for.
    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// What the control service has said of `service` (`None`: nothing yet).
    pub fn instances(&self, service: &str) -> Option<Arc<[DiscoveredInstance]>> {
        self.state().known.get(service).cloned()
    }

    /// Takes in one update from the control service and hands each changed service's
    /// instances to its clusters.
    pub fn apply(&self, update: &EndpointUpdate) {
        {
            let mut state = self.state();
            for service in &update.services {
                let previous = state.known.get(&service.service).cloned();
                let next = instances_after(previous.as_deref(), service, update.settling);
                state.update_service(&service.service, next);
            }
        }
        self.answered.send_modify(|count| *count += 1);
    }

    /// Waits (at most `limit`) until the control service has answered for every service in
    /// `services`, when a follower is connected. A new cluster then starts with its
    /// endpoints instead of answering 503 for its first milliseconds.
    pub async fn wait_for_answers(&self, services: &[String], limit: Duration) {
        if services.is_empty() || !*self.connected.borrow() {
            return;
        }
        let mut answered = self.answered.subscribe();
        let all_known = async {
            loop {
                let known = {
                    let state = self.state();
                    services.iter().all(|s| state.known.contains_key(s))
                };
                if known || answered.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, all_known).await;
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.send_replace(connected);
    }
}

// === impl State ===

impl State {
    fn update_service(&mut self, service: &str, instances: Arc<[DiscoveredInstance]>) {
        if let Some(clusters) = self.clusters.get_mut(service) {
            clusters.retain(|weak| match weak.upgrade() {
                Some(cluster) => {
                    cluster.set_discovered(&instances);
                    true
                }
                None => false,
            });
        }
        self.known.insert(service.to_owned(), instances);
    }

    /// The services live clusters name.
    fn wanted(&self) -> BTreeSet<String> {
        self.clusters
            .iter()
            .filter(|(_, clusters)| clusters.iter().any(|weak| weak.strong_count() > 0))
            .map(|(service, _)| service.clone())
            .collect()
    }
}

/// A service's instances after an update. While the control service settles (it restarted
/// and proxies are still registering again), an instance missing from the update may only
/// be late: it stays unless the update says it was withdrawn.
fn instances_after(
    previous: Option<&[DiscoveredInstance]>,
    update: &ServiceInstances,
    settling: bool,
) -> Arc<[DiscoveredInstance]> {
    let mut by_address: BTreeMap<SocketAddr, DiscoveredInstance> = BTreeMap::new();
    if settling {
        let withdrawn: BTreeSet<&str> = update.withdrawn.iter().map(String::as_str).collect();
        for instance in previous.unwrap_or_default() {
            if !withdrawn.contains(instance.addr.to_string().as_str()) {
                by_address.insert(instance.addr, instance.clone());
            }
        }
    }
    for instance in &update.instances {
        let Ok(addr) = instance.address.parse::<SocketAddr>() else {
            tracing::warn!(service = %update.service, address = %instance.address, "the control service sent an instance address that is not IP:port; ignoring it");
            continue;
        };
        by_address.insert(
            addr,
            DiscoveredInstance {
                addr,
                identity: (!instance.identity.is_empty())
                    .then(|| Arc::from(instance.identity.as_str())),
                labels: instance
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
        );
    }
    by_address.into_values().collect()
}

#[cfg(test)]
mod tests;
