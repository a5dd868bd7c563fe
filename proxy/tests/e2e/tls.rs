//! TLS termination on listeners: certificates by SNI, ALPN, client certificates (mutual TLS)
//! and what filters see of them, bad handshakes, renewed certificates.

use std::path::Path;
use std::time::Duration;

use crate::support::tls::{TestCa, TlsClient, send, served_names};
use crate::support::*;

/// A listener `main` terminating TLS with `tls` (YAML flow mapping), in front of `{app}`,
/// through the headers fixture (which stamps TLS properties on `/tls` requests).
fn tls_config(tls: &str) -> String {
    format!(
        r#"
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {tls}
    filters:
      - name: tagger
        module: {module}
        config: "tls"
    routes:
      - match: {{ prefix: / }}
        cluster: app
clusters:
  - name: app
    endpoints: ["{{app}}"]
"#,
        module = fixture("headers").display()
    )
}

/// Whether `/metrics` shows every one of `lines` within a few seconds (the proxy counts a
/// handshake in the connection's task, a moment after the client is done).
async fn counted(admin: std::net::SocketAddr, lines: &[&str]) -> bool {
    let seen = eventually(Duration::from_secs(5), async || {
        let metrics = get(admin, "/metrics").await.body;
        lines.iter().all(|line| metrics.contains(line))
    })
    .await;
    if !seen {
        eprintln!("{}", get(admin, "/metrics").await.body);
    }
    seen
}

/// A `tls:` flow mapping serving `cert` and `key`, with `extra` fields
/// (`, client_ca: ...`) after the certificates.
fn serving(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "{{ certificates: [{{ cert: {}, key: {} }}]{extra} }}",
        path(cert),
        path(key)
    )
}

