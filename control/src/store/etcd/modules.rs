//! Modules in etcd: 1 MiB chunks under `modules/<sha256>/chunks/`, then `modules/<sha256>/meta`.
//! The meta key is written last, so a module is visible only once all of it is stored; an
//! upload cut short is finished by uploading again.

use serde::{Deserialize, Serialize};

use super::{EtcdStore, parse_json};
use crate::store::{StoreError, sha256_hex};

/// Well under etcd's default request limit (1.5 MiB) with room for the key and framing.
const CHUNK: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct ModuleMeta {
    size: u64,
    chunks: u32,
}

// === impl EtcdStore (modules) ===

impl EtcdStore {
    /// Drops a damaged module's meta key, so uploading it again writes every chunk anew
    /// (an upload skips a module whose meta is there).
    async fn forget_module(&self, meta_key: &str) {
        let path = meta_key
            .strip_prefix(&format!("{}/", self.settings.prefix))
            .unwrap_or(meta_key);
        if let Err(error) = self.delete(path).await {
            tracing::warn!(key = meta_key, %error, "could not drop a damaged module's meta key");
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
        Ok(digest)
    }

    /// The module named `digest` (lowercase hex), checked against it.
    pub async fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
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
                self.forget_module(&meta_key).await;
                return Err(StoreError::Invalid {
                    key,
                    what: "missing: upload the module again".into(),
                });
            };
            bytes.extend_from_slice(pair.value());
        }
        let actual = sha256_hex(&bytes);
        if actual != digest {
            self.forget_module(&meta_key).await;
            return Err(StoreError::Invalid {
                key: meta_key,
                what: format!(
                    "the chunks hold bytes whose sha256 is {actual}: upload the module again"
                ),
            });
        }
        Ok(Some(bytes))
    }
}
