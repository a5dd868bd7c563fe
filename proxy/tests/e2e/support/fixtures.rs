//! The Proxy-Wasm fixture filters in `proxy/tests/fixtures`, built for wasm32-wasip1 on first
//! use (once per test process).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The path of fixture `name` (`headers`, `body`, `hostile`, `pauser`, `bench`).
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let proxy_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target_root = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| proxy_dir.join("../target"));
            sluice::wasm::build_wasm_workspace(
                &proxy_dir.join("tests/fixtures/Cargo.toml"),
                &target_root.join("wasm-fixtures"),
            )
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(format!("fixture_{name}.wasm"))
}
