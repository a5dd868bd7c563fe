//! `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`, `proxy_get_metric`.

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read_string, write_u32, write_u64};
use crate::wasm::state::HostState;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         name_ptr: i32,
         name_len: i32,
         id_out: i32| {
            let result: CallResult = (|| {
                let name = read_string(&caller, name_ptr, name_len)?;
                let id = caller.data_mut().metrics.define(kind as u32, &name)?;
                write_u32(&mut caller, id_out, id)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut caller: Caller<'_, HostState>, id: i32, offset: i64| {
            finish(
                caller
                    .data_mut()
                    .metrics
                    .increment(id as u32, offset)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut caller: Caller<'_, HostState>, id: i32, value: i64| {
            finish(
                caller
                    .data_mut()
                    .metrics
                    .record(id as u32, value)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, out: i32| {
            let result: CallResult = (|| {
                let value = caller.data().metrics.get(id as u32)?;
                write_u64(&mut caller, out, value)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    Ok(())
}
