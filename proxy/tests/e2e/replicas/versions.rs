//! Versions, modules, the CA and join tokens shared by replicas; proxies listing several
//! replicas fail over under load; losing an etcd member changes nothing, losing all of etcd
//! stops changes but never traffic.

use std::time::Duration;

use tokio::time::Instant;

use sluice::control::{PushRequest, list_versions, push};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fails_over_between_replicas_under_load_and_follows_pushes_through_either() {
    let Some(cluster) = EtcdCluster::start("replicas-failover", 3).await else {
        return;
    };
    let (a, b) = (
        replica(&cluster, "replica-a"),
        replica(&cluster, "replica-b"),
    );
    let app = TestUpstream::start("app").await;
    let (proxy, _subscription) =
        subscribed_proxy(&app, &format!("{},{}", a.url, b.url), "sidecar").await;

    // A push through B reaches the proxy, which subscribed to A (the first it lists).
    let pushed = push(&mut client_of(&b.url).await, push_tagger("through-b"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 1);
    assert!(serves_tag(&proxy, "through-b").await);
    assert_eq!(connected_to(&b.url, "replica-a").await, 1);

    let load = SteadyLoad::start(proxy.addr, 4, |parts| parts.status == 200);
    let killed_at = Instant::now();
    a.kill();
    assert!(
        eventually(Duration::from_secs(10), async || {
            connected_to(&b.url, "replica-b").await == 1
        })
        .await,
        "the proxy moved to replica B"
    );
    let failover = killed_at.elapsed();
    let pushed = push(&mut client_of(&b.url).await, push_tagger("after-failover"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 2);
    assert!(serves_tag(&proxy, "after-failover").await);
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(outcome.served > 0);
    eprintln!("failover to the other replica took {failover:?}");

    // A replica started now reads every version from etcd.
    let c = replica(&cluster, "replica-c");
    let versions = list_versions(&mut client_of(&c.url).await).await.unwrap();
    assert_eq!(versions.current, 2);
    assert_eq!(versions.versions.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_through_two_replicas_get_distinct_gapless_versions() {
    let Some(cluster) = EtcdCluster::start("replicas-race", 3).await else {
        return;
    };
    let (a, b) = (replica(&cluster, "race-a"), replica(&cluster, "race-b"));
    let pushes = (0..8).map(|index| {
        let url = if index % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        tokio::spawn(async move {
            push(
                &mut client_of(&url).await,
                push_tagger(&format!("push-{index}")),
            )
            .await
            .map(|pushed| pushed.version)
        })
    });
    let mut versions = Vec::new();
    for pushed in pushes.collect::<Vec<_>>() {
        versions.push(pushed.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());

    // Both replicas list the same eight versions, each push's own.
    let listed_a = list_versions(&mut client_of(&a.url).await).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            list_versions(&mut client_of(&b.url).await)
                .await
                .unwrap()
                .versions
                .len()
                == 8
        })
        .await
    );
    let listed_b = list_versions(&mut client_of(&b.url).await).await.unwrap();
    let described = |reply: &sluice_control::proto::ListVersionsReply| {
        reply
            .versions
            .iter()
            .map(|v| (v.version, v.description.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(described(&listed_a), described(&listed_b));
    assert_eq!(listed_a.current, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_stops_changes_with_a_clear_error_but_never_traffic() {
    let Some(mut cluster) = EtcdCluster::start("replicas-outage", 3).await else {
        return;
    };
    let a = replica(&cluster, "outage-a");
    let app = TestUpstream::start("app").await;
    let (proxy, _subscription) = subscribed_proxy(&app, &a.url, "sidecar").await;
    push(&mut client_of(&a.url).await, push_tagger("v1"))
        .await
        .unwrap();
    assert!(serves_tag(&proxy, "v1").await);

    // One member of three lost: nothing changes.
    cluster.kill(0);
    let pushed = push(&mut client_of(&a.url).await, push_tagger("v2"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 2);
    assert!(serves_tag(&proxy, "v2").await);

    // All of etcd lost: a push fails and says why, through the CLI too; traffic flows on.
    cluster.kill_all();
    let ready = get(address_of(&a.url), "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.starts_with("not ready: store unavailable"),
        "{}",
        ready.body
    );
    let load = SteadyLoad::start(proxy.addr, 2, |parts| parts.status == 200);
    let error = push(&mut client_of(&a.url).await, push_tagger("v3"))
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("store unavailable"), "{error}");
    let module = fixture("headers");
    let output = sluice()
        .args([
            "push",
            "--control",
            &a.url,
            "--name",
            "tagger",
            "--config",
            "cli",
        ])
        .arg(&module)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("store unavailable"), "{stderr}");
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert_eq!(get(proxy.addr, "/").await.header("x-wasm-tag"), Some("v2"));

    // etcd back: the next push is version 3, none lost or repeated.
    cluster.restart_stopped().await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            get(address_of(&a.url), "/ready").await.body == "ready\n"
        })
        .await
    );
    let pushed = push(&mut client_of(&a.url).await, push_tagger("v3"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 3);
    assert!(serves_tag(&proxy, "v3").await);
    let listed = list_versions(&mut client_of(&a.url).await).await.unwrap();
    let numbers: Vec<u64> = listed.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_ca_join_tokens_and_modules_larger_than_an_etcd_request() {
    let Some(cluster) = EtcdCluster::start("replicas-shared", 3).await else {
        return;
    };
    let (a, b) = (replica(&cluster, "shared-a"), replica(&cluster, "shared-b"));

    // A token made through A gets a certificate through B, from the same CA.
    let token = create_join_token(&a.url, "ns/shop/sa/cart").await;
    let from_b = issue_certificate(&b.url, &token).await.unwrap();
    let from_a = issue_certificate(&a.url, &token).await.unwrap();
    assert_eq!(from_b.spiffe_id, "spiffe://sluice.local/ns/shop/sa/cart");
    assert_eq!(from_a.trust_bundle_pem, from_b.trust_bundle_pem);

    // A 3 MiB module (etcd takes at most 1.5 MiB per request) pushed through A runs on a
    // proxy that fetches it from B.
    let padded = temp_folder("replicas-shared-module").join("padded.wasm");
    std::fs::write(
        &padded,
        with_custom_section(&std::fs::read(fixture("headers")).unwrap(), 3 << 20),
    )
    .unwrap();
    let app = TestUpstream::start("app").await;
    let (proxy, _subscription) = subscribed_proxy(&app, &b.url, "sidecar").await;
    push(
        &mut client_of(&a.url).await,
        PushRequest {
            module: padded,
            ..push_tagger("large")
        },
    )
    .await
    .unwrap();
    assert!(serves_tag(&proxy, "large").await);
}

/// `module` with a custom section of `size` bytes appended: the same code, a larger file.
fn with_custom_section(module: &[u8], size: usize) -> Vec<u8> {
    let name = b"padding";
    let mut payload = vec![u8::try_from(name.len()).unwrap()];
    payload.extend_from_slice(name);
    payload.resize(size, 0);
    let mut out = module.to_vec();
    out.push(0); // custom section id
    let mut length = payload.len();
    loop {
        let byte = u8::try_from(length & 0x7f).unwrap();
        length >>= 7;
        if length == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_etcd_over_mutual_tls() {
    let folder = temp_folder("replicas-etcd-tls");
    let ca = crate::support::tls::TestCa::new("etcd test CA");
    let files = crate::support::etcd::EtcdTlsFiles {
        ca: ca.write(&folder),
        server: ca
            .server(&["127.0.0.1", "localhost"])
            .write(&folder, "member"),
        client: ca.server(&["sluice-control"]).write(&folder, "replica"),
    };
    let Some(cluster) = EtcdCluster::start_tls("replicas-etcd-tls", 3, files.clone()).await else {
        return;
    };
    let (cert, key) = (
        files.client.0.to_str().unwrap(),
        files.client.1.to_str().unwrap(),
    );
    let a = replica_with(
        &cluster,
        "etcd-tls-a",
        &[
            "--store-ca",
            files.ca.to_str().unwrap(),
            "--store-cert",
            cert,
            "--store-key",
            key,
        ],
    );
    let pushed = push(&mut client_of(&a.url).await, push_tagger("over-tls"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 1);
    assert!(a.log().contains("TLS"), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_for_etcd_turns_clients_away_at_once() {
    let Some(cluster) = EtcdCluster::start("replicas-waiting", 3).await else {
        return;
    };
    let a = replica(&cluster, "waiting-a");
    // A replica whose etcd is nowhere: it waits, and says why, and refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut waiting = sluice()
        .args([
            "control",
            "--listen",
            &listen,
            "--store",
            "etcd://127.0.0.1:1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once it has checked the port is free, it lets go of it while it waits.
    let refused = eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(&listen).await.is_err()
    })
    .await;
    assert!(refused, "the waiting replica accepted connections");
    // A client listing it first goes on to the replica that serves, without waiting.
    let started = tokio::time::Instant::now();
    let output = sluice()
        .args(["status", "--control", &format!("http://{listen},{}", a.url)])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("answered by replica waiting-a"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = waiting.kill();
    let _ = waiting.wait();
}
