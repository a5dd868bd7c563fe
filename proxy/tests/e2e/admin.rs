//! The admin endpoint as monitoring and tooling use it.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_config_and_metrics_answer() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let ready = get(proxy.admin, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready\n")
    );

    let config = get(proxy.admin, "/config").await;
    assert_eq!(config.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["config"]["listeners"][0]["name"], "main");
    assert_eq!(
        json["config"]["clusters"][0]["endpoints"][0],
        upstream.addr.to_string()
    );

    get(proxy.addr, "/").await;
    get(proxy.addr, "/").await;
    let metrics = proxy.metrics().await;
    for expected in [
        r#"sluice_http_requests_total{cluster="backend",listener="main",route="prefix:/",status_class="2xx"} 2"#,
        r#"sluice_http_request_duration_seconds_count{cluster="backend",listener="main",route="prefix:/"} 2"#,
        r#"sluice_downstream_connections_total{listener="main"} 2"#,
        r#"sluice_http_requests_active{listener="main"} 0"#,
        "sluice_upstream_endpoint_healthy{cluster=\"backend\",endpoint=",
    ] {
        assert!(metrics.contains(expected), "missing {expected}\n{metrics}");
    }
    assert_eq!(get(proxy.admin, "/nope").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    proxy.proxy.state().mark_draining();
    let ready = get(proxy.admin, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (503, "not ready: draining\n")
    );
}
