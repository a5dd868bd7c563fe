//! filters/retry on the real host: the request replayed by the proxy (Sluice's
//! `sluice_replay`), against scripted failures and a dead endpoint.

use std::time::Duration;

use sluice_filter_tests::module;
use sluice_sdk::harness::{Harness, Scripted};

async fn harness(config: &str) -> Harness {
    start(Harness::builder().filter("retry", &module("retry"), config)).await
}

async fn start(builder: sluice_sdk::harness::HarnessBuilder) -> Harness {
    builder
        .start()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Fast backoff: the tests are about which requests are retried, not how long they wait.
const QUICK: &str =
    r#""backoff": {"base": "1ms", "max": "5ms"}, "attempts_header": "x-sluice-attempts""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_200_reach_the_client_as_200_after_two_retries() {
    let harness = harness(&format!("{{{QUICK}}}")).await;
    harness
        .upstream()
        .script([Scripted::status(503), Scripted::status(503)]);
    let reply = harness.get("/orders", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok\n");
    assert_eq!(reply.header("x-sluice-attempts"), Some("3"));
    let seen = harness.upstream().requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|request| request.path == "/orders"));
    assert_eq!(harness.filter_metric("retry_attempts").await, Some(2.0));
    let metrics = harness.metrics().await;
    assert!(
        metrics.contains(r#"sluice_http_replays_total{cluster="upstream",listener="main"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_answer_goes_through_when_retries_run_out() {
    let harness = harness(&format!(r#"{{"max_retries": 1, {QUICK}}}"#)).await;
    harness.upstream().script([
        Scripted::status(503),
        Scripted::status(502).body("second\n"),
        Scripted::status(200),
    ]);
    let reply = harness.get("/", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.body, "second\n");
    assert_eq!(harness.upstream().requests().len(), 2);
    assert_eq!(
        harness.filter_metric("retry_attempts_exhausted").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_it_reached_the_upstream_unless_configured() {
    let harness = harness(&format!("{{{QUICK}}}")).await;
    harness.upstream().script([Scripted::status(503)]);
    let reply = harness.post("/pay", "amount=5", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(harness.upstream().requests().len(), 1);

    // Allowed by `methods`: the body is replayed intact.
    let harness = harness_with_methods(r#"["POST"]"#).await;
    harness
        .upstream()
        .script([Scripted::status(503), Scripted::reset()]);
    let reply = harness.post("/pay", "amount=5", &[]).await;
    assert_eq!(reply.status, 200);
    let seen = harness.upstream().requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|request| request.method == "POST" && request.body == "amount=5")
    );
}

async fn harness_with_methods(methods: &str) -> Harness {
    harness(&format!(r#"{{"methods": {methods}, {QUICK}}}"#)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_cap_is_not_retried() {
    let harness = harness(&format!(
        r#"{{"methods": ["POST"], "max_body_bytes": 4, {QUICK}}}"#
    ))
    .await;
    harness.upstream().script([Scripted::status(503)]);
    let reply = harness.post("/upload", "more than four bytes", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(harness.upstream().requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_costs_no_request_even_a_post() {
    let harness = start(
        Harness::builder()
            .filter("retry", &module("retry"), &format!("{{{QUICK}}}"))
            .dead_endpoints(1),
    )
    .await;
    for round in 0..6 {
        let reply = harness.post("/", &format!("n={round}"), &[]).await;
        assert_eq!(reply.status, 200, "request {round}: {}", reply.body);
    }
    // Every request reached the live endpoint once, whichever endpoint it tried first.
    assert_eq!(harness.upstream().requests().len(), 6);
    // Round robin sends some first attempts to the dead endpoint; each cost one retry.
    let retried = harness.filter_metric("retry_attempts").await.unwrap_or(0.0);
    assert!((1.0..=6.0).contains(&retried), "{retried} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_up_to_its_limit() {
    let harness = harness(&format!(r#"{{"max_retry_after": "1s", {QUICK}}}"#)).await;
    harness
        .upstream()
        .script([Scripted::status(503).header("retry-after", "0")]);
    assert_eq!(harness.get("/", &[]).await.status, 200);
    assert_eq!(harness.upstream().requests().len(), 2);

    // Longer than max_retry_after: the client gets the 503 and its Retry-After.
    harness
        .upstream()
        .script([Scripted::status(503).header("retry-after", "120")]);
    let reply = harness.get("/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("120"));
    assert_eq!(harness.upstream().requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attempt_is_cut_by_the_per_try_timeout_and_retried() {
    let harness = harness(&format!(r#"{{"per_try_timeout": "150ms", {QUICK}}}"#)).await;
    harness.upstream().script([Scripted::status(200)
        .body("late\n")
        .delay(Duration::from_secs(5))]);
    let started = tokio::time::Instant::now();
    let reply = harness.get("/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok\n", "the second attempt's answer");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(harness.upstream().requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_and_other_grpc_errors_are_not() {
    let harness = harness(&format!("{{{QUICK}}}")).await;
    let grpc = |status: &str| {
        Scripted::status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", status)
    };
    harness.upstream().script([grpc("14"), grpc("0")]);
    let call = [("content-type", "application/grpc")];
    let reply = harness.post("/pkg.Service/Call", "", &call).await;
    assert_eq!(reply.header("grpc-status"), Some("0"));
    assert_eq!(harness.upstream().requests().len(), 2);

    harness.upstream().script([grpc("3")]);
    let reply = harness.post("/pkg.Service/Call", "", &call).await;
    assert_eq!(reply.header("grpc-status"), Some("3"));
    assert_eq!(harness.upstream().requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_across_workers() {
    // 0.2 retries a second over 10s and no ratio: two retries in the window, whoever asks.
    let config = format!(
        r#"{{"max_retries": 1, "budget": {{"ratio": 0, "min_per_second": 0.2, "window": "10s"}}, {QUICK}}}"#
    );
    let harness = start(
        Harness::builder()
            .filter("retry", &module("retry"), &config)
            .workers(2),
    )
    .await;
    harness
        .upstream()
        .script(std::iter::repeat_n(Scripted::status(503), 8));
    for _ in 0..4 {
        assert_eq!(harness.get("/", &[]).await.status, 503);
    }
    // Two requests were retried (2 attempts each), two were not.
    assert_eq!(harness.upstream().requests().len(), 6);
    assert_eq!(harness.filter_metric("retry_attempts").await, Some(2.0));
    assert_eq!(
        harness.filter_metric("retry_budget_exhausted").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_with_the_field() {
    let error = sluice_filter_tests::refusal("retry", r#"{"retry_on": ["always"]}"#).await;
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breakers_fail_fast_reply_is_never_retried() {
    let harness = start(
        Harness::builder()
            .filter(
                "retry",
                &module("retry"),
                &format!(r#"{{"max_retries": 1, {QUICK}}}"#),
            )
            .filter(
                "breaker",
                &module("circuit_breaker"),
                r#"{"consecutive_failures": 2, "open_for": "1m"}"#,
            ),
    )
    .await;
    harness
        .upstream()
        .script(std::iter::repeat_n(Scripted::status(503), 4));
    // Two requests, two attempts each; the breaker judges each request once.
    for _ in 0..2 {
        assert_eq!(harness.get("/", &[]).await.status, 503);
    }
    assert_eq!(harness.upstream().requests().len(), 4);
    // Open: the breaker's own 503 reaches the client, and the upstream sees nothing more.
    let refused = harness.get("/", &[]).await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("x-sluice-circuit-breaker").is_some());
    assert_eq!(harness.upstream().requests().len(), 4);
    assert_eq!(harness.filter_metric("retry_attempts").await, Some(2.0));
}
