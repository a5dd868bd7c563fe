//! Replies as Envoy shapes them: a filter's local reply (its length, HEAD, an unread body),
//! and HTTP callouts with an absolute-form `:path`.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::headers::headers_fixture_config;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_carry_their_length_answer_head_and_close_unread_bodies() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&headers_fixture_config(), &[&upstream]).await;
    let reply = get(proxy.addr, "/deny").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("content-length"), Some("15"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.header("connection"), None);

    let head = |h2: bool| {
        let uri = if h2 {
            "http://shop.example/deny"
        } else {
            "/deny"
        };
        Request::head(uri)
            .header("host", "shop.example")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for reply in [
        send(proxy.addr, head(false)).await,
        send_h2(proxy.addr, head(true)).await,
    ] {
        assert_eq!(reply.status, 403);
        assert_eq!(reply.header("content-length"), Some("15"));
        assert_eq!(reply.body, "");
    }

    // Answered before the body was read: the connection cannot carry another request.
    let raw = raw_exchange(
        proxy.addr,
        b"POST /deny/upload HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 5\r\n\r\nhello",
        Duration::from_secs(5),
    )
    .await
    .to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 403"), "{raw}");
    assert!(raw.contains("connection: close"), "{raw}");
}

/// The `callout` fixture, asking the upstream `auth`.
fn callout_config() -> String {
    super::one_filter_config(
        "callout",
        None,
        "  - name: auth\n    endpoints: [\"{auth}\"]\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_send_an_absolute_form_path_as_the_request_target() {
    let (app, auth) = (
        TestUpstream::start("app").await,
        TestUpstream::start("auth").await,
    );
    let yaml = callout_config();
    let proxy = start_proxy(&yaml, &[&app, &auth]).await;
    let reply = get_with(
        proxy.addr,
        "/resource",
        &[("x-check-path", "http://idp.example/jwks")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.echoed("x-auth-said"),
        Some("GET http://idp.example/jwks HTTP/1.1"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_does_not_release_headers_held_for_a_callout() {
    let (app, auth) = (
        TestUpstream::start("app").await,
        TestUpstream::start("auth").await,
    );
    let yaml = callout_config();
    let proxy = start_proxy(&yaml, &[&app, &auth]).await;
    // The authorizer pauses for its callout and does not handle bodies: the SDK's default body
    // callback continues. The body must not carry the request past the refusal.
    let refused = send(
        proxy.addr,
        Request::post("/upload")
            .header("host", "shop.example")
            .header("x-check-path", "/slow/200")
            .header("x-check-timeout-ms", "50")
            .body(Full::new(Bytes::from_static(
                b"a body that arrives at once",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        app.requests(),
        0,
        "the app got a request the authorizer refused"
    );
    let allowed = send(
        proxy.addr,
        Request::post("/upload")
            .header("host", "shop.example")
            .body(Full::new(Bytes::from_static(
                b"a body that arrives at once",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(allowed.body.ends_with("a body that arrives at once"));
}
