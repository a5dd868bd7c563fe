//! The mesh registry and `sluice status` shared by replicas: instances registered through
//! one replica are discovered through another, leave when their lease runs out whichever
//! replica held it, and stay while their sidecar moves to another replica.

use std::time::Duration;

use super::*;
use crate::discovery::{
    answering, free_port, join_token, names, services, start_gateway, start_sidecar,
    until_answering,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_registered_through_one_replica_are_discovered_through_another() {
    let Some(cluster) = EtcdCluster::start("replicas-registry", 3).await else {
        return;
    };
    let lease = ["--lease-ttl", "1s"];
    let (a, b) = (
        replica_with(&cluster, "registry-a", &lease),
        replica_with(&cluster, "registry-b", &lease),
    );
    let folder = temp_folder("replicas-registry-tokens");
    let token = join_token(&a.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
    ];
    // The sidecars subscribe to A first; the gateway only knows B.
    let both = format!("{},{}", a.url, b.url);
    let sidecars: Vec<SpawnedProxy> = apps
        .iter()
        .enumerate()
        .map(|(i, app)| {
            let name = format!("registry-sidecar-{i}");
            start_sidecar(&name, &both, &token, free_port(), app.addr, "hello", "")
        })
        .collect();
    let gateway = start_gateway("registry-gateway", &b.url);
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-2"],
            Duration::from_secs(10)
        )
        .await,
        "the gateway (on B) discovers both instances (registered through A):\n{}",
        gateway.log()
    );
    let listed = services(&b.url);
    assert_eq!(
        listed
            .matches("spiffe://sluice.local/ns/demo/sa/hello")
            .count(),
        2,
        "{listed}"
    );

    // `status` through either replica shows every proxy with the replica serving it.
    let status = String::from_utf8(
        sluice()
            .args(["status", "--control", &a.url])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        status.contains("answered by replica registry-a"),
        "{status}"
    );
    for (proxy, replica) in [
        ("registry-sidecar-0", "registry-a"),
        ("registry-sidecar-1", "registry-a"),
        ("registry-gateway", "registry-b"),
    ] {
        let line = status
            .lines()
            .find(|l| l.starts_with(proxy))
            .unwrap_or_default();
        assert!(
            line.contains("connected") && line.contains(replica),
            "{status}"
        );
    }

    // Replica A dies: its sidecars move to B and register again before A's leases run out,
    // so the gateway never loses an instance.
    let load = SteadyLoad::start(gateway.addr, 2, |parts| parts.status == 200);
    a.kill();
    assert!(
        eventually(Duration::from_secs(10), async || {
            connected_to(&b.url, "registry-b").await == 3
        })
        .await,
        "every proxy moved to B"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert_eq!(
        answering(gateway.addr, 8).await,
        names(&["hello-1", "hello-2"])
    );

    // A sidecar killed outright leaves when its lease (held through B now) runs out.
    let mut sidecars = sidecars;
    drop(sidecars.remove(1));
    assert!(
        eventually(Duration::from_secs(10), async || {
            answering(gateway.addr, 4).await == names(&["hello-1"])
        })
        .await,
        "the killed instance left:\n{}",
        services(&b.url)
    );
}
