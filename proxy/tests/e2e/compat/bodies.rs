//! Body callbacks with Envoy's shape for every framing, and filters that pause in a headers
//! callback to decide on the body (Envoy with `allow_on_headers_stop_iteration: true`).

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn config(fixture_name: &str) -> String {
    super::one_filter_config(fixture_name, None, "")
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "shop.example")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

fn post_h2(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(format!("http://shop.example{path}"))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// A chunked HTTP/1.1 POST written by hand (hyper's client sends a known length).
async fn post_chunked(addr: std::net::SocketAddr, path: &str, chunks: &[&str]) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await
}

const BODY: &[u8] = b"hello, wasm body! 123\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_callbacks_end_as_envoys_do_for_each_framing() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("gate"), &[&upstream]).await;
    // HTTP/1.1 with a length: the data, then an empty callback that ends the stream, even
    // though the body came in one read with the headers.
    let reply = send(proxy.addr, post("/watch", BODY)).await;
    assert_eq!(
        reply.header("x-request-body-calls"),
        Some("data(22),end(0)")
    );
    // The upstream's HTTP/1.1 response ends the same way.
    assert!(
        reply.body.contains("response-body-calls: data(") && reply.body.ends_with(",end(0)\n"),
        "{}",
        reply.body
    );
    // HTTP/2: END_STREAM on the DATA frame ends the stream in the same callback.
    let reply = send_h2(proxy.addr, post_h2("/watch", BODY)).await;
    assert_eq!(reply.header("x-request-body-calls"), Some("end(22)"));
    // Chunked: each chunk, then the empty end.
    let raw = post_chunked(proxy.addr, "/watch", &["hello, ", "chunks"]).await;
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-request-body-calls: data(13),end(0)"),
        "{raw}"
    );
    // No body: no body callbacks at all.
    let reply = get(proxy.addr, "/watch").await;
    assert_eq!(reply.header("x-request-body-calls"), Some("no-end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_pauses_for_the_request_body_decides_with_the_headers_held() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("gate"), &[&upstream]).await;
    for reply in [
        send(proxy.addr, post("/gate", BODY)).await,
        send_h2(proxy.addr, post_h2("/gate", BODY)).await,
    ] {
        assert_eq!(reply.status, 200, "{}", reply.body);
        // Set on the held headers from the body callback, and the body behind them.
        assert_eq!(reply.echoed("x-gate-bytes"), Some("22"), "{}", reply.body);
        assert!(
            reply.body.contains("hello, wasm body! 123"),
            "{}",
            reply.body
        );
    }
    let raw = post_chunked(proxy.addr, "/gate", &["hello, ", "chunks"]).await;
    assert!(raw.contains("x-gate-bytes: 13"), "{raw}");

    let before = upstream.requests();
    let refused = send(proxy.addr, post("/gate", b"this is forbidden")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body, "blocked by the body gate\n");
    assert_eq!(
        upstream.requests(),
        before,
        "a refused request goes nowhere"
    );

    // A body callback that continues at the first chunk lets headers and body go on.
    let large = vec![b'x'; 300_000].leak();
    let reply = send(proxy.addr, post("/gate-first", large)).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        &reply.body[..200.min(reply.body.len())]
    );
    assert!(reply.echoed("x-gate-first").is_some());
    assert!(reply.body.ends_with(&"x".repeat(1000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_pauses_for_the_response_body_sets_headers_from_it() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("gate"), &[&upstream]).await;
    let reply = get(proxy.addr, "/gate").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("x-gate-response-bytes"),
        Some(reply.body.len().to_string().as_str())
    );
    // An HTTP/1.1 upstream: the data, then the empty end, as Envoy calls the filter.
    let expected = format!("data(0),end({})", reply.body.len());
    assert_eq!(
        reply.header("x-gate-response-calls"),
        Some(expected.as_str())
    );
    let reply = send_h2(proxy.addr, post_h2("/gate", BODY)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.header("x-gate-response-bytes").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signer_signs_host_and_body_alike_over_http1_and_http2() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("signer"), &[&upstream]).await;
    let http1 = send(proxy.addr, post("/sign", BODY)).await;
    let http2 = send_h2(proxy.addr, post_h2("/sign", BODY)).await;
    assert_eq!(
        http1.echoed("x-signed-host"),
        Some("shop.example"),
        "{}",
        http1.body
    );
    assert_eq!(http1.echoed("x-signed-bytes"), Some("22"));
    assert_eq!(http1.echoed("x-body-calls"), Some("data,end(22)"));
    assert_eq!(http2.echoed("x-body-calls"), Some("end(22)"));
    let signature = http1.echoed("x-signature");
    assert!(signature.is_some_and(|s| s.len() == 16), "{}", http1.body);
    assert_eq!(signature, http2.echoed("x-signature"));
    // Without a body it signs at once.
    let bare = get(proxy.addr, "/sign").await;
    assert_eq!(bare.echoed("x-signed-bytes"), Some("0"), "{}", bare.body);
}
