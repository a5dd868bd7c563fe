//! The mesh CA and the join tokens' digests in etcd. The CA is created by a transaction
//! that writes it only where none exists, so replicas starting together all end up with
//! the one that won.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{EtcdStore, parse_json};
use crate::ca::{CaError, CaMaterial, MeshCa};
use crate::store::StoreError;
use crate::tokens::TokenGrant;

// === impl EtcdStore (CA and tokens) ===

impl EtcdStore {
    /// The mesh CA, created on first use.
    pub async fn mesh_ca(&self, trust_domain: &str) -> Result<MeshCa, CaError> {
        let fresh = MeshCa::generate(trust_domain)?;
        Ok(self.mesh_ca_or(trust_domain, fresh).await?.0)
    }

    /// The mesh CA stored, or `fresh` stored as it when there is none; also the stored
    /// material, to tell which.
    pub async fn mesh_ca_or(
        &self,
        trust_domain: &str,
        fresh: CaMaterial,
    ) -> Result<(MeshCa, CaMaterial), CaError> {
        let (domain_key, key_key, cert_key) = (
            self.key("ca/trust-domain"),
            self.key("ca/key"),
            self.key("ca/cert"),
        );
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![
                TxnOp::put(domain_key.clone(), trust_domain, None),
                TxnOp::put(key_key.clone(), fresh.key_pem.clone(), None),
                TxnOp::put(cert_key.clone(), fresh.cert_pem.clone(), None),
            ])
            .or_else(vec![
                TxnOp::get(domain_key.clone(), None),
                TxnOp::get(key_key.clone(), None),
                TxnOp::get(cert_key.clone(), None),
            ]);
        // Tried again after a lost answer, the transaction finds the CA it wrote and reads it.
        let response = self.txn(&txn).await?;
        if response.succeeded() {
            tracing::info!(trust_domain, store = %self.settings, "stored the mesh CA");
            let ca = MeshCa::from_material(trust_domain, fresh.clone(), &key_key)?;
            return Ok((ca, fresh));
        }
        let mut values = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let mut text = |key: &str| -> Result<String, CaError> {
            let bytes = values.next().flatten().ok_or_else(|| StoreError::Invalid {
                key: key.to_owned(),
                what: "missing although the CA key exists".into(),
            })?;
            String::from_utf8(bytes).map_err(|_| {
                CaError::from(StoreError::Invalid {
                    key: key.to_owned(),
                    what: "not UTF-8 text".into(),
                })
            })
        };
        let stored_domain = text(&domain_key)?;
        let material = CaMaterial {
            key_pem: text(&key_key)?,
            cert_pem: text(&cert_key)?,
        };
        if stored_domain != trust_domain {
            return Err(CaError::Unusable {
                path: domain_key.into(),
                what: format!(
                    "this CA is for trust domain {stored_domain:?}, not {trust_domain:?}: start with --trust-domain {stored_domain} or use another --store-prefix"
                ),
            });
        }
        let ca = MeshCa::from_material(trust_domain, material.clone(), &key_key)?;
        Ok((ca, material))
    }

    pub async fn put_token(&self, digest: &str, grant: &TokenGrant) -> Result<(), StoreError> {
        let key = self.key(&format!("join-tokens/{digest}"));
        let json = serde_json::to_vec(grant).map_err(|e| StoreError::Invalid {
            key: key.clone(),
            what: e.to_string(),
        })?;
        self.put(&key, &json).await
    }

    pub async fn token(&self, digest: &str) -> Result<Option<TokenGrant>, StoreError> {
        let key = self.key(&format!("join-tokens/{digest}"));
        let stored = self.get(&key).await?;
        stored
            .kvs()
            .first()
            .map(|pair| parse_json(pair.key(), pair.value()))
            .transpose()
    }
}
