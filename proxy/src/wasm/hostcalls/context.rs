//! Logging, time, tick timers, and context control.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read_string, write_u32, write_u64};
use crate::wasm::state::HostState;
use crate::wasm::status::Status;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            finish(log(&caller, level, ptr, len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, out: i32| {
            let level = caller.data().plugin.log_level.min(5);
            finish(write_u32(&mut caller, out, level).map_err(Into::into))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, out: i32| {
            finish(write_u64(&mut caller, out, unix_nanos()).map_err(Into::into))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, period: i32| {
            let state = caller.data_mut();
            let period = period as u32;
            state.tick_period = (period > 0).then(|| Duration::from_millis(u64::from(period)));
            state.tick_changed = true;
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, id: i32| {
            let contexts = &mut caller.data_mut().contexts;
            let id = id as u32;
            if !contexts.live.contains(&id) {
                return Ok(Status::BadArgument as i32);
            }
            contexts.effective = Some(id);
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut caller: Caller<'_, HostState>| {
        let state = caller.data_mut();
        if state.root_done {
            return Ok(Status::NotFound as i32);
        }
        state.root_done = true;
        Ok(Status::Ok as i32)
    })?;
    Ok(())
}

/// The wall clock in nanoseconds with Envoy's precision: microseconds (the envoy_diff.sh
/// `headers` run shows Envoy 1.40's last three digits always zero). Filters that compare
/// times across hosts or with Envoy's `request.time` see the same granularity.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| (d.as_micros() as u64).saturating_mul(1000))
}

/// `wasm log <plugin> <root_id> <vm_id>: message`, as Envoy prints it, at the guest's level.
fn log(caller: &Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> CallResult {
    let level = level as u32;
    if level > 5 {
        return Err(Status::BadArgument.into());
    }
    let message = read_string(caller, ptr, len)?;
    let plugin = &caller.data().plugin;
    if level < plugin.log_level {
        return Ok(());
    }
    let (name, root_id, vm_id) = (
        plugin.name.as_str(),
        plugin.root_id.as_str(),
        plugin.vm_id.as_str(),
    );
    match level {
        0 => {
            tracing::trace!(target: "sluice::wasm::guest", plugin = name, root_id, vm_id, "{message}")
        }
        1 => {
            tracing::debug!(target: "sluice::wasm::guest", plugin = name, root_id, vm_id, "{message}")
        }
        2 => {
            tracing::info!(target: "sluice::wasm::guest", plugin = name, root_id, vm_id, "{message}")
        }
        3 => {
            tracing::warn!(target: "sluice::wasm::guest", plugin = name, root_id, vm_id, "{message}")
        }
        _ => {
            tracing::error!(target: "sluice::wasm::guest", plugin = name, root_id, vm_id, "{message}")
        }
    }
    Ok(())
}
