//! Building Proxy-Wasm filter crates for `wasm32-wasip1`, for tests, benches and the filter
//! author's harness: a filter is tested as the module it will ship as.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every crate of the cargo workspace `manifest` in release mode for `wasm32-wasip1`
/// into `target_dir` (kept apart from the caller's own target dir, so a `cargo test` build
/// lock is never contended) and returns the folder holding the `.wasm` files.
pub fn build_wasm_workspace(manifest: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    build_wasm_workspace_for(manifest, target_dir, "wasm32-wasip1")
}

/// As [`build_wasm_workspace`], for another wasm target (`wasm32-unknown-unknown` for SDKs
/// made before WASI).
pub fn build_wasm_workspace_for(
    manifest: &Path,
    target_dir: &Path,
    target: &str,
) -> Result<PathBuf, String> {
    build_wasm(manifest, &[], target_dir, target)
}

/// Builds the named packages of the cargo workspace `manifest` for `wasm32-wasip1`, as
/// [`build_wasm_workspace`] builds all of them.
pub fn build_wasm_packages(
    manifest: &Path,
    packages: &[&str],
    target_dir: &Path,
) -> Result<PathBuf, String> {
    build_wasm(manifest, packages, target_dir, "wasm32-wasip1")
}

fn build_wasm(
    manifest: &Path,
    packages: &[&str],
    target_dir: &Path,
    target: &str,
) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            target,
            "--manifest-path",
        ])
        .arg(manifest)
        .args(packages.iter().flat_map(|package| ["--package", package]))
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo to build {}: {e}", manifest.display()))?;
    if !output.status.success() {
        return Err(format!(
            "building {} for {target} failed (is the target installed? `rustup target add {target}`):\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join(target).join("release"))
}
