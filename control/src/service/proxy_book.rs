//! What `sluice status` shows of proxies subscribed to other replicas. With etcd, each replica
//! writes every change to its proxies' records (subscribed, acknowledged, gone) to
//! `proxies/<proxy id>`. A connected proxy's record is held by the replica's lease, so a
//! replica that dies takes its proxies' records with it until they subscribe elsewhere; a
//! disconnected one's stays, and `status` forgets it an hour later, as a single service does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

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

/// Writes this replica's proxy records to etcd, in order, and reads everyone's.
pub(super) struct ProxyBook {
    store: EtcdStore,
    writes: mpsc::UnboundedSender<(String, SharedRecord)>,
}

fn key(proxy_id: &str) -> String {
    format!("proxies/{proxy_id}")
}

// === impl ProxyBook ===

impl ProxyBook {
    pub fn start(store: EtcdStore) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        let lease = store.replica_lease(REPLICA_LEASE_TTL);
        tokio::spawn(write_in_order(store.clone(), queue, lease));
        Self { store, writes }
    }

    /// Records `proxy_id` as it is now (written in the background, in order).
    pub fn record(&self, proxy_id: &str, record: SharedRecord) {
        let _ = self.writes.send((proxy_id.to_owned(), record));
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

/// Puts each record as it comes; when the replica's lease is new (etcd came back, or the
/// old lease ran out), puts the connected ones again under it.
async fn write_in_order(
    store: EtcdStore,
    mut queue: mpsc::UnboundedReceiver<(String, SharedRecord)>,
    mut lease: watch::Receiver<Option<i64>>,
) {
    let mut connected: BTreeMap<String, SharedRecord> = BTreeMap::new();
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((proxy_id, record)) = next else { return };
                let current = *lease.borrow();
                put(&store, &proxy_id, &record, current).await;
                if record.connected {
                    connected.insert(proxy_id, record);
                } else {
                    connected.remove(&proxy_id);
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
        }
    }
}

async fn put(store: &EtcdStore, proxy_id: &str, record: &SharedRecord, lease: Option<i64>) {
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    let written = match (record.connected, lease) {
        (true, Some(lease)) => store.put_leased(&key(proxy_id), &json, lease).await,
        // Written when the replica has a lease again.
        (true, None) => Ok(()),
        (false, _) => store.put_path(&key(proxy_id), &json).await,
    };
    if let Err(error) = written {
        tracing::warn!(proxy = proxy_id, %error, "could not record the proxy in etcd; `sluice status` through other replicas may lag");
    }
}
