//! Shared by the benchmarks: the fixture filters, built once, and how latencies are reported.

pub mod fleet;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds the fixture filters (proxy/tests/fixtures) and returns the `.wasm` path of `name`.
pub fn fixture(name: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = sluice::wasm::build_wasm_workspace(
        &root.join("proxy/tests/fixtures/Cargo.toml"),
        &target.join("wasm-fixtures"),
    )?;
    Ok(dir.join(format!("fixture_{name}.wasm")))
}

/// Runs a benchmark's `main` future on a runtime of two worker threads, the machine's cores.
/// A benchmark cannot run without its runtime: failing to build one ends it.
#[allow(clippy::expect_used)]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// The `q` quantile (0 to 1) of `sorted`, nearest rank; zero for no samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

/// `1.23 ms`.
pub fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
