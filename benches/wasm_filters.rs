//! What a Wasm filter costs Sluice per request, with 0, 1 and 4 filters in the chain, and
//! what starting a plugin VM costs (instantiate, initialize, `on_vm_start`, `on_configure`).
//!
//! The per-request numbers cover the filter work of one request: creating the stream
//! contexts, request and response headers through every filter (the bench filter reads all
//! request headers and adds one header each way), and `on_log`/`on_done`/`on_delete`.
//! The whole proxy with network I/O is measured by load.sh, next to Envoy.
//!
//!     cargo bench -p sluice-benches

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice::admin::Metrics;
use sluice::config::FilterConfig;
use sluice::wasm::{FilterChain, PluginSpec, StreamInfo, WorkerPlugins};

fn load(name: &str, module: &std::path::Path, metrics: &Metrics) -> Arc<PluginSpec> {
    let yaml = format!("{{ name: {name}, module: \"{}\" }}", module.display());
    let config: FilterConfig = serde_yaml::from_str(&yaml).unwrap();
    PluginSpec::load(
        &config,
        std::path::Path::new("."),
        Some(metrics.wasm_families()),
        metrics.plugin_health(name),
        Default::default(),
    )
    .unwrap()
}

fn request_parts() -> http::request::Parts {
    let request = http::Request::get("/api/orders?page=2")
        .header("host", "shop.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-request-id", "5a1b0c3e-94b1-4f3e-9a7d-1c2e3f4a5b6c")
        .header("x-forwarded-for", "10.0.0.1")
        .body(())
        .unwrap();
    request.into_parts().0
}

fn per_request(c: &mut Criterion) {
    let module = sluice_benches::fixture("bench").expect("fixtures build");
    let metrics = Metrics::new();
    let specs: Vec<Arc<PluginSpec>> = (0..4)
        .map(|i| load(&format!("bench-{i}"), &module, &metrics))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let plugins = WorkerPlugins::new(Default::default());
    // In the proxy the worker's adopted snapshot keeps each plugin's VM slot. The bench
    // adopts no snapshot, so it holds the slots itself; otherwise every request would start
    // and drop a VM, and the bench would measure instantiation.
    let _slots: Vec<_> = specs.iter().map(|spec| plugins.slot(spec)).collect();
    let request = request_parts();
    let response = http::Response::new(()).into_parts().0;
    let info = Rc::new(StreamInfo::new(
        1,
        "127.0.0.1:50000".parse().unwrap(),
        "127.0.0.1:10000".parse().unwrap(),
        "HTTP/1.1",
    ));

    let mut group = c.benchmark_group("filters_per_request");
    for count in [0usize, 1, 4] {
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, &count| {
            b.iter(|| {
                local.block_on(&runtime, async {
                    let chain = Rc::new(RefCell::new(FilterChain::new(Rc::clone(&info), 1 << 20)));
                    chain.borrow_mut().extend(&plugins, &specs[..count]);
                    let pairs = sluice::wasm::request_pairs(&request, "http");
                    let pairs = sluice::wasm::request_headers(&chain, pairs, true, 0, None)
                        .await
                        .unwrap();
                    let mut parts = request_parts();
                    sluice::wasm::apply_request_pairs(&mut parts, &pairs)
                        .expect("the bench filters write valid headers");
                    let last = count.saturating_sub(1);
                    let pairs = sluice::wasm::response_pairs(&response);
                    let pairs = sluice::wasm::response_headers(&chain, pairs, true, last, None)
                        .await
                        .unwrap();
                    chain.borrow_mut().finish();
                    std::hint::black_box((parts, pairs));
                })
            });
        });
    }
    group.finish();
}

fn instantiation(c: &mut Criterion) {
    let module = sluice_benches::fixture("bench").expect("fixtures build");
    let metrics = Metrics::new();
    let spec = load("bench", &module, &metrics);
    c.bench_function("vm_start", |b| b.iter(|| spec.canary().unwrap()));
}

criterion_group!(benches, per_request, instantiation);
criterion_main!(benches);
