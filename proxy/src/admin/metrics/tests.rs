use std::time::Duration;

use super::*;

#[test]
fn route_stats_land_in_the_text_output() {
    let metrics = Metrics::new();
    let stats = metrics.route_stats("main", "prefix:/", "backend");
    stats.record(http::StatusCode::OK, Duration::from_millis(3));
    stats.record(http::StatusCode::BAD_GATEWAY, Duration::from_millis(1));
    metrics.local_reply("main", "no_route");
    let text = metrics.render();
    assert!(text.contains(
        r#"sluice_http_requests_total{cluster="backend",listener="main",route="prefix:/",status_class="2xx"} 1"#
    ), "{text}");
    assert!(text.contains(r#"status_class="5xx"} 1"#), "{text}");
    assert!(
        text.contains(r#"sluice_http_local_replies_total{listener="main",reason="no_route"} 1"#)
    );
    assert!(text.contains("sluice_http_request_duration_seconds_bucket"));
}

#[test]
fn forgotten_endpoints_leave_the_output() {
    let metrics = Metrics::new();
    let stats = metrics.endpoint_stats("c", "127.0.0.1:1");
    stats.healthy.set(1);
    assert!(metrics.render().contains("127.0.0.1:1"));
    metrics.forget_endpoint("c", "127.0.0.1:1");
    assert!(!metrics.render().contains("127.0.0.1:1"));
}
