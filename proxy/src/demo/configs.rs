//! The demo's proxy configs: the gateway in front of the `hello` service, and a sidecar in
//! front of each app instance that registers it.

use std::net::SocketAddr;
use std::path::Path;

use super::DEMO_API_KEY;
use crate::config::{LoadedConfig, load_str};

/// The demo's gateway config: in front of the `hello` service (discovered in the registry;
/// mesh mTLS to the identity each instance registered with), with the metrics filter on every request, an API key on `/admin`, a tight rate
/// limit on `/limited`, a circuit breaker on `/flaky` and retries on `/unsteady`. `listen` is
/// the gateway's and the admin endpoint's address ([`GATEWAY_ADDRESS`], [`ADMIN_ADDRESS`]).
pub fn gateway_config(
    filters: &Path,
    listen: (&str, &str),
) -> Result<LoadedConfig, crate::config::ConfigError> {
    let (gateway, admin) = listen;
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
    service: hello
    lb_policy: round_robin
    health_check: {{ path: /healthz, interval: 2s }}
    tls: {{ mesh: true, peers: ["{hello_id}"] }}
"#,
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
pub(super) const GATEWAY_WORKLOAD: &str = "ns/demo/sa/gateway";
pub(super) const HELLO_WORKLOAD: &str = "ns/demo/sa/hello";

fn spiffe_id(workload: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{workload}")
}

/// A sidecar in front of `app`, listening on `port`: it registers `hello` there, takes mesh
/// mTLS (strict) in, and allows only the gateway's identity (`authz` on `peers`).
pub fn sidecar_config(
    app: SocketAddr,
    filters: &Path,
    port: u16,
) -> Result<LoadedConfig, crate::config::ConfigError> {
    load_str(
        &sidecar_yaml(app, filters, port),
        Path::new("<sluice demo sidecar>"),
    )
}

/// The text of [`sidecar_config`], also written out for a sidecar started by hand.
pub fn sidecar_yaml(app: SocketAddr, filters: &Path, port: u16) -> String {
    format!(
        r#"
workers: 1
register:
  - {{ service: hello, address: "127.0.0.1:{port}", labels: {{ version: v1 }} }}
listeners:
  - name: inbound
    address: "127.0.0.1:{port}"
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
    )
}
