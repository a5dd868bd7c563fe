//! Join tokens: the secret a proxy shows to get its workload's certificate. The operator
//! creates one per workload (`sluice join-token <workload>`) and hands it to the workload's
//! proxy (a Kubernetes secret, a file). Only the tokens' SHA-256 is stored, in
//! `<data dir>/join-tokens.json`, so the data dir alone does not let anyone join.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;

use crate::store::{StoreError, sha256_hex, write_atomically};

pub struct JoinTokens {
    path: PathBuf,
    /// sha256 of the token (hex) → workload.
    by_digest: BTreeMap<String, String>,
}

impl JoinTokens {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("join-tokens.json");
        let by_digest = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Ok(Self { path, by_digest })
    }

    /// A new token for `workload`, saved before it is returned.
    pub fn create(&mut self, workload: &str) -> Result<String, StoreError> {
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("the system has no randomness to make a token"),
            })?;
        let token = format!("sjt_{}", sha256_hex(&secret));
        self.by_digest
            .insert(sha256_hex(token.as_bytes()), workload.to_owned());
        let json =
            serde_json::to_vec_pretty(&self.by_digest).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        write_atomically(&self.path, &json)?;
        Ok(token)
    }

    /// The workload `token` was made for. Looking up by digest compares hashes, not the
    /// secret, so timing tells nothing about it.
    pub fn workload(&self, token: &str) -> Option<&str> {
        self.by_digest
            .get(&sha256_hex(token.as_bytes()))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_workload_across_restarts() {
        let dir = std::env::temp_dir().join(format!("sluice-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut tokens = JoinTokens::open(&dir).unwrap();
        let token = tokens.create("ns/shop/sa/checkout").unwrap();
        let reopened = JoinTokens::open(&dir).unwrap();
        assert_eq!(reopened.workload(&token), Some("ns/shop/sa/checkout"));
        assert_eq!(reopened.workload("sjt_guess"), None);
        let stored = std::fs::read_to_string(dir.join("join-tokens.json")).unwrap();
        assert!(!stored.contains(&token), "only the digest is stored");
    }
}
