//! The balancers over a discovered set: zone preference and spill-over, ring hash affinity
//! across a membership change, and peak EWMA away from a slow instance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::support::*;

/// How many of `rounds` requests (with `headers`) each upstream answered.
async fn spread(
    gateway: SocketAddr,
    rounds: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..rounds {
        let reply = get_with(gateway, "/", headers).await;
        let name = reply.header("x-upstream").unwrap_or("failed").to_owned();
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// An HTTP/1.1 server that answers every request after `delay`, as upstream `name`.
async fn start_slow_app(name: &'static str, delay: Duration) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(read) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-length: 2\r\n\r\nok"
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_zone_gets_the_traffic_until_it_has_no_instance_left() {
    let (folder, control) = start_control("balancing-zone");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let (near, far) = (
        TestUpstream::start("near").await,
        TestUpstream::start("far").await,
    );
    let mut near_sidecar = start_sidecar(
        "zone-near",
        &control.url,
        &token,
        free_port(),
        near.addr,
        "hello",
        "zone: a",
    );
    let _far_sidecar = start_sidecar(
        "zone-far",
        &control.url,
        &token,
        free_port(),
        far.addr,
        "hello",
        "zone: b",
    );
    let gateway = start_gateway_with("zone-gateway", &control.url, "locality: { zone: a }", "");
    let admin = gateway.admin().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let metrics = get(admin, "/metrics").await.body;
            metrics
                .lines()
                .filter(|l| l.starts_with("sluice_upstream_endpoint_healthy{cluster=\"hello\""))
                .count()
                == 2
        })
        .await,
        "the gateway knows both instances"
    );
    assert_eq!(
        spread(gateway.addr, 30, &[]).await,
        HashMap::from([("near".to_owned(), 30)]),
        "zone a is preferred"
    );
    assert!(
        near_sidecar
            .terminate(Duration::from_secs(10))
            .await
            .is_some()
    );
    assert_eq!(
        spread(gateway.addr, 10, &[]).await,
        HashMap::from([("far".to_owned(), 10)]),
        "with no instance left in zone a, requests spill over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_key_on_its_instance_while_another_one_leaves() {
    let (folder, control) = start_control("balancing-ring");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
        TestUpstream::start("hello-3").await,
    ];
    let mut sidecars: Vec<SpawnedProxy> =
        start_hello_instances("ring", &control.url, &token, &apps, "");
    let gateway = start_gateway_with(
        "ring-gateway",
        &control.url,
        "",
        "    lb_policy: ring_hash\n    hash_on: { header: x-user }",
    );
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-2", "hello-3"],
            Duration::from_secs(10)
        )
        .await,
        "requests without the header spread"
    );
    // Each user sticks to one instance; users spread over instances.
    let mut owners = HashMap::new();
    for user in 0..12 {
        let header = [("x-user", format!("user-{user}"))];
        let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = spread(gateway.addr, 5, &headers).await;
        assert_eq!(seen.len(), 1, "user-{user} went to {seen:?}");
        owners.insert(user, seen.into_keys().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<&String> = owners.values().collect();
    assert!(distinct.len() >= 2, "{owners:?}");

    // Another instance leaves: the keys of the others stay where they were.
    let leaving = owners[&0].clone();
    let index = apps.iter().position(|a| a.name == leaving).unwrap();
    assert!(
        sidecars[index]
            .terminate(Duration::from_secs(10))
            .await
            .is_some()
    );
    sidecars.remove(index);
    for (user, owner) in &owners {
        let header = format!("user-{user}");
        let seen = spread(gateway.addr, 3, &[("x-user", &header)]).await;
        if *owner == leaving {
            assert!(!seen.contains_key(&leaving) && seen.len() == 1, "{seen:?}");
        } else {
            assert_eq!(seen, HashMap::from([(owner.clone(), 3)]), "user-{user}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_sends_most_requests_to_the_fast_instance() {
    let (folder, control) = start_control("balancing-ewma");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let fast = TestUpstream::start("fast").await;
    let slow = start_slow_app("slow", Duration::from_millis(40)).await;
    let _sidecars = [
        start_sidecar(
            "ewma-fast",
            &control.url,
            &token,
            free_port(),
            fast.addr,
            "hello",
            "",
        ),
        start_sidecar(
            "ewma-slow",
            &control.url,
            &token,
            free_port(),
            slow,
            "hello",
            "",
        ),
    ];
    let gateway = start_gateway_with("ewma-gateway", &control.url, "", "    lb_policy: ewma");
    assert!(until_answering(gateway.addr, &["fast", "slow"], Duration::from_secs(10)).await);
    let seen = spread(gateway.addr, 200, &[]).await;
    let (to_fast, to_slow) = (seen.get("fast").copied(), seen.get("slow").copied());
    assert!(
        to_fast.unwrap_or(0) > 150 && to_slow.unwrap_or(0) < 50,
        "the 40ms instance should get a small share: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_discovered_instance_out() {
    let (folder, control) = start_control("balancing-health");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
    ];
    let _sidecars: Vec<SpawnedProxy> =
        start_hello_instances("health", &control.url, &token, &apps, "");
    let gateway = start_gateway_with(
        "health-gateway",
        &control.url,
        "",
        "    health_check: { path: /healthz, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }",
    );
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-2"],
            Duration::from_secs(10)
        )
        .await
    );
    apps[0].set_health(503);
    assert!(until_answering(gateway.addr, &["hello-2"], Duration::from_secs(5)).await);
    apps[0].set_health(200);
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-2"],
            Duration::from_secs(5)
        )
        .await
    );
}
