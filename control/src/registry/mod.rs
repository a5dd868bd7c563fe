//! The mesh registry: which instances each service has. A workload's proxy registers the
//! services it fronts over its subscription; callers ask for the instances of the services
//! their clusters name (see `discover.rs`).
//!
//! Each proxy's instances are held by a lease. While the proxy's subscription is open the
//! lease cannot run out; when it ends (the proxy died, or lost its way to this service) the
//! instances stay for the lease TTL, so a passing disconnection removes nothing, and then go.
//! A proxy about to drain deregisters at once.
//!
//! The registry is split along the seam a replicated store needs: [`view`] turns holders into
//! per-service instance lists and tells watchers what changed, whoever keeps the leases. With
//! a data dir the leases are timers in this process (`leases.rs`); with etcd, replicas keep
//! them as etcd leases and every replica feeds its view from a watch (`shared.rs`).

mod checks;
mod leases;
mod shared;
mod view;
mod watchers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::store::{EtcdStore, StoreError, WatchTask};

pub use checks::{check_label_key, check_registrations, check_service_name};
use view::RegistryView;
pub use view::{Change, InstanceRecord};
pub use watchers::{WatchedServices, WatcherProgress};

/// How long instances outlive their proxy's subscription, unless told otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Proxies retry a lost control service with a backoff of at most 5s plus 20% jitter, so a
/// restarted service has heard again from every live proxy by then.
const PROXIES_BACK_WITHIN: Duration = Duration::from_secs(6);

/// How long a proxy's deregistration waits for every watcher to have sent the removal.
const DEREGISTER_FAN_OUT_LIMIT: Duration = Duration::from_secs(2);

/// One instance a proxy registers, as checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub service: String,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("registrations[{index}]: {reason}")]
    Invalid { index: usize, reason: String },
    #[error(
        "registrations[{index}]: the join token of {workload} does not allow registering service {service:?} (it allows: {allowed})"
    )]
    NotAllowed {
        index: usize,
        workload: String,
        service: String,
        allowed: String,
    },
}

pub struct Registry {
    state: Mutex<RegistryView>,
    changes: broadcast::Sender<Change>,
    ttl: Duration,
    /// Until when proxies registered with an earlier run may still be coming back.
    settled_at: Instant,
    /// The etcd store when replicas share the registry; `None`: this process keeps it.
    shared: Option<EtcdStore>,
    /// The watch feeding a shared registry, stopped with it.
    watch_task: Mutex<Option<WatchTask>>,
    /// Each watcher's progress: the last change it has sent on (see [`Registry::deregister`]).
    watchers: Mutex<Vec<watch::Receiver<u64>>>,
    /// Woken when a lease starts running out, so the sweeper sleeps until the earliest one.
    lease_started: tokio::sync::Notify,
    /// How many discovery streams ask for each service, to show services callers wait for.
    watched: Mutex<BTreeMap<String, usize>>,
}

/// Holds a proxy's instances while its subscription lasts; dropping it starts the lease.
pub struct RegistrationGuard {
    registry: Arc<Registry>,
    proxy_id: String,
    /// With a shared registry: the task renewing the etcd lease.
    keeper: Option<shared::LeaseKeeper>,
}

