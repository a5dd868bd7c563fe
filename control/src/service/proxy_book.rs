//! What `sluice status` shows of proxies subscribed to other replicas. With etcd, each replica
//! writes every change to its proxies' records (subscribed, acknowledged, gone) to
//! `proxies/<proxy id>`, held by the replica's lease: a replica that dies takes its proxies'
//! records with it until they subscribe elsewhere. A disconnected proxy's record is written
//! only over this replica's own (one that moved on is the other replica's to record), and
//! deleted an hour later, when `status` forgets it, as a single service does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};

use crate::proto::ProxyStatus;
use crate::store::{EtcdStore, StoreError, now_unix};

/// How long the replica's lease outlives the replica.
const REPLICA_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long `status` keeps a proxy that disconnected.
const FORGET_AFTER_SECS: u64 = 3600;

/// A proxy as etcd records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SharedRecord {
    pub replica: String,
    pub connected: bool,
    pub applied: u64,
    pub rejected: u64,
    pub reason: String,
    pub services: Vec<String>,
    pub registration_error: String,
    pub seen_unix: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spiffe_id: String,
}

/// Writes this replica's proxy records to etcd (the latest of each, so an etcd outage
/// piles nothing up), and reads everyone's.
pub(super) struct ProxyBook {
    store: EtcdStore,
    pending: Arc<Mutex<BTreeMap<String, SharedRecord>>>,
    wake: Arc<Notify>,
}

fn key(proxy_id: &str) -> String {
    format!("proxies/{proxy_id}")
}

// === impl ProxyBook ===

impl ProxyBook {
    pub fn start(store: EtcdStore) -> Self {
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let wake = Arc::new(Notify::new());
        let lease = store.replica_lease(REPLICA_LEASE_TTL);
        tokio::spawn(write_latest(
            store.clone(),
            Arc::downgrade(&pending),
            Arc::clone(&wake),
            lease,
        ));
        Self {
            store,
            pending,
            wake,
        }
    }

    /// Records `proxy_id` as it is now (written in the background).
    pub fn record(&self, proxy_id: &str, record: SharedRecord) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(proxy_id.to_owned(), record);
        self.wake.notify_one();
    }

    /// Every replica's proxies, by id.
    pub async fn read(&self) -> Result<Vec<ProxyStatus>, StoreError> {
        let (entries, _) = self.store.read_folder("proxies/", "").await?;
        let now = now_unix();
        Ok(entries
            .into_iter()
            .filter_map(|(proxy_id, value)| {
                let record: SharedRecord = serde_json::from_slice(&value)
                    .inspect_err(|error| tracing::warn!(proxy = %proxy_id, %error, "skipping a proxy record this replica cannot read"))
                    .ok()?;
                let forgotten = !record.connected
                    && now.saturating_sub(record.seen_unix) > FORGET_AFTER_SECS;
                (!forgotten).then(|| ProxyStatus {
                    proxy_id,
                    connected: record.connected,
                    applied_version: record.applied,
                    rejected_version: record.rejected,
                    rejected_reason: record.reason,
                    seconds_since_seen: now.saturating_sub(record.seen_unix),
                    services: record.services,
                    registration_error: record.registration_error,
                    replica: record.replica,
                    spiffe_id: record.spiffe_id,
                })
            })
            .collect())
    }
}

/// Puts the latest record of each proxy as they come, all under the replica's lease, and
/// only over a record this replica wrote (a proxy that moved to another replica is that
/// one's to record). When the lease is new (etcd came back, or the old one ran out), puts
/// the connected ones again; disconnected ones are deleted an hour on.
async fn write_latest(
    store: EtcdStore,
    pending: Weak<Mutex<BTreeMap<String, SharedRecord>>>,
    wake: Arc<Notify>,
    mut lease: watch::Receiver<Option<i64>>,
) {
    let mut connected: BTreeMap<String, SharedRecord> = BTreeMap::new();
    let mut gone: BTreeMap<String, u64> = BTreeMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = wake.notified() => {
                let Some(pending) = pending.upgrade() else { return };
                let batch = std::mem::take(
                    &mut *pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                let current = *lease.borrow();
                for (proxy_id, record) in batch {
                    put(&store, &proxy_id, &record, current).await;
                    if record.connected {
                        gone.remove(&proxy_id);
                        connected.insert(proxy_id, record);
                    } else {
                        connected.remove(&proxy_id);
                        gone.insert(proxy_id, record.seen_unix);
                    }
                }
            }
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = *lease.borrow_and_update();
                if current.is_some() {
                    for (proxy_id, record) in &connected {
                        put(&store, proxy_id, record, current).await;
                    }
                }
            }
            _ = sweep.tick() => {
                let Some(current) = *lease.borrow() else { continue };
                let now = now_unix();
                let forgotten: Vec<String> = gone
                    .iter()
                    .filter(|(_, seen)| now.saturating_sub(**seen) > FORGET_AFTER_SECS)
                    .map(|(id, _)| id.clone())
                    .collect();
                for proxy_id in forgotten {
                    gone.remove(&proxy_id);
                    let _ = store.delete_if_leased(&key(&proxy_id), current).await;
                }
            }
        }
    }
}

async fn put(store: &EtcdStore, proxy_id: &str, record: &SharedRecord, lease: Option<i64>) {
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    // Without a lease (etcd away), written when the replica has one again.
    let Some(lease) = lease else { return };
    let written = if record.connected {
        store.put_leased(&key(proxy_id), &json, lease).await
    } else {
        store
            .put_if_leased(&key(proxy_id), &json, lease)
            .await
            .map(drop)
    };
    if let Err(error) = written {
        tracing::warn!(proxy = proxy_id, %error, "could not record the proxy in etcd; `sluice status` through other replicas may lag");
    }
}
