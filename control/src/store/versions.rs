//! The config versions a control service knows, in memory, and the current one as a watch
//! that subscriptions follow. Whichever backend keeps them feeds it: the data dir when it
//! opens and after each append; etcd from its full reads and its watch, so a version another
//! replica wrote reaches this replica's subscribers too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::VersionRecord;
use crate::overlay::Overlay;

/// The current version as subscriptions see it.
#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub overlay: Overlay,
}

pub struct VersionLog {
    records: Mutex<BTreeMap<u64, VersionRecord>>,
    current: watch::Sender<Arc<Published>>,
}

// === impl VersionLog ===

impl VersionLog {
    pub fn new(records: Vec<VersionRecord>) -> Self {
        let records: BTreeMap<u64, VersionRecord> =
            records.into_iter().map(|r| (r.version, r)).collect();
        let current = published(records.values().next_back());
        Self {
            records: Mutex::new(records),
            current: watch::channel(Arc::new(current)).0,
        }
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<u64, VersionRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows the current version: each change is the newest version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Arc<Published> {
        Arc::clone(&self.current.borrow())
    }

    pub fn current_version(&self) -> u64 {
        self.current.borrow().version
    }

    pub fn version(&self, version: u64) -> Option<VersionRecord> {
        self.records().get(&version).cloned()
    }

    /// Every version, oldest first.
    pub fn all(&self) -> Vec<VersionRecord> {
        self.records().values().cloned().collect()
    }

    /// Adds a version this replica wrote or heard of; the newest becomes current. Hearing
    /// of one twice (its own write, then the watch) changes nothing.
    pub fn learn(&self, record: VersionRecord) {
        let mut records = self.records();
        if records.contains_key(&record.version) {
            return;
        }
        let newest = records
            .keys()
            .next_back()
            .is_none_or(|&v| v < record.version);
        if newest {
            tracing::info!(version = record.version, description = %record.description, "new version");
            self.current
                .send_replace(Arc::new(published(Some(&record))));
        }
        records.insert(record.version, record);
    }

    /// Replaces everything with a full read of the store. Subscribers hear only if the
    /// current version changed (a missed write, or a store restored from a backup).
    pub fn replace(&self, records: Vec<VersionRecord>) {
        let mut held = self.records();
        *held = records.into_iter().map(|r| (r.version, r)).collect();
        let latest = published(held.values().next_back());
        self.current.send_if_modified(|current| {
            let changed = current.version != latest.version || current.overlay != latest.overlay;
            if changed {
                tracing::info!(
                    version = latest.version,
                    "current version after a full read"
                );
                *current = Arc::new(latest);
            }
            changed
        });
    }
}

/// Fed by the watch on etcd's `versions/`.
impl super::Mirror for VersionLog {
    fn reset(&self, entries: Vec<(String, Vec<u8>)>, restored: bool) {
        let records: Vec<VersionRecord> = entries
            .iter()
            .filter_map(|(name, value)| readable(name, value))
            .collect();
        if restored {
            self.replace(records);
        } else {
            // Versions are only ever added: a read older than a version this replica wrote
            // since must not take the current version back.
            for record in records {
                self.learn(record);
            }
        }
    }

    fn put(&self, name: &str, value: &[u8]) {
        if let Some(record) = readable(name, value) {
            self.learn(record);
        }
    }

    /// Versions are never deleted; a deleted key changes nothing served.
    fn delete(&self, _name: &str) {}
}

fn readable(name: &str, value: &[u8]) -> Option<VersionRecord> {
    serde_json::from_slice(value)
        .inspect_err(|error| tracing::error!(version = name, %error, "skipping a version this replica cannot read"))
        .ok()
}

fn published(record: Option<&VersionRecord>) -> Published {
    record.map_or_else(Published::default, |record| Published {
        version: record.version,
        overlay: record.overlay.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, description: &str) -> VersionRecord {
        VersionRecord {
            version,
            created_unix: 0,
            description: description.into(),
            overlay: Overlay::default(),
            written_by: String::new(),
        }
    }

    #[test]
    fn the_newest_version_is_current_whatever_order_they_arrive_in() {
        let log = VersionLog::new(vec![record(1, "a")]);
        let mut current = log.subscribe();
        current.borrow_and_update();
        log.learn(record(3, "c"));
        assert!(current.has_changed().unwrap());
        assert_eq!(current.borrow_and_update().version, 3);
        // An older one (a watch event behind a local write) is kept but not published.
        log.learn(record(2, "b"));
        log.learn(record(3, "c again"));
        assert!(!current.has_changed().unwrap());
        let versions: Vec<u64> = log.all().iter().map(|r| r.version).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(log.version(3).unwrap().description, "c");
    }

    #[test]
    fn a_full_read_publishes_only_a_different_current_version() {
        let log = VersionLog::new(vec![record(1, "a"), record(2, "b")]);
        let mut current = log.subscribe();
        current.borrow_and_update();
        log.replace(vec![record(1, "a"), record(2, "b")]);
        assert!(!current.has_changed().unwrap());
        log.replace(vec![record(1, "a"), record(2, "b"), record(3, "c")]);
        assert_eq!(current.borrow_and_update().version, 3);
        assert_eq!(log.current_version(), 3);
    }
}