fn path(file: &Path) -> String {
    file.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_gets_its_certificate_and_alpn_picks_the_protocol() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-sni");
    let ca = TestCa::new("sni test CA");
    let (default_cert, default_key) = ca.server(&["default.test"]).write(&folder, "default");
    let (api_cert, api_key) = ca
        .server(&["api.test", "*.apps.test"])
        .write(&folder, "api");
    let tls = format!(
        "{{ certificates: [{{ cert: {}, key: {} }}, {{ cert: {}, key: {} }}] }}",
        path(&default_cert),
        path(&default_key),
        path(&api_cert),
        path(&api_key)
    );
    let proxy = start_proxy(&tls_config(&tls), &[&app]).await;

    let http1 = TlsClient::new(&ca.pem, &["http/1.1"], None);
    let h2 = TlsClient::new(&ca.pem, &["h2", "http/1.1"], None);
    for (name, expected) in [
        ("api.test", "api.test"),
        ("shop.apps.test", "api.test"),
        ("default.test", "default.test"),
    ] {
        let stream = http1.connect(proxy.addr, name).await.unwrap();
        assert_eq!(served_names(&stream)[0], expected, "certificate for {name}");
    }
    // A name no certificate lists gets the first one, which the client then refuses.
    let refused = http1.connect(proxy.addr, "other.test").await.unwrap_err();
    assert!(refused.to_string().contains("default.test"), "{refused}");

    let reply = http1.get(proxy.addr, "api.test", "/tls/one").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-test-version"), Some("HTTP/1.1"));
    assert_eq!(reply.echoed("x-forwarded-proto"), Some("https"));
    assert_eq!(reply.echoed("x-tls-sni"), Some("api.test"));
    assert_eq!(reply.echoed("x-tls-version"), Some("TLSv1.3"));
    assert_eq!(reply.echoed("x-tls-mtls"), Some("false"));
    assert_eq!(reply.echoed("x-tls-local-dns"), Some("api.test"));
    // No client certificate on a TLS connection: null, as Envoy answers.
    assert_eq!(reply.echoed("x-tls-peer-uri"), Some("SerializationFailure"));

    let reply = h2.get(proxy.addr, "shop.apps.test", "/tls/two").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-test-version"), Some("HTTP/2.0"));
    assert_eq!(reply.echoed("x-tls-sni"), Some("shop.apps.test"));

    assert!(
        counted(
            proxy.admin,
            &[
                r#"sluice_tls_handshakes_total{listener="main",result="ok"} 5"#,
                r#"sluice_tls_handshakes_total{listener="main",result="alert_from_client"} 1"#,
            ]
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_shows_the_client_identity_and_refuses_bad_clients() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-mtls");
    let ca = TestCa::new("mesh CA");
    let stranger = TestCa::new("someone else's CA");
    let (cert, key) = ca.server(&["web.mesh.test"]).write(&folder, "server");
    let ca_file = ca.write(&folder);
    let tls = serving(&cert, &key, &format!(", client_ca: {}", path(&ca_file)));
    let proxy = start_proxy(&tls_config(&tls), &[&app]).await;
    let identity = "spiffe://mesh.test/ns/shop/sa/checkout";

    // A connection that stays open while bad clients come and go.
    let trusted = TlsClient::new(&ca.pem, &["http/1.1"], Some(&ca.client(identity)));
    let kept = trusted.connect(proxy.addr, "web.mesh.test").await.unwrap();

    let reply = trusted.get(proxy.addr, "web.mesh.test", "/tls").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("x-tls-mtls"), Some("true"));
    assert_eq!(reply.echoed("x-tls-peer-uri"), Some(identity));
    assert_eq!(reply.echoed("x-tls-principal"), Some(identity));
    assert_eq!(reply.echoed("x-tls-peer-subject"), Some("CN=test client"));

    let refusals = [
        (TlsClient::new(&ca.pem, &[], None), "no_client_certificate"),
        (
            TlsClient::new(&ca.pem, &[], Some(&stranger.client(identity))),
            "unknown_ca",
        ),
        (
            TlsClient::new(&ca.pem, &[], Some(&ca.expired_client(identity))),
            "certificate_expired",
        ),
    ];
    for (client, _) in &refusals {
        // TLS 1.3 finishes the client's side first; the refusal arrives with the first read.
        if let Ok(stream) = client.connect(proxy.addr, "web.mesh.test").await {
            let mut stream = stream;
            let _ =
                tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\n\r\n").await;
            let mut buffer = [0u8; 64];
            let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
            assert!(read.is_err() || read.is_ok_and(|n| n == 0), "refused");
        }
    }
    // Not TLS at all.
    let garbage = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!garbage.contains("200"), "{garbage}");

    let mut lines: Vec<String> = refusals
        .iter()
        .map(|(_, reason)| {
            format!(r#"sluice_tls_handshakes_total{{listener="main",result="{reason}"}} 1"#)
        })
        .collect();
    lines.push(
        r#"sluice_tls_handshakes_total{listener="main",result="protocol_error"} 1"#.to_owned(),
    );
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert!(counted(proxy.admin, &lines).await);
    // The connection opened before them is unaffected.
    assert_eq!(send(kept, "/tls").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_are_refused_with_the_field_and_file() {
    let folder = temp_folder("tls-bad");
    let ca = TestCa::new("bad CA");
    let (cert, _) = ca.server(&["a.test"]).write(&folder, "a");
    let (_, other_key) = ca.server(&["b.test"]).write(&folder, "b");
    let check = |tls: String| {
        let yaml = tls_config(&tls).replace("{app}", "127.0.0.1:1");
        let yaml = format!("admin: {{ address: \"127.0.0.1:0\" }}\n{yaml}");
        let loaded = sluice::config::load_str(&yaml, Path::new("tls.yaml")).unwrap();
        let metrics = sluice::admin::Metrics::new();
        match sluice::config::Snapshot::build(&loaded, 1, &metrics, None) {
            Ok(_) => panic!("accepted {tls}"),
            Err(error) => error.to_string(),
        }
    };
    let missing = check(format!(
        "{{ certificates: [{{ cert: {}/nope.pem, key: {} }}] }}",
        folder.display(),
        path(&other_key)
    ));
    assert!(
        missing.contains("listeners[0].tls.certificates[0]")
            && missing.contains("nope.pem: cannot read"),
        "{missing}"
    );
    let mismatch = check(serving(&cert, &other_key, ""));
    assert!(
        mismatch.contains("does not belong to the certificate"),
        "{mismatch}"
    );
    let version = check(serving(&cert, &folder.join("a.key"), ", min_version: 1.1"));
    assert!(
        version.contains("listeners[0].tls.min_version: 1.1 is not a version"),
        "{version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_handshakes_and_open_connections_stay() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-renew");
    let ca = TestCa::new("renewal CA");
    let (cert, key) = ca.server(&["renew.test"]).write(&folder, "server");
    let tls = "{ certificates: [{ cert: server.pem, key: server.key }] }";
    let yaml = tls_config(tls).replace("{app}", &app.addr.to_string());
    let config = folder.join("proxy.yaml");
    std::fs::write(
        &config,
        format!("admin: {{ address: \"127.0.0.1:0\" }}\n{yaml}"),
    )
    .unwrap();
    let proxy = SpawnedProxy::start(&config);

    let client = TlsClient::new(&ca.pem, &["http/1.1"], None);
    let kept = client.connect(proxy.addr, "renew.test").await.unwrap();
    let first = served_names(&kept);
    assert_eq!(first, ["renew.test"]);

    // Renewed with another name, so the test can tell the two apart; key first, as a
    // certificate manager writes them, each renamed into place.
    let renewed = ca.server(&["renew.test", "renewed.test"]);
    replace_file(&key, renewed.key.as_bytes());
    replace_file(&cert, renewed.cert.as_bytes());
    let picked_up = eventually(Duration::from_secs(10), async || {
        match client.connect(proxy.addr, "renew.test").await {
            Ok(stream) => served_names(&stream).len() == 2,
            Err(_) => false,
        }
    })
    .await;
    assert!(
        picked_up,
        "new handshakes get the renewed certificate\n{}",
        proxy.log()
    );
    assert_eq!(
        send(kept, "/").await.status,
        200,
        "the old connection still serves"
    );
}

/// Two proxies as two sidecars: `outbound` (plaintext for the local client) sends to
/// `inbound` over TLS with the client certificate of `identity`; `inbound` requires one from
/// the mesh CA and serves the app. `cluster_tls` and `cluster_extra` shape outbound's cluster.
struct Sidecars {
    inbound: TestProxy,
    outbound: TestProxy,
    _app: TestUpstream,
}

async fn sidecars(ca: &TestCa, folder: &Path, cluster_tls: &str, cluster_extra: &str) -> Sidecars {
    let app = TestUpstream::start("app").await;
    let (cert, key) = ca.server(&["web.mesh.test"]).write(folder, "inbound");
    let ca_file = ca.write(folder);
    let tls = serving(&cert, &key, &format!(", client_ca: {}", path(&ca_file)));
    let inbound = start_proxy(&tls_config(&tls), &[&app]).await;
    let outbound = start_proxy(
        &format!(
            r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: {{ prefix: / }}
        cluster: web
clusters:
  - name: web
    endpoints: ["{}"]
    tls: {cluster_tls}
{cluster_extra}
"#,
            inbound.addr
        ),
        &[],
    )
    .await;
    Sidecars {
        inbound,
        outbound,
        _app: app,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mutual_tls_and_the_server_sees_the_client_identity() {
    let folder = temp_folder("tls-sidecars");
    let ca = TestCa::new("mesh CA");
    let identity = "spiffe://mesh.test/ns/shop/sa/checkout";
    let (client_cert, client_key) = ca.client(identity).write(&folder, "outbound");
    let ca_file = ca.write(&folder);
    for protocol in ["http1", "http2"] {
        let cluster_tls = format!(
            "{{ ca: {}, server_name: web.mesh.test, cert: {}, key: {} }}",
            path(&ca_file),
            path(&client_cert),
            path(&client_key)
        );
        let extra = format!("    protocol: {protocol}");
        let pair = sidecars(&ca, &folder, &cluster_tls, &extra).await;
        let reply = get(pair.outbound.addr, "/tls/checkout").await;
        assert_eq!(reply.status, 200, "{protocol}: {}", reply.body);
        assert_eq!(
            reply.echoed("x-tls-principal"),
            Some(identity),
            "{protocol}"
        );
        assert_eq!(reply.echoed("x-tls-sni"), Some("web.mesh.test"));
        // How inbound received it: ALPN followed the cluster's protocol.
        let version = if protocol == "http2" {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(reply.echoed("x-tls-protocol"), Some(version), "{protocol}");
        // The pooled TLS connection carries the next request too.
        assert_eq!(get(pair.outbound.addr, "/again").await.status, 200);
        let handshakes = r#"sluice_tls_handshakes_total{listener="main",result="ok"} "#;
        let metrics = get(pair.inbound.admin, "/metrics").await.body;
        assert!(
            metrics.contains(&format!("{handshakes}1")),
            "one connection\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_anonymous_upstream_handshake_is_a_503_with_the_reason() {
    let folder = temp_folder("tls-upstream-bad");
    let ca = TestCa::new("mesh CA");
    let stranger = TestCa::new("other CA");
    let stranger_file = folder.join("stranger.pem");
    std::fs::write(&stranger_file, &stranger.pem).unwrap();
    let ca_file = ca.write(&folder);
    let (client_cert, client_key) = ca.client("spiffe://mesh.test/x").write(&folder, "client");

    // Outbound does not trust inbound's certificate.
    let untrusting = format!(
        "{{ ca: {}, server_name: web.mesh.test, cert: {}, key: {} }}",
        path(&stranger_file),
        path(&client_cert),
        path(&client_key)
    );
    let pair = sidecars(&ca, &folder, &untrusting, "").await;
    let reply = get(pair.outbound.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("x-sluice-reason"),
        Some("upstream_connect_failure")
    );
    assert!(
        counted(
            pair.inbound.admin,
            &[r#"sluice_tls_handshakes_total{listener="main",result="alert_from_client"} 1"#]
        )
        .await
    );

    // Outbound presents no certificate; inbound requires one.
    let anonymous = format!("{{ ca: {}, server_name: web.mesh.test }}", path(&ca_file));
    let pair = sidecars(&ca, &folder, &anonymous, "").await;
    let reply = get(pair.outbound.addr, "/").await;
    assert!(reply.status.is_server_error(), "{}", reply.status);
    assert!(
        reply
            .header("x-sluice-reason")
            .is_some_and(|r| r.starts_with("upstream_")),
        "{:?}",
        reply.header("x-sluice-reason")
    );
    assert!(
        counted(
            pair.inbound.admin,
            &[r#"sluice_tls_handshakes_total{listener="main",result="no_client_certificate"} 1"#]
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_to_a_tls_cluster() {
    let folder = temp_folder("tls-health");
    let ca = TestCa::new("mesh CA");
    let ca_file = ca.write(&folder);
    let (client_cert, client_key) = ca
        .client("spiffe://mesh.test/probe")
        .write(&folder, "client");
    let cluster_tls = format!(
        "{{ ca: {}, server_name: web.mesh.test, cert: {}, key: {} }}",
        path(&ca_file),
        path(&client_cert),
        path(&client_key)
    );
    let checks = "    health_check: { path: /healthz, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }";
    let pair = sidecars(&ca, &folder, &cluster_tls, checks).await;
    // Probes pass over mutual TLS, so the one endpoint stays in service.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(pair.outbound.addr, "/").await.status, 200);
    assert!(
        counted(
            pair.inbound.admin,
            &[r#"sluice_tls_handshakes_total{listener="main",result="ok"}"#]
        )
        .await
    );
    let metrics = get(pair.inbound.admin, "/metrics").await.body;
    let probes = metrics
        .lines()
        .find(|line| {
            line.starts_with(r#"sluice_tls_handshakes_total{listener="main",result="ok"}"#)
        })
        .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(probes >= 3, "{probes} handshakes: probes come over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_endpoint_needs_a_server_name_to_verify() {
    let yaml = r#"
admin: { address: "127.0.0.1:0" }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: { prefix: / }, cluster: web }]
clusters:
  - name: web
    endpoints: ["127.0.0.1:8443"]
    tls: { ca: ca.pem }
"#;
    let loaded = sluice::config::load_str(yaml, Path::new("tls.yaml")).unwrap();
    let metrics = sluice::admin::Metrics::new();
    let error = sluice::config::Snapshot::build(&loaded, 1, &metrics, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("clusters[0].tls.server_name: needed when the endpoints are IP addresses"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authz_filter_allows_by_workload_identity_on_a_permissive_listener() {
    let filters = tokio::task::spawn_blocking(sluice::demo::build_standard_filters)
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-authz");
    let ca = TestCa::new("mesh CA");
    let (cert, key) = ca.server(&["orders.mesh.test"]).write(&folder, "server");
    let ca_file = ca.write(&folder);
    let yaml = format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}], client_ca: {ca}, client_certificate: optional }}
    filters:
      - name: authz
        module: {authz}
        config:
          rules: [{{ action: allow, paths: ["/orders/*"], peers: ["spiffe://mesh.test/ns/shop/*"] }}]
    routes:
      - match: {{ prefix: / }}
        cluster: app
clusters:
  - name: app
    endpoints: ["{{app}}"]
"#,
        cert = path(&cert),
        key = path(&key),
        ca = path(&ca_file),
        authz = filters.join("authz.wasm").display(),
    );
    let proxy = start_proxy(&yaml, &[&app]).await;
    let ask = async |identity: Option<&str>| {
        let issued = identity.map(|id| ca.client(id));
        let client = TlsClient::new(&ca.pem, &["http/1.1"], issued.as_ref());
        client
            .get(proxy.addr, "orders.mesh.test", "/orders/7")
            .await
    };

    let checkout = "spiffe://mesh.test/ns/shop/sa/checkout";
    let allowed = ask(Some(checkout)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.echoed("x-authz-principal"), Some(checkout));
    let other = ask(Some("spiffe://mesh.test/ns/ads/sa/tracker")).await;
    assert_eq!(other.status, 403, "{}", other.body);
    // Permissive: a client without a certificate is served, but has no identity to allow.
    let anonymous = ask(None).await;
    assert_eq!(anonymous.status, 403, "{}", anonymous.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_routes_tls_by_server_name_without_terminating_it() {
    let folder = temp_folder("tls-passthrough");
    let ca = TestCa::new("passthrough CA");
    let app = TestUpstream::start("app").await;
    // Two TLS backends, each with its own certificate.
    let backend = async |name: &str, names: &[&str]| {
        let (cert, key) = ca.server(names).write(&folder, name);
        let tls = serving(&cert, &key, "");
        start_proxy(&tls_config(&tls), &[&app]).await
    };
    let api = backend("api", &["api.test"]).await;
    let shop = backend("shop", &["*.shop.test"]).await;
    let edge = start_proxy(
        &format!(
            r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    protocol: tcp
    sni_routes:
      - {{ server_names: [api.test], cluster: api }}
      - {{ server_names: ["*.shop.test"], cluster: shop }}
clusters:
  - {{ name: api, endpoints: ["{}"] }}
  - {{ name: shop, endpoints: ["{}"] }}
"#,
            api.addr, shop.addr
        ),
        &[],
    )
    .await;

    let client = TlsClient::new(&ca.pem, &["h2", "http/1.1"], None);
    let stream = client.connect(edge.addr, "api.test").await.unwrap();
    assert_eq!(served_names(&stream), ["api.test"], "api's own certificate");
    let reply = send(stream, "/tls/through").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.echoed("x-tls-sni"),
        Some("api.test"),
        "the backend terminated it"
    );
    let stream = client.connect(edge.addr, "cart.shop.test").await.unwrap();
    assert_eq!(served_names(&stream), ["*.shop.test"]);
    assert_eq!(send(stream, "/").await.status, 200);

    // No route and no default cluster, or not TLS at all: closed.
    assert!(client.connect(edge.addr, "unknown.test").await.is_err());
    let plain = raw_exchange(
        edge.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(plain.is_empty(), "{plain}");
    assert!(
        counted(
            edge.admin,
            &[
                r#"sluice_tcp_sni_routing_total{listener="main",result="routed"} 2"#,
                r#"sluice_tcp_sni_routing_total{listener="main",result="no_route"} 1"#,
                r#"sluice_tcp_sni_routing_total{listener="main",result="not_tls"} 1"#,
            ]
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_listener_serves_plaintext_and_mutual_tls_on_one_port() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-permissive");
    let ca = TestCa::new("mesh CA");
    let (cert, key) = ca.server(&["web.mesh.test"]).write(&folder, "server");
    let ca_file = ca.write(&folder);
    let tls = serving(
        &cert,
        &key,
        &format!(
            ", client_ca: {}, client_certificate: optional, accept_plaintext: true",
            path(&ca_file)
        ),
    );
    let proxy = start_proxy(&tls_config(&tls), &[&app]).await;

    // A client not moved to mTLS yet: plaintext, with no identity for the filters.
    let plain = get(proxy.addr, "/tls/plain").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.echoed("x-tls-mtls"), Some("false"));
    assert_eq!(plain.echoed("x-tls-version"), Some("not-found"));
    assert_eq!(plain.echoed("x-forwarded-proto"), Some("http"));
    // One that has moved: mutual TLS on the same port.
    let identity = "spiffe://mesh.test/ns/shop/sa/web";
    let client = TlsClient::new(&ca.pem, &["h2"], Some(&ca.client(identity)));
    let mutual = client.get(proxy.addr, "web.mesh.test", "/tls/mutual").await;
    assert_eq!(mutual.status, 200);
    assert_eq!(mutual.echoed("x-tls-principal"), Some(identity));
    assert!(
        counted(
            proxy.admin,
            &[
                r#"sluice_tls_handshakes_total{listener="main",result="plaintext"} 1"#,
                r#"sluice_tls_handshakes_total{listener="main",result="ok"} 1"#,
            ]
        )
        .await
    );
}

/// The clients operators reach for: curl and openssl s_client, against a TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_see_the_right_certificate_and_get_answers() {
    for tool in ["curl", "openssl"] {
        // Only whether it runs at all: a missing tool is a setup problem, said plainly.
        let found = std::process::Command::new(tool)
            .arg("version")
            .output()
            .is_ok();
        assert!(
            found,
            "{tool} is needed for this test (apt-get install {tool})"
        );
    }
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-tools");
    let ca = TestCa::new("tools CA");
    let (cert, key) = ca.server(&["tools.test"]).write(&folder, "server");
    let ca_file = ca.write(&folder);
    let tls = serving(&cert, &key, "");
    let proxy = start_proxy(&tls_config(&tls), &[&app]).await;
    let port = proxy.addr.port();

    // Blocking commands, off the runtime threads that serve the proxy.
    let run = async |mut command: std::process::Command| {
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    };
    let mut command = std::process::Command::new("curl");
    command
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("tools.test:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://tools.test:{port}/tls/curl"));
    let curl = run(command).await;
    let out = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(out.ends_with("2 200"), "HTTP/2 by ALPN, verified: {out}");
    assert!(out.contains("x-tls-sni: tools.test"), "{out}");

    let mut command = std::process::Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            "tools.test",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&ca_file)
        .stdin(std::process::Stdio::null());
    let s_client = run(command).await;
    let out = String::from_utf8_lossy(&s_client.stdout);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
}

/// Two clusters with one endpoint in common, one plaintext and one mutual TLS: pooled
/// connections are kept apart, so the TLS cluster never rides a plaintext connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_never_reuses_another_clusters_plaintext_connection() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("tls-pool-keys");
    let ca = TestCa::new("pool CA");
    let (cert, key) = ca.server(&["both.test"]).write(&folder, "server");
    let ca_file = ca.write(&folder);
    let (client_cert, client_key) = ca
        .client("spiffe://pool.test/client")
        .write(&folder, "client");
    // One port that serves plaintext and mutual TLS alike.
    let tls = serving(
        &cert,
        &key,
        &format!(
            ", client_ca: {}, client_certificate: optional, accept_plaintext: true",
            path(&ca_file)
        ),
    );
    let backend = start_proxy(&tls_config(&tls), &[&app]).await;
    let front = start_proxy(
        &format!(
            r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - {{ match: {{ prefix: /tls/secure }}, cluster: secure }}
      - {{ match: {{ prefix: / }}, cluster: plain }}
clusters:
  - {{ name: plain, endpoints: ["{addr}"] }}
  - name: secure
    endpoints: ["{addr}"]
    tls: {{ ca: {ca}, server_name: both.test, cert: {cert}, key: {key} }}
"#,
            addr = backend.addr,
            ca = path(&ca_file),
            cert = path(&client_cert),
            key = path(&client_key),
        ),
        &[],
    )
    .await;
    for _ in 0..3 {
        let plain = get(front.addr, "/tls/plain").await;
        assert_eq!(plain.echoed("x-tls-mtls"), Some("false"));
        let secure = get(front.addr, "/tls/secure").await;
        assert_eq!(
            secure.echoed("x-tls-mtls"),
            Some("true"),
            "over TLS every time"
        );
        assert_eq!(
            secure.echoed("x-tls-principal"),
            Some("spiffe://pool.test/client")
        );
    }
}
