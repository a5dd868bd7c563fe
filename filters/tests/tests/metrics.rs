//! filters/metrics on the real host.

use sluice_filter_tests::module;
use sluice_sdk::harness::{Harness, Scripted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_cluster_and_status_class() {
    let harness = Harness::builder()
        .filter("metrics", &module("metrics"), "")
        .route_name("api")
        .start()
        .await
        .unwrap();
    harness
        .upstream()
        .script([Scripted::status(503), Scripted::status(404)]);
    for _ in 0..4 {
        harness.get("/", &[]).await;
    }
    let series =
        |class: &str| format!("requests_total;route=api;cluster=upstream;status_class={class}");
    assert_eq!(harness.filter_metric(&series("5xx")).await, Some(1.0));
    assert_eq!(harness.filter_metric(&series("4xx")).await, Some(1.0));
    assert_eq!(harness.filter_metric(&series("2xx")).await, Some(2.0));
    assert_eq!(
        harness
            .filter_histogram_count("request_duration_ms;route=api;cluster=upstream")
            .await,
        Some(4.0)
    );
    assert_eq!(harness.filter_metric("requests_active").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_counted_while_they_run() {
    let harness = Harness::builder()
        .filter("metrics", &module("metrics"), "")
        .start()
        .await
        .unwrap();
    harness
        .upstream()
        .script([Scripted::status(200).delay(std::time::Duration::from_millis(500))]);
    let address = harness.address();
    let slow = tokio::spawn(async move { sluice_filter_tests::raw_get(address, "/slow").await });
    let mut seen_in_flight = false;
    for _ in 0..40 {
        if harness.filter_metric("requests_active").await == Some(1.0) {
            seen_in_flight = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen_in_flight);
    assert!(slow.await.unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(harness.filter_metric("requests_active").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_series_new_pairs_count_as_other() {
    let harness = Harness::builder()
        .filter("metrics", &module("metrics"), r#"{"max_series": 0}"#)
        .start()
        .await
        .unwrap();
    harness.get("/", &[]).await;
    assert_eq!(
        harness
            .filter_metric("requests_total;route=other;cluster=other;status_class=2xx")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_series_are_prometheus_families_with_labels_a_real_parser_reads() {
    let harness = Harness::builder()
        .filter("metrics", &module("metrics"), "")
        .route_name("api")
        .start()
        .await
        .unwrap();
    harness.upstream().script([Scripted::status(503)]);
    for _ in 0..3 {
        harness.get("/", &[]).await;
    }
    let text = harness.metrics().await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let count = |class: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "sluice_wasm_requests_total")
            .filter(|s| {
                s.labels.get("plugin") == Some("metrics")
                    && s.labels.get("route") == Some("api")
                    && s.labels.get("cluster") == Some("upstream")
                    && s.labels.get("status_class") == Some(class)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum::<f64>()
    };
    assert_eq!(count("5xx"), 1.0, "{text}");
    assert_eq!(count("2xx"), 2.0, "{text}");
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sluice_wasm_request_duration_ms")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(histogram.labels.get("route"), Some("api"));
    // The flat form is gone for tagged names.
    assert!(!text.contains("name=\"requests_total;"), "{text}");
}
