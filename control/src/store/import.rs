//! `sluice control --store etcd://... --import-data-dir DIR`: moves a single-machine control
//! plane into etcd. Versions keep their numbers, so proxies that applied version n see no
//! change; the CA moves too, so the certificates it issued stay valid; join tokens keep
//! working. Importing into a prefix that already has versions or another CA is refused, and
//! importing the same data dir again changes nothing.

use std::path::Path;

use super::{DirStore, EtcdSettings, EtcdStore, StoreError};
use crate::ca::{CaError, MeshCa};
use crate::tokens::JoinTokens;

/// What an import moved.
#[derive(Debug, Default)]
pub struct Imported {
    pub modules: usize,
    pub versions: usize,
    pub tokens: usize,
    pub ca: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "{store} already holds {held} versions; import only into an empty prefix (choose another --store-prefix)"
    )]
    NotEmpty { store: String, held: usize },
    #[error(
        "{store} already holds another mesh CA; importing would leave the data dir's certificates untrusted"
    )]
    OtherCa { store: String },
    #[error("{dir}: its CA is for trust domain {found:?}, not {expected:?} (--trust-domain)")]
    TrustDomain {
        dir: String,
        found: String,
        expected: String,
    },
}

/// Copies `dir` into the etcd at `settings`.
pub async fn import_data_dir(
    dir: &Path,
    settings: &EtcdSettings,
    trust_domain: &str,
) -> Result<Imported, ImportError> {
    let source = DirStore::open(dir)?;
    let etcd = EtcdStore::connect(settings).await?;
    let mut imported = Imported::default();

    if let Some((found, material)) = MeshCa::read_material(dir)? {
        if found != trust_domain {
            return Err(ImportError::TrustDomain {
                dir: dir.display().to_string(),
                found,
                expected: trust_domain.to_owned(),
            });
        }
        let (_, stored) = etcd.mesh_ca_or(trust_domain, material.clone()).await?;
        if stored.cert_pem != material.cert_pem {
            return Err(ImportError::OtherCa {
                store: settings.to_string(),
            });
        }
        imported.ca = true;
    }

    let (held, _) = etcd.read_versions().await?;
    let same_history = held.len() == source.versions().len()
        && held.iter().zip(source.versions()).all(|(a, b)| {
            a.version == b.version && a.overlay == b.overlay && a.description == b.description
        });
    if !held.is_empty() && !same_history {
        return Err(ImportError::NotEmpty {
            store: settings.to_string(),
            held: held.len(),
        });
    }

    for digest in source.module_digests() {
        if let Some(bytes) = source.module(&digest)? {
            etcd.put_module(&bytes).await?;
            imported.modules += 1;
        }
    }
    if held.is_empty() {
        // Numbers as they were, 1, 2, 3...: each is appended after the one before.
        let mut previous = 0;
        for record in source.versions() {
            if !etcd.append(previous, record).await? {
                // Another replica wrote a version meanwhile: the prefix is not empty.
                return Err(ImportError::NotEmpty {
                    store: settings.to_string(),
                    held: record.version as usize,
                });
            }
            previous = record.version;
            imported.versions += 1;
        }
    }

    let tokens = JoinTokens::open(dir)?;
    for (digest, grant) in tokens.grants() {
        etcd.put_token(&digest, &grant).await?;
        imported.tokens += 1;
    }
    Ok(imported)
}
