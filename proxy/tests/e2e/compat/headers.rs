//! Header maps as filters in the field use them: `host`, HTTP/2 cookies, headers HTTP
//! cannot carry, and the properties Envoy gives.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

pub(super) fn headers_fixture_config() -> String {
    super::one_filter_config("headers", Some("t"), "")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_http_cannot_carry_fails_the_request_naming_it() {
    let upstream = TestUpstream::start("app").await;
    // The binary, for its log.
    let yaml = headers_fixture_config().replace("{app}", &upstream.addr.to_string());
    let proxy = SpawnedProxy::start(&write_config("invalid-header", &yaml));
    let reply = get(proxy.addr, "/invalid-value").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body, "invalid header value for: x-bad-value");
    let reply = get(proxy.addr, "/invalid-name").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body, "invalid header name: bad name");
    assert_eq!(upstream.requests(), 0, "nothing went upstream");
    // Said once per plugin, with the reason.
    let _ = get(proxy.addr, "/invalid-value").await;
    let log = proxy.log();
    assert_eq!(
        log.matches("a filter wrote a header HTTP cannot carry")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_read_envoys_response_and_route_properties() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&headers_fixture_config(), &[&upstream]).await;
    let reply = send(
        proxy.addr,
        Request::post("/props")
            .header("host", "shop.example")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.echoed("x-wasm-request-size"),
        Some("10"),
        "{}",
        reply.body
    );
    let stamped = |name| reply.header(name).unwrap_or("absent").to_owned();
    assert_eq!(stamped("x-wasm-code-details"), "'via_upstream'");
    assert_eq!(stamped("x-wasm-flags"), "0");
    assert_eq!(stamped("x-wasm-later-request-size"), "10");
    // An unnamed route's name is empty, which the Rust SDK reads as absent (in Envoy too).
    assert_eq!(stamped("x-wasm-route"), "not-found");
    assert_eq!(stamped("x-wasm-cluster"), "'backend'");
    assert_eq!(stamped("x-wasm-bare-cluster"), "not-found");
    assert_eq!(stamped("x-wasm-bare-route"), "not-found");
    assert_eq!(stamped("x-wasm-clock"), "us");

    // A filter's own reply: its details, none from the Rust SDK (which reads an empty property
    // as absent, in Envoy too); no flags.
    let denied = get(proxy.addr, "/deny").await;
    assert_eq!(denied.header("x-wasm-code-details"), Some("not-found"));
    assert_eq!(denied.header("x-wasm-flags"), Some("0"));
}
