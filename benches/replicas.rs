//! The control plane on etcd against the data dir, in one run, on loopback:
//!
//! - **Push → applied**: 10 proxies, each with a client sending requests back to back; 30
//!   pushes of a new filter configuration. The time that counts runs from `push` returning to
//!   the first response carrying the new configuration on the last of the ten proxies. With
//!   the data dir: one control service. With etcd: two replicas on a three-member etcd
//!   (Debian's etcd-server), five proxies on each, the pushes alternating between them.
//! - **etcd requests per push**: the members' own gRPC counters (`/metrics`), summed, before
//!   and after the pushes.
//! - **Failover**: each proxy lists both replicas; one replica is shut down (its proxies'
//!   connections close, as when its process dies) and the time until `status` shows each of
//!   its proxies subscribed to the other is taken; then it starts again on its port. Six
//!   rounds, alternating.
//!
//! Run: `cargo bench -p sluice-benches --bench replicas` (needs `etcd`: `bash .ci/run`
//! installs Debian's etcd-server).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

// The cluster the end-to-end tests start, shared rather than copied; the bench uses less of it.
#[allow(dead_code)]
#[path = "../proxy/tests/e2e/support/etcd.rs"]
mod etcd;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice::control::{ControlSubscription, ProxyValidator, push};
use sluice_benches::{fleet, ms, percentile};
use sluice_control::{ControlSettings, EtcdSettings, RunningControl, StoreLocation};
use tokio::sync::watch;
use tokio::time::Instant;

const PROXIES: usize = 10;
const PUSHES: usize = 30;
const FAILOVER_ROUNDS: usize = 6;

fn main() {
    sluice_benches::block_on(run());
}

/// Ten proxies in front of `upstream`, the `index`th subscribed to `urls(index)`, and the
/// tags their clients see.
struct Fleet {
    _proxies: Vec<(sluice::RunningProxy, ControlSubscription)>,
    tags: Vec<watch::Receiver<String>>,
    stop: Arc<AtomicBool>,
}

