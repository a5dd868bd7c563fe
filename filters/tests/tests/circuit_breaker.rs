//! filters/circuit-breaker on the real host. Its clock is the host's (real time), so waits
//! here are short and polled.

use std::time::Duration;

use sluice_filter_tests::module;
use sluice_sdk::harness::{Harness, Scripted};

async fn harness(config: &str) -> Harness {
    Harness::builder()
        .filter("breaker", &module("circuit_breaker"), config)
        .workers(2)
        .start()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_a_row_open_it_then_a_probe_closes_it() {
    let harness = harness(r#"{"consecutive_failures": 3, "open_for": "300ms"}"#).await;
    harness.upstream().script([
        Scripted::status(503),
        Scripted::status(502),
        Scripted::status(503),
    ]);
    for _ in 0..3 {
        let reply = harness.get("/", &[]).await;
        assert!(reply.status.is_server_error());
        assert_eq!(
            reply.header("x-sluice-circuit-breaker"),
            None,
            "from the upstream"
        );
    }
    // Open: answered at once, on every worker, without reaching the upstream.
    for _ in 0..4 {
        let refused = harness.get("/", &[]).await;
        assert_eq!(refused.status, 503);
        assert_eq!(
            refused.header("x-sluice-circuit-breaker"),
            Some("any: open: 3 failures in a row")
        );
        assert_eq!(
            refused.body,
            "circuit breaker for cluster any: open: 3 failures in a row\n"
        );
    }
    assert_eq!(harness.upstream().requests().len(), 3);
    assert_eq!(
        harness.filter_metric("circuit_breaker_opened").await,
        Some(1.0)
    );

    // After open_for, a probe finds the upstream well (it answers 200 now) and closes it.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if harness.get("/", &[]).await.status == 200 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the breaker closed after open_for");
    for _ in 0..3 {
        assert_eq!(harness.get("/", &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_requests_are_refused() {
    let harness = harness(r#"{"max_requests": 1}"#).await;
    harness
        .upstream()
        .script([Scripted::status(200).delay(Duration::from_millis(600))]);
    let address = harness.address();
    let slow = tokio::spawn(async move { sluice_filter_tests::raw_get(address, "/slow").await });
    // Wait until the slow request is in flight (it reached the upstream).
    for _ in 0..100 {
        if !harness.upstream().requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = None;
    for _ in 0..40 {
        let reply = harness.get("/", &[]).await;
        if reply.status == 503 {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("a second request while one is in flight is refused");
    assert_eq!(
        refused.header("x-sluice-circuit-breaker"),
        Some("any: max_requests 1 reached")
    );
    assert!(slow.await.unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(harness.get("/", &[]).await.status, 200, "room again");
}

/// The harness has one endpoint: the host keeps a cluster's last available endpoint, so the
/// ejection asked for is refused and traffic goes on (proxy/tests/e2e/extensions.rs ejects
/// one of two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_endpoint_is_never_ejected() {
    let harness = harness(
        r#"{"consecutive_failures": 0, "endpoint": {"consecutive_failures": 2, "eject_for": "30s"}}"#,
    )
    .await;
    harness
        .upstream()
        .script([Scripted::status(503), Scripted::status(503)]);
    harness.get("/", &[]).await;
    harness.get("/", &[]).await;
    assert_eq!(harness.get("/", &[]).await.status, 200);
    let endpoint = harness.upstream().address();
    let metrics = harness.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"sluice_upstream_endpoint_ejections_total{{cluster="upstream",endpoint="{endpoint}"}} 0"#
        )),
        "{metrics}"
    );
    assert_eq!(
        harness.filter_metric("circuit_breaker_ejections").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_before_it_serves() {
    let error =
        sluice_filter_tests::refusal("circuit_breaker", r#"{"failure_rate": {"threshold": 0}}"#)
            .await;
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
}