/// Why a deregistration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeregisterError {
    #[error("{0}")]
    NotYours(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// === impl Registry ===

impl Registry {
    /// A registry whose leases last `ttl` past a proxy's subscription. Starts the task that
    /// ends lapsed leases; call inside a tokio runtime.
    pub fn start(ttl: Duration) -> Arc<Self> {
        let registry = Arc::new(Self::new(
            ttl,
            Instant::now() + ttl.max(PROXIES_BACK_WITHIN),
            None,
        ));
        tokio::spawn(leases::end_lapsed_leases(Arc::downgrade(&registry)));
        registry
    }

    /// A registry shared with other replicas through `store`: read from etcd (waiting for
    /// it), then followed. It is complete at once: registrations outlive any replica.
    pub async fn start_shared(ttl: Duration, store: EtcdStore) -> Arc<Self> {
        let registry = Arc::new(Self::new(ttl, Instant::now(), Some(store.clone())));
        shared::follow(&registry, &store).await;
        registry
    }

    fn new(ttl: Duration, settled_at: Instant, shared: Option<EtcdStore>) -> Self {
        Self {
            state: Mutex::new(RegistryView::default()),
            changes: broadcast::channel(1024).0,
            ttl,
            settled_at,
            shared,
            watch_task: Mutex::default(),
            watchers: Mutex::default(),
            lease_started: tokio::sync::Notify::new(),
            watched: Mutex::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True for a while after the start (the lease TTL, and at least as long as proxies take
    /// to reconnect): proxies registered with an earlier run of this service are still
    /// coming back, so the registry is not complete yet.
    pub fn settling(&self) -> bool {
        Instant::now() < self.settled_at()
    }

    /// When [`Registry::settling`] ends.
    pub fn settled_at(&self) -> Instant {
        self.settled_at
    }

    fn view(&self) -> MutexGuard<'_, RegistryView> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `instances` for `proxy_id` with `identity`, replacing what that proxy had.
    /// The instances stay while the returned guard lives, and for the lease TTL after.
    pub fn register(
        self: &Arc<Self>,
        proxy_id: &str,
        identity: &str,
        instances: Vec<Registration>,
    ) -> RegistrationGuard {
        self.register_at(0, proxy_id, identity, instances)
    }

    /// As [`Registry::register`], for the proxy's subscription number `sequence` (see
    /// `SubscribeRequest.sequence`): with a shared registry, an older subscription's late
    /// write does not replace a newer one's.
    pub fn register_at(
        self: &Arc<Self>,
        sequence: u64,
        proxy_id: &str,
        identity: &str,
        instances: Vec<Registration>,
    ) -> RegistrationGuard {
        let keeper = match &self.shared {
            None => {
                let changed = self
                    .view()
                    .hold(proxy_id, identity, instances, self.settling());
                self.announce(changed);
                None
            }
            Some(store) => {
                // Seen here at once; other replicas see it when etcd has it.
                let record = Self::shared_record(identity, &instances);
                self.mirror_record(proxy_id, record.clone());
                Some(shared::LeaseKeeper::start(
                    store.clone(),
                    proxy_id,
                    sequence,
                    record,
                    self.ttl,
                ))
            }
        };
        RegistrationGuard {
            registry: Arc::clone(self),
            proxy_id: proxy_id.to_owned(),
            keeper,
        }
    }

    /// Withdraws every instance of `proxy_id` at once, if `identity` registered them. Returns
    /// how many there were, once every watcher has sent the removal on (or after a bounded
    /// wait for a stuck one).
    pub async fn deregister(
        &self,
        proxy_id: &str,
        identity: &str,
    ) -> Result<usize, DeregisterError> {
        self.deregister_at(0, proxy_id, identity).await
    }

    /// As [`Registry::deregister`]; with a shared registry, subscriptions of the proxy before
    /// `sequence` cannot register it again.
    pub async fn deregister_at(
        &self,
        sequence: u64,
        proxy_id: &str,
        identity: &str,
    ) -> Result<usize, DeregisterError> {
        let removed = {
            let view = self.view();
            let Some(holder) = view.holder(proxy_id) else {
                return Ok(0);
            };
            if holder.identity != identity {
                return Err(DeregisterError::NotYours(format!(
                    "proxy {proxy_id:?} registered as {}, not {identity}",
                    holder.identity
                )));
            }
            holder.instances.len()
        };
        if let Some(store) = &self.shared {
            shared::withdraw(store, proxy_id, sequence).await?;
        }
        let changed = self.view().release(proxy_id, self.settling());
        let Some(sequence) = self.announce(changed) else {
            return Ok(removed);
        };
        let watchers: Vec<watch::Receiver<u64>> = {
            let mut watchers = self
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            watchers.retain(|w| w.has_changed().is_ok());
            watchers.clone()
        };
        let all_sent = async {
            for mut watcher in watchers {
                // A watcher that ended has nothing left to send.
                let _ = watcher.wait_for(|sent| *sent >= sequence).await;
            }
        };
        if tokio::time::timeout(DEREGISTER_FAN_OUT_LIMIT, all_sent)
            .await
            .is_err()
        {
            tracing::warn!(
                proxy = proxy_id,
                "a watcher did not send the deregistration on within 2s"
            );
        }
        Ok(removed)
    }

    /// Tells watchers about changed services; returns the sequence number of the last one.
    fn announce(&self, changed: Vec<Change>) -> Option<u64> {
        let last = changed.last().map(|c| c.sequence);
        for change in changed {
            tracing::debug!(service = %change.service, sequence = change.sequence, "registry changed");
            // No receiver is fine: nobody watches that service yet.
            let _ = self.changes.send(change);
        }
        last
    }

    /// The instances of `service` now (empty if it has none).
    pub fn instances(&self, service: &str) -> Arc<[InstanceRecord]> {
        self.view().instances(service)
    }

    /// Addresses of `service` withdrawn while the registry settles (see `EndpointUpdate`).
    pub fn withdrawn(&self, service: &str) -> Vec<SocketAddr> {
        self.view().withdrawn(service)
    }

    /// Every service with its instances, by name.
    pub fn services(&self) -> Vec<(String, Arc<[InstanceRecord]>)> {
        self.view().services()
    }

    /// How long the lease of a disconnected proxy's instances still runs.
    pub fn lease_left(&self, record: &InstanceRecord) -> Option<Duration> {
        record
            .lease_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// Ends the leases that ran out by `now`; returns when the next one runs out.
    fn end_lapsed(&self, now: Instant) -> Option<Instant> {
        let (changed, next) = self.view().end_lapsed(now, self.settling());
        self.announce(changed);
        next
    }
}

// === impl RegistrationGuard ===

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        if self.keeper.take().is_some() {
            // The keeper marks the record disconnected in etcd; the watch shows it here.
            return;
        }
        let lease_until = Instant::now() + self.registry.ttl;
        self.registry.view().let_go(&self.proxy_id, lease_until);
        self.registry.lease_started.notify_one();
    }
}

#[cfg(test)]
mod tests;
