//! Following the other replicas' writes: a watch on the versions from the revision this
//! replica last read. A lost stream (a member died, etcd lost quorum) is resumed from the
//! last revision seen; a watch cancelled because that revision was compacted away, or a
//! store whose revision went backwards (restored, or recreated), leads to a full re-read.
//! Meanwhile subscriptions keep the last version they have.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

use super::{EtcdStore, parse_json, prefix_end};
use crate::store::{StoreError, VersionLog, VersionRecord};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// How a watch ended.
enum Lost {
    /// The stream broke: resume from the last revision seen.
    Stream(String),
    /// History this replica needs is gone: read everything again.
    History(String),
}

// === impl EtcdStore (watch) ===

impl EtcdStore {
    /// Feeds `log` with the versions written from `revision` on, until `log` is dropped.
    pub fn follow_versions(&self, log: Arc<VersionLog>, revision: i64) {
        tokio::spawn(follow(self.clone(), Arc::downgrade(&log), revision));
    }

    /// One watch, until it is lost. Advances `revision` past every event seen.
    async fn watch_versions(&self, log: &Weak<VersionLog>, revision: &mut i64) -> Lost {
        let start = self.key("versions/");
        let options = WatchOptions::new()
            .with_range(prefix_end(&start))
            .with_start_revision(*revision + 1)
            .with_progress_notify();
        let mut stream = match self.client.watch_client().watch(start, Some(options)).await {
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
            let Some(log) = log.upgrade() else {
                return Lost::Stream("the control service stopped".into());
            };
            if let Some(header) = response.header()
                && header.revision() < *revision
            {
                return Lost::History(format!(
                    "the store's revision went back from {} to {} (restored or recreated)",
                    *revision,
                    header.revision()
                ));
            }
            for event in response.events() {
                let Some(pair) = event.kv() else { continue };
                *revision = (*revision).max(pair.mod_revision());
                if event.event_type() != EventType::Put {
                    continue;
                }
                match parse_json::<VersionRecord>(pair.key(), pair.value()) {
                    Ok(record) => log.learn(record),
                    Err(error) => {
                        tracing::error!(%error, "skipping a version this replica cannot read")
                    }
                }
            }
        }
    }
}

async fn follow(store: EtcdStore, log: Weak<VersionLog>, mut revision: i64) {
    let mut retry = FIRST_RETRY;
    while log.strong_count() > 0 {
        let started = tokio::time::Instant::now();
        let lost = store.watch_versions(&log, &mut revision).await;
        // A watch that held for a while was healthy: the next loss starts the backoff again.
        if started.elapsed() > MAX_RETRY {
            retry = FIRST_RETRY;
        }
        let reread = match lost {
            Lost::Stream(why) => {
                tracing::warn!(store = %store.settings, %why, ?retry, "lost the watch on etcd; subscriptions keep the current version; resuming");
                false
            }
            Lost::History(why) => {
                tracing::warn!(store = %store.settings, %why, "reading every version again");
                true
            }
        };
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
        if reread || revision == 0 {
            match store.read_versions().await {
                Ok((records, read_at)) => {
                    let Some(log) = log.upgrade() else { return };
                    log.replace(records);
                    revision = read_at;
                    retry = FIRST_RETRY;
                }
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!(%why, "cannot read the versions again yet");
                    revision = 0;
                }
                Err(error) => tracing::error!(%error, "reading the versions again failed"),
            }
        }
    }
}
