//! HTTP and gRPC callouts. HTTP calls go to a configured cluster (see `wasm::callout`).
//! gRPC calls are not connected yet: they answer the status Envoy gives when its async client
//! refuses a call (INTERNAL_FAILURE), which every SDK reports as an error rather than a panic,
//! and the first use per VM is logged.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::wasm::callout::PendingCall;
use crate::wasm::guest::{CallResult, finish, read, write_u32};
use crate::wasm::pairs;
use crate::wasm::state::HostState;
use crate::wasm::status::Status;

const REFUSED: &str =
    "gRPC callouts are not supported by this build yet; the call was refused (INTERNAL_FAILURE)";

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_out: i32| {
            let result: CallResult = (|| {
                let cluster_name =
                    String::from_utf8_lossy(&read(&caller, upstream_ptr, upstream_len)?)
                        .into_owned();
                let headers = pairs::decode(&read(&caller, headers_ptr, headers_len)?);
                let body = read(&caller, body_ptr, body_len)?;
                // Envoy accepts trailers here but its async client drops them for a buffered call.
                let _trailers = read(&caller, trailers_ptr, trailers_len)?;
                let has = |name: &str| headers.iter().any(|(k, _)| k == name);
                if timeout_ms < 0
                    || !has(":method")
                    || !has(":path")
                    || !(has(":authority") || has("host"))
                {
                    return Err(Status::BadArgument.into());
                }
                let state = caller.data_mut();
                let cluster = state
                    .clusters
                    .as_ref()
                    .and_then(|clusters| clusters.get(&cluster_name))
                    .cloned()
                    .ok_or(Status::BadArgument)?;
                state.last_call_token += 4;
                let token = state.last_call_token;
                state.pending_calls.push(PendingCall {
                    token,
                    cluster,
                    headers,
                    body,
                    timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
                });
                write_u32(&mut caller, token_out, token)?;
                Ok(())
            })();
            finish(result)
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
