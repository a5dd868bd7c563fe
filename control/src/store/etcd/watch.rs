//! Following the other replicas' writes: a watch on a folder of keys (the versions, the
//! registry) from the revision this replica last read, fed into a [`Mirror`]. A lost stream
//! (a member died, etcd lost quorum) is resumed from the last revision seen; a watch
//! cancelled because that revision was compacted away, or a store whose revision went
//! backwards (restored, or recreated), leads to a full re-read. Meanwhile the mirror keeps
//! what it has: subscriptions keep their last version, callers their endpoints.

use std::sync::Weak;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

use super::{EtcdStore, prefix_end};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What a watch on a folder keeps up to date. Names are keys without the folder.
pub trait Mirror: Send + Sync + 'static {
    /// Everything in the folder, after a full read: `restored` when the store went back in
    /// time (its revision fell), so what the mirror holds beyond the read is gone too;
    /// otherwise the read may be older than the mirror's newest entries.
    fn reset(&self, entries: Vec<(String, Vec<u8>)>, restored: bool);
    fn put(&self, name: &str, value: &[u8]);
    fn delete(&self, name: &str);
}

/// How a watch ended.
enum Lost {
    /// The stream broke: resume from the last revision seen.
    Stream(String),
    /// History this replica needs is gone: read everything again.
    History(String),
    /// The store's revision fell: it was restored or recreated; read everything again.
    Restored(String),
}

/// Stops a watch when dropped (with the store or registry that holds it).
pub struct WatchTask(tokio::task::AbortHandle);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl EtcdStore (watch) ===

impl EtcdStore {
    /// Feeds `mirror` with the writes to `folder` from `revision` on (the revision of the
    /// read that filled it), until the returned task is dropped.
    #[must_use]
    pub fn follow(
        &self,
        folder: &'static str,
        mirror: Weak<dyn Mirror>,
        revision: i64,
    ) -> WatchTask {
        WatchTask(tokio::spawn(follow(self.clone(), folder, mirror, revision)).abort_handle())
    }

    /// One watch, until it is lost. Advances `revision` past every event seen.
    async fn watch(&self, folder: &str, mirror: &Weak<dyn Mirror>, revision: &mut i64) -> Lost {
        let prefix = self.key(folder);
        let options = WatchOptions::new()
            .with_range(prefix_end(&prefix))
            .with_start_revision(*revision + 1);
        let mut stream = match self
            .client
            .watch_client()
            .watch(prefix.clone(), Some(options))
            .await
        {
            Ok(stream) => stream,
            Err(error) => return Lost::Stream(self.unavailable(&error).to_string()),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Lost::Stream("etcd ended the watch".into()),
                Err(error) => return Lost::Stream(self.unavailable(&error).to_string()),
            };
            if response.compact_revision() > 0 {
                return Lost::History(format!(
                    "revision {} was compacted (oldest kept: {})",
                    *revision + 1,
                    response.compact_revision()
                ));
            }
            if response.canceled() {
                return Lost::Stream(format!("watch cancelled: {}", response.cancel_reason()));
            }
            let Some(mirror) = mirror.upgrade() else {
                return Lost::Stream("the control service stopped".into());
            };
            if let Some(header) = response.header()
                && header.revision() < *revision
            {
                return Lost::Restored(format!(
                    "the store's revision went back from {} to {} (restored or recreated)",
                    *revision,
                    header.revision()
                ));
            }
            for event in response.events() {
                let Some(pair) = event.kv() else { continue };
                *revision = (*revision).max(pair.mod_revision());
                let name = pair
                    .key()
                    .strip_prefix(prefix.as_bytes())
                    .unwrap_or_default();
                let name = String::from_utf8_lossy(name);
                match event.event_type() {
                    EventType::Put => mirror.put(&name, pair.value()),
                    EventType::Delete => mirror.delete(&name),
                }
            }
        }
    }
}

async fn follow(
    store: EtcdStore,
    folder: &'static str,
    mirror: Weak<dyn Mirror>,
    mut revision: i64,
) {
    let mut retry = FIRST_RETRY;
    // Set when the next step is a full read, not a watch: and whether the store was restored.
    let mut reread: Option<bool> = None;
    while mirror.strong_count() > 0 {
        if let Some(restored) = reread {
            match store.read_folder(folder, "").await {
                Ok((entries, read_at)) => {
                    let Some(mirror) = mirror.upgrade() else {
                        return;
                    };
                    mirror.reset(entries, restored);
                    revision = read_at;
                    reread = None;
                    retry = FIRST_RETRY;
                }
                Err(error) => {
                    // Never a watch from revision 0 (the whole history) in its place.
                    tracing::warn!(folder, %error, ?retry, "cannot read the folder again yet");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            }
        }
        let started = tokio::time::Instant::now();
        let lost = store.watch(folder, &mirror, &mut revision).await;
        // A watch that held for a while was healthy: the next loss starts the backoff again.
        if started.elapsed() > MAX_RETRY {
            retry = FIRST_RETRY;
        }
        match lost {
            Lost::Stream(why) => {
                tracing::warn!(store = %store.settings, folder, %why, ?retry, "lost the watch on etcd; keeping what this replica has; resuming");
            }
            Lost::History(why) => {
                tracing::warn!(store = %store.settings, folder, %why, "reading the folder again");
                reread = Some(false);
            }
            Lost::Restored(why) => {
                tracing::warn!(store = %store.settings, folder, %why, "reading the folder again");
                reread = Some(true);
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}
