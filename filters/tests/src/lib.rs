//! Shared by the standard filters' tests: the modules, built once per test process the way
//! they ship (release, `wasm32-wasip1`), into their own target folder so the build never
//! waits on the lock of the `cargo test` that runs it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Every standard filter package.
const PACKAGES: &[&str] = &[
    "sluice-filter-authz",
    "sluice-filter-metrics",
    "sluice-filter-ratelimit",
];

/// The `.wasm` of standard filter `name` (`authz`, `metrics`, `ratelimit`), built on first use.
pub fn module(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let folder = BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), PathBuf::from);
            sluice::wasm::build_wasm_packages(
                &root.join("Cargo.toml"),
                PACKAGES,
                &target.join("wasm-filters"),
            )
        })
        .as_ref()
        .unwrap_or_else(|error| panic!("{error}"));
    folder.join(format!("{name}.wasm"))
}

/// Starts a proxy with filter `name` configured with `config`, which must refuse it; returns
/// why the proxy did not start.
pub async fn refusal(name: &str, config: &str) -> String {
    match sluice_sdk::harness::Harness::builder()
        .filter(name, &module(name), config)
        .start()
        .await
    {
        Ok(_) => panic!("{name} accepted {config}"),
        Err(error) => error,
    }
}
