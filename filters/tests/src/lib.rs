//! Shared by the standard filters' tests: the modules, built once per test process the way
//! they ship (release, `wasm32-wasip1`), into their own target folder so the build never
//! waits on the lock of the `cargo test` that runs it.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `.wasm` of standard filter `name` (`authz`, `circuit_breaker`, `metrics`, `ratelimit`,
/// `retry`), built on first use by the same build `sluice demo` runs, into
/// `target/wasm-filters`.
pub fn module(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let folder = BUILT
        .get_or_init(sluice::demo::build_standard_filters)
        .as_ref()
        .unwrap_or_else(|error| panic!("{error}"));
    folder.join(format!("{name}.wasm"))
}

/// Sends `GET path` on its own connection and returns the raw response once the proxy closes
/// it: for a request kept in flight (by a slow scripted answer) while others run.
pub async fn raw_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply).await;
    reply
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
