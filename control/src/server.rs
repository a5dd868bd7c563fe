//! Serving the control API: bind (loopback unless a token guards it), open the store (a
//! data dir, or etcd shared with other replicas), serve until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::RequireBearer;
use crate::identity::{IdentityService, IdentitySettings};
use crate::proto::control_server::ControlServer;
use crate::proto::identity_admin_server::IdentityAdminServer;
use crate::proto::identity_server::IdentityServer;
use crate::service::{ChangeValidator, ControlService};
use crate::store::{Store, StoreError, StoreLocation};

/// Modules larger than this are refused unless the service is told otherwise.
pub const DEFAULT_MAX_MODULE_SIZE: usize = 32 << 20;

pub struct ControlSettings {
    pub listen: SocketAddr,
    /// Where modules, versions, the CA and join tokens are kept.
    pub store: StoreLocation,
    /// Required from every client when set; required to listen beyond loopback.
    pub token: Option<String>,
    pub max_module_size: usize,
    /// The mesh CA's trust domain and certificate lifetime.
    pub identity: IdentitySettings,
    /// How long registered instances outlive their proxy's subscription.
    pub lease_ttl: Duration,
    /// This replica's name in `sluice status` [the host name and the port it listens on].
    pub name: Option<String>,
    /// Serve TLS even on loopback (beyond loopback it always does).
    pub tls: bool,
    /// More names (DNS or IP) for the replica's certificate, as clients dial it.
    pub tls_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "refusing to serve the control API on {0} without a token: set --token (or SLUICE_CONTROL_TOKEN), or listen on loopback"
    )]
    Unguarded(SocketAddr),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("mesh CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("certificate lifetime {0:?}: more than zero and at most 7 days")]
    CertTtl(Duration),
    #[error("lease TTL {0:?}: at least 100ms and at most 1 hour")]
    LeaseTtl(Duration),
}

/// A control service serving on a socket.
pub struct RunningControl {
    address: SocketAddr,
    /// `https` or `http`.
    scheme: &'static str,
    ca_digest: String,
    service: ControlService,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningControl {
    pub async fn start(
        settings: ControlSettings,
        validator: Arc<dyn ChangeValidator>,
    ) -> Result<Self, ControlError> {
        if !settings.listen.ip().is_loopback() && settings.token.is_none() {
            return Err(ControlError::Unguarded(settings.listen));
        }
        let ttl = settings.identity.cert_ttl;
        if ttl.is_zero() || ttl > crate::ca::MAX_CERT_TTL {
            return Err(ControlError::CertTtl(ttl));
        }
        let lease_ttl = settings.lease_ttl;
        if lease_ttl < Duration::from_millis(100) || lease_ttl > Duration::from_secs(3600) {
            return Err(ControlError::LeaseTtl(lease_ttl));
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ControlError::Bind {
                address: settings.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| ControlError::Bind {
            address: settings.listen,
            source,
        })?;
        // Bound first, so a port already taken is reported before waiting on etcd; then let
        // go until the store is read, so clients are refused and try another replica rather
        // than waiting on this one (a connection accepted and closed looks, to an HTTP/2
        // client, like a replica that failed only at its first call).
        drop(listener);
        let store = Arc::new(Store::open(&settings.store).await?);
        let current = store.versions().current_version();
        let ca = Arc::new(store.mesh_ca(&settings.identity.trust_domain).await?);
        let tokens = Arc::new(store.join_tokens()?);
        let identity = IdentityService::new(
            Arc::clone(&ca),
            Arc::clone(&tokens),
            settings.identity.cert_ttl,
        );
        let registry = match store.etcd() {
            None => crate::registry::Registry::start(lease_ttl),
            Some(etcd) => crate::registry::Registry::start_shared(lease_ttl, etcd.clone()).await,
        };
        let name = settings
            .name
            .clone()
            .unwrap_or_else(|| default_name(address));
        // Beyond loopback, always TLS: nobody on the network may read or impersonate it.
        let tls = (settings.tls || !settings.listen.ip().is_loopback())
            .then(|| {
                let names = crate::tls::replica_names(&settings.tls_names, &name, address);
                crate::tls::ReplicaTls::start(Arc::clone(&ca), names).map(Arc::new)
            })
            .transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca_digest = ca.digest();
        let service = ControlService::new(
            Arc::clone(&store),
            validator,
            settings.max_module_size,
            registry,
            crate::service::MeshAuthority { ca, tokens },
            settings
                .name
                .clone()
                .unwrap_or_else(|| default_name(address)),
        );
        // Far above the module limit, so the service itself answers an oversize upload with
        // the limit and the flag that sets it.
        let limit = settings.max_module_size.saturating_mul(4) + (1 << 20);
        let server = tonic::service::interceptor::InterceptedService::new(
            ControlServer::new(service.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            RequireBearer::new(settings.token.as_deref()),
        );
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ControlError::Bind { address, source })?;
        let incoming = ReceiverStream::new(crate::tls::accept(listener, tls));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                // `/ready` is plain HTTP, for load balancers and orchestrators.
                .accept_http1(true)
                .layer(crate::ready::ReadyLayer::new(store))
                // A proxy that vanished without closing (a lost node) is noticed in seconds,
                // so `status` stops calling it connected and `push --wait` stops waiting.
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .add_service(server)
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    IdentityAdminServer::new(identity.clone()),
                    RequireBearer::new(settings.token.as_deref()),
                ))
                // Proxies authenticate with their join token here, not the bearer token.
                .add_service(IdentityServer::new(identity))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        tracing::info!(%address, scheme, store = %settings.store, version = current, mesh_ca_sha256 = %ca_digest, "control service listening");
        Ok(Self {
            address,
            scheme,
            ca_digest,
            service,
            stop: Some(stop),
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL clients reach it at: `https://` when it serves TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// The SHA-256 of the mesh CA's certificate: what clients pin.
    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// Ends the subscriptions and stops serving.
    pub async fn shutdown(mut self) {
        self.service.stop_subscriptions();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the control service failed"),
            Err(error) => tracing::error!(%error, "the control service task failed"),
        }
    }
}

/// `<host name>:<port>`: unique among replicas, and says where each one is.
fn default_name(address: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| address.ip().to_string());
    format!("{host}:{}", address.port())
}

impl Drop for RunningControl {
    fn drop(&mut self) {
        self.service.stop_subscriptions();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
