//! Building Proxy-Wasm filter crates for `wasm32-wasip1`, for tests, benches and the filter
//! author's harness: a filter is tested as the module it will ship as.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every crate of the cargo workspace `manifest` in release mode for `wasm32-wasip1`
/// into `target_dir` (kept apart from the caller's own target dir, so a `cargo test` build
/// lock is never contended) and returns the folder holding the `.wasm` files.
pub fn build_wasm_workspace(manifest: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo to build {}: {e}", manifest.display()))?;
    if !output.status.success() {
        return Err(format!(
            "building {} for wasm32-wasip1 failed (is the target installed? `rustup target add wasm32-wasip1`):\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join("wasm32-wasip1/release"))
}
