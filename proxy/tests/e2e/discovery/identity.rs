//! Mesh mTLS to discovered endpoints: a caller requires of each endpoint exactly the identity
//! that registered it, so a workload cannot register itself in front of another's address.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::support::*;

/// A proxy with a strict mesh-mTLS listener `main` on `port` in front of `app`, registering
/// `register` (YAML list entries, may be empty).
fn start_mesh_sidecar(
    name: &str,
    control: &str,
    token: &Path,
    port: u16,
    app: std::net::SocketAddr,
    register: &str,
) -> SpawnedProxy {
    let config = write_config(
        name,
        &format!(
            r#"
workers: 1
register: [{register}]
listeners:
  - name: main
    address: 127.0.0.1:{port}
    tls: {{ mesh: strict }}
    routes: [{{ match: {{ prefix: / }}, cluster: app }}]
clusters:
  - name: app
    endpoints: ["{app}"]
"#
        ),
    );
    let token = token.to_str().unwrap();
    SpawnedProxy::start_with(
        &config,
        &[
            "--control",
            control,
            "--join-token-file",
            token,
            "--id",
            name,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_require_the_identity_that_registered_each_endpoint() {
    let (folder, control) = start_control("identity");
    let hello_token = join_token(&control.url, &folder, "ns/demo/sa/hello", &[]);
    let impostor_token = join_token(&control.url, &folder, "ns/evil/sa/impostor", &[]);
    let gateway_token = join_token(&control.url, &folder, "ns/demo/sa/gateway", &[]);
    let app = TestUpstream::start("hello").await;

    // The real hello instance serves hello's certificate but registers nothing yet.
    let hello_port = free_port();
    let _hello = start_mesh_sidecar(
        "identity-hello",
        &control.url,
        &hello_token,
        hello_port,
        app.addr,
        "",
    );
    // Another workload registers hello at the real instance's address.
    let decoy = TestUpstream::start("decoy").await;
    let _impostor = start_mesh_sidecar(
        "identity-impostor",
        &control.url,
        &impostor_token,
        free_port(),
        decoy.addr,
        &format!("{{ service: hello, address: \"127.0.0.1:{hello_port}\" }}"),
    );
    let gateway = start_mesh_gateway("identity-gateway", &control.url, &gateway_token);
    assert!(
        eventually(Duration::from_secs(5), async || services(&control.url)
            .contains("ns/evil/sa/impostor"))
        .await
    );
    // The endpoint's certificate says hello; the registration said impostor: refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = get(gateway.addr, "/").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.header("x-sluice-reason"),
        Some("upstream_connect_failure")
    );
    assert_eq!(app.requests(), 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_shows_its_registered_identity_is_reached_over_mesh_mtls() {
    let (folder, control) = start_control("identity-ok");
    let hello_token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let gateway_token = join_token(&control.url, &folder, "ns/demo/sa/gateway", &[]);
    let app = TestUpstream::start("hello").await;
    let port = free_port();
    let _hello = start_mesh_sidecar(
        "identity-ok-hello",
        &control.url,
        &hello_token,
        port,
        app.addr,
        &format!("{{ service: hello, address: \"127.0.0.1:{port}\" }}"),
    );
    let gateway = start_mesh_gateway("identity-ok-gateway", &control.url, &gateway_token);
    assert!(
        eventually(Duration::from_secs(5), async || get(gateway.addr, "/")
            .await
            .status
            == 200)
        .await,
        "{}",
        gateway.log()
    );
}

/// A gateway that discovers `hello` and talks mesh mTLS to it, joined with `token`.
fn start_mesh_gateway(name: &str, control: &str, token: &std::path::Path) -> SpawnedProxy {
    let config = write_config(
        name,
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: { prefix: / }, cluster: hello }]
clusters:
  - name: hello
    service: hello
    tls: { mesh: true }
"#,
    );
    let token = token.to_str().unwrap();
    SpawnedProxy::start_with(&config, &["--control", control, "--join-token-file", token])
}
