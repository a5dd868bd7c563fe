//! HTTP and gRPC callouts to a configured cluster: HTTP calls and unary gRPC calls (see
//! `wasm::callout`), and gRPC streams (see `wasm::grpc_stream`). Tokens carry their kind in
//! the low two bits, as in cpp-host: 0 HTTP call, 1 gRPC call, 2 gRPC stream.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::upstream::Cluster;
use crate::wasm::callout::{CallKind, PendingCall, grpc_frame, grpc_request};
use crate::wasm::grpc_stream;
use crate::wasm::guest::{CallResult, finish, read, read_string, write_u32};
use crate::wasm::pairs::{self, Pair};
use crate::wasm::state::HostState;
use crate::wasm::status::Status;

const TOKEN_KIND: u32 = 0b11;
const GRPC_CALL: u32 = 1;
const GRPC_STREAM: u32 = 2;

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
                let cluster_name = read_string(&caller, upstream_ptr, upstream_len)?;
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
                let cluster = cluster(caller.data(), &cluster_name, Status::BadArgument)?;
                let state = caller.data_mut();
                state.last_call_token += 4;
                let token = state.last_call_token;
                note_owner(state, token);
                state.pending_calls.push(PendingCall {
                    kind: CallKind::Http,
                    token,
                    cluster,
                    headers,
                    body,
                    timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
                    cancelled: None,
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
                let timeout =
                    (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u32 as u64));
                let target = [
                    service_ptr,
                    service_len,
                    name_ptr,
                    name_len,
                    method_ptr,
                    method_len,
                    metadata_ptr,
                    metadata_len,
                ];
                let (cluster, headers) = grpc_target(&caller, target, timeout)?;
                let message = read(&caller, message_ptr, message_len)?;
                let state = caller.data_mut();
                state.last_grpc_token += 4;
                let token = state.last_grpc_token;
                note_owner(state, token);
                let (cancel, cancelled) = tokio::sync::oneshot::channel();
                state.grpc_calls.insert(token, cancel);
                state.pending_calls.push(PendingCall {
                    kind: CallKind::Grpc,
                    token,
                    headers,
                    body: grpc_frame(&message),
                    cluster,
                    timeout,
                    cancelled: Some(cancelled),
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
         service_ptr: i32,
         service_len: i32,
         name_ptr: i32,
         name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         token_out: i32| {
            let result: CallResult = (|| {
                let target = [
                    service_ptr,
                    service_len,
                    name_ptr,
                    name_len,
                    method_ptr,
                    method_len,
                    metadata_ptr,
                    metadata_len,
                ];
                let (cluster, headers) = grpc_target(&caller, target, None)?;
                let token = caller.data().last_grpc_stream_token + 4;
                // The token is written before the stream exists, so a bad pointer opens none.
                write_u32(&mut caller, token_out, token)?;
                let (handle, pending) = grpc_stream::open(token, cluster, headers);
                let state = caller.data_mut();
                state.last_grpc_stream_token = token;
                state.grpc_streams.insert(token, handle);
                state.pending_streams.push(pending);
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Caller<'_, HostState>,
         token: i32,
         message_ptr: i32,
         message_len: i32,
         end_stream: i32| {
            let result: CallResult = (|| {
                let token = token as u32;
                if token & TOKEN_KIND != GRPC_STREAM {
                    return Err(Status::BadArgument.into());
                }
                let message = read(&caller, message_ptr, message_len)?;
                let stream = caller
                    .data_mut()
                    .grpc_streams
                    .get_mut(&token)
                    .ok_or(Status::NotFound)?;
                stream.send(&message, end_stream != 0);
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut caller: Caller<'_, HostState>, token: i32| {
            cancel(caller.data_mut(), token as u32) as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut caller: Caller<'_, HostState>, token: i32| {
            close(caller.data_mut(), token as u32) as i32
        },
    )?;
    Ok(())
}

/// The cluster a callout names; `unknown` is the status Envoy gives when there is none.
fn cluster(state: &HostState, name: &str, unknown: Status) -> Result<Arc<Cluster>, Status> {
    state
        .clusters
        .as_ref()
        .and_then(|clusters| clusters.get(name))
        .cloned()
        .ok_or(unknown)
}

/// The cluster and request headers of a gRPC call or stream, from the guest's `service`
/// (a cluster name; a serialized `GrpcService` proto is not supported), service and method
/// names and initial metadata. Envoy answers an unknown cluster with PARSE_FAILURE, which the
/// SDKs expect exactly.
fn grpc_target(
    caller: &Caller<'_, HostState>,
    [
        cluster_ptr,
        cluster_len,
        service_ptr,
        service_len,
        method_ptr,
        method_len,
        metadata_ptr,
        metadata_len,
    ]: [i32; 8],
    timeout: Option<Duration>,
) -> Result<(Arc<Cluster>, Vec<Pair>), Status> {
    let cluster_name = read_string(caller, cluster_ptr, cluster_len)?;
    let service = read_string(caller, service_ptr, service_len)?;
    let method = read_string(caller, method_ptr, method_len)?;
    let metadata = pairs::decode(&read(caller, metadata_ptr, metadata_len)?);
    let cluster = cluster(caller.data(), &cluster_name, Status::ParseFailure)?;
    let headers = grpc_request(&cluster_name, &service, &method, metadata, timeout);
    Ok((cluster, headers))
}

/// `proxy_grpc_cancel`: resets a call or a stream. Dropping its handle does that, so no
/// callback follows.
/// Remembers which stream made call `token`, if a stream context is acting.
fn note_owner(state: &mut HostState, token: u32) {
    let acting = state.contexts.acting();
    if state.streams.contains_key(&acting) {
        state.call_owners.insert(token, acting);
    }
}

fn cancel(state: &mut HostState, token: u32) -> Status {
    let found = match token & TOKEN_KIND {
        GRPC_CALL => state.grpc_calls.remove(&token).is_some(),
        GRPC_STREAM => state.grpc_streams.remove(&token).is_some(),
        _ => return Status::BadArgument,
    };
    if found { Status::Ok } else { Status::NotFound }
}

/// `proxy_grpc_close`: a call is cancelled, as in Envoy. A stream's client side ends, and the
/// stream is forgotten once the upstream has closed its side too.
fn close(state: &mut HostState, token: u32) -> Status {
    if token & TOKEN_KIND != GRPC_STREAM {
        return cancel(state, token);
    }
    let Some(stream) = state.grpc_streams.get_mut(&token) else {
        return Status::NotFound;
    };
    stream.half_close();
    stream.local_closed = true;
    if stream.remote_closed {
        state.grpc_streams.remove(&token);
    }
    Status::Ok
}
