//! Proxy-Wasm behaviour that filters written outside this project rely on, as Envoy 1.40
//! shows it (benches/envoy_diff.sh runs the same cases through Envoy).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn headers_fixture_config() -> String {
    format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    filters: [{{ name: tagger, module: "{}", config: t }}]
    routes: [{{ match: {{ prefix: / }}, cluster: backend }}]
clusters:
  - name: backend
    endpoints: ["{{app}}"]
"#,
        fixture("headers").display()
    )
}

/// The `host` lines of the upstream's echo of the request it got.
fn upstream_hosts(body: &str) -> Vec<&str> {
    body.lines().filter(|l| l.starts_with("host: ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_reads_host_as_the_authority_over_http1_and_http2() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&headers_fixture_config(), &[&upstream]).await;
    let http1 = Request::get("/host")
        .header("host", "shop.example:8080")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send(proxy.addr, http1).await;
    assert!(
        reply.body.contains("x-wasm-host: shop.example:8080\n"),
        "{}",
        reply.body
    );

    let http2 = Request::get("http://shop.example/host")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send_h2(proxy.addr, http2).await;
    assert!(
        reply.body.contains("x-wasm-host: shop.example\n"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_sets_host_sends_exactly_one_host_upstream() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&headers_fixture_config(), &[&upstream]).await;
    let http1 = Request::get("/set-host")
        .header("host", "shop.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send(proxy.addr, http1).await;
    assert_eq!(
        upstream_hosts(&reply.body),
        ["host: rewritten.example"],
        "{}",
        reply.body
    );

    let http2 = Request::get("http://shop.example/set-host")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send_h2(proxy.addr, http2).await;
    assert_eq!(
        upstream_hosts(&reply.body),
        ["host: rewritten.example"],
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookies_are_one_header_for_filters_and_the_upstream() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&headers_fixture_config(), &[&upstream]).await;
    let http2 = Request::get("http://shop.example/cookie")
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send_h2(proxy.addr, http2).await;
    assert!(
        reply
            .body
            .contains("x-wasm-cookie: session=abc; theme=dark\n"),
        "{}",
        reply.body
    );
    let cookies: Vec<&str> = reply
        .body
        .lines()
        .filter(|l| l.starts_with("cookie: "))
        .collect();
    assert_eq!(
        cookies,
        ["cookie: session=abc; theme=dark"],
        "{}",
        reply.body
    );
}
