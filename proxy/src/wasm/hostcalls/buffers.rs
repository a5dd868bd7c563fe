//! Body and configuration buffers (`proxy_get_buffer_bytes` and friends), with Envoy's
//! availability windows: bodies only inside their callback (or while being accumulated),
//! the plugin configuration only inside `proxy_on_configure`.

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read, return_bytes, write_u32};
use crate::wasm::state::HostState;
use crate::wasm::status::{AbiVersion, Status};

const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const DOWNSTREAM_DATA: u32 = 2;
const UPSTREAM_DATA: u32 = 3;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const GRPC_RECEIVE_BUFFER: u32 = 5;
const VM_CONFIGURATION: u32 = 6;
const PLUGIN_CONFIGURATION: u32 = 7;
const MAX_BUFFER_TYPE: u32 = 8;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         max: i32,
         ptr_out: i32,
         size_out: i32| {
            finish(get_bytes(
                &mut caller,
                kind as u32,
                start as u32,
                max as u32,
                ptr_out,
                size_out,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>, kind: i32, len_out: i32, flags_out: i32| {
            let result: CallResult = (|| {
                let length = buffer(&mut caller, kind as u32)?.len() as u32;
                write_u32(&mut caller, len_out, length)?;
                write_u32(&mut caller, flags_out, 0)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32| {
            finish(set_bytes(
                &mut caller,
                kind as u32,
                start as u32,
                size as u32,
                ptr,
                len,
            ))
        },
    )?;
    // ABI 0.1.0: the configuration of the callback in progress.
    linker.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut caller: Caller<'_, HostState>, ptr_out: i32, size_out: i32| {
            let state = caller.data();
            let bytes = if state.in_configure {
                state.plugin.plugin_config.clone()
            } else {
                state.plugin.vm_config.clone()
            };
            finish(return_bytes(&mut caller, &bytes, ptr_out, size_out))
        },
    )?;
    Ok(())
}

/// A copy of the buffer `kind` as the acting context sees it now.
fn buffer(caller: &mut Caller<'_, HostState>, kind: u32) -> Result<Vec<u8>, Status> {
    let state = caller.data_mut();
    let configs_exist = state.abi >= AbiVersion::V0_2_0;
    match kind {
        REQUEST_BODY => Ok(state
            .acting_stream()
            .and_then(|s| s.request_body.clone())
            .unwrap_or_default()),
        RESPONSE_BODY => Ok(state
            .acting_stream()
            .and_then(|s| s.response_body.clone())
            .unwrap_or_default()),
        DOWNSTREAM_DATA => state
            .acting_stream()
            .and_then(|s| s.downstream_data.clone())
            .ok_or(Status::NotFound),
        UPSTREAM_DATA => state
            .acting_stream()
            .and_then(|s| s.upstream_data.clone())
            .ok_or(Status::NotFound),
        GRPC_RECEIVE_BUFFER => state.grpc_message.clone().ok_or(Status::NotFound),
        HTTP_CALL_RESPONSE_BODY => state
            .call_response
            .as_ref()
            .map(|r| r.body.clone())
            .ok_or(Status::NotFound),
        VM_CONFIGURATION if configs_exist => Ok(state.plugin.vm_config.clone()),
        PLUGIN_CONFIGURATION if configs_exist && state.in_configure => {
            Ok(state.plugin.plugin_config.clone())
        }
        kind if kind > MAX_BUFFER_TYPE => Err(Status::BadArgument),
        // Network data, callout responses and call data: none exist in this context.
        _ => Err(Status::NotFound),
    }
}

fn get_bytes(
    caller: &mut Caller<'_, HostState>,
    kind: u32,
    start: u32,
    max: u32,
    ptr_out: i32,
    size_out: i32,
) -> CallResult {
    let data = buffer(caller, kind)?;
    // 64-bit arithmetic: the Rust SDK asks for (0, u32::MAX) and must not overflow.
    let from = u64::from(start).min(data.len() as u64) as usize;
    let to = (u64::from(start) + u64::from(max)).min(data.len() as u64) as usize;
    return_bytes(caller, &data[from..to], ptr_out, size_out)
}

/// Envoy supports two shapes on a live body: `start == 0` drains `size` bytes from the front
/// and prepends the data (so `(0, len, new)` replaces everything), and `start >= len` appends.
fn set_bytes(
    caller: &mut Caller<'_, HostState>,
    kind: u32,
    start: u32,
    size: u32,
    ptr: i32,
    len: i32,
) -> CallResult {
    if kind > MAX_BUFFER_TYPE {
        return Err(Status::BadArgument.into());
    }
    let data = read(caller, ptr, len)?;
    let state = caller.data_mut();
    let stream = state.acting_stream().ok_or(Status::BadArgument)?;
    let body = match kind {
        REQUEST_BODY => stream.request_body.as_mut(),
        RESPONSE_BODY => stream.response_body.as_mut(),
        DOWNSTREAM_DATA => stream.downstream_data.as_mut(),
        UPSTREAM_DATA => stream.upstream_data.as_mut(),
        _ => None,
    }
    .ok_or(Status::BadArgument)?;
    if start == 0 {
        let drained = (size as usize).min(body.len());
        body.splice(..drained, data);
    } else if start as usize >= body.len() {
        body.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}
