//! Stream control: continue, close, local replies. Each only records what the guest asked;
//! the request pipeline acts on it after the callback returns, as Envoy defers it.

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read, read_string, return_bytes, write_u32};
use crate::wasm::pairs;
use crate::wasm::state::{HostState, LocalResponse};
use crate::wasm::status::Status;

const HTTP_REQUEST: u32 = 0;
const HTTP_RESPONSE: u32 = 1;
const DOWNSTREAM: u32 = 2;
const UPSTREAM: u32 = 3;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, kind: i32| {
            finish(continue_stream(&mut caller, kind as u32))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, kind: i32| {
            let result: CallResult = (|| {
                if kind as u32 > UPSTREAM {
                    return Err(Status::BadArgument.into());
                }
                let stream = caller
                    .data_mut()
                    .acting_stream()
                    .ok_or(Status::Unimplemented)?;
                stream.close_stream = true;
                stream.resumed.wake_all();
                Ok(())
            })();
            finish(result)
        },
    )?;
    // ABI 0.1.0 spellings.
    linker.func_wrap(
        "env",
        "proxy_continue_request",
        |mut caller: Caller<'_, HostState>| finish(continue_stream(&mut caller, HTTP_REQUEST)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_response",
        |mut caller: Caller<'_, HostState>| finish(continue_stream(&mut caller, HTTP_RESPONSE)),
    )?;
    linker.func_wrap("env", "proxy_clear_route_cache", |mut caller: Caller<'_, HostState>| {
        caller
            .data_mut()
            .log_unsupported_once("proxy_clear_route_cache", "route re-selection after header changes is not supported yet; the route chosen before the filters ran stays");
        Ok(Status::Ok as i32)
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32| {
            let result: CallResult = (|| {
                let details = read_string(&caller, details_ptr, details_len)?;
                let body = read(&caller, body_ptr, body_len)?;
                let headers = pairs::decode(&read(&caller, headers_ptr, headers_len)?)
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                let response = LocalResponse {
                    status: u16::try_from(status).unwrap_or(500),
                    // Envoy's response-code details never contain whitespace.
                    details: details.split_whitespace().collect::<Vec<_>>().join("_"),
                    body,
                    headers,
                    grpc_status: u32::try_from(grpc_status).ok().filter(|s| *s <= 16),
                };
                let stream = caller
                    .data_mut()
                    .acting_stream()
                    .ok_or(Status::Unimplemented)?;
                stream.local_response = Some(response);
                stream.resumed.wake_all();
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>, code_out: i32, ptr_out: i32, size_out: i32| {
            let result: CallResult = (|| {
                let (code, message) = caller.data().call_status.clone();
                write_u32(&mut caller, code_out, code)?;
                return_bytes(&mut caller, &message, ptr_out, size_out)
            })();
            finish(result)
        },
    )?;
    Ok(())
}

fn continue_stream(caller: &mut Caller<'_, HostState>, kind: u32) -> CallResult {
    if kind == UPSTREAM {
        return Err(Status::Unimplemented.into());
    }
    if kind > UPSTREAM {
        return Err(Status::BadArgument.into());
    }
    let stream = caller
        .data_mut()
        .acting_stream()
        .ok_or(Status::Unimplemented)?;
    match kind {
        HTTP_REQUEST => stream.continue_request = true,
        HTTP_RESPONSE => stream.continue_response = true,
        DOWNSTREAM => stream.continue_downstream = true,
        _ => unreachable!("checked above"),
    }
    match kind {
        HTTP_RESPONSE => stream.resumed.response.notify_one(),
        _ => stream.resumed.request.notify_one(),
    }
    Ok(())
}
