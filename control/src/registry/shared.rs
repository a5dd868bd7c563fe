//! The registry shared by control replicas through etcd. Each proxy's registrations are one
//! key, `registry/<proxy id>`, held by an etcd lease that the replica serving the proxy's
//! subscription keeps alive. When the subscription ends, the replica marks the record
//! disconnected and stops renewing: etcd deletes the key a lease TTL later, unless the proxy
//! subscribed again (to any replica) first. A replica that dies stops renewing too, so its
//! proxies' instances last exactly as long as a disconnection's.
//!
//! Writes are fenced by `registry-fence/<proxy id>`, which holds the sequence of the proxy's
//! newest subscription (or deregistration): a late write of an older subscription, or a
//! keeper still running after the proxy deregistered, finds a greater sequence and stops.
//!
//! Every replica mirrors the folder into its view through a watch, so callers discover the
//! instances of proxies subscribed to any replica.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Registration, Registry};
use crate::store::{EtcdStore, Mirror, StoreError, now_unix};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A proxy's registrations as etcd keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RegistrationRecord {
    pub identity: String,
    pub instances: Vec<Registration>,
    /// When its subscription ended; the lease runs out a TTL after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_unix: Option<u64>,
}

/// Renews a subscription's registrations in etcd; dropping it marks them disconnected.
pub(super) struct LeaseKeeper {
    stop: Option<oneshot::Sender<()>>,
}

fn key(proxy_id: &str) -> String {
    format!("registry/{proxy_id}")
}

/// The sequence of the newest subscription (or deregistration) of a proxy: claims of older
/// ones no longer write its registrations.
fn fence(proxy_id: &str) -> String {
    format!("registry-fence/{proxy_id}")
}

// === impl LeaseKeeper ===

