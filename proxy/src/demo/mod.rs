//! `sluice demo`: a small mesh on loopback with nothing to install. Two instances of a demo
//! app, each behind its own sidecar, and a gateway in front of them (round robin, health
//! checks). The gateway and the sidecars talk mutual TLS with workload identities that the
//! control service issues (it is the mesh CA), and the sidecars let only the gateway's
//! identity in (`authz` on `peers`). The gateway runs the standard filters: `metrics`
//! everywhere, `authz` on `/admin`, `ratelimit` on `/limited`, `circuit-breaker` on `/flaky`,
//! where the app fails, `retry` on `/unsteady`, where each instance fails every other request.
//! The sidecars register the `hello` service in the control service's registry and the
//! gateway discovers it (`service: hello`), so a third instance started by hand gets traffic
//! at once. The gateway subscribes to the control service, so a `sluice push` hot-swaps a
//! filter while curl runs.

mod app;
mod configs;
mod filters;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use app::start_demo_app;
use configs::{GATEWAY_WORKLOAD, HELLO_WORKLOAD};
pub use configs::{TRUST_DOMAIN, gateway_config, sidecar_config};
pub use filters::build_standard_filters;

use crate::control::{ControlSubscription, IdentitySource, SubscriberSettings};

/// Where the demo's gateway, admin endpoint and control service listen.
pub const GATEWAY_ADDRESS: &str = "127.0.0.1:10000";
pub const ADMIN_ADDRESS: &str = "127.0.0.1:9901";
pub const CONTROL_ADDRESS: &str = "127.0.0.1:9990";

/// The API key the demo's `/admin` accepts.
pub const DEMO_API_KEY: &str = "demo-key";

/// Where the demo's gateway, admin endpoint and control service listen: the fixed addresses
/// for `sluice demo`, `127.0.0.1:0` in tests.
pub struct DemoAddresses<'a> {
    pub gateway: &'a str,
    pub admin: &'a str,
    pub control: &'a str,
}

/// Everything the demo runs; [`DemoMesh::shutdown`] stops it.
pub struct DemoMesh {
    pub control: sluice_control::RunningControl,
    pub gateway: crate::RunningProxy,
    pub sidecars: Vec<crate::RunningProxy>,
    pub apps: Vec<SocketAddr>,
    /// A third app with a sidecar config and join token ready for `sluice proxy`: what the
    /// demo suggests starting to see traffic spread to a new instance.
    pub extra_instance: ExtraInstance,
    subscriptions: Vec<ControlSubscription>,
    renewals: Vec<tokio::task::JoinHandle<()>>,
    folder: PathBuf,
}

/// What it takes to start one more `hello` instance by hand.
pub struct ExtraInstance {
    pub app: SocketAddr,
    pub config: PathBuf,
    pub join_token: PathBuf,
}

