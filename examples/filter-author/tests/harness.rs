//! The filter on the real Sluice host, in front of a scripted upstream: `cargo test` builds the
//! `.wasm` the way it ships, then sends requests through a proxy that runs it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sluice_sdk::harness::{Harness, build_filters};

/// `tenant_gate.wasm`, built once per test run (into its own target folder, so the build never
/// waits on the lock of the `cargo test` running it).
fn module() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let folder = BUILT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm-filters");
        build_filters(&manifest, &target)
    });
    match folder {
        Ok(folder) => folder.join("tenant_gate.wasm"),
        Err(error) => panic!("{error}"),
    }
}

async fn gate(config: &str) -> Result<Harness, String> {
    Harness::builder()
        .filter("tenants", &module(), config)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_tenants_pass_and_responses_name_them() {
    let harness = gate(r#"{"tenants": ["acme", "globex"]}"#).await.unwrap();
    let reply = harness.get("/orders", &[("x-tenant", "acme")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-served-tenant"), Some("acme"));
    // The upstream got the request, tenant header and all.
    let seen = harness.upstream().requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get("x-tenant").unwrap(), "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_tenants_are_refused_before_the_upstream() {
    let harness = gate(r#"{"tenants": ["acme"], "header": "x-org"}"#)
        .await
        .unwrap();
    for headers in [vec![("x-org", "initech")], vec![]] {
        let reply = harness.get("/orders", &headers).await;
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, "unknown tenant: send a known one in x-org\n");
    }
    assert!(harness.upstream().requests().is_empty());
    assert_eq!(
        harness.filter_metric("tenant_gate_refused").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_keeps_the_proxy_from_starting_with_it() {
    let error = gate(r#"{"tenants": []}"#).await.err().expect("refused");
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
    let error = gate(r#"{"tenant": ["acme"]}"#)
        .await
        .err()
        .expect("refused");
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
}
