//! The control service: validates and stores changes as versions, streams the current
//! version to every subscribed proxy, and keeps what each proxy acknowledged for `status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::overlay::{FilterAttachment, Overlay, describe, is_sha256};
use crate::proto::control_server::Control;
use crate::proto::edit::Edit as EditKind;
use crate::proto::{
    AckReply, AckRequest, ChangeReply, ChangeRequest, ConfigUpdate, GetModuleReply,
    GetModuleRequest, ListVersionsReply, ListVersionsRequest, ProxyStatus, RollbackRequest,
    StatusReply, StatusRequest, SubscribeRequest, UploadModuleReply, UploadModuleRequest,
    VersionInfo,
};
use crate::store::{Store, StoreError, VersionRecord};

/// What the service cannot judge alone: whether a module compiles and accepts its
/// configuration, and whether cluster and route entries are well-formed. The proxy crate
/// implements it with the real Wasm host and config model.
pub trait ChangeValidator: Send + Sync + 'static {
    /// Compiles `module` and runs a throwaway VM through `on_vm_start` and `on_configure`
    /// with the attachment's configuration.
    fn validate_filter(&self, filter: &FilterAttachment, module: &[u8]) -> Result<(), String>;
    /// One `clusters:` entry.
    fn validate_cluster(&self, cluster: &serde_json::Value) -> Result<(), String>;
    /// A listener's `routes:` list.
    fn validate_routes(&self, routes: &serde_json::Value) -> Result<(), String>;
}

/// How long `status` keeps a proxy that disconnected.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Clone)]
pub struct ControlService {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held through validation, so changes apply one at a time on the version before them.
    store: tokio::sync::Mutex<Store>,
    validator: Arc<dyn ChangeValidator>,
    /// The current version, as proxies receive it.
    current: watch::Sender<Arc<ConfigUpdate>>,
    proxies: Mutex<BTreeMap<String, ProxyRecord>>,
    max_module_size: usize,
    /// Fired on shutdown: subscriptions end so the server can stop.
    stopping: watch::Sender<bool>,
}

struct ProxyRecord {
    subscriptions: usize,
    applied: u64,
    rejected: u64,
    reason: String,
    seen: Instant,
}

// === impl ControlService ===

impl ControlService {
    pub fn new(store: Store, validator: Arc<dyn ChangeValidator>, max_module_size: usize) -> Self {
        let current = update_of(store.current());
        Self {
            shared: Arc::new(Shared {
                store: tokio::sync::Mutex::new(store),
                validator,
                current: watch::channel(Arc::new(current)).0,
                proxies: Mutex::default(),
                max_module_size,
                stopping: watch::channel(false).0,
            }),
        }
    }

    /// Ends every subscription (proxies reconnect to whatever serves next).
    pub fn stop_subscriptions(&self) {
        self.shared.stopping.send_replace(true);
    }

