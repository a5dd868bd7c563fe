//! Modules in etcd: 1 MiB chunks under `modules/<sha256>/chunks/`, then `modules/<sha256>/meta`.
//! The meta key is written last, so a module is visible only once all of it is stored; an
//! upload cut short is finished by uploading again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{EtcdStore, parse_json};
use crate::store::{StoreError, sha256_hex};

/// Well under etcd's default request limit (1.5 MiB) with room for the key and framing.
const CHUNK: usize = 1 << 20;
/// Most module bytes a replica keeps in memory.
const CACHE_BYTES: usize = 128 << 20;

/// Modules this replica stored or read, by digest. They are content-addressed, so never
/// stale: a push reads its module back to validate it, and proxies fetch it, without going
/// to etcd. The oldest go first past [`CACHE_BYTES`].
#[derive(Default)]
pub(super) struct ModuleCache {
    held: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    order: VecDeque<String>,
    modules: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl ModuleCache {
    fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.state().modules.get(digest).cloned()
    }

    fn keep(&self, digest: &str, bytes: &[u8]) {
        if bytes.len() > CACHE_BYTES {
            return;
        }
        let mut state = self.state();
        if state.modules.contains_key(digest) {
            return;
        }
        while state.bytes + bytes.len() > CACHE_BYTES {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            if let Some(gone) = state.modules.remove(&oldest) {
                state.bytes -= gone.len();
            }
        }
        state.bytes += bytes.len();
        state.order.push_back(digest.to_owned());
        state.modules.insert(digest.to_owned(), bytes.into());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Serialize, Deserialize)]
struct ModuleMeta {
    size: u64,
    chunks: u32,
}

// === impl EtcdStore (modules) ===

impl EtcdStore {
    /// Drops a damaged module's meta key, so uploading it again writes every chunk anew
    /// (an upload skips a module whose meta is there).
    async fn forget_module(&self, digest: &str) {
        if let Err(error) = self.delete(&format!("modules/{digest}/meta")).await {
            tracing::warn!(module = digest, %error, "could not drop a damaged module's meta key");
        }
    }

    fn module_key(&self, digest: &str, part: &str) -> String {
        self.key(&format!("modules/{digest}/{part}"))
    }

    pub async fn put_module(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = sha256_hex(bytes);
        let meta_key = self.module_key(&digest, "meta");
        let stored = self.get(&meta_key).await?;
        if let Some(pair) = stored.kvs().first() {
            let meta: ModuleMeta = parse_json(pair.key(), pair.value())?;
            if meta.size == bytes.len() as u64 {
                self.modules.keep(&digest, bytes);
                return Ok(digest);
            }
        }
        let chunks = bytes.chunks(CHUNK);
        let count = chunks.len();
        for (index, chunk) in chunks.enumerate() {
            let key = self.module_key(&digest, &format!("chunks/{index:06}"));
            self.put(&key, chunk).await?;
        }
        let meta = ModuleMeta {
            size: bytes.len() as u64,
            chunks: u32::try_from(count).map_err(|_| StoreError::Invalid {
                key: meta_key.clone(),
                what: format!("{count} chunks"),
            })?,
        };
        let json = serde_json::to_vec(&meta).map_err(|e| StoreError::Invalid {
            key: meta_key.clone(),
            what: e.to_string(),
        })?;
        self.put(&meta_key, &json).await?;
        self.modules.keep(&digest, bytes);
        Ok(digest)
    }

    /// The module named `digest` (lowercase hex), checked against it.
    pub async fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.modules.get(digest) {
            return Ok(Some(bytes.to_vec()));
        }
        let meta_key = self.module_key(digest, "meta");
        let stored = self.get(&meta_key).await?;
        let Some(pair) = stored.kvs().first() else {
            return Ok(None);
        };
        let meta: ModuleMeta = parse_json(pair.key(), pair.value())?;
        // The size is etcd's word: reserve no more than the chunks can hold.
        let most = (meta.chunks as usize).saturating_mul(CHUNK);
        let mut bytes = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0).min(most));
        for index in 0..meta.chunks {
            let key = self.module_key(digest, &format!("chunks/{index:06}"));
            let chunk = self.get(&key).await?;
            let Some(pair) = chunk.kvs().first() else {
                self.forget_module(digest).await;
                return Err(StoreError::Invalid {
                    key,
                    what: "missing: upload the module again".into(),
                });
            };
            bytes.extend_from_slice(pair.value());
        }
        let actual = sha256_hex(&bytes);
        if actual != digest {
            self.forget_module(digest).await;
            return Err(StoreError::Invalid {
                key: meta_key,
                what: format!(
                    "the chunks hold bytes whose sha256 is {actual}: upload the module again"
                ),
            });
        }
        self.modules.keep(digest, &bytes);
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_newest_modules_within_its_bound() {
        let cache = ModuleCache::default();
        let big = vec![0u8; CACHE_BYTES / 2];
        cache.keep("a", &big);
        cache.keep("b", &big);
        assert!(cache.get("a").is_some() && cache.get("b").is_some());
        cache.keep("c", &big);
        assert!(cache.get("a").is_none(), "the oldest went");
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
        cache.keep("huge", &vec![0u8; CACHE_BYTES + 1]);
        assert!(cache.get("huge").is_none());
        assert_eq!(cache.state().bytes, CACHE_BYTES);
    }
}
