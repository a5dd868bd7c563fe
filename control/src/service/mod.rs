//! The control service: validates and stores changes as versions, streams the current
//! version to every subscribed proxy, and keeps what each proxy acknowledged for `status`.
//! Changes (`changes.rs`) are appended as versions; subscriptions (`subscription.rs`) also
//! hold registrations in the mesh registry, which `registry_calls.rs` serves.

mod changes;
mod proxy_book;
mod registry_calls;
mod subscription;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ca::MeshCa;
use crate::overlay::{FilterAttachment, is_sha256};
use crate::proto::control_server::Control;
use crate::proto::{
    AckReply, AckRequest, ChangeReply, ChangeRequest, DeregisterReply, DeregisterRequest,
    DiscoverRequest, EndpointUpdate, GetModuleReply, GetModuleRequest, ListServicesReply,
    ListServicesRequest, ListVersionsReply, ListVersionsRequest, RollbackRequest, StatusReply,
    StatusRequest, SubscribeRequest, UploadModuleReply, UploadModuleRequest, VersionInfo,
};
use crate::registry::Registry;
use crate::store::{Store, StoreError};
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
    /// Modules and versions; its version log is what subscriptions follow.
    store: Arc<Store>,
    /// Held through validation, so this replica's changes apply one at a time on the
    /// version before them. Other replicas' changes are ordered by the store.
    changing: tokio::sync::Mutex<()>,
    validator: Arc<dyn ChangeValidator>,
    proxies: Mutex<BTreeMap<String, ProxyRecord>>,
    max_module_size: usize,
    /// Fired on shutdown: subscriptions end so the server can stop.
    stopping: watch::Sender<bool>,
    registry: Arc<Registry>,
    /// Join tokens name the identity a registration carries and what it may register.
    tokens: Arc<JoinTokens>,
    ca: Arc<MeshCa>,
    /// This replica's name, as `status` shows it.
    replica: String,
    /// With etcd: where every replica records its proxies for `status`.
    proxy_book: Option<proxy_book::ProxyBook>,
}

/// What the service shares with the identity service: the CA and the join tokens.
pub struct MeshAuthority {
    pub ca: Arc<MeshCa>,
    pub tokens: Arc<JoinTokens>,
}

// === impl ControlService ===

impl ControlService {
    pub fn new(
        store: Arc<Store>,
        validator: Arc<dyn ChangeValidator>,
        max_module_size: usize,
        registry: Arc<Registry>,
        authority: MeshAuthority,
        replica: String,
    ) -> Self {
        let proxy_book = store.etcd().cloned().map(proxy_book::ProxyBook::start);
        Self {
            shared: Arc::new(Shared {
                replica,
                proxy_book,
                store,
                changing: tokio::sync::Mutex::new(()),
                validator,
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
        let sha256 = self
            .shared
            .store
            .put_module(&module)
            .await
            .map_err(store_failed)?;
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
        match self
            .shared
            .store
            .module(&digest)
            .await
            .map_err(store_failed)?
        {
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
        let version = self.apply_change(request.into_inner()).await?;
        Ok(Response::new(ChangeReply { version }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let version = self.apply_rollback(request.into_inner()).await?;
        Ok(Response::new(ChangeReply { version }))
    }

    async fn list_versions(
        &self,
        _: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsReply>, Status> {
        let log = self.shared.store.versions();
        let versions = log
            .all()
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
            current: log.current_version(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.status_reply().await))
    }

    type SubscribeStream = ReceiverStream<Result<crate::proto::ConfigUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Known when the proxy subscribed with mutual TLS, showing its workload certificate.
        let spiffe_id = request
            .extensions()
            .get::<crate::tls::ControlPeer>()
            .and_then(|peer| peer.spiffe_id.clone())
            .unwrap_or_default();
        self.start_subscription(request.into_inner(), spiffe_id)
            .await
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

/// A store failure as callers see it: etcd unreachable or without quorum is `unavailable`
/// (try again), anything else is the control service's own fault.
pub(crate) fn store_failed(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(_) => {
            tracing::warn!(%error, "store call failed");
            Status::unavailable(error.to_string())
        }
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal(format!("the control service's store failed: {other}"))
        }
    }
}
