//! Shared data and shared queue host calls (see `wasm::shared` for the store itself).

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read, return_bytes, write_u32};
use crate::wasm::shared;
use crate::wasm::state::HostState;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         key_ptr: i32,
         key_len: i32,
         ptr_out: i32,
         size_out: i32,
         cas_out: i32| {
            let result: CallResult = (|| {
                let key = read(&caller, key_ptr, key_len)?;
                let (value, cas) = shared::get(&caller.data().plugin.vm_id, &key)?;
                return_bytes(&mut caller, &value, ptr_out, size_out)?;
                write_u32(&mut caller, cas_out, cas)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |caller: Caller<'_, HostState>,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32,
         cas: i32| {
            let result: CallResult = (|| {
                let key = read(&caller, key_ptr, key_len)?;
                let value = read(&caller, value_ptr, value_len)?;
                shared::set(&caller.data().plugin.vm_id, &key, value, cas as u32)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, name_ptr: i32, name_len: i32, token_out: i32| {
            let result: CallResult = (|| {
                let name = read(&caller, name_ptr, name_len)?;
                let state = caller.data();
                let token =
                    shared::register_queue(&state.plugin.vm_id, &name, state.queue_events.clone());
                write_u32(&mut caller, token_out, token)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>,
         vm_ptr: i32,
         vm_len: i32,
         name_ptr: i32,
         name_len: i32,
         token_out: i32| {
            let result: CallResult = (|| {
                let vm_id = String::from_utf8_lossy(&read(&caller, vm_ptr, vm_len)?).into_owned();
                let vm_id = if vm_id.is_empty() {
                    caller.data().plugin.vm_id.clone()
                } else {
                    vm_id
                };
                let name = read(&caller, name_ptr, name_len)?;
                let token = shared::resolve_queue(&vm_id, &name)?;
                write_u32(&mut caller, token_out, token)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |caller: Caller<'_, HostState>, token: i32, value_ptr: i32, value_len: i32| {
            let result: CallResult = (|| {
                let value = read(&caller, value_ptr, value_len)?;
                shared::enqueue(token as u32, value)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>, token: i32, ptr_out: i32, size_out: i32| {
            let result: CallResult = (|| {
                let value = shared::dequeue(token as u32)?;
                return_bytes(&mut caller, &value, ptr_out, size_out)
            })();
            finish(result)
        },
    )?;
    Ok(())
}
