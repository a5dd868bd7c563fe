//! Config changes applied to a running proxy: whole or not at all, new requests (even on an
//! open connection) on the new config, requests in flight on the old one, old VMs freed.

use std::time::Duration;

use sluice::runtime::ApplyError;

use crate::support::*;

/// The tagger config with the built headers fixture and two workers.
fn tagged_config(endpoint: &str, tag: &str) -> String {
    tagger_config(&fixture("headers").display().to_string(), endpoint, tag, 2)
}

/// The value of `sluice_wasm_vms{plugin="tagger"}`.
async fn tagger_vms(proxy: &TestProxy) -> Option<i64> {
    proxy.metrics().await.lines().find_map(|line| {
        line.strip_prefix(r#"sluice_wasm_vms{plugin="tagger"} "#)
            .and_then(|n| n.parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_on_an_open_connection_get_the_new_config() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let proxy = start_proxy(&simple_config("\"{a}\"", "", ""), &[&a, &b]).await;
    let mut connection = KeptConnection::open(proxy.addr).await;
    assert_eq!(connection.get("/").await.header("x-upstream"), Some("a"));

    let version = proxy
        .proxy
        .applier()
        .apply(test_config(&simple_config("\"{b}\"", "", ""), &[&a, &b]))
        .await
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(connection.get("/").await.header("x-upstream"), Some("b"));
    assert_eq!(a.connections(), 1, "the downstream connection stayed open");
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("sluice_config_version 2"), "{metrics}");
    assert!(
        metrics.contains(r#"sluice_config_changes_total{result="applied"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_its_config_and_then_its_vm_is_freed() {
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let proxy = start_proxy(&tagged_config(&endpoint, "v1"), &[]).await;
    // Every worker pre-starts its VM of the plugin.
    assert!(
        eventually(Duration::from_secs(5), async || tagger_vms(&proxy).await
            == Some(2))
        .await
    );

    let slow = tokio::spawn({
        let addr = proxy.addr;
        async move { get(addr, "/slow/600").await }
    });
    assert!(eventually(Duration::from_secs(5), async || app.requests() == 1).await);
    proxy
        .proxy
        .applier()
        .apply(test_config(&tagged_config(&endpoint, "v2"), &[]))
        .await
        .unwrap();

    assert_eq!(get(proxy.addr, "/").await.header("x-wasm-tag"), Some("v2"));
    // The old plugin's VM on the slow request's worker lives on for that request only.
    // (Each worker pre-starts the new plugin's VM in the background.)
    assert!(
        eventually(Duration::from_secs(5), async || tagger_vms(&proxy).await
            == Some(3))
        .await
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.header("x-wasm-tag"), Some("v1"));
    assert!(
        eventually(Duration::from_secs(5), async || tagger_vms(&proxy).await
            == Some(2))
        .await,
        "the old VM is freed once its last stream ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_change_changes_nothing() {
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let proxy = start_proxy(&tagged_config(&endpoint, "v1"), &[]).await;
    let applier = proxy.proxy.applier();

    let garbage =
        std::env::temp_dir().join(format!("sluice-e2e-{}-garbage.wasm", std::process::id()));
    std::fs::write(&garbage, b"\0asm but not really").unwrap();
    let broken = tagged_config(&endpoint, "v2").replace(
        &fixture("headers").display().to_string(),
        &garbage.display().to_string(),
    );
    let error = applier.apply(test_config(&broken, &[])).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("listeners[0].filters[0]"), "{message}");
    assert!(
        message.contains("garbage.wasm") || message.contains("compile"),
        "{message}"
    );

    let more_workers = tagged_config(&endpoint, "v2").replace("workers: 2", "workers: 3");
    let error = applier
        .apply(test_config(&more_workers, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::NeedsRestart {
                field: "workers",
                ..
            }
        ),
        "{error}"
    );

    assert_eq!(applier.version(), 1);
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-wasm-tag"), Some("v1"));
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_config_changes_total{result="rejected"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_config_version 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_while_serving() {
    let app = TestUpstream::start("app").await;
    let base = simple_config("\"{app}\"", "", "");
    let proxy = start_proxy(&base, &[&app]).await;
    let applier = proxy.proxy.applier();
    let second = base.replace(
        "listeners:\n",
        "listeners:\n  - name: second\n    address: 127.0.0.1:0\n    routes:\n      - match: { prefix: / }\n        cluster: backend\n",
    );

    applier.apply(test_config(&second, &[&app])).await.unwrap();
    let address = applier.listener_address("second").expect("second is bound");
    assert_eq!(get(address, "/").await.header("x-upstream"), Some("app"));
    assert_eq!(
        applier.listener_address("main"),
        Some(proxy.addr),
        "an unchanged listener keeps its socket"
    );

    applier.apply(test_config(&base, &[&app])).await.unwrap();
    assert_eq!(applier.listener_address("second"), None);
    let closed = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(address).await.is_err()
    })
    .await;
    assert!(closed, "the removed listener's sockets are closed");
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_no_request_and_leave_no_vm_behind() {
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let proxy = start_proxy(&tagged_config(&endpoint, "v0"), &[]).await;
    let applier = proxy.proxy.applier();

    let load = SteadyLoad::start(proxy.addr, 4, |reply| {
        let tagged = reply
            .headers
            .get("x-wasm-tag")
            .is_some_and(|t| t.as_bytes().starts_with(b"v"));
        reply.status == 200 && tagged
    });

    for swap in 1..=50 {
        let config = test_config(&tagged_config(&endpoint, &format!("v{swap}")), &[]);
        applier.apply(config).await.unwrap();
        // Let some requests through on each version.
        let before = load.served();
        assert!(eventually(Duration::from_secs(5), async || load.served() > before + 4).await);
    }
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(outcome.served >= 250, "{outcome:?}");
    assert_eq!(get(proxy.addr, "/").await.header("x-wasm-tag"), Some("v50"));
    assert!(
        eventually(Duration::from_secs(5), async || tagger_vms(&proxy).await
            == Some(2))
        .await,
        "only the current plugin's VMs are left: {:?}",
        tagger_vms(&proxy).await
    );
}
