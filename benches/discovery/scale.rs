//! Part 3 of the discovery bench: the registry at scale (see `main.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message;
use sluice_benches::{ms, percentile};
use sluice_control::proto::{DeregisterRequest, DiscoverRequest, Registration, SubscribeRequest};
use tokio::time::Instant;

use super::ControlProcess;

const SERVICES: usize = 1_000;
const INSTANCES: usize = 5;
const WATCHERS: usize = 100;
const CHANGES: usize = 100;

fn service_name(index: usize) -> String {
    format!("svc-{index:04}")
}

/// Loopback addresses no traffic is ever sent to: the watchers here only read the registry.
fn instance_address(service: usize, instance: usize) -> String {
    format!(
        "127.{}.{}.{}:8080",
        1 + service / 256,
        service % 256,
        instance + 1
    )
}

/// What one watcher received, for the change being timed.
struct Received {
    at: Instant,
    bytes: usize,
    services: Vec<String>,
}

pub async fn scale(control: &ControlProcess, token: &str) {
    // Registering clients: one subscription per service, spread over 20 connections.
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(sluice_control::connect(&control.url, None).await.unwrap());
    }
    let (cpu_before, rss_before) = (control.cpu(), control.rss_mib());
    let started = Instant::now();
    let mut held = Vec::new();
    let connections = channels.len();
    for service in 0..SERVICES {
        let client = &mut channels[service % connections];
        let registrations = (0..INSTANCES)
            .map(|i| Registration {
                service: service_name(service),
                address: instance_address(service, i),
                labels: [("zone".to_owned(), format!("z{}", i % 3))].into(),
            })
            .collect();
        let stream = client
            .subscribe(SubscribeRequest {
                proxy_id: format!("registrant-{service}"),
                applied_version: 0,
                registrations,
                join_token: token.to_owned(),
                sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        held.push(stream);
    }
    let registered_in = started.elapsed();
    let (cpu_registered, rss_registered) = (control.cpu(), control.rss_mib());

    // Watchers: each asks for all 1,000 services.
    let everything: Vec<String> = (0..SERVICES).map(service_name).collect();
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let synced = Arc::new(AtomicUsize::new(0));
    let mut watch_channels = Vec::new();
    for _ in 0..10 {
        watch_channels.push(sluice_control::connect(&control.url, None).await.unwrap());
    }
    let initial_bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for watcher in 0..WATCHERS {
        let mut client = watch_channels[watcher % watch_channels.len()].clone();
        let mut stream = client
            .discover(DiscoverRequest {
                proxy_id: format!("watcher-{watcher}"),
                services: everything.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let (tx, synced, initial_bytes) = (
            received_tx.clone(),
            Arc::clone(&synced),
            Arc::clone(&initial_bytes),
        );
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(update)) = stream.message().await {
                let bytes = update.encoded_len();
                if first {
                    first = false;
                    initial_bytes.fetch_add(bytes, Ordering::Relaxed);
                    synced.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let services = update.services.iter().map(|s| s.service.clone()).collect();
                let _ = tx.send(Received {
                    at: Instant::now(),
                    bytes,
                    services,
                });
            }
        });
    }
    while synced.load(Ordering::Relaxed) < WATCHERS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let synced_in = started.elapsed();
    let (cpu_synced, rss_synced) = (control.cpu(), control.rss_mib());

    // Membership changes: an instance joins one service, then leaves it.
    let mut client = channels[0].clone();
    let mut reach = Vec::new();
    let mut change_bytes = Vec::new();
    let cpu_changes_start = control.cpu();
    for change in 0..CHANGES {
        let service = (change * 37) % SERVICES;
        let name = service_name(service);
        for joining in [true, false] {
            while received.try_recv().is_ok() {}
            let started = Instant::now();
            if joining {
                let stream = client
                    .subscribe(SubscribeRequest {
                        proxy_id: "churn".into(),
                        applied_version: 0,
                        registrations: vec![Registration {
                            service: name.clone(),
                            address: instance_address(service, INSTANCES),
                            labels: Default::default(),
                        }],
                        join_token: token.to_owned(),
                        sequence: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                held.push(stream);
            } else {
                client
                    .deregister(DeregisterRequest {
                        proxy_id: "churn".into(),
                        join_token: token.to_owned(),
                        sequence: 0,
                    })
                    .await
                    .unwrap();
            }
            let (mut got, mut bytes, mut last) = (0, 0, started);
            while got < WATCHERS {
                let update = received.recv().await.unwrap();
                if update.services.contains(&name) {
                    got += 1;
                    bytes += update.bytes;
                    last = last.max(update.at);
                }
            }
            reach.push(last - started);
            change_bytes.push(bytes);
        }
        // The churn client's stream ends here; its (now empty) registration goes too.
        held.pop();
    }
    let cpu_per_change = (control.cpu() - cpu_changes_start) / (2 * CHANGES) as u32;
    reach.sort();
    let bytes_per_change = change_bytes.iter().sum::<usize>() / change_bytes.len();

    println!(
        "\n3. Scale: {SERVICES} services × {INSTANCES} instances, {WATCHERS} watchers of every service\n"
    );
    println!("| what | time | control CPU | control RSS |");
    println!("|---|---:|---:|---:|");
    println!("| control service idle | | | {rss_before:.1} MiB |");
    println!(
        "| registering {} instances ({SERVICES} subscriptions) | {registered_in:.2?} | {:?} | {rss_registered:.1} MiB |",
        SERVICES * INSTANCES,
        cpu_registered - cpu_before
    );
    println!(
        "| {WATCHERS} watchers' first full sync ({:.1} MiB sent in all) | {synced_in:.2?} | {:?} | {rss_synced:.1} MiB |",
        initial_bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        cpu_synced - cpu_registered
    );
    println!(
        "| one membership change, to all {WATCHERS} watchers (p50 / p99 of {}) | {} / {} | {cpu_per_change:?} per change | {:.1} MiB |",
        reach.len(),
        ms(percentile(&reach, 0.5)),
        ms(percentile(&reach, 0.99)),
        control.rss_mib()
    );
    println!(
        "\nPayload per membership change over all {WATCHERS} watchers: {bytes_per_change} bytes ({} per watcher); the whole registry is {} bytes per watcher, so a change costs O(changed service), not O(mesh).",
        bytes_per_change / WATCHERS,
        initial_bytes.load(Ordering::Relaxed) / WATCHERS
    );
    drop(held);
}
