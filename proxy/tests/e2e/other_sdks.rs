//! Filters built with Proxy-Wasm SDKs other than Rust's run unmodified, and answer as Envoy
//! 1.40 answers for the same module and requests (checked by running the module in Envoy).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn as_tag_config() -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    filters:
      - {{ name: as_tag, module: "{}", root_id: as_tag, config: "v1" }}
    routes:
      - match: {{ prefix: / }}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["{{app}}"]
"#,
        assemblyscript_fixture().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_filter_runs_as_in_envoy() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&as_tag_config(), &[&upstream]).await;

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
    let grpc = Request::post("/deny")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let denied = send_h2(proxy.addr, grpc).await;
    assert_eq!(denied.status, 200);
    assert_eq!(denied.header("content-type"), Some("application/grpc"));
    assert_eq!(denied.header("grpc-status"), Some("2"));
    assert_eq!(denied.header("grpc-message"), Some("no entry%0A"));
    assert_eq!(denied.header("x-as-tag"), Some("v1"));

    let json: serde_json::Value =
        serde_json::from_str(&get(proxy.admin, "/config").await.body).unwrap();
    assert_eq!(json["modules"][0]["abi"], "0.2.0");
}
