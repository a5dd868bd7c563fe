//! Join tokens: the secret a proxy shows to get its workload's certificate. The operator
//! creates one per workload (`sluice join-token <workload>`) and hands it to the workload's
//! proxy (a Kubernetes secret, a file). Only the tokens' SHA-256 is stored, in
//! `<data dir>/join-tokens.json`, so the data dir alone does not let anyone join.
//!
//! A token may also limit which services its workload can register in the mesh registry
//! (`sluice join-token WORKLOAD --services a,b`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, sha256_hex, write_atomically};

pub struct JoinTokens {
    path: PathBuf,
    /// sha256 of the token (hex) → what it grants.
    by_digest: BTreeMap<String, TokenGrant>,
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
        Ok(Self { path, by_digest })
    }

    /// A new token for `workload` (limited to registering `services`, when given), saved
    /// before it is returned.
    pub fn create(
        &mut self,
        workload: &str,
        services: Option<Vec<String>>,
    ) -> Result<String, StoreError> {
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("the system has no randomness to make a token"),
            })?;
        let token = format!("sjt_{}", sha256_hex(&secret));
        let grant = TokenGrant {
            workload: workload.to_owned(),
            services,
        };
        self.by_digest.insert(sha256_hex(token.as_bytes()), grant);
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
        self.grant(token).map(|grant| grant.workload.as_str())
    }

    /// What `token` grants, if it is one of ours.
    pub fn grant(&self, token: &str) -> Option<&TokenGrant> {
        self.by_digest.get(&sha256_hex(token.as_bytes()))
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
        let token = tokens.create("ns/shop/sa/checkout", None).unwrap();
        let limited = tokens
            .create("ns/shop/sa/cart", Some(vec!["cart".into()]))
            .unwrap();
        let reopened = JoinTokens::open(&dir).unwrap();
        assert_eq!(reopened.workload(&token), Some("ns/shop/sa/checkout"));
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
