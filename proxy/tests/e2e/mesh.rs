//! Mesh mTLS with workload identities: the control service is the CA, proxies get their
//! certificates with a join token and renew them, and sidecars verify each other's SPIFFE IDs.

use std::sync::Arc;
use std::time::Duration;

use sluice::control::{IdentitySource, ProxyValidator};
use sluice_control::{ControlSettings, IdentitySettings, RunningControl};

use crate::support::*;

async fn mesh_control(name: &str, cert_ttl: Duration) -> RunningControl {
    let settings = ControlSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: sluice_control::StoreLocation::Dir(temp_folder(name)),
        token: None,
        max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
        lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
        name: None,
        tls: false,
        tls_names: Vec::new(),
        identity: IdentitySettings {
            trust_domain: "mesh.test".to_owned(),
            cert_ttl,
        },
    };
    RunningControl::start(settings, ProxyValidator::new())
        .await
        .unwrap()
}

/// The identity of `workload`, as `sluice proxy --join-token-file` gets it.
async fn identity(
    control: &RunningControl,
    workload: &str,
) -> (IdentitySource, Arc<sluice::tls::MeshIdentity>) {
    let url = format!("http://{}", control.address());
    let mut admin = sluice_control::connect_identity_admin(&url, None)
        .await
        .unwrap();
    let token = admin
        .create_join_token(sluice_control::proto::CreateJoinTokenRequest {
            workload: workload.to_owned(),
            services: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let source = IdentitySource {
        url,
        join_token: token,
        trust: sluice_control::ControlTrust::default(),
    };
    let identity = source.obtain().await.unwrap();
    (source, identity)
}

/// A proxy from `yaml` running as `identity`.
async fn proxy_as(
    yaml: &str,
    upstreams: &[&TestUpstream],
    identity: &Arc<sluice::tls::MeshIdentity>,
) -> TestProxy {
    let mut loaded = test_config(yaml, upstreams);
    loaded.mesh = Some(Arc::clone(identity));
    start_loaded(&loaded).await
}

/// The server's sidecar: mesh mTLS (`mode`) in front of `{app}`, through the headers
/// fixture, which stamps the TLS properties on `/tls` requests.
fn inbound(mode: &str) -> String {
    format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {{ mesh: {mode} }}
    filters: [{{ name: tagger, module: {module}, config: "mesh" }}]
    routes: [{{ match: {{ prefix: / }}, cluster: app }}]
clusters:
  - {{ name: app, endpoints: ["{{app}}"] }}
"#,
        module = fixture("headers").display()
    )
}

/// The client's sidecar: plaintext in, mesh mTLS to `server`, which must be one of `peers`.
fn outbound(server: std::net::SocketAddr, peers: &str) -> String {
    format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - name: web
    endpoints: ["{server}"]
    tls: {{ mesh: true, peers: {peers} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_with_issued_identities_verify_each_other_by_spiffe_id() {
    let control = mesh_control("mesh-sidecars", Duration::from_secs(3600)).await;
    let app = TestUpstream::start("app").await;
    let (_, web) = identity(&control, "ns/shop/sa/web").await;
    let (_, checkout) = identity(&control, "ns/shop/sa/checkout").await;
    assert_eq!(web.spiffe_id(), "spiffe://mesh.test/ns/shop/sa/web");

    let server = proxy_as(&inbound("strict"), &[&app], &web).await;
    let client = proxy_as(
        &outbound(server.addr, r#"["spiffe://mesh.test/ns/shop/sa/web"]"#),
        &[],
        &checkout,
    )
    .await;
    let reply = get(client.addr, "/tls/order").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.echoed("x-tls-principal"),
        Some("spiffe://mesh.test/ns/shop/sa/checkout"),
        "the server's filters see who called"
    );

    // A client that expects another service refuses the server's identity.
    let wary = proxy_as(
        &outbound(server.addr, r#"["spiffe://mesh.test/ns/payments/*"]"#),
        &[],
        &checkout,
    )
    .await;
    let refused = get(wary.addr, "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("x-sluice-reason"),
        Some("upstream_connect_failure")
    );

    // Strict: a client without a mesh certificate is not served, not even in plaintext.
    let plaintext = raw_exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!plaintext.contains("200"), "{plaintext}");

    // Strict means strict: plaintext cannot be let in beside it.
    let mut loaded = test_config(&inbound("strict, accept_plaintext: true"), &[&app]);
    loaded.mesh = Some(Arc::clone(&web));
    let error = sluice::config::Snapshot::build(&loaded, 1, &sluice::admin::Metrics::new(), None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("listeners[0].tls.accept_plaintext: strict mesh mode"),
        "{error}"
    );

    // Permissive: the same plaintext client is served, with no identity.
    let lenient = proxy_as(&inbound("permissive"), &[&app], &web).await;
    let migrating = get(lenient.addr, "/tls/plain").await;
    assert_eq!(migrating.status, 200);
    assert_eq!(migrating.echoed("x-tls-mtls"), Some("false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_without_dropping_connections() {
    // Certificates that live 3 s are renewed after 2 s.
    let control = mesh_control("mesh-renewal", Duration::from_secs(3)).await;
    let app = TestUpstream::start("app").await;
    let (web_source, web) = identity(&control, "web").await;
    let (checkout_source, checkout) = identity(&control, "checkout").await;
    let renewals = [
        web_source.keep_renewed(Arc::clone(&web)),
        checkout_source.keep_renewed(Arc::clone(&checkout)),
    ];
    let first = web.current().facts.sha256.clone();

    let server = proxy_as(&inbound("strict"), &[&app], &web).await;
    let client = proxy_as(&outbound(server.addr, "[]"), &[], &checkout).await;
    let mut kept = KeptConnection::open(client.addr).await;
    assert_eq!(kept.get("/").await.status, 200);

    let renewed = eventually(Duration::from_secs(10), async || {
        web.current().facts.sha256 != first
    })
    .await;
    assert!(renewed, "the certificate was renewed");
    // Past the first certificate's expiry, requests still flow: new connections use the
    // renewed certificates.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..5 {
        assert_eq!(kept.get("/").await.status, 200);
        assert_eq!(get(client.addr, "/").await.status, 200);
    }
    for renewal in renewals {
        renewal.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_or_a_missing_identity_is_a_clear_error() {
    let control = mesh_control("mesh-refusals", Duration::from_secs(3600)).await;
    let stranger = IdentitySource {
        url: format!("http://{}", control.address()),
        join_token: "sjt_not-a-token".to_owned(),
        trust: sluice_control::ControlTrust::default(),
    };
    let error = stranger.obtain().await.unwrap_err().to_string();
    assert!(error.contains("unknown join token"), "{error}");

    // A mesh listener on a proxy started without an identity.
    let loaded = test_config(&inbound("strict").replace("{app}", "127.0.0.1:1"), &[]);
    let error = sluice::config::Snapshot::build(&loaded, 1, &sluice::admin::Metrics::new(), None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("listeners[0].tls.mesh: this proxy has no workload identity"),
        "{error}"
    );
}

/// The commands as an operator types them: `sluice control`, `sluice join-token`, and two
/// `sluice proxy --control --join-token-file` sidecars talking mesh mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binaries_join_the_mesh_with_tokens() {
    let folder = temp_folder("mesh-binaries");
    let control = SpawnedControl::start(&folder.join("control"));
    let app = TestUpstream::start("app").await;
    let token_file = |workload: &str| {
        let out = sluice()
            .args(["join-token", workload, "--control", &control.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = folder.join(format!("{}.token", workload.replace('/', "-")));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    };
    let (web_token, checkout_token) = (
        token_file("ns/shop/sa/web"),
        token_file("ns/shop/sa/checkout"),
    );

    // A sidecar from `yaml`, joining the mesh with the token in `token`.
    let sidecar = |name: &str, yaml: String, token: &std::path::Path| {
        let config = folder.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!("admin: {{ address: \"127.0.0.1:0\" }}\n{yaml}"),
        )
        .unwrap();
        let token = token.display().to_string();
        SpawnedProxy::start_with(
            &config,
            &["--control", &control.url, "--join-token-file", &token],
        )
    };
    let server = sidecar(
        "server",
        inbound("strict").replace("{app}", &app.addr.to_string()),
        &web_token,
    );
    let client = sidecar(
        "client",
        outbound(server.addr, r#"["spiffe://sluice.local/ns/shop/sa/web"]"#),
        &checkout_token,
    );
    let reply = get(client.addr, "/tls/through-the-mesh").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, client.log());
    assert_eq!(
        reply.echoed("x-tls-principal"),
        Some("spiffe://sluice.local/ns/shop/sa/checkout")
    );

    // Without --control, a join token means nothing: a usage error.
    let out = sluice()
        .args(["proxy", "--config"])
        .arg(folder.join("server.yaml"))
        .args(["--join-token-file", &web_token.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join-token-file needs --control"));
}
