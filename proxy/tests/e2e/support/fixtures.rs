//! The Proxy-Wasm fixture filters in `proxy/tests/fixtures`, built for wasm32-wasip1 on first
//! use (once per test process) into their own target dir, so the outer `cargo test` build
//! lock is never contended.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of fixture `name` (`headers`, `body`, `hostile`, `pauser`).
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(format!("fixture_{name}.wasm"))
}

fn build() -> Result<PathBuf, String> {
    let proxy_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = proxy_dir.join("tests/fixtures/Cargo.toml");
    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| proxy_dir.join("../target"));
    let target_dir = target_root.join("wasm-fixtures");
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
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo to build the wasm fixtures: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the wasm fixtures failed (is the wasm32-wasip1 target installed? `rustup target add wasm32-wasip1`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join("wasm32-wasip1/release"))
}
