//! `sluice demo`: a small mesh on loopback with nothing to install. Two instances of a demo
//! app, each behind its own sidecar, and a gateway in front of them (round robin, health
//! checks). The gateway and the sidecars talk mutual TLS with workload identities that the
//! control service issues (it is the mesh CA), and the sidecars let only the gateway's
//! identity in (`authz` on `peers`). The gateway runs the standard filters: `metrics`
//! everywhere, `authz` on `/admin`, `ratelimit` on `/limited`, `circuit-breaker` on `/flaky`,
//! where the app fails, `retry` on `/unsteady`, where each instance fails every other request.
//! The gateway subscribes to the control service, so a `sluice push` hot-swaps a filter while
//! curl runs.
//!
//! The demo app answers every request with who it is and what it received, which makes the
//! proxy's work (balancing, `x-forwarded-for`, `x-request-id`) visible with plain curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{LoadedConfig, load_str};

/// Where the demo's gateway, admin endpoint and control service listen.
pub const GATEWAY_ADDRESS: &str = "127.0.0.1:10000";
pub const ADMIN_ADDRESS: &str = "127.0.0.1:9901";
pub const CONTROL_ADDRESS: &str = "127.0.0.1:9990";

/// The standard filters: what the demo runs and the filters' tests build.
const FILTER_PACKAGES: &[&str] = &[
    "sluice-filter-authz",
    "sluice-filter-circuit-breaker",
    "sluice-filter-metrics",
    "sluice-filter-ratelimit",
    "sluice-filter-retry",
];

/// The API key the demo's `/admin` accepts.
pub const DEMO_API_KEY: &str = "demo-key";

