//! Upstream failures: each becomes an explained local reply, or a reset once the response has
//! started; no request hangs and the proxy keeps serving.

use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_503_with_its_reason() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start_proxy(&simple_config(&format!("\"{dead}\""), "", ""), &[]).await;
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("x-sluice-reason"),
        Some("upstream_connect_failure")
    );
    assert_eq!(
        reply.body,
        "could not connect to an endpoint of cluster backend"
    );
    assert!(
        !reply.body.contains(&dead.to_string()),
        "internal addresses stay out of replies"
    );
    let metrics = proxy.metrics().await;
    assert!(metrics.contains(r#"sluice_http_local_replies_total{listener="main",reason="upstream_connect_failure"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"sluice_http_requests_total{cluster="backend",listener="main",route="prefix:/",status_class="5xx"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_a_504_at_the_route_timeout() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &simple_config("\"{app}\"", "", "        timeout: 200ms"),
        &[&upstream],
    )
    .await;
    let reply = get(proxy.addr, "/slow/3000").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-sluice-reason"), Some("upstream_timeout"));
    // The same connection pool still works for the next request.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_shortens_the_deadline() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let request = Request::get("/slow/3000")
        .header("grpc-timeout", "150m")
        .body(Full::default())
        .unwrap();
    let reply = send(proxy.addr, request).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-sluice-reason"), Some("upstream_timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_response_aborts_only_that_response() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let response = send_streaming(proxy.addr, "/die-mid-body").await;
    assert_eq!(response.status(), 200, "headers were already on their way");
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the client learns of the failure instead of hanging");
    assert!(
        body.is_err(),
        "a truncated body is an error, not a short success"
    );
    assert_eq!(
        get(proxy.addr, "/").await.status,
        200,
        "the proxy keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_is_reset_at_the_idle_timeout() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &simple_config("\"{app}\"", "", "        idle_timeout: 200ms"),
        &[&upstream],
    )
    .await;
    let response = send_streaming(proxy.addr, "/stall-body").await;
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the idle timeout ends the stalled stream");
    assert!(body.is_err());
}
