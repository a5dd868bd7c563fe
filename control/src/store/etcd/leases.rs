//! Keys held by etcd leases: what lives only while a replica keeps it alive (a proxy's
//! registrations, the record of its subscription). A lease lasts whole seconds, and at
//! least etcd's minimum (about 1.5 × its election timeout).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use super::EtcdStore;
use crate::store::StoreError;

// === impl EtcdStore (leases) ===

impl EtcdStore {
    /// A new lease of `ttl` (rounded up to a second).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let granted = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(|e| self.unavailable(&e))?;
        Ok(granted.id())
    }

    /// Keeps `lease` alive, renewing it three times per `ttl`, until that fails: returns
    /// why (etcd unreachable, or the lease already ran out).
    pub async fn keep_alive(&self, lease: i64, ttl: Duration) -> StoreError {
        let (mut keeper, mut answers) = match self.client.lease_client().keep_alive(lease).await {
            Ok(pair) => pair,
            Err(error) => return self.unavailable(&error),
        };
        let every = (ttl / 3).max(Duration::from_millis(300));
        loop {
            if let Err(error) = keeper.keep_alive().await {
                return self.unavailable(&error);
            }
            match answers.message().await {
                Ok(Some(answer)) if answer.ttl() > 0 => {}
                Ok(Some(_)) => return StoreError::Unavailable(format!("lease {lease:x} ran out")),
                Ok(None) => return StoreError::Unavailable("etcd ended the keep-alive".into()),
                Err(error) => return self.unavailable(&error),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// A lease this replica keeps alive for as long as the returned receiver lives: what it
    /// writes under it goes when the replica does. `None` while there is none (etcd away);
    /// a new lease after a lost one is a change, so writers can put their keys again.
    pub fn replica_lease(&self, ttl: Duration) -> watch::Receiver<Option<i64>> {
        let (sender, receiver) = watch::channel(None);
        let store = self.clone();
        tokio::spawn(async move {
            let mut retry = Duration::from_millis(200);
            while !sender.is_closed() {
                match store.grant_lease(ttl).await {
                    Ok(lease) => {
                        retry = Duration::from_millis(200);
                        sender.send_replace(Some(lease));
                        tokio::select! {
                            why = store.keep_alive(lease, ttl) => {
                                tracing::warn!(%why, "lost this replica's lease in etcd; getting a new one");
                            }
                            () = sender.closed() => return,
                        }
                        sender.send_replace(None);
                    }
                    Err(why) => tracing::warn!(%why, ?retry, "cannot get a lease from etcd yet"),
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        });
        receiver
    }

    /// Sets `path` to `value`, with no lease.
    pub async fn put_path(&self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put(&self.key(path), value).await
    }

    /// Sets `path` to `value`, held by `lease`.
    pub async fn put_leased(&self, path: &str, value: &[u8], lease: i64) -> Result<(), StoreError> {
        let key = self.key(path);
        self.retrying(|mut kv| {
            let key = key.clone();
            async move {
                kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map(drop)
            }
        })
        .await
    }

    /// Sets `path` to `value` only while `lease` still holds it: a proxy that moved to
    /// another replica, which holds it with its own lease, is left alone.
    pub async fn put_if_leased(
        &self,
        path: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(path);
        let txn = Txn::new()
            .when(vec![Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.txn(&txn).await?.succeeded())
    }

    /// Sets `path` to `value` and `fence` to `sequence`, both held by `lease`, unless `fence`
    /// already holds a greater sequence: a newer holder claimed it (or withdrew it). Returns
    /// whether this claim holds. Sequence 0 (a client that sends none) always claims.
    pub async fn claim(
        &self,
        path: &str,
        value: &[u8],
        fence: &str,
        sequence: u64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let (key, fence) = (self.key(path), self.key(fence));
        let stamp = format!("{sequence:020}");
        let leased = || Some(PutOptions::new().with_lease(lease));
        let puts = vec![
            TxnOp::put(fence.clone(), stamp.clone(), leased()),
            TxnOp::put(key, value, leased()),
        ];
        let newer = if sequence == 0 {
            // Never true: claims unconditionally.
            vec![Compare::version(fence, CompareOp::Less, 0)]
        } else {
            vec![Compare::value(fence, CompareOp::Greater, stamp)]
        };
        let txn = Txn::new().when(newer).or_else(puts);
        Ok(!self.txn(&txn).await?.succeeded())
    }

    /// Deletes `path` and sets `fence` to `sequence` for an hour, so no claim older than
    /// `sequence` (a subscription still ending) writes `path` again.
    pub async fn withdraw(&self, path: &str, fence: &str, sequence: u64) -> Result<(), StoreError> {
        let lease = self.grant_lease(Duration::from_secs(3600)).await?;
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(self.key(path), None),
            TxnOp::put(
                self.key(fence),
                format!("{sequence:020}"),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
        self.txn(&txn).await.map(drop)
    }

    /// Deletes `path` only while `lease` holds it.
    pub async fn delete_if_leased(&self, path: &str, lease: i64) -> Result<bool, StoreError> {
        let key = self.key(path);
        let txn = Txn::new()
            .when(vec![Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then(vec![TxnOp::delete(key, None)]);
        Ok(self.txn(&txn).await?.succeeded())
    }

    /// Deletes `path`.
    pub async fn delete(&self, path: &str) -> Result<(), StoreError> {
        let key = self.key(path);
        self.retrying(|mut kv| {
            let key = key.clone();
            async move { kv.delete(key, None).await.map(drop) }
        })
        .await
    }
}