/// Starts one demo app on an ephemeral loopback port; it serves until the runtime stops.
pub async fn start_demo_app(name: &'static str) -> std::io::Result<SocketAddr> {
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    let unsteady = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            let unsteady = std::sync::Arc::clone(&unsteady);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let unsteady = std::sync::Arc::clone(&unsteady);
                    async move { Ok::<_, Infallible>(answer(name, address, &request, &unsteady)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// `unsteady` counts this instance's `/unsteady` requests.
fn answer(
    name: &str,
    address: SocketAddr,
    request: &Request<Incoming>,
    unsteady: &std::sync::atomic::AtomicU64,
) -> Response<Full<Bytes>> {
    let header = |key: &str| {
        request
            .headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "hello from {name} at {address}\n{} {}\nx-forwarded-for: {}\nx-request-id: {}\ncaller (its mTLS identity, checked by the sidecar): {}\n",
        request.method(),
        request.uri(),
        header("x-forwarded-for"),
        header("x-request-id"),
        header("x-authz-principal"),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    // `/flaky/...` fails, so the circuit breaker has something to do.
    if request.uri().path().starts_with("/flaky") {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    // `/unsteady/...` fails every other time on each instance, so retries have work.
    if request.uri().path().starts_with("/unsteady")
        && unsteady
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(2)
    {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

/// Builds the standard filters from this source tree for `wasm32-wasip1` (adding the target
/// with rustup when it is missing) and returns the folder of their `.wasm` files. The demo
/// runs from `cargo run`, so cargo and the sources are at hand.
pub fn build_standard_filters() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("Cargo.toml");
    if !manifest.exists() {
        return Err(format!(
            "the demo builds the standard filters from the source tree at {}, which is not there; run it with `cargo run --release -p sluice -- demo` from a checkout",
            root.display()
        ));
    }
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip1")
        });
    if !has_target {
        // No rustup (a distribution's Rust) leaves it to the build to say what is missing.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip1"])
            .current_dir(&root)
            .status();
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    crate::wasm::build_wasm_packages(&manifest, FILTER_PACKAGES, &target.join("wasm-filters"))
}

/// The demo's gateway config: in front of the given sidecars (mesh mTLS to the `hello`
/// workload), with the metrics filter on every request, an API key on `/admin`, a tight rate
/// limit on `/limited`, a circuit breaker on `/flaky` and retries on `/unsteady`. `listen` is
/// the gateway's and the admin endpoint's address ([`GATEWAY_ADDRESS`], [`ADMIN_ADDRESS`]).
pub fn gateway_config(
    sidecars: &[SocketAddr],
    filters: &Path,
    listen: (&str, &str),
) -> Result<LoadedConfig, crate::config::ConfigError> {
    let (gateway, admin) = listen;
    let endpoints: Vec<String> = sidecars.iter().map(|a| format!("\"{a}\"")).collect();
    let metrics = filters.join("metrics.wasm");
    let ratelimit = filters.join("ratelimit.wasm");
    let authz = filters.join("authz.wasm");
    let breaker = filters.join("circuit_breaker.wasm");
    let retry = filters.join("retry.wasm");
    let yaml = format!(
        r#"
admin: {{ address: "{admin}" }}
workers: 2
listeners:
  - name: gateway
    address: "{gateway}"
    filters:
      - {{ name: metrics, module: "{metrics}" }}
      - name: authz
        module: "{authz}"
        config:
          default: allow
          api_keys: {{ keys: {{ {DEMO_API_KEY}: demo-operator }} }}
          rules: [{{ action: allow, paths: ["/admin/*"], require: api_key }}]
    routes:
      - name: limited
        match: {{ prefix: /limited }}
        cluster: hello
        filters:
          - name: ratelimit
            module: "{ratelimit}"
            config: {{ key: source, rate: 3, per: 10s }}
      - name: flaky
        match: {{ prefix: /flaky }}
        cluster: hello
        filters:
          - name: breaker
            module: "{breaker}"
            config: {{ consecutive_failures: 3, open_for: 10s }}
      - name: unsteady
        match: {{ prefix: /unsteady }}
        cluster: hello
        filters:
          - name: retry
            module: "{retry}"
            config: {{ attempts_header: x-sluice-attempts }}
      - name: hello
        match: {{ prefix: / }}
        cluster: hello
        timeout: 5s
clusters:
  - name: hello
    endpoints: [{}]
    lb_policy: round_robin
    health_check: {{ path: /healthz, interval: 2s }}
    tls: {{ mesh: true, peers: ["{hello_id}"] }}
"#,
        endpoints.join(", "),
        hello_id = spiffe_id(HELLO_WORKLOAD),
        metrics = metrics.display(),
        ratelimit = ratelimit.display(),
        authz = authz.display(),
        breaker = breaker.display(),
        retry = retry.display(),
    );
    load_str(&yaml, Path::new("<sluice demo>"))
}

/// The mesh's trust domain and the demo's workloads.
pub const TRUST_DOMAIN: &str = "demo.sluice";
const GATEWAY_WORKLOAD: &str = "ns/demo/sa/gateway";
const HELLO_WORKLOAD: &str = "ns/demo/sa/hello";

fn spiffe_id(workload: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{workload}")
}

/// A sidecar in front of `app`, on a free port: mesh mTLS (strict) in, and only the gateway's
/// identity allowed (`authz` on `peers`).
pub fn sidecar_config(
    app: SocketAddr,
    filters: &Path,
) -> Result<LoadedConfig, crate::config::ConfigError> {
    let yaml = format!(
        r#"
workers: 1
listeners:
  - name: inbound
    address: "127.0.0.1:0"
    tls: {{ mesh: strict }}
    filters:
      - name: authz
        module: "{authz}"
        config: {{ rules: [{{ action: allow, paths: ["/*"], peers: ["{gateway}"] }}] }}
    routes:
      - match: {{ prefix: / }}
        cluster: app
clusters:
  - name: app
    endpoints: ["{app}"]
"#,
        authz = filters.join("authz.wasm").display(),
        gateway = spiffe_id(GATEWAY_WORKLOAD),
    );
    load_str(&yaml, Path::new("<sluice demo sidecar>"))
}

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
    renewals: Vec<tokio::task::JoinHandle<()>>,
    control_dir: PathBuf,
}

/// Starts the control service (the mesh CA), the two app instances with their sidecars, and
/// the gateway, each proxy with its workload identity from a join token.
pub async fn start_mesh(filters: &Path, addresses: &DemoAddresses<'_>) -> Result<DemoMesh, String> {
    let control_dir = std::env::temp_dir().join(format!(
        "sluice-demo-control-{}-{}",
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
            data_dir: control_dir.clone(),
            token: None,
            max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
            identity: sluice_control::IdentitySettings {
                trust_domain: TRUST_DOMAIN.to_owned(),
                cert_ttl: std::time::Duration::from_secs(3600),
            },
        },
        crate::control::ProxyValidator::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let url = format!("http://{}", control.address());
    let mut renewals = Vec::new();

    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for name in ["hello-1", "hello-2"] {
        let app = start_demo_app(name).await.map_err(|e| e.to_string())?;
        let mut loaded = sidecar_config(app, filters).map_err(|e| e.to_string())?;
        let (identity, renewal) = join(&url, HELLO_WORKLOAD).await?;
        loaded.mesh = Some(identity);
        renewals.push(renewal);
        let sidecar = crate::RunningProxy::start(&loaded)
            .await
            .map_err(|e| format!("the sidecar of {name}: {e}"))?;
        apps.push(app);
        sidecars.push(sidecar);
    }
    let inbound: Vec<SocketAddr> = sidecars
        .iter()
        .filter_map(|sidecar| sidecar.listener_address("inbound"))
        .collect();
    let mut loaded = gateway_config(&inbound, filters, (addresses.gateway, addresses.admin))
        .map_err(|e| e.to_string())?;
    let (identity, renewal) = join(&url, GATEWAY_WORKLOAD).await?;
    loaded.mesh = Some(identity);
    renewals.push(renewal);
    let gateway = crate::RunningProxy::start(&loaded)
        .await
        .map_err(|e| format!("the gateway: {e}"))?;
    Ok(DemoMesh {
        control,
        gateway,
        sidecars,
        apps,
        renewals,
        control_dir,
    })
}

/// What `sluice join-token` and `--join-token-file` do: a token for `workload`, then its
/// identity, kept renewed.
async fn join(
    url: &str,
    workload: &str,
) -> Result<
    (
        std::sync::Arc<crate::tls::MeshIdentity>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let mut admin = sluice_control::connect_identity_admin(url, None)
        .await
        .map_err(|e| e.to_string())?;
    let token = admin
        .create_join_token(sluice_control::proto::CreateJoinTokenRequest {
            workload: workload.to_owned(),
        })
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner()
        .token;
    let source = crate::control::IdentitySource {
        url: url.to_owned(),
        join_token: token,
    };
    let identity = source.obtain().await.map_err(|e| e.to_string())?;
    let renewal = source.keep_renewed(std::sync::Arc::clone(&identity));
    Ok((identity, renewal))
}

impl DemoMesh {
    pub async fn shutdown(self) {
        for renewal in &self.renewals {
            renewal.abort();
        }
        self.gateway.shutdown().await;
        for sidecar in self.sidecars {
            sidecar.shutdown().await;
        }
        self.control.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}
