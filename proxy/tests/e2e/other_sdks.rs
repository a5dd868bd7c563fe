//! Filters built with Proxy-Wasm SDKs other than Rust's run unmodified, and answer as Envoy
//! 1.40 answers for the same module and requests (`benches/envoy_diff.sh` runs both modules
//! through Envoy and Sluice: runs `assemblyscript`, `cpp` and `go`).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

/// One listener with the module `module` as the filter `name`, whose root id is its name too,
/// configured with "v1".
fn sdk_filter_config(name: &str, module: &std::path::Path) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    filters:
      - {{ name: {name}, module: "{}", root_id: {name}, config: "v1" }}
    routes:
      - match: {{ prefix: / }}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["{{app}}"]
"#,
        module.display()
    )
}

/// A gRPC request to `/deny`, over HTTP/2.
fn grpc_deny() -> Request<Full<Bytes>> {
    Request::post("/deny")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

/// The ABI version the proxy detected for its first module (admin `/config`).
async fn module_abi(proxy: &TestProxy) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&get(proxy.admin, "/config").await.body).unwrap();
    json["modules"][0]["abi"].clone()
}

/// What the cpp and go fixtures add to a GET of `/hello`: the configuration on the response,
/// the shared-data count, and the path and `plugin_name` property on the request. `sdk` is the
/// header prefix, and the root id is `<sdk>_tag`.
fn assert_tagged(reply: &Reply, sdk: &str, hits: &str) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header(&format!("x-{sdk}-tag")), Some("v1"));
    assert_eq!(reply.header(&format!("x-{sdk}-hits")), Some(hits));
    assert_eq!(reply.echoed(&format!("x-{sdk}-seen")), Some("/hello"));
    let root_id = format!("{sdk}_tag");
    assert_eq!(
        reply.echoed(&format!("x-{sdk}-plugin")),
        Some(root_id.as_str())
    );
}

/// The note the cpp and go fixtures append to a whole response body under `/note`: the size of
/// the body before it, with `content-length` gone since the body grew.
fn assert_noted(noted: &Reply, sdk: &str) {
    let (echo, note) = noted
        .body
        .rsplit_once(&format!("-- {sdk} saw "))
        .unwrap_or_else(|| panic!("no note in {}", noted.body));
    assert_eq!(note, format!("{} bytes\n", echo.len()));
    assert_eq!(noted.header("content-length"), None);
}

/// A filter's local reply with `no entry\n` as a gRPC request gets it: trailers-only, gRPC
/// status `grpc_status`, the message percent-encoded.
fn assert_grpc_denied(denied: &Reply, grpc_status: &str) {
    assert_eq!(denied.status, 200);
    assert_eq!(denied.header("grpc-status"), Some(grpc_status));
    assert_eq!(denied.header("grpc-message"), Some("no entry%0A"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_filter_runs_as_in_envoy() {
    let upstream = TestUpstream::start("app").await;
    let config = sdk_filter_config("as_tag", &assemblyscript_fixture());
    let proxy = start_proxy(&config, &[&upstream]).await;

    // Headers both ways, and the plugin configuration by root id.
    let reply = get(proxy.addr, "/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-as-tag"), Some("v1"));
    assert_eq!(reply.echoed("x-as-seen"), Some("/hello"));

    // Its local reply with gRPC status 2, to a plain request: a plain 403 with the body.
    let denied = get(proxy.addr, "/deny").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "no entry\n");
    assert_eq!(denied.header("content-type"), Some("text/plain"));
    assert_eq!(denied.header("grpc-status"), None);
    assert_eq!(upstream.requests(), 1);

    // The same reply to a gRPC request: trailers-only, with the message percent-encoded.
    let denied = send_h2(proxy.addr, grpc_deny()).await;
    assert_grpc_denied(&denied, "2");
    assert_eq!(denied.header("content-type"), Some("application/grpc"));
    assert_eq!(denied.header("x-as-tag"), Some("v1"));

    assert_eq!(module_abi(&proxy).await, "0.2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpp_filter_runs_as_in_envoy() {
    let upstream = TestUpstream::start("app").await;
    let config = sdk_filter_config("cpp_tag", &cpp_fixture());
    let proxy = start_proxy(&config, &[&upstream]).await;

    // Headers both ways, the configuration, a property, and a shared-data counter. The C++
    // SDK ends property paths with a NUL, which Envoy ignores.
    assert_tagged(&get(proxy.addr, "/hello").await, "cpp", "1");
    let again = get(proxy.addr, "/again").await;
    assert_eq!(again.header("x-cpp-hits"), Some("2"));

    // A note on the whole response body, buffered across its chunks.
    assert_noted(&get(proxy.addr, "/note").await, "cpp");

    // Its local reply with gRPC status 7: plain to a plain request, gRPC to a gRPC request.
    let denied = get(proxy.addr, "/deny").await;
    assert_eq!(
        (denied.status.as_u16(), denied.body.as_str()),
        (403, "no entry\n")
    );
    assert_grpc_denied(&send_h2(proxy.addr, grpc_deny()).await, "7");
    assert_eq!(upstream.requests(), 3);

    assert_eq!(module_abi(&proxy).await, "0.2.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_filter_runs_as_in_envoy() {
    let upstream = TestUpstream::start("app").await;
    let config = sdk_filter_config("go_tag", &go_fixture());
    let proxy = start_proxy(&config, &[&upstream]).await;

    // Go's wasip1 reactor: `_initialize` runs the runtime and the SDK's init, then the plugin
    // reads its configuration when it starts. Headers both ways, a property, shared data.
    assert_tagged(&get(proxy.addr, "/hello").await, "go", "1");
    let again = get(proxy.addr, "/again").await;
    assert_eq!(again.header("x-go-hits"), Some("2"));

    // The SDK appends with proxy_set_buffer_bytes(start = i32::MAX, length = 0), after the
    // whole body was buffered.
    let noted = get(proxy.addr, "/note").await;
    assert_noted(&noted, "go");
    assert_eq!(noted.header("x-go-hits"), Some("3"));

    // Its local reply with gRPC status 7, which the filter's response hook still sees (its
    // counter never ran: x-go-hits 0): plain to a plain request, gRPC to a gRPC request.
    let denied = get(proxy.addr, "/deny").await;
    assert_eq!(
        (denied.status.as_u16(), denied.body.as_str()),
        (403, "no entry\n")
    );
    assert_eq!(denied.header("content-type"), Some("text/plain"));
    assert_eq!(denied.header("grpc-status"), None);
    assert_eq!(denied.header("x-go-tag"), Some("v1"));
    assert_eq!(denied.header("x-go-hits"), Some("0"));
    let denied = send_h2(proxy.addr, grpc_deny()).await;
    assert_grpc_denied(&denied, "7");
    assert_eq!(denied.header("content-type"), Some("application/grpc"));
    assert_eq!(denied.header("x-go-tag"), Some("v1"));
    assert_eq!(denied.header("x-go-hits"), Some("0"));
    assert_eq!(upstream.requests(), 3);

    assert_eq!(module_abi(&proxy).await, "0.2.0");
}