async fn run() {
    let module = sluice_benches::fixture("headers").expect("fixture filters build");
    let upstream = fleet::start_upstream().await;
    let Some(cluster) = etcd::EtcdCluster::start("bench-replicas", 3).await else {
        println!("etcd is not installed: `bash .ci/run` installs Debian's etcd-server");
        return;
    };
    let folder = std::env::temp_dir().join(format!("sluice-replicas-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);

    // The data dir.
    let single = start_control(
        StoreLocation::Dir(folder.join("dir")),
        "single",
        "127.0.0.1:0",
    )
    .await;
    let single_url = format!("http://{}", single.address());
    let mut dir_fleet = start_fleet(upstream, |_| single_url.clone()).await;
    let (dir_rpc, dir_applied) =
        push_rounds(&module, &mut dir_fleet, std::slice::from_ref(&single_url)).await;
    dir_fleet.stop.store(true, Ordering::Relaxed);
    drop(dir_fleet);
    single.shutdown().await;

    // Two replicas on etcd.
    let store = StoreLocation::Etcd(EtcdSettings::parse(&cluster.store_url(), "/bench").unwrap());
    let mut replicas = [
        Some(start_control(store.clone(), "replica-a", "127.0.0.1:0").await),
        Some(start_control(store.clone(), "replica-b", "127.0.0.1:0").await),
    ];
    let addresses: Vec<SocketAddr> = replicas.iter().flatten().map(|r| r.address()).collect();
    let urls: Vec<String> = addresses.iter().map(|a| format!("http://{a}")).collect();
    let (first, second) = (urls[0].clone(), urls[1].clone());
    // Half list A first, half B first: each replica serves five.
    let mut etcd_fleet = start_fleet(upstream, |index| {
        if index % 2 == 0 {
            format!("{first},{second}")
        } else {
            format!("{second},{first}")
        }
    })
    .await;
    let before = etcd_requests(&cluster.clients()).await;
    let (etcd_rpc, etcd_applied) = push_rounds(&module, &mut etcd_fleet, &urls).await;
    let after = etcd_requests(&cluster.clients()).await;

    // Failover: shut one replica down, see its proxies move, start it again.
    let names = ["replica-a", "replica-b"];
    let mut failovers = Vec::new();
    for round in 0..FAILOVER_ROUNDS {
        let (down, up) = (round % 2, 1 - round % 2);
        let moving = connected_to(&urls[up], names[down]).await;
        let stopped_at = Instant::now();
        if let Some(replica) = replicas[down].take() {
            replica.shutdown().await;
        }
        let mut moved = BTreeMap::new();
        while moved.len() < moving.len() && stopped_at.elapsed() < Duration::from_secs(20) {
            for proxy in connected_to(&urls[up], names[up]).await {
                moved.entry(proxy).or_insert_with(|| stopped_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failovers.extend(moving.iter().filter_map(|p| moved.get(p).copied()));
        let listen = addresses[down].to_string();
        replicas[down] = Some(start_control(store.clone(), names[down], &listen).await);
    }
    etcd_fleet.stop.store(true, Ordering::Relaxed);

    println!("\n## Push -> applied on {PROXIES} proxies, {PUSHES} pushes (module cached)\n");
    println!("| store | push RPC p50 | p99 | applied on all p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    push_row("data dir, one service", dir_rpc, dir_applied);
    push_row(
        "etcd (3 members), 2 replicas, 5 proxies each",
        etcd_rpc,
        etcd_applied,
    );
    println!("\n## etcd requests per push (all members, gRPC, by method)\n");
    println!("| method | per push |\n|---|---|");
    for (method, count) in &after {
        let delta = count - before.get(method).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!("| {method} | {:.1} |", delta / PUSHES as f64);
        }
    }
    failovers.sort();
    println!(
        "\n## Failover: a replica shut down, {} proxies moved over {FAILOVER_ROUNDS} rounds\n",
        failovers.len()
    );
    println!("| p50 | p99 | max |\n|---|---|---|");
    println!(
        "| {} | {} | {} |",
        ms(percentile(&failovers, 0.5)),
        ms(percentile(&failovers, 0.99)),
        ms(failovers.last().copied().unwrap_or_default())
    );
    for replica in replicas.into_iter().flatten() {
        replica.shutdown().await;
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&folder);
}

async fn start_control(store: StoreLocation, name: &str, listen: &str) -> RunningControl {
    RunningControl::start(
        ControlSettings {
            listen: listen.parse().unwrap(),
            store,
            token: None,
            max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
            lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
            name: Some(name.to_owned()),
            tls: false,
            tls_names: Vec::new(),
            identity: sluice_control::IdentitySettings::default(),
        },
        ProxyValidator::new(),
    )
    .await
    .unwrap()
}

async fn start_fleet(upstream: SocketAddr, urls: impl Fn(usize) -> String) -> Fleet {
    let stop = Arc::new(AtomicBool::new(false));
    let (mut proxies, mut tags) = (Vec::new(), Vec::new());
    for index in 0..PROXIES {
        let (proxy, subscription) =
            fleet::subscribed_proxy(upstream, urls(index), format!("proxy-{index}")).await;
        let (tx, rx) = watch::channel(String::new());
        tokio::spawn(fleet::client_loop(
            proxy.listener_address("main").unwrap(),
            tx,
            Arc::clone(&stop),
            false,
        ));
        tags.push(rx);
        proxies.push((proxy, subscription));
    }
    Fleet {
        _proxies: proxies,
        tags,
        stop,
    }
}

/// `PUSHES` pushes through `urls` in turn (after one that compiles the module): the push
/// RPC times, and push returned -> new config served on every proxy.
async fn push_rounds(
    module: &Path,
    fleet: &mut Fleet,
    urls: &[String],
) -> (Vec<Duration>, Vec<Duration>) {
    let mut clients = Vec::new();
    for url in urls {
        clients.push(sluice_control::connect(url, None).await.unwrap());
    }
    let (mut rpc, mut applied) = (Vec::new(), Vec::new());
    for round in 0..=PUSHES {
        let tag = format!("v{round}");
        let client = &mut clients[round % urls.len()];
        let started = Instant::now();
        push(client, fleet::tagger_push(module, &tag))
            .await
            .unwrap();
        let returned = Instant::now();
        for rx in &mut fleet.tags {
            rx.wait_for(|seen| *seen == tag).await.unwrap();
        }
        if round > 0 {
            rpc.push(returned - started);
            applied.push(returned.elapsed());
        }
    }
    (rpc, applied)
}

/// The proxies `status` through `url` shows connected to replica `name`.
async fn connected_to(url: &str, name: &str) -> Vec<String> {
    let Ok(mut client) = sluice_control::connect(url, None).await else {
        return Vec::new();
    };
    let Ok(status) = sluice::control::status(&mut client).await else {
        return Vec::new();
    };
    status
        .proxies
        .into_iter()
        .filter(|p| p.connected && p.replica == name)
        .map(|p| p.proxy_id)
        .collect()
}

/// `grpc_server_handled_total` per method, summed over the members.
async fn etcd_requests(members: &[SocketAddr]) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for member in members {
        let text = metrics(*member).await;
        for line in text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
        {
            let method = line
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *total.entry(method.to_owned()).or_insert(0.0) += value;
        }
    }
    total
}

async fn metrics(member: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(member).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {member}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

fn push_row(label: &str, mut rpc: Vec<Duration>, mut applied: Vec<Duration>) {
    rpc.sort();
    applied.sort();
    println!(
        "| {label} | {} | {} | {} | {} | {} |",
        ms(percentile(&rpc, 0.5)),
        ms(percentile(&rpc, 0.99)),
        ms(percentile(&applied, 0.5)),
        ms(percentile(&applied, 0.99)),
        ms(applied.last().copied().unwrap_or_default())
    );
}
