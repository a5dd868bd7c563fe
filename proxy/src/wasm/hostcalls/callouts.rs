//! HTTP and gRPC callouts. HTTP calls and unary gRPC calls go to a configured cluster (see
//! `wasm::callout`). gRPC streams are not connected yet: they answer the status Envoy gives when its async client
//! refuses a call (INTERNAL_FAILURE), which every SDK reports as an error rather than a panic,
//! and the first use per VM is logged.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::wasm::callout::{CallKind, PendingCall, grpc_frame, grpc_request};
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
                    kind: CallKind::Http,
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
         service_ptr: i32,
         service_len: i32,
         name_ptr: i32,
         name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         message_ptr: i32,
         message_len: i32,
         timeout_ms: i32,
         token_out: i32| {
            let result: CallResult = (|| {
                // `service` is a cluster name (a serialized GrpcService proto is not supported).
                let cluster_name =
                    String::from_utf8_lossy(&read(&caller, service_ptr, service_len)?).into_owned();
                let service =
                    String::from_utf8_lossy(&read(&caller, name_ptr, name_len)?).into_owned();
                let method =
                    String::from_utf8_lossy(&read(&caller, method_ptr, method_len)?).into_owned();
                let metadata = pairs::decode(&read(&caller, metadata_ptr, metadata_len)?);
                let message = read(&caller, message_ptr, message_len)?;
                let state = caller.data_mut();
                // Envoy answers an unknown cluster with PARSE_FAILURE (the SDKs expect exactly it).
                let cluster = state
                    .clusters
                    .as_ref()
                    .and_then(|clusters| clusters.get(&cluster_name))
                    .cloned()
                    .ok_or(Status::ParseFailure)?;
                let timeout =
                    (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u32 as u64));
                state.last_grpc_token += 4;
                let token = state.last_grpc_token;
                state.pending_calls.push(PendingCall {
                    kind: CallKind::Grpc,
                    token,
                    headers: grpc_request(&cluster_name, &service, &method, metadata, timeout),
                    body: grpc_frame(&message),
                    cluster,
                    timeout,
                });
                write_u32(&mut caller, token_out, token)?;
                Ok(())
            })();
            finish(result)
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
