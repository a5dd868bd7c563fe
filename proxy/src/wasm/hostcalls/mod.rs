//! Every host function a Proxy-Wasm module can import, grouped by capability, registered on
//! one `Linker` for the engine. Registering a superset of what a module imports is harmless;
//! an import we lack fails instantiation with its exact name.

mod buffers;
mod callouts;
mod context;
mod extensions;
mod headers;
mod metrics;
mod properties;
mod shared;
mod stream;
mod wasi;

use wasmtime::{Engine, Linker};

use super::state::HostState;

pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    context::register(&mut linker)?;
    buffers::register(&mut linker)?;
    headers::register(&mut linker)?;
    stream::register(&mut linker)?;
    properties::register(&mut linker)?;
    metrics::register(&mut linker)?;
    shared::register(&mut linker)?;
    callouts::register(&mut linker)?;
    wasi::register(&mut linker)?;
    Ok(linker)
}