impl LeaseKeeper {
    /// Writes `record` for `proxy_id`'s subscription number `sequence` and keeps its lease
    /// alive until dropped. etcd being away delays the write, retried with backoff; the
    /// local view has the record already. A newer subscription's claim ends it.
    pub fn start(
        store: EtcdStore,
        proxy_id: &str,
        sequence: u64,
        record: RegistrationRecord,
        ttl: Duration,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let claim = Claim {
            path: key(proxy_id),
            fence: fence(proxy_id),
            sequence,
        };
        tokio::spawn(keep(store, claim, record, ttl, stopped));
        Self { stop: Some(stop) }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Where a keeper writes, and the subscription it writes for.
struct Claim {
    path: String,
    fence: String,
    sequence: u64,
}

async fn keep(
    store: EtcdStore,
    claim: Claim,
    record: RegistrationRecord,
    ttl: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(json) = serde_json::to_vec(&record) else {
        return;
    };
    let path = &claim.path;
    let mut retry = FIRST_RETRY;
    loop {
        let held = async {
            let lease = store.grant_lease(ttl).await?;
            let claimed = store
                .claim(path, &json, &claim.fence, claim.sequence, lease)
                .await?;
            Ok::<Option<i64>, StoreError>(claimed.then_some(lease))
        };
        // A claim in flight when the subscription ends still lands: the fence keeps a late
        // one from overwriting a newer subscription's.
        let outcome = tokio::select! {
            held = held => held,
            _ = &mut stopped => return,
        };
        let why = match outcome {
            Ok(None) => {
                tracing::info!(key = %path, "a newer subscription of this proxy holds its registrations");
                return;
            }
            Ok(Some(lease)) => {
                retry = FIRST_RETRY;
                tokio::select! {
                    why = store.keep_alive(lease, ttl) => why,
                    _ = &mut stopped => {
                        mark_disconnected(&store, path, &record, lease).await;
                        return;
                    }
                }
            }
            Err(why) => why,
        };
        tracing::warn!(key = %path, %why, ?retry, "could not hold a proxy's registrations in etcd; trying again");
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = &mut stopped => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Rewrites the record as disconnected, if this subscription's lease still holds it.
async fn mark_disconnected(store: &EtcdStore, path: &str, record: &RegistrationRecord, lease: i64) {
    let record = RegistrationRecord {
        disconnected_unix: Some(now_unix()),
        ..record.clone()
    };
    let Ok(json) = serde_json::to_vec(&record) else {
        return;
    };
    if let Err(error) = store.put_if_leased(path, &json, lease).await {
        tracing::warn!(key = path, %error, "could not mark a proxy disconnected; its lease runs out anyway");
    }
}

// === impl Registry (shared) ===

impl Registry {
    /// The record a subscription of this replica holds.
    pub(super) fn shared_record(identity: &str, instances: &[Registration]) -> RegistrationRecord {
        RegistrationRecord {
            identity: identity.to_owned(),
            instances: instances.to_vec(),
            disconnected_unix: None,
        }
    }

    /// Applies a record read from etcd (or written by this replica) to the view.
    pub(super) fn mirror_record(&self, proxy_id: &str, record: RegistrationRecord) {
        let lease_until = record.disconnected_unix.map(|since| {
            let ends = since + self.ttl.as_secs().max(1);
            Instant::now() + Duration::from_secs(ends.saturating_sub(now_unix()))
        });
        let changed = self
            .view()
            .mirror(proxy_id, &record.identity, record.instances, lease_until);
        self.announce(changed);
    }
}

/// Fed by the watch on etcd's `registry/`.
impl Mirror for Registry {
    fn reset(&self, entries: Vec<(String, Vec<u8>)>, _restored: bool) {
        let records: Vec<(String, RegistrationRecord)> = entries
            .into_iter()
            .filter_map(|(proxy_id, value)| readable(&proxy_id, &value).map(|r| (proxy_id, r)))
            .collect();
        let gone: Vec<String> = self
            .view()
            .holder_ids()
            .filter(|id| !records.iter().any(|(kept, _)| kept == id))
            .collect();
        for proxy_id in gone {
            let changed = self.view().release(&proxy_id, false);
            self.announce(changed);
        }
        for (proxy_id, record) in records {
            self.mirror_record(&proxy_id, record);
        }
    }

    fn put(&self, proxy_id: &str, value: &[u8]) {
        if let Some(record) = readable(proxy_id, value) {
            self.mirror_record(proxy_id, record);
        }
    }

    fn delete(&self, proxy_id: &str) {
        tracing::info!(proxy = %proxy_id, "registry lease ran out or the proxy deregistered; its instances leave");
        let changed = self.view().release(proxy_id, false);
        self.announce(changed);
    }
}

fn readable(proxy_id: &str, value: &[u8]) -> Option<RegistrationRecord> {
    serde_json::from_slice(value)
        .inspect_err(|error| tracing::error!(proxy = proxy_id, %error, "skipping registrations this replica cannot read"))
        .ok()
}

/// Reads the registry folder into `registry` and follows it; waits for etcd, saying why.
pub(super) async fn follow(registry: &Arc<Registry>, store: &EtcdStore) {
    let mut wait = FIRST_RETRY;
    let (entries, revision) = loop {
        match store.read_folder("registry/", "").await {
            Ok(read) => break read,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?wait, "waiting for etcd to read the registry");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
        }
    };
    registry.reset(entries, false);
    let weak: Weak<Registry> = Arc::downgrade(registry);
    let mirror: Weak<dyn Mirror> = weak;
    *registry
        .watch_task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some(store.follow("registry/", mirror, revision));
}

/// Withdraws `proxy_id`'s registrations from etcd; subscriptions before `sequence` cannot
/// write them again.
pub(super) async fn withdraw(
    store: &EtcdStore,
    proxy_id: &str,
    sequence: u64,
) -> Result<(), StoreError> {
    store
        .withdraw(&key(proxy_id), &fence(proxy_id), sequence)
        .await
}
