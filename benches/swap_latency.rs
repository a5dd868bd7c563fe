//! How fast a pushed filter reaches a fleet, and what a swap costs the traffic.
//!
//! In one process, on loopback: a control service, ten proxies subscribed to it (one worker
//! each), and a small upstream. A filter (the headers fixture) is pushed 50 times with a new
//! configuration each time (the module is cached after the first push). Each proxy has a
//! client sending requests back to back; the time that counts is from `push` returning to the
//! first response carrying the new configuration on the last of the ten proxies.
//!
//! It also times a cold module compile against a cached one, and the request latency on one
//! proxy during the 50 swaps against the same number of requests with no swap.
//!
//! Run: `cargo bench -p sluice-benches --bench swap_latency`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice::control::{ProxyValidator, push};
use sluice_benches::{fleet, ms, percentile};
use sluice_control::{ControlSettings, RunningControl};
use tokio::sync::watch;
use tokio::time::Instant;

const PROXIES: usize = 10;
const SWAPS: usize = 50;

fn main() {
    sluice_benches::block_on(run());
}

async fn run() {
    let module = sluice_benches::fixture("headers").expect("fixture filters build");
    let (cold, cached) = compile_times(&module);
    let upstream = fleet::start_upstream().await;
    let data_dir = std::env::temp_dir().join(format!("sluice-swap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let control = RunningControl::start(
        ControlSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: sluice_control::StoreLocation::Dir(data_dir.clone()),
            token: None,
            max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
            lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
            name: None,
            tls: false,
            tls_names: Vec::new(),
            identity: sluice_control::IdentitySettings::default(),
        },
        ProxyValidator::new(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", control.address());

    let mut proxies = Vec::new();
    for index in 0..PROXIES {
        proxies
            .push(fleet::subscribed_proxy(upstream, url.clone(), format!("proxy-{index}")).await);
    }
    let addresses: Vec<SocketAddr> = proxies
        .iter()
        .map(|(p, _)| p.listener_address("main").unwrap())
        .collect();

    // Each proxy's client reports the tag of every response.
    let mut tags = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut latency_clients = Vec::new();
    for (index, address) in addresses.iter().enumerate() {
        let (tx, rx) = watch::channel(String::new());
        tags.push(rx);
        latency_clients.push(tokio::spawn(fleet::client_loop(
            *address,
            tx,
            Arc::clone(&stop),
            index == 0,
        )));
    }

    // A quiet second first: the latency baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = sluice_control::connect(&url, None).await.unwrap();
    let mut push_rpc = Vec::new();
    let mut to_all = Vec::new();
    // The first push compiles the module; the rest find it cached.
    for swap in 0..=SWAPS {
        let tag = format!("v{swap}");
        let started = Instant::now();
        push(&mut client, fleet::tagger_push(&module, &tag))
            .await
            .unwrap();
        let returned = Instant::now();
        for rx in &mut tags {
            rx.wait_for(|seen| *seen == tag).await.unwrap();
        }
        if swap > 0 {
            push_rpc.push(returned - started);
            to_all.push(returned.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut quiet_and_swapping = None;
    for (index, handle) in latency_clients.into_iter().enumerate() {
        let latencies = handle.await.unwrap();
        if index == 0 {
            quiet_and_swapping = latencies;
        }
    }
    let (quiet, swapping) = quiet_and_swapping.unwrap_or_default();

    println!("\n## Pushing a filter to {PROXIES} proxies, {SWAPS} times (module cached)\n");
    println!("| measure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    row(
        "push RPC (validate: canary VM with the new config)",
        &mut push_rpc,
    );
    row(
        "push returned -> new config served on all proxies",
        &mut to_all,
    );
    println!("\n## Module compile\n");
    println!("| | time |\n|---|---|");
    println!("| cold compile (Cranelift) | {} |", ms(cold));
    println!(
        "| plugin load with the module cached (canary VM included) | {} |",
        ms(cached)
    );
    println!("\n## Request latency on one proxy (keep-alive, back to back)\n");
    println!("| period | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    latency_row("no swaps", quiet);
    latency_row(&format!("during the {SWAPS} swaps"), swapping);
    control.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A cold compile (Cranelift, with the proxy's engine settings) against a plugin load that
/// finds the module compiled already (it still runs the canary VM).
fn compile_times(module: &Path) -> (Duration, Duration) {
    let filter: sluice::config::FilterConfig = serde_yaml::from_str(&format!(
        "{{ name: tagger, module: \"{}\" }}",
        module.display()
    ))
    .unwrap();
    let load = || {
        let started = Instant::now();
        let spec = sluice::wasm::PluginSpec::load(
            &filter,
            Path::new("."),
            None,
            sluice::admin::Metrics::new().plugin_health("tagger"),
            Arc::new(std::collections::HashMap::new()),
        )
        .unwrap();
        (started.elapsed(), spec)
    };
    let (_, held) = load();
    let (cached, _) = load();
    let bytes = std::fs::read(module).unwrap();
    let started = Instant::now();
    wasmtime::Module::new(held.runtime_engine(), &bytes).unwrap();
    (started.elapsed(), cached)
}

fn row(label: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "| {label} | {} | {} | {} |",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    );
}

fn latency_row(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {label} | {} | {} | {} | {} |",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    );
}
