//! The WASI preview1 imports SDK-built modules need, under both `wasi_snapshot_preview1` and
//! the legacy `wasi_unstable`. A filter has no files, sockets or arguments: stdout and stderr
//! become log lines, clocks and randomness are real, everything else is a harmless errno.

use std::io::Read;
use std::sync::OnceLock;

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{read, write, write_u32, write_u64};
use crate::wasm::hostcalls::context::unix_nanos;
use crate::wasm::state::HostState;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOENT: i32 = 44;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// Registers a host function that only answers an errno.
macro_rules! errno {
    ($linker:ident, $module:ident, $name:literal, ($($ty:ty),*), $errno:expr) => {
        $linker.func_wrap($module, $name, |$(_: $ty),*| -> i32 { $errno })?;
    };
}

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        register_module(linker, module)?;
    }
    // Emscripten extras cpp-host provides.
    linker.func_wrap("env", "emscripten_notify_memory_growth", |_: i32| {})?;
    linker.func_wrap("env", "pthread_equal", |a: i32, b: i32| i32::from(a == b))?;
    Ok(())
}

fn register_module(linker: &mut Linker<HostState>, module: &'static str) -> wasmtime::Result<()> {
    linker.func_wrap(
        module,
        "fd_write",
        |mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, count: i32, written_out: i32| {
            fd_write(&mut caller, fd, iovs, count, written_out)
        },
    )?;
    linker.func_wrap(
        module,
        "fd_fdstat_get",
        |mut caller: Caller<'_, HostState>, fd: i32, out: i32| {
            if fd != 1 && fd != 2 {
                return BADF;
            }
            // Zeroed except rights_base = FD_WRITE, as cpp-host answers.
            let mut stat = [0u8; 24];
            stat[8..16].copy_from_slice(&64u64.to_le_bytes());
            write(&mut caller, out, &stat).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(
        module,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| {
            zero_pair(&mut caller, count_out, size_out)
        },
    )?;
    linker.func_wrap(
        module,
        "args_sizes_get",
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| {
            zero_pair(&mut caller, count_out, size_out)
        },
    )?;
    errno!(linker, module, "environ_get", (i32, i32), SUCCESS);
    errno!(linker, module, "args_get", (i32, i32), SUCCESS);
    linker.func_wrap(
        module,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>, id: i32, _precision: i64, out: i32| {
            let now = match id {
                0 => unix_nanos(),
                1 => monotonic_nanos(),
                _ => return NOTSUP,
            };
            write_u64(&mut caller, out, now).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(
        module,
        "clock_res_get",
        |mut caller: Caller<'_, HostState>, id: i32, out: i32| {
            if id != 0 && id != 1 {
                return NOTSUP;
            }
            write_u64(&mut caller, out, 1).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(
        module,
        "random_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
            let len = len as u32 as usize;
            if len > 64 * 1024 {
                return INVAL;
            }
            let mut bytes = vec![0u8; len];
            let filled =
                std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
            if filled.is_err() {
                return NOSYS;
            }
            write(&mut caller, ptr, &bytes).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(module, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!(
            "the module called proc_exit({code})"
        )))
    })?;
    linker.func_wrap(
        module,
        "poll_oneoff",
        |mut caller: Caller<'_, HostState>, _: i32, _: i32, _: i32, events_out: i32| {
            // Go's runtime requires success here; no event ever happens.
            write_u32(&mut caller, events_out, 0).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    errno!(linker, module, "sched_yield", (), SUCCESS);
    errno!(linker, module, "proc_raise", (i32), NOSYS);
    errno!(linker, module, "fd_close", (i32), SUCCESS);
    errno!(linker, module, "fd_seek", (i32, i64, i32, i32), SUCCESS);
    errno!(linker, module, "fd_read", (i32, i32, i32, i32), NOSYS);
    errno!(linker, module, "fd_prestat_get", (i32, i32), BADF);
    errno!(
        linker,
        module,
        "fd_prestat_dir_name",
        (i32, i32, i32),
        NOSYS
    );
    errno!(linker, module, "fd_fdstat_set_flags", (i32, i32), NOSYS);
    errno!(
        linker,
        module,
        "fd_fdstat_set_rights",
        (i32, i64, i64),
        NOSYS
    );
    errno!(linker, module, "fd_advise", (i32, i64, i64, i32), NOSYS);
    errno!(linker, module, "fd_allocate", (i32, i64, i64), NOSYS);
    errno!(linker, module, "fd_datasync", (i32), NOSYS);
    errno!(linker, module, "fd_sync", (i32), NOSYS);
    errno!(linker, module, "fd_tell", (i32, i32), NOSYS);
    errno!(linker, module, "fd_filestat_get", (i32, i32), BADF);
    errno!(linker, module, "fd_filestat_set_size", (i32, i64), NOSYS);
    errno!(
        linker,
        module,
        "fd_filestat_set_times",
        (i32, i64, i64, i32),
        NOSYS
    );
    errno!(linker, module, "fd_pread", (i32, i32, i32, i64, i32), NOSYS);
    errno!(
        linker,
        module,
        "fd_pwrite",
        (i32, i32, i32, i64, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "fd_readdir",
        (i32, i32, i32, i64, i32),
        NOSYS
    );
    errno!(linker, module, "fd_renumber", (i32, i32), NOSYS);
    errno!(
        linker,
        module,
        "path_open",
        (i32, i32, i32, i32, i32, i64, i64, i32, i32),
        NOENT
    );
    errno!(
        linker,
        module,
        "path_create_directory",
        (i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_filestat_get",
        (i32, i32, i32, i32, i32),
        NOENT
    );
    errno!(
        linker,
        module,
        "path_filestat_set_times",
        (i32, i32, i32, i32, i64, i64, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_link",
        (i32, i32, i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_readlink",
        (i32, i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_remove_directory",
        (i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_rename",
        (i32, i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "path_symlink",
        (i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(linker, module, "path_unlink_file", (i32, i32, i32), NOSYS);
    errno!(linker, module, "sock_accept", (i32, i32, i32), NOSYS);
    errno!(
        linker,
        module,
        "sock_recv",
        (i32, i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(
        linker,
        module,
        "sock_send",
        (i32, i32, i32, i32, i32),
        NOSYS
    );
    errno!(linker, module, "sock_shutdown", (i32, i32), NOSYS);
    Ok(())
}

fn zero_pair(caller: &mut Caller<'_, HostState>, first: i32, second: i32) -> i32 {
    match (write_u32(caller, first, 0), write_u32(caller, second, 0)) {
        (Ok(()), Ok(())) => SUCCESS,
        _ => FAULT,
    }
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    START
        .get_or_init(tokio::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// stdout and stderr become one log line per call (INFO and ERROR), trailing newline dropped.
fn fd_write(
    caller: &mut Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    count: i32,
    written_out: i32,
) -> i32 {
    if fd != 1 && fd != 2 {
        return BADF;
    }
    let Ok(vectors) = read(caller, iovs, (count as u32).saturating_mul(8) as i32) else {
        return FAULT;
    };
    let mut text = Vec::new();
    for vector in vectors.chunks_exact(8) {
        let ptr = u32::from_le_bytes([vector[0], vector[1], vector[2], vector[3]]);
        let len = u32::from_le_bytes([vector[4], vector[5], vector[6], vector[7]]);
        match read(caller, ptr as i32, len as i32) {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => return FAULT,
        }
    }
    let written = text.len() as u32;
    let line = String::from_utf8_lossy(text.strip_suffix(b"\n").unwrap_or(&text)).into_owned();
    let plugin = caller.data().plugin.name.clone();
    if fd == 1 {
        tracing::info!(target: "sluice::wasm::guest", %plugin, stream = "stdout", "{line}");
    } else {
        tracing::error!(target: "sluice::wasm::guest", %plugin, stream = "stderr", "{line}");
    }
    write_u32(caller, written_out, written).map_or(FAULT, |()| SUCCESS)
}
