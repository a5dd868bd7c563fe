//! Where the control service keeps its state: modules, config versions, the mesh CA and the
//! join tokens' digests. Two backends:
//! - a data dir (`dir.rs`), the default for one machine;
//! - etcd (`etcd/`), shared by any number of replicas: writes are transactions, and each
//!   replica follows the others' writes through a watch.
//!
//! Either way the versions are also held in memory ([`VersionLog`]), which subscriptions
//! follow.

mod dir;
mod etcd;
mod import;
mod versions;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use dir::DirStore;
pub(crate) use dir::{write_atomically, write_private};
pub use etcd::{EtcdSettings, EtcdStore, EtcdTls, Mirror, WatchTask};
pub use import::{ImportError, Imported, import_data_dir};
pub use versions::{Published, VersionLog};

use crate::ca::{CaError, MeshCa};
use crate::overlay::Overlay;
use crate::tokens::JoinTokens;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a version record: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: holds bytes whose sha256 is {actual}", path.display())]
    Tampered { path: PathBuf, actual: String },
    /// etcd could not be reached, has no quorum, or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A key in etcd holds something this service cannot read.
    #[error("etcd key {key}: {what}")]
    Invalid { key: String, what: String },
}

/// One config version as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub created_unix: u64,
    pub description: String,
    pub overlay: Overlay,
    /// A random id of the write that made it (etcd only): a replica whose write went
    /// through but whose answer was lost recognises its own version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub written_by: String,
}

/// Which backend, and where.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    Dir(PathBuf),
    Etcd(EtcdSettings),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(path) => write!(f, "data dir {}", path.display()),
            Self::Etcd(settings) => write!(f, "{settings}"),
        }
    }
}

/// Why a version was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another replica appended first: the version asked for exists.
    #[error("version {0} was taken by another replica")]
    Taken(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Store {
    backend: Backend,
    /// Held here; the etcd watch feeds it through a weak handle, and stops with it.
    versions: Arc<VersionLog>,
    _watch: Option<WatchTask>,
}

enum Backend {
    /// The data dir is written by one process; the lock only orders this process's writes.
    /// Its file work (modules of tens of MiB, each write synced) runs on the blocking pool.
    Dir(Arc<Mutex<DirStore>>, PathBuf),
    Etcd(EtcdStore),
}

// === impl Store ===

impl Store {
    /// Opens the store. etcd is waited for (saying why each try failed) until its versions
    /// are read: a replica never serves an empty config as if it were current.
    pub async fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Dir(path) => {
                let dir = DirStore::open(path)?;
                let versions = Arc::new(VersionLog::new(dir.versions().to_vec()));
                Ok(Self {
                    backend: Backend::Dir(Arc::new(Mutex::new(dir)), path.clone()),
                    versions,
                    _watch: None,
                })
            }
            StoreLocation::Etcd(settings) => {
                let etcd = EtcdStore::connect(settings).await?;
                let (records, revision) = etcd.read_versions_when_reachable().await;
                let versions = Arc::new(VersionLog::new(records));
                let weak = Arc::downgrade(&versions);
                let mirror: std::sync::Weak<dyn Mirror> = weak;
                let watch = etcd.follow("versions/", mirror, revision);
                Ok(Self {
                    backend: Backend::Etcd(etcd),
                    versions,
                    _watch: Some(watch),
                })
            }
        }
    }

    /// The versions, as this replica knows them.
    pub fn versions(&self) -> &VersionLog {
        &self.versions
    }

    /// Stores a module; returns its sha256 in hex.
    pub async fn put_module(&self, bytes: &[u8]) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Dir(dir, _) => {
                let (dir, bytes) = (Arc::clone(dir), bytes.to_vec());
                blocking(move || locked(&dir).put_module(&bytes)).await
            }
            Backend::Etcd(etcd) => etcd.put_module(bytes).await,
        }
    }

    /// A stored module, checked against its name; `None` if it was never uploaded.
    pub async fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Dir(dir, _) => {
                let (dir, digest) = (Arc::clone(dir), digest.to_owned());
                blocking(move || locked(&dir).module(&digest)).await
            }
            Backend::Etcd(etcd) => etcd.module(&digest.to_ascii_lowercase()).await,
        }
    }

    /// Appends `overlay` as version `based_on + 1`, if `based_on` is still the newest version
    /// in the store, and makes it current.
    pub async fn append(
        &self,
        based_on: u64,
        overlay: Overlay,
        description: String,
    ) -> Result<VersionRecord, AppendError> {
        let record = VersionRecord {
            version: based_on + 1,
            created_unix: now_unix(),
            description,
            overlay,
            written_by: format!("{:016x}", fastrand::u64(..)),
        };
        match &self.backend {
            Backend::Dir(dir, _) => {
                let dir = Arc::clone(dir);
                let record = blocking(move || {
                    let mut dir = locked(&dir);
                    if dir.current_version() != based_on {
                        return Ok(None);
                    }
                    dir.append(record.overlay, record.description).map(Some)
                })
                .await?
                .ok_or(AppendError::Taken(based_on + 1))?;
                self.versions.learn(record.clone());
                Ok(record)
            }
            Backend::Etcd(etcd) => {
                if !etcd.append(based_on, &record).await? {
                    // Catch up at once rather than waiting for the watch.
                    for newer in etcd.versions_after(based_on).await? {
                        self.versions.learn(newer);
                    }
                    return Err(AppendError::Taken(based_on + 1));
                }
                self.versions.learn(record.clone());
                Ok(record)
            }
        }
    }

    /// The mesh CA, created on first use. With etcd, replicas starting together agree on
    /// one CA.
    pub async fn mesh_ca(&self, trust_domain: &str) -> Result<MeshCa, CaError> {
        match &self.backend {
            Backend::Dir(_, path) => MeshCa::open(path, trust_domain),
            Backend::Etcd(etcd) => etcd.mesh_ca(trust_domain).await,
        }
    }

    /// Whether the store answers now (one quick read of etcd; a data dir always does).
    pub async fn reachable(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dir(..) => Ok(()),
            Backend::Etcd(etcd) => etcd.probe().await,
        }
    }

    /// The etcd store, when replicas share one.
    pub fn etcd(&self) -> Option<&EtcdStore> {
        match &self.backend {
            Backend::Dir(..) => None,
            Backend::Etcd(etcd) => Some(etcd),
        }
    }

    /// The join tokens' digests.
    pub fn join_tokens(&self) -> Result<JoinTokens, StoreError> {
        match &self.backend {
            Backend::Dir(_, path) => JoinTokens::open(path),
            Backend::Etcd(etcd) => Ok(JoinTokens::in_etcd(etcd.clone())),
        }
    }
}

/// Runs data dir work on the blocking pool, off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Unavailable(format!("data dir work stopped: {e}")))?
}

fn locked(dir: &Mutex<DirStore>) -> std::sync::MutexGuard<'_, DirStore> {
    dir.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