    fn proxies(&self) -> MutexGuard<'_, BTreeMap<String, ProxyRecord>> {
        self.shared
            .proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks what `edits` set: modules, clusters, routes.
    async fn validate(&self, store: &Store, edits: &[crate::proto::Edit]) -> Result<(), Status> {
        for (index, edit) in edits.iter().enumerate() {
            let invalid =
                |reason: String| Status::invalid_argument(format!("edits[{index}]: {reason}"));
            let validator = Arc::clone(&self.shared.validator);
            let checked = match &edit.edit {
                Some(EditKind::SetFilter(set)) => {
                    let module = store
                        .module(&set.module_sha256)
                        .map_err(internal)?
                        .ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "edits[{index}]: module sha256:{} is not uploaded; upload it first",
                                set.module_sha256
                            ))
                        })?;
                    // What the edit sets, whether it becomes the filter or its canary.
                    let filter = FilterAttachment {
                        name: set.name.clone(),
                        module_sha256: set.module_sha256.clone(),
                        config: set.config.clone(),
                        vm_config: set.vm_config.clone(),
                        fail_open: set.fail_open,
                        ..FilterAttachment::default()
                    };
                    // Compiling and canarying take milliseconds to seconds.
                    tokio::task::spawn_blocking(move || validator.validate_filter(&filter, &module))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|reason| format!("filter {:?}: {reason}", set.name))
                }
                Some(EditKind::SetCluster(set)) => serde_json::from_str(&set.cluster_json)
                    .map_err(|e| e.to_string())
                    .and_then(|cluster| validator.validate_cluster(&cluster))
                    .map_err(|reason| format!("set_cluster: {reason}")),
                Some(EditKind::SetRoutes(set)) => serde_json::from_str(&set.routes_json)
                    .map_err(|e| e.to_string())
                    .and_then(|routes| validator.validate_routes(&routes))
                    .map_err(|reason| format!("set_routes ({}): {reason}", set.listener)),
                _ => Ok(()),
            };
            checked.map_err(invalid)?;
        }
        Ok(())
    }

    fn publish(&self, record: &VersionRecord) {
        self.shared
            .current
            .send_replace(Arc::new(update_of(Some(record))));
        tracing::info!(version = record.version, description = %record.description, "new version");
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn upload_module(
        &self,
        request: Request<UploadModuleRequest>,
    ) -> Result<Response<UploadModuleReply>, Status> {
        let module = request.into_inner().module;
        if module.len() > self.shared.max_module_size {
            return Err(Status::invalid_argument(format!(
                "the module is {} bytes; this control service takes at most {} (--max-module-size)",
                module.len(),
                self.shared.max_module_size
            )));
        }
        if !module.starts_with(b"\0asm") {
            return Err(Status::invalid_argument(
                "not a WebAssembly module (it does not start with \\0asm)",
            ));
        }
        let store = self.shared.store.lock().await;
        let sha256 = store.put_module(&module).map_err(internal)?;
        tracing::info!(%sha256, size = module.len(), "module stored");
        Ok(Response::new(UploadModuleReply {
            sha256,
            size: module.len() as u64,
        }))
    }

    async fn get_module(
        &self,
        request: Request<GetModuleRequest>,
    ) -> Result<Response<GetModuleReply>, Status> {
        let digest = request.into_inner().sha256;
        if !is_sha256(&digest) {
            return Err(Status::invalid_argument(format!(
                "{digest:?} is not a sha256 in hex"
            )));
        }
        let store = self.shared.store.lock().await;
        match store.module(&digest).map_err(internal)? {
            Some(module) => Ok(Response::new(GetModuleReply { module })),
            None => Err(Status::not_found(format!(
                "module sha256:{digest} is not stored here"
            ))),
        }
    }

    async fn change(
        &self,
        request: Request<ChangeRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let request = request.into_inner();
        if request.edits.is_empty() {
            return Err(Status::invalid_argument("a change needs at least one edit"));
        }
        let mut store = self.shared.store.lock().await;
        let current = store
            .current()
            .map(|v| v.overlay.clone())
            .unwrap_or_default();
        let next = current
            .edited(&request.edits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.validate(&store, &request.edits).await?;
        let description = match request.description {
            text if text.is_empty() => describe(&request.edits),
            text => text,
        };
        let record = store.append(next, description).map_err(internal)?;
        self.publish(&record);
        Ok(Response::new(ChangeReply {
            version: record.version,
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let to = request.into_inner().to_version;
        let mut store = self.shared.store.lock().await;
        let overlay = match to {
            0 => Overlay::default(),
            _ => store
                .version(to)
                .map(|v| v.overlay.clone())
                .ok_or_else(|| Status::not_found(format!("there is no version {to}")))?,
        };
        let record = store
            .append(overlay, format!("rollback to version {to}"))
            .map_err(internal)?;
        self.publish(&record);
        Ok(Response::new(ChangeReply {
            version: record.version,
        }))
    }

    async fn list_versions(
        &self,
        _: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsReply>, Status> {
        let store = self.shared.store.lock().await;
        let versions = store
            .versions()
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                created_unix: v.created_unix,
                description: v.description.clone(),
                module_sha256: v.overlay.modules().map(str::to_owned).collect(),
            })
            .collect();
        Ok(Response::new(ListVersionsReply {
            versions,
            current: store.current_version(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let current_version = self.shared.current.borrow().version;
        let proxies = self
            .proxies()
            .iter()
            .map(|(id, record)| ProxyStatus {
                proxy_id: id.clone(),
                connected: record.subscriptions > 0,
                applied_version: record.applied,
                rejected_version: record.rejected,
                rejected_reason: record.reason.clone(),
                seconds_since_seen: record.seen.elapsed().as_secs(),
            })
            .collect();
        Ok(Response::new(StatusReply {
            current_version,
            proxies,
        }))
    }

    type SubscribeStream = ReceiverStream<Result<ConfigUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let id = request.proxy_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is empty"));
        }
        {
            let mut proxies = self.proxies();
            // A proxy gone for an hour (its id usually dies with its process) leaves the list.
            proxies.retain(|_, r| r.subscriptions > 0 || r.seen.elapsed() < FORGET_AFTER);
            let record = proxies.entry(id.clone()).or_insert_with(|| ProxyRecord {
                subscriptions: 0,
                applied: 0,
                rejected: 0,
                reason: String::new(),
                seen: Instant::now(),
            });
            record.subscriptions += 1;
            record.applied = request.applied_version;
            record.seen = Instant::now();
        }
        tracing::info!(proxy = %id, applied = request.applied_version, "proxy subscribed");

        let (updates, stream) = mpsc::channel(4);
        let (mut current, mut stopping) = (
            self.shared.current.subscribe(),
            self.shared.stopping.subscribe(),
        );
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                let update = ConfigUpdate::clone(&current.borrow_and_update());
                if updates.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = current.changed() => if changed.is_err() { break },
                    () = updates.closed() => break,
                    _ = stopping.wait_for(|stop| *stop) => break,
                }
            }
            if let Some(record) = service.proxies().get_mut(&id) {
                record.subscriptions = record.subscriptions.saturating_sub(1);
                record.seen = Instant::now();
            }
            tracing::info!(proxy = %id, "proxy subscription ended");
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn acknowledge(
        &self,
        request: Request<AckRequest>,
    ) -> Result<Response<AckReply>, Status> {
        let ack = request.into_inner();
        let mut proxies = self.proxies();
        let record = proxies.get_mut(&ack.proxy_id).ok_or_else(|| {
            Status::failed_precondition(format!("proxy {:?} never subscribed", ack.proxy_id))
        })?;
        record.seen = Instant::now();
        if ack.applied {
            record.applied = ack.version;
            tracing::info!(proxy = %ack.proxy_id, version = ack.version, "proxy applied");
        } else {
            record.rejected = ack.version;
            record.reason = ack.error.clone();
            tracing::warn!(proxy = %ack.proxy_id, version = ack.version, error = %ack.error, "proxy rejected");
        }
        Ok(Response::new(AckReply {}))
    }
}

fn update_of(record: Option<&VersionRecord>) -> ConfigUpdate {
    match record {
        Some(record) => ConfigUpdate {
            version: record.version,
            overlay_json: serde_json::to_string(&record.overlay).unwrap_or_default(),
        },
        None => ConfigUpdate {
            version: 0,
            overlay_json: "{}".to_owned(),
        },
    }
}

fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "data dir failure");
    Status::internal(format!("the control service's data dir failed: {error}"))
}
