//! Join tokens: the secret a proxy shows to get its workload's certificate. The operator
//! creates one per workload (`sluice join-token <workload>`) and hands it to the workload's
//! proxy (a Kubernetes secret, a file). Only the tokens' SHA-256 is stored, in
//! `<data dir>/join-tokens.json` or under `join-tokens/` in etcd, so the store alone does not
//! let anyone join. With etcd, a token another replica made is read on first use.
//!
//! A token may also limit which services its workload can register in the mesh registry
//! (`sluice join-token WORKLOAD --services a,b`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::store::{EtcdStore, StoreError, sha256_hex, write_atomically};

pub struct JoinTokens {
    /// sha256 of the token (hex) → what it grants: every token with a file, those seen so
    /// far with etcd.
    by_digest: Mutex<BTreeMap<String, TokenGrant>>,
    kept_in: Backing,
}

enum Backing {
    File(PathBuf),
    Etcd(EtcdStore),
}

/// What a join token lets its holder be and do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredGrant", into = "StoredGrant")]
pub struct TokenGrant {
    pub workload: String,
    /// The services the workload may register; `None`: any.
    pub services: Option<Vec<String>>,
}

/// A grant as the file holds it: tokens made before service limits existed are the
/// workload's name alone, and stay valid.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredGrant {
    Workload(String),
    Limited {
        workload: String,
        services: Vec<String>,
    },
}

// === impl TokenGrant ===

impl TokenGrant {
    /// Whether the workload may register `service`.
    pub fn allows_service(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|s| s == service))
    }
}

impl From<StoredGrant> for TokenGrant {
    fn from(stored: StoredGrant) -> Self {
        match stored {
            StoredGrant::Workload(workload) => Self {
                workload,
                services: None,
            },
            StoredGrant::Limited { workload, services } => Self {
                workload,
                services: Some(services),
            },
        }
    }
}

impl From<TokenGrant> for StoredGrant {
    fn from(grant: TokenGrant) -> Self {
        match grant.services {
            None => Self::Workload(grant.workload),
            Some(services) => Self::Limited {
                workload: grant.workload,
                services,
            },
        }
    }
}

/// A join token as `sluice join-token` prints it, `sjt_<secret>.<sha256 of the mesh CA>`:
/// the secret (what the control service checks) and the CA digest (what the proxy checks the
/// control service with). Tokens made before they carried the digest are the secret alone.
pub fn split_token(token: &str) -> (&str, Option<&str>) {
    match token.trim().split_once('.') {
        Some((secret, digest)) => (secret, Some(digest)),
        None => (token.trim(), None),
    }
}

// === impl JoinTokens ===

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
        Ok(Self {
            by_digest: Mutex::new(by_digest),
            kept_in: Backing::File(path),
        })
    }

    /// Tokens kept in etcd, read as they are first shown.
    pub fn in_etcd(store: EtcdStore) -> Self {
        Self {
            by_digest: Mutex::default(),
            kept_in: Backing::Etcd(store),
        }
    }

    fn known(&self) -> MutexGuard<'_, BTreeMap<String, TokenGrant>> {
        self.by_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new token for `workload` (limited to registering `services`, when given), saved
    /// before it is returned.
    pub async fn create(
        &self,
        workload: &str,
        services: Option<Vec<String>>,
    ) -> Result<String, StoreError> {
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| {
                StoreError::Unavailable("the system has no randomness to make a token".into())
            })?;
        let token = format!("sjt_{}", sha256_hex(&secret));
        let digest = sha256_hex(token.as_bytes());
        let grant = TokenGrant {
            workload: workload.to_owned(),
            services,
        };
        match &self.kept_in {
            Backing::File(path) => {
                let mut known = self.known();
                known.insert(digest, grant);
                let json =
                    serde_json::to_vec_pretty(&*known).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                write_atomically(path, &json)?;
            }
            Backing::Etcd(store) => {
                store.put_token(&digest, &grant).await?;
                self.known().insert(digest, grant);
            }
        }
        Ok(token)
    }

    /// The workload `token` was made for, among the tokens known here. Looking up by digest
    /// compares hashes, not the secret, so timing tells nothing about it.
    pub fn workload(&self, token: &str) -> Option<String> {
        self.grant(token).map(|grant| grant.workload)
    }

    /// What `token` grants, if it is one of ours and known here (see [`JoinTokens::lookup`]).
    pub fn grant(&self, token: &str) -> Option<TokenGrant> {
        let (secret, _) = split_token(token);
        self.known().get(&sha256_hex(secret.as_bytes())).cloned()
    }

    /// Every token known here, by digest.
    pub fn grants(&self) -> Vec<(String, TokenGrant)> {
        self.known()
            .iter()
            .map(|(digest, grant)| (digest.clone(), grant.clone()))
            .collect()
    }

    /// What `token` grants, asking etcd about a token another replica made.
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenGrant>, StoreError> {
        if let Some(grant) = self.grant(token) {
            return Ok(Some(grant));
        }
        let Backing::Etcd(store) = &self.kept_in else {
            return Ok(None);
        };
        let digest = sha256_hex(split_token(token).0.as_bytes());
        let found = store.token(&digest).await?;
        if let Some(grant) = &found {
            self.known().insert(digest, grant.clone());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_name_their_workload_across_restarts() {
        let dir = std::env::temp_dir().join(format!("sluice-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = JoinTokens::open(&dir).unwrap();
        let token = tokens.create("ns/shop/sa/checkout", None).await.unwrap();
        let limited = tokens
            .create("ns/shop/sa/cart", Some(vec!["cart".into()]))
            .await
            .unwrap();
        let reopened = JoinTokens::open(&dir).unwrap();
        assert_eq!(
            reopened.workload(&token).as_deref(),
            Some("ns/shop/sa/checkout")
        );
        assert_eq!(reopened.workload("sjt_guess"), None);
        assert!(reopened.grant(&token).unwrap().allows_service("anything"));
        let cart = reopened.grant(&limited).unwrap();
        assert!(cart.allows_service("cart") && !cart.allows_service("checkout"));
        let stored = std::fs::read_to_string(dir.join("join-tokens.json")).unwrap();
        assert!(!stored.contains(&token), "only the digest is stored");
    }
}

#[cfg(test)]
mod stored_tests {
    use super::*;

    #[test]
    fn a_file_from_before_service_limits_still_reads() {
        let old: BTreeMap<String, TokenGrant> = serde_json::from_str(
            r#"{"ab": "ns/a", "cd": {"workload": "ns/b", "services": ["b"]}}"#,
        )
        .unwrap();
        assert_eq!(old["ab"].services, None);
        assert_eq!(old["cd"].services.as_deref(), Some(&["b".to_owned()][..]));
    }
}
