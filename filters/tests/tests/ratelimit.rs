//! filters/ratelimit on the real host.

use sluice_filter_tests::module;
use sluice_sdk::harness::Harness;

async fn harness(config: &str, workers: usize) -> Harness {
    Harness::builder()
        .filter("ratelimit", &module("ratelimit"), config)
        .workers(workers)
        .start()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let harness = harness(r#"{"key": "header:x-user", "rate": 2, "per": "1m"}"#, 1).await;
    for _ in 0..2 {
        assert_eq!(harness.get("/", &[("x-user", "ann")]).await.status, 200);
    }
    let limited = harness.get("/", &[("x-user", "ann")]).await;
    assert_eq!(limited.status, 429);
    // Two tokens a minute: the next one is 30 seconds away.
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(limited.body, "rate limited\n");

    assert_eq!(
        harness.get("/", &[("x-user", "bob")]).await.status,
        200,
        "another key, another bucket"
    );
    assert_eq!(harness.get("/", &[]).await.status, 200, "no key, no limit");
    assert_eq!(
        harness.upstream().requests().len(),
        4,
        "the limited request never reached the upstream"
    );
    assert_eq!(harness.filter_metric("ratelimit_limited").await, Some(1.0));
    assert_eq!(harness.filter_metric("ratelimit_allowed").await, Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_takes_from_the_same_bucket() {
    let harness = harness(r#"{"key": "path", "rate": 5, "per": "1h"}"#, 2).await;
    let mut allowed = 0;
    // Each request on a new connection: the kernel spreads them over both workers.
    for _ in 0..12 {
        if harness.get("/api?page=1", &[]).await.status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_is_the_client_address() {
    let harness = harness(r#"{"rate": 1, "per": "1h"}"#, 1).await;
    assert_eq!(harness.get("/a", &[("x-user", "ann")]).await.status, 200);
    let limited = harness.get("/b", &[("x-user", "bob")]).await;
    assert_eq!(limited.status, 429, "same client address, same bucket");
    assert_eq!(limited.header("retry-after"), Some("3600"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_before_it_serves() {
    let error = sluice_filter_tests::refusal("ratelimit", r#"{"rate": 0}"#).await;
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
}
