//! The etcd backend, shared by every replica of the control service. Under the prefix
//! (`--store-prefix`, `/sluice` by default):
//!
//! | key | holds |
//! |---|---|
//! | `versions/<20 digits>` | a version record (JSON) |
//! | `modules/<sha256>/chunks/<6 digits>` | a module's bytes, 1 MiB per key |
//! | `modules/<sha256>/meta` | its size and chunk count, written after the chunks |
//! | `ca/trust-domain`, `ca/key`, `ca/cert` | the mesh CA, created in one transaction |
//! | `join-tokens/<sha256 of the token>` | what the token grants (JSON) |
//!
//! A version is appended by a transaction that creates `versions/<n+1>` only if
//! `versions/<n>` exists and `versions/<n+1>` does not, so two replicas can never hand out
//! the same number and the numbers have no gaps. Modules are chunked because etcd refuses
//! requests over 1.5 MiB by default, and modules reach tens of MiB.

mod ca;
mod leases;
mod modules;
mod settings;
mod watch;

pub use settings::{EtcdSettings, EtcdTls};
pub use watch::{Mirror, WatchTask};

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};

use super::{StoreError, VersionRecord};

/// Each call to etcd fails after this, so a store without quorum is reported, not waited on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A call that failed for a passing reason (the member it went to died, an election) is
/// tried again for this long: losing one member of three changes nothing a user sees.
const RETRY_WITHIN: Duration = Duration::from_secs(4);
/// Versions read per request during a full read.
const PAGE: i64 = 256;

#[derive(Clone)]
pub struct EtcdStore {
    /// Shared: the client is large (3.6 KB), and every clone talks over the same channel.
    client: Arc<Client>,
    settings: EtcdSettings,
    modules: Arc<modules::ModuleCache>,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// A client for the cluster. It connects lazily (etcd-client sets up a balanced channel
    /// and no more), so this succeeds while etcd is down; the first request tells.
    pub async fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member cut off from the others answers "no leader" at once instead of
            // leaving watches silent.
            .with_require_leader(true);
        if let Some(tls) = &settings.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(settings.endpoints.clone(), Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{settings}: {}", describe(&e))))?;
        Ok(Self {
            client: Arc::new(client),
            settings: settings.clone(),
            modules: Arc::default(),
        })
    }

    fn key(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.prefix)
    }

    fn version_key(&self, version: u64) -> String {
        self.key(&format!("versions/{version:020}"))
    }

    fn unavailable(&self, error: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!("{}: {}", self.settings, describe(error)))
    }

    /// Every version, and the store revision they were read at.
    pub async fn read_versions(&self) -> Result<(Vec<VersionRecord>, i64), StoreError> {
        let (entries, revision) = self.read_folder("versions/", "").await?;
        Ok((parse_versions(&entries)?, revision))
    }

    /// The versions after `version`.
    pub async fn versions_after(&self, version: u64) -> Result<Vec<VersionRecord>, StoreError> {
        let after = format!("{:020}", version + 1);
        parse_versions(&self.read_folder("versions/", &after).await?.0)
    }

    /// The keys under `folder` (from the name `from` on), each as its name within the
    /// folder and its value, and the revision they were read at: page by page, at one
    /// revision, so the pages agree.
    pub async fn read_folder(
        &self,
        folder: &str,
        from: &str,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), StoreError> {
        let prefix = self.key(folder);
        let end = prefix_end(&prefix);
        let mut start = format!("{prefix}{from}").into_bytes();
        let (mut revision, mut entries) = (0, Vec::new());
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = self
                .retrying(|mut kv| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for pair in page.kvs() {
                let name = pair
                    .key()
                    .strip_prefix(prefix.as_bytes())
                    .unwrap_or_default();
                entries.push((
                    String::from_utf8_lossy(name).into_owned(),
                    pair.value().to_vec(),
                ));
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((entries, revision)),
            }
        }
    }

    /// Reads the versions, retrying until etcd answers; says why while it waits.
    pub async fn read_versions_when_reachable(&self) -> (Vec<VersionRecord>, i64) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.read_versions().await {
                Ok(read) => return read,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?wait, "waiting for etcd: the control service serves nothing until it has read the current version");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One read, not retried: whether etcd answers (with a leader) right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let options = GetOptions::new().with_count_only();
        self.client
            .kv_client()
            .get(self.key("versions/"), Some(options))
            .await
            .map(drop)
            .map_err(|e| self.unavailable(&e))
    }

    /// Creates `record` as the next version after `based_on`; false if another replica
    /// got there first. `record.written_by` tells a try whose answer was lost but which did
    /// write (the retry then finds the key taken) from another replica's write.
    pub async fn append(&self, based_on: u64, record: &VersionRecord) -> Result<bool, StoreError> {
        let key = self.version_key(record.version);
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Invalid {
            key: key.clone(),
            what: e.to_string(),
        })?;
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        if based_on > 0 {
            when.push(Compare::create_revision(
                self.version_key(based_on),
                CompareOp::Greater,
                0,
            ));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, json, None)]);
        if self.txn(&txn).await?.succeeded() {
            return Ok(true);
        }
        let stored = self
            .retrying(|mut kv| {
                let key = self.version_key(record.version);
                async move { kv.get(key, None).await }
            })
            .await?;
        let ours = stored.kvs().first().is_some_and(|pair| {
            serde_json::from_slice::<VersionRecord>(pair.value())
                .is_ok_and(|stored| stored.written_by == record.written_by)
        });
        Ok(ours)
    }

    /// The value at `key`, if any (as etcd's answer).
    pub(super) async fn get(&self, key: &str) -> Result<etcd_client::GetResponse, StoreError> {
        self.retrying(|mut kv| async move { kv.get(key, None).await })
            .await
    }

    /// Runs `txn`; one tried again after a lost answer must be safe to run twice (its
    /// conditions tell).
    pub(super) async fn txn(&self, txn: &Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.retrying(|mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    pub(super) async fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.retrying(|mut kv| async move { kv.put(key, value, None).await.map(drop) })
            .await
    }

    /// Runs `call` with a KV client, again after a passing failure, for [`RETRY_WITHIN`];
    /// then the failure is reported as the store being unavailable.
    pub(super) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_WITHIN;
        let mut wait = Duration::from_millis(50);
        loop {
            match call(self.client.kv_client()).await {
                Ok(answer) => return Ok(answer),
                Err(error) if passing(&error) && tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!(error = %describe(&error), "etcd call failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(error) => return Err(self.unavailable(&error)),
            }
        }
    }
}

/// Failures that another try may not meet: the connection, a member without a leader, an
/// election, a timeout. Anything else (a request etcd refuses) is final.
fn passing(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// An etcd error as an operator reads it: the gRPC message alone, without its debug dump.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) if status.message().is_empty() => {
            format!("{:?}", status.code())
        }
        etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
        other => other.to_string(),
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn parse_versions(entries: &[(String, Vec<u8>)]) -> Result<Vec<VersionRecord>, StoreError> {
    entries
        .iter()
        .map(|(name, value)| parse_json(format!("versions/{name}").as_bytes(), value))
        .collect()
}

fn parse_json<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Invalid {
        key: String::from_utf8_lossy(key).into_owned(),
        what: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }
}
