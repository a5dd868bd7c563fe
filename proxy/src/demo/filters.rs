//! The standard filters the demo runs, built from this source tree.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The standard filters: what the demo runs and the filters' tests build.
const FILTER_PACKAGES: &[&str] = &[
    "sluice-filter-authz",
    "sluice-filter-circuit-breaker",
    "sluice-filter-metrics",
    "sluice-filter-ratelimit",
    "sluice-filter-retry",
];

/// Builds the standard filters from this source tree for `wasm32-wasip1` (adding the target
/// with rustup when it is missing) and returns the folder of their `.wasm` files. The demo
/// runs from `cargo run`, so cargo and the sources are at hand.
pub fn build_standard_filters() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("Cargo.toml");
    if !manifest.exists() {
        return Err(format!(
            "the demo builds the standard filters from the source tree at {}, which is not there; run it with `bash examples/demo.sh` from a checkout",
            root.display()
        ));
    }
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip1")
        });
    if !has_target {
        // No rustup (a distribution's Rust) leaves it to the build to say what is missing.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip1"])
            .current_dir(&root)
            .status();
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    crate::wasm::build_wasm_packages(&manifest, FILTER_PACKAGES, &target.join("wasm-filters"))
}
