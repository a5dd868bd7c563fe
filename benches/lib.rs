//! Shared setup for the micro benchmarks: the fixture filters, built once.

use std::path::{Path, PathBuf};

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
