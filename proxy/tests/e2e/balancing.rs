//! Load balancing, active health checks and passive ejection against real endpoints.

use std::time::Duration;

use crate::support::*;

/// An address nothing listens on: connections to it are refused.
fn dead_address() -> std::net::SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let (one, two) = (
        TestUpstream::start("one").await,
        TestUpstream::start("two").await,
    );
    let yaml = simple_config("\"{one}\", \"{two}\"", "", "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml, &[&one, &two]).await;
    for _ in 0..10 {
        get(proxy.addr, "/").await;
    }
    assert_eq!((one.requests(), two.requests()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_and_random_reach_every_endpoint() {
    for policy in ["least_request", "random"] {
        let (one, two) = (
            TestUpstream::start("one").await,
            TestUpstream::start("two").await,
        );
        let extra = format!("    lb_policy: {policy}");
        let proxy = start_proxy(
            &simple_config("\"{one}\", \"{two}\"", &extra, ""),
            &[&one, &two],
        )
        .await;
        for _ in 0..60 {
            assert_eq!(get(proxy.addr, "/").await.status, 200);
        }
        assert!(
            one.requests() > 5 && two.requests() > 5,
            "{policy}: {} / {}",
            one.requests(),
            two.requests()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_failing_health_checks_get_no_traffic() {
    let (good, bad) = (
        TestUpstream::start("good").await,
        TestUpstream::start("bad").await,
    );
    bad.set_health(503);
    let extra = "    health_check: { path: /healthz, interval: 50ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }";
    let proxy = start_proxy(
        &simple_config("\"{good}\", \"{bad}\"", extra, ""),
        &[&good, &bad],
    )
    .await;
    let marked = eventually(Duration::from_secs(5), async || {
        proxy.metrics().await.contains(&format!(
            "sluice_upstream_endpoint_healthy{{cluster=\"backend\",endpoint=\"{}\"}} 0",
            bad.addr
        ))
    })
    .await;
    assert!(
        marked,
        "the failing endpoint is marked unhealthy:\n{}",
        proxy.metrics().await
    );
    let before = bad.requests();
    for _ in 0..20 {
        assert_eq!(
            get(proxy.addr, "/").await.header("x-upstream"),
            Some("good")
        );
    }
    assert_eq!(
        bad.requests(),
        before,
        "an unhealthy endpoint receives nothing while a healthy one exists"
    );

    // When it recovers it is used again.
    bad.set_health(200);
    let back = eventually(Duration::from_secs(5), async || {
        get(proxy.addr, "/").await.header("x-upstream") == Some("bad")
    })
    .await;
    assert!(back, "a recovered endpoint receives traffic again");

    // No healthy endpoint at all: an explained 503, never a hang.
    good.set_health(500);
    bad.set_health(500);
    let none = eventually(Duration::from_secs(5), async || {
        get(proxy.addr, "/").await.status == 503
    })
    .await;
    assert!(none);
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.header("x-sluice-reason"), Some("no_healthy_upstream"));
    assert_eq!(reply.body, "no healthy endpoint in cluster backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_connect_failures_eject_an_endpoint() {
    let live = TestUpstream::start("live").await;
    let dead = dead_address();
    let extra = "    outlier_detection: { consecutive_connect_failures: 2, ejection_time: 60s }";
    let endpoints = format!("\"{{live}}\", \"{dead}\"");
    let yaml = simple_config(&endpoints, extra, "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml, &[&live]).await;
    let mut failures = 0;
    for _ in 0..40 {
        let reply = get(proxy.addr, "/").await;
        if reply.status != 200 {
            assert_eq!(reply.status, 503);
            assert_eq!(
                reply.header("x-sluice-reason"),
                Some("upstream_connect_failure")
            );
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "the dead endpoint is ejected after two connect failures"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "sluice_upstream_endpoint_ejections_total{{cluster=\"backend\",endpoint=\"{dead}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sluice_upstream_connect_failures_total{{cluster=\"backend\",endpoint=\"{dead}\"}} 2"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_endpoints_are_resolved() {
    let upstream = TestUpstream::start("app").await;
    let endpoint = format!("\"localhost:{}\"", upstream.addr.port());
    let proxy = start_proxy(&simple_config(&endpoint, "    dns_refresh: 100ms", ""), &[]).await;
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").await.header("x-upstream"), Some("app"));
    }
}