/// Starts the control service (the mesh CA and registry), the two app instances with their
/// sidecars (which register `hello`), and the gateway (which discovers it), each proxy with
/// its workload identity from a join token. Returns once the gateway has both instances.
pub async fn start_mesh(
    filters: &std::path::Path,
    addresses: &DemoAddresses<'_>,
) -> Result<DemoMesh, String> {
    let folder = std::env::temp_dir().join(format!(
        "sluice-demo-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let listen = addresses
        .control
        .parse()
        .map_err(|e| format!("{}: {e}", addresses.control))?;
    let control = sluice_control::RunningControl::start(
        sluice_control::ControlSettings {
            listen,
            store: sluice_control::StoreLocation::Dir(folder.join("control")),
            token: None,
            max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
            lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
            name: None,
            tls: false,
            tls_names: Vec::new(),
            identity: sluice_control::IdentitySettings {
                trust_domain: TRUST_DOMAIN.to_owned(),
                cert_ttl: Duration::from_secs(3600),
            },
        },
        crate::control::ProxyValidator::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let url = format!("http://{}", control.address());
    let (mut renewals, mut subscriptions) = (Vec::new(), Vec::new());

    let hello_token = create_join_token(&url, HELLO_WORKLOAD, &["hello"]).await?;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for name in ["hello-1", "hello-2"] {
        let app = start_demo_app(name).await.map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let mut loaded = sidecar_config(app, filters, port).map_err(|e| e.to_string())?;
        let (identity, renewal) = join(&url, &hello_token).await?;
        loaded.mesh = Some(identity);
        renewals.push(renewal);
        let sidecar = crate::RunningProxy::start(&loaded)
            .await
            .map_err(|e| format!("the sidecar of {name}: {e}"))?;
        subscriptions.push(subscribe(
            &url,
            &format!("{name}-sidecar"),
            Some(&hello_token),
            &sidecar,
        ));
        apps.push(app);
        sidecars.push(sidecar);
    }

    let extra_instance = prepare_extra_instance(&folder, filters, &hello_token).await?;
    let mut loaded =
        gateway_config(filters, (addresses.gateway, addresses.admin)).map_err(|e| e.to_string())?;
    let gateway_token = create_join_token(&url, GATEWAY_WORKLOAD, &[]).await?;
    let (identity, renewal) = join(&url, &gateway_token).await?;
    loaded.mesh = Some(identity);
    renewals.push(renewal);
    let gateway = crate::RunningProxy::start(&loaded)
        .await
        .map_err(|e| format!("the gateway: {e}"))?;
    subscriptions.push(subscribe(&url, "gateway", None, &gateway));
    wait_for_instances(&gateway, 2).await?;
    Ok(DemoMesh {
        control,
        gateway,
        sidecars,
        apps,
        extra_instance,
        subscriptions,
        renewals,
        folder,
    })
}

/// The gateway's subscription, or a sidecar's, which registers what its file lists.
fn subscribe(
    url: &str,
    proxy_id: &str,
    join_token: Option<&str>,
    proxy: &crate::RunningProxy,
) -> ControlSubscription {
    ControlSubscription::start(
        SubscriberSettings {
            url: url.to_owned(),
            token: None,
            proxy_id: proxy_id.to_owned(),
            join_token: join_token.map(str::to_owned),
            trust: sluice_control::ControlTrust::default(),
        },
        proxy.applier(),
    )
}

/// A third app, and the files `sluice proxy` needs to put a sidecar in front of it.
async fn prepare_extra_instance(
    folder: &std::path::Path,
    filters: &std::path::Path,
    hello_token: &str,
) -> Result<ExtraInstance, String> {
    let app = start_demo_app("hello-3").await.map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let yaml = configs::sidecar_yaml(app, filters, port);
    let config = folder.join("hello-3-sidecar.yaml");
    let join_token = folder.join("hello.token");
    let write = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&config, &yaml)?;
    write(&join_token, hello_token)?;
    Ok(ExtraInstance {
        app,
        config,
        join_token,
    })
}

/// Waits (at most 10s) until the gateway's `hello` cluster has `count` endpoints.
async fn wait_for_instances(gateway: &crate::RunningProxy, count: usize) -> Result<(), String> {
    for _ in 0..500 {
        let snapshot = gateway.state().snapshot();
        let found = snapshot
            .clusters
            .iter()
            .find(|c| c.name == "hello")
            .map_or(0, |c| c.endpoints().len());
        if found >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "the gateway did not discover {count} instances of hello within 10s"
    ))
}

/// A free loopback port: a registered address must be known before the proxy binds it.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What `sluice join-token` does.
async fn create_join_token(url: &str, workload: &str, services: &[&str]) -> Result<String, String> {
    let mut admin = sluice_control::connect_identity_admin(url, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(admin
        .create_join_token(sluice_control::proto::CreateJoinTokenRequest {
            workload: workload.to_owned(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner()
        .token)
}

/// What `--join-token-file` does: the workload identity of `token`, kept renewed.
async fn join(
    url: &str,
    token: &str,
) -> Result<(Arc<crate::tls::MeshIdentity>, tokio::task::JoinHandle<()>), String> {
    let source = IdentitySource {
        url: url.to_owned(),
        join_token: token.to_owned(),
        trust: sluice_control::ControlTrust::default(),
    };
    let identity = source.obtain().await.map_err(|e| e.to_string())?;
    let renewal = source.keep_renewed(Arc::clone(&identity));
    Ok((identity, renewal))
}

impl DemoMesh {
    /// Sidecars deregister, then everything stops.
    pub async fn shutdown(self) {
        for subscription in self.subscriptions {
            subscription.leave().await;
        }
        for renewal in &self.renewals {
            renewal.abort();
        }
        self.gateway.shutdown().await;
        for sidecar in self.sidecars {
            sidecar.shutdown().await;
        }
        self.control.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}
