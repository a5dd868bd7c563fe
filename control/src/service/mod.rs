//! The control service: validates and stores changes as versions, streams the current
//! version to every subscribed proxy, and keeps what each proxy acknowledged for `status`.
//! Subscriptions (`subscription.rs`) also hold registrations in the mesh registry, which
//! `registry_calls.rs` serves.

mod registry_calls;
mod subscription;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ca::MeshCa;
use crate::overlay::{FilterAttachment, Overlay, describe, is_sha256};
use crate::proto::control_server::Control;
use crate::proto::edit::Edit as EditKind;
use crate::proto::{
    AckReply, AckRequest, ChangeReply, ChangeRequest, DeregisterReply, DeregisterRequest,
    DiscoverRequest, EndpointUpdate, GetModuleReply, GetModuleRequest, ListServicesReply,
    ListServicesRequest, ListVersionsReply, ListVersionsRequest, RollbackRequest, StatusReply,
    StatusRequest, SubscribeRequest, UploadModuleReply, UploadModuleRequest, VersionInfo,
};
use crate::registry::Registry;
use crate::store::{Store, StoreError, VersionRecord};
use crate::targets::Target;
use crate::tokens::JoinTokens;
use subscription::ProxyRecord;

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

#[derive(Clone)]
pub struct ControlService {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held through validation, so changes apply one at a time on the version before them.
    store: tokio::sync::Mutex<Store>,
    validator: Arc<dyn ChangeValidator>,
    /// The current version; each subscription sends its proxy's own view of it.
    current: watch::Sender<Arc<Published>>,
    proxies: Mutex<BTreeMap<String, ProxyRecord>>,
    max_module_size: usize,
    /// Fired on shutdown: subscriptions end so the server can stop.
    stopping: watch::Sender<bool>,
    registry: Arc<Registry>,
    /// Join tokens name the identity a registration carries and what it may register.
    tokens: Arc<Mutex<JoinTokens>>,
    ca: Arc<MeshCa>,
}

/// The current version as stored.
struct Published {
    version: u64,
    overlay: Overlay,
}

/// What the service shares with the identity service: the CA and the join tokens.
pub struct MeshAuthority {
    pub ca: Arc<MeshCa>,
    pub tokens: Arc<Mutex<JoinTokens>>,
}

// === impl ControlService ===

impl ControlService {
    pub fn new(
        store: Store,
        validator: Arc<dyn ChangeValidator>,
        max_module_size: usize,
        registry: Arc<Registry>,
        authority: MeshAuthority,
    ) -> Self {
        let current = published(store.current());
        Self {
            shared: Arc::new(Shared {
                store: tokio::sync::Mutex::new(store),
                validator,
                current: watch::channel(Arc::new(current)).0,
                proxies: Mutex::default(),
                max_module_size,
                stopping: watch::channel(false).0,
                registry,
                tokens: authority.tokens,
                ca: authority.ca,
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
            .send_replace(Arc::new(published(Some(record))));
        tracing::info!(version = record.version, description = %record.description, "new version");
    }
}

/// Parses a request's `to`: refused with the reason when it is not a target.
fn target_of(text: &str) -> Result<Option<Target>, Status> {
    Target::parse(text).map_err(Status::invalid_argument)
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
        let target = target_of(&request.to)?;
        let mut store = self.shared.store.lock().await;
        let current = store
            .current()
            .map(|v| v.overlay.clone())
            .unwrap_or_default();
        let invalid = |e: crate::overlay::EditError| Status::invalid_argument(e.to_string());
        let next = match &target {
            None => current.edited(&request.edits).map_err(invalid)?,
            Some(target) => {
                let edited = current
                    .for_target(target)
                    .edited(&request.edits)
                    .map_err(invalid)?;
                current.with_target(target, edited)
            }
        };
        self.validate(&store, &request.edits).await?;
        let description = match (request.description, &target) {
            (text, None) if text.is_empty() => describe(&request.edits),
            (text, Some(target)) if text.is_empty() => {
                format!("{} (for {target})", describe(&request.edits))
            }
            (text, _) => text,
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
        let request = request.into_inner();
        let (to, target) = (request.to_version, target_of(&request.to)?);
        let mut store = self.shared.store.lock().await;
        let then = match to {
            0 => Overlay::default(),
            _ => store
                .version(to)
                .map(|v| v.overlay.clone())
                .ok_or_else(|| Status::not_found(format!("there is no version {to}")))?,
        };
        let (overlay, description) = match &target {
            None => (then, format!("rollback to version {to}")),
            Some(target) => {
                let current = store
                    .current()
                    .map(|v| v.overlay.clone())
                    .unwrap_or_default();
                (
                    current.with_target(target, then.for_target(target)),
                    format!("rollback of the edits for {target} to version {to}"),
                )
            }
        };
        let record = store.append(overlay, description).map_err(internal)?;
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
        Ok(Response::new(self.status_reply()))
    }

    type SubscribeStream = ReceiverStream<Result<crate::proto::ConfigUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.start_subscription(request.into_inner())
            .map(Response::new)
    }

    async fn acknowledge(
        &self,
        request: Request<AckRequest>,
    ) -> Result<Response<AckReply>, Status> {
        self.record_ack(request.into_inner())?;
        Ok(Response::new(AckReply {}))
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesReply>, Status> {
        Ok(Response::new(
            self.services_reply(&request.into_inner().service),
        ))
    }

    type DiscoverStream = ReceiverStream<Result<EndpointUpdate, Status>>;

    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        self.start_discovery(request.into_inner())
            .map(Response::new)
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterReply>, Status> {
        let removed = self.withdraw(request.into_inner()).await?;
        Ok(Response::new(DeregisterReply { removed }))
    }
}

fn published(record: Option<&VersionRecord>) -> Published {
    match record {
        Some(record) => Published {
            version: record.version,
            overlay: record.overlay.clone(),
        },
        None => Published {
            version: 0,
            overlay: Overlay::default(),
        },
    }
}

fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "data dir failure");
    Status::internal(format!("the control service's data dir failed: {error}"))
}
