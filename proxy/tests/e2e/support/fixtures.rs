//! The Proxy-Wasm fixture filters, built on first use (once per test process per workspace).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The path of fixture `name` in `proxy/tests/fixtures` (`headers`, `body`, `hostile`,
/// `pauser`, `bench`, `callout`, `network`), built for wasm32-wasip1.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BUILT, "fixtures", "wasm32-wasip1").join(format!("fixture_{name}.wasm"))
}

/// The ABI 0.1.0 fixture (`proxy/tests/fixtures-legacy`), built for wasm32-unknown-unknown as
/// the SDK's 0.1 line expects.
pub fn legacy_fixture() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BUILT, "fixtures-legacy", "wasm32-unknown-unknown").join("fixture_legacy.wasm")
}

/// The filter built with the AssemblyScript SDK (`proxy/tests/fixtures-assemblyscript`). It is
/// committed built, so the tests need no Node.js; its `build.sh` rebuilds it.
pub fn assemblyscript_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-assemblyscript/as_tag.wasm")
}

/// The filter built with the C++ SDK and Emscripten (`proxy/tests/fixtures-cpp`), committed
/// built like the AssemblyScript one; its `build.sh` rebuilds it.
pub fn cpp_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-cpp/cpp_tag.wasm")
}

/// The filter built with the Go SDK and upstream Go's wasip1 reactor (`proxy/tests/fixtures-go`),
/// committed built like the other SDKs' filters; its `build.sh` rebuilds it.
pub fn go_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-go/go_tag.wasm")
}

fn built(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    workspace: &str,
    target: &str,
) -> PathBuf {
    cell.get_or_init(|| {
        let proxy_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target_root = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| proxy_dir.join("../target"));
        let manifest = proxy_dir.join("tests").join(workspace).join("Cargo.toml");
        sluice::wasm::build_wasm_workspace_for(
            &manifest,
            &target_root.join(format!("wasm-{workspace}")),
            target,
        )
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}
