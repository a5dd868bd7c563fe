//! HTTP and gRPC callouts. Not connected to clusters yet: each call answers the status Envoy
//! gives when its async client refuses a call (INTERNAL_FAILURE), which every SDK reports to
//! the filter as an error rather than a panic, and the first use per VM is logged.

use wasmtime::{Caller, Linker};

use crate::wasm::state::HostState;
use crate::wasm::status::Status;

const REFUSED: &str =
    "callouts are not supported by this build yet; the call was refused (INTERNAL_FAILURE)";

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            caller
                .data_mut()
                .log_unsupported_once("proxy_http_call", REFUSED);
            Ok(Status::InternalFailure as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            caller
                .data_mut()
                .log_unsupported_once("proxy_grpc_call", REFUSED);
            Ok(Status::InternalFailure as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            caller
                .data_mut()
                .log_unsupported_once("proxy_grpc_stream", REFUSED);
            Ok(Status::InternalFailure as i32)
        },
    )?;
    // No call was ever started, so every token is unknown.
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: i32, _: i32, _: i32, _: i32| Status::NotFound as i32,
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: i32| Status::NotFound as i32)?;
    linker.func_wrap("env", "proxy_grpc_close", |_: i32| Status::NotFound as i32)?;
    Ok(())
}
