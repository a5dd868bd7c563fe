//! Every Proxy-Wasm host call, called by a real guest in a real VM with arbitrary arguments:
//! pointers and lengths anywhere (inside its memory, past its end, negative, overlapping the
//! guest's own data), any map, buffer and stream type, any token. The host must answer each
//! with a status or a trap of the VM, never a panic of its own.
//!
//! The guest is a small hand-written module (below, in WAT). The fuzzer's calls reach it as
//! the value of the request header `x-script`; it copies them into its memory and runs them in
//! `proxy_on_request_headers`, again in `proxy_on_response_headers`, and in `proxy_on_log`,
//! where different maps and buffers exist. Each input gets a fresh plugin and VM.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::wasm::{FilterChain, PluginSpec, StreamInfo, WorkerPlugins};

/// The host functions the guest imports: module, name, and parameter types (all return i32).
const HOST_CALLS: &[(&str, &str, &str)] = &[
    ("env", "proxy_get_buffer_bytes", "iiiii"),
    ("env", "proxy_get_buffer_status", "iii"),
    ("env", "proxy_set_buffer_bytes", "iiiii"),
    ("env", "proxy_get_configuration", "ii"),
    ("env", "proxy_http_call", "iiiiiiiiii"),
    ("env", "proxy_grpc_call", "iiiiiiiiiiii"),
    ("env", "proxy_grpc_stream", "iiiiiiiii"),
    ("env", "proxy_grpc_send", "iiii"),
    ("env", "proxy_grpc_cancel", "i"),
    ("env", "proxy_grpc_close", "i"),
    ("env", "proxy_log", "iii"),
    ("env", "proxy_get_log_level", "i"),
    ("env", "proxy_get_current_time_nanoseconds", "i"),
    ("env", "proxy_set_tick_period_milliseconds", "i"),
    ("env", "proxy_set_effective_context", "i"),
    ("env", "proxy_done", ""),
    ("env", "proxy_get_header_map_pairs", "iii"),
    ("env", "proxy_set_header_map_pairs", "iii"),
    ("env", "proxy_get_header_map_size", "ii"),
    ("env", "proxy_get_header_map_value", "iiiii"),
    ("env", "proxy_add_header_map_value", "iiiii"),
    ("env", "proxy_replace_header_map_value", "iiiii"),
    ("env", "proxy_remove_header_map_value", "iii"),
    ("env", "proxy_define_metric", "iiii"),
    ("env", "proxy_increment_metric", "iI"),
    ("env", "proxy_record_metric", "iI"),
    ("env", "proxy_get_metric", "ii"),
    ("env", "proxy_get_property", "iiii"),
    ("env", "proxy_set_property", "iiii"),
    ("env", "proxy_call_foreign_function", "iiiiii"),
    ("env", "proxy_get_shared_data", "iiiii"),
    ("env", "proxy_set_shared_data", "iiiii"),
    ("env", "proxy_register_shared_queue", "iii"),
    ("env", "proxy_resolve_shared_queue", "iiiii"),
    ("env", "proxy_enqueue_shared_queue", "iii"),
    ("env", "proxy_dequeue_shared_queue", "iii"),
    ("env", "proxy_continue_stream", "i"),
    ("env", "proxy_close_stream", "i"),
    ("env", "proxy_continue_request", ""),
    ("env", "proxy_continue_response", ""),
    ("env", "proxy_clear_route_cache", ""),
    ("env", "proxy_send_local_response", "iiiiiiii"),
    ("env", "proxy_get_status", "iii"),
    ("wasi_snapshot_preview1", "fd_write", "iiii"),
    ("wasi_snapshot_preview1", "random_get", "ii"),
    ("wasi_snapshot_preview1", "clock_time_get", "iIi"),
    ("wasi_snapshot_preview1", "environ_sizes_get", "ii"),
    ("wasi_snapshot_preview1", "args_sizes_get", "ii"),
];

/// The most arguments a host call takes; a call record carries this many.
const MAX_ARGS: usize = 12;
/// A record in the script: the host call's index, then its arguments, all little-endian i32.
const RECORD: usize = 4 * (1 + MAX_ARGS);
/// Where the guest keeps the script (the first page holds the header name at 0 and the
/// out-parameters at 16), and how much it keeps.
const SCRIPT_AT: usize = 1024;
const SCRIPT_MAX: usize = 60 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    calls: Vec<Call>,
    /// Other request headers the maps start with.
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Call {
    function: u8,
    args: [Arg; MAX_ARGS],
}

/// Arguments biased toward the values that matter for bounds: small offsets into the
/// guest's data, the edges of its memory, and anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Arg {
    Small(u8),
    InMemory(u16),
    NearEnd(u8),
    Any(i32),
}

impl Arg {
    fn value(self) -> i32 {
        const MEMORY_END: i32 = 2 * 65536;
        match self {
            Arg::Small(v) => i32::from(v),
            Arg::InMemory(v) => i32::from(v) * 2,
            Arg::NearEnd(v) => MEMORY_END - i32::from(v),
            Arg::Any(v) => v,
        }
    }
}

fn script(calls: &[Call]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(calls.len() * RECORD);
    for call in calls.iter().take(SCRIPT_MAX / RECORD) {
        let function = u32::from(call.function) % HOST_CALLS.len() as u32;
        bytes.extend_from_slice(&function.to_le_bytes());
        for arg in call.args {
            bytes.extend_from_slice(&arg.value().to_le_bytes());
        }
    }
    bytes
}

/// The guest: imports every host call, and runs the script it finds in `x-script` (copied to
/// `SCRIPT_AT`) in three callbacks. Two fixed pages of memory; a bump allocator in the second
/// that starts over when full.
fn guest_wat() -> String {
    let mut imports = String::new();
    let mut table = String::new();
    for (index, (module, name, params)) in HOST_CALLS.iter().enumerate() {
        let types: Vec<&str> = params
            .chars()
            .map(|c| if c == 'I' { "i64" } else { "i32" })
            .collect();
        imports.push_str(&format!(
            "  (import \"{module}\" \"{name}\" (func $h{index} (param {}) (result i32)))\n",
            types.join(" ")
        ));
        table.push_str(&format!(" $c{index}"));
    }
    // Nested blocks for br_table: the innermost is case 0. After the table branches to
    // block $cN, the code after that block's end runs call N and returns.
    let mut body = format!("(br_table{table} $c0 (i32.load (local.get $rec)))");
    for (index, (_, _, params)) in HOST_CALLS.iter().enumerate() {
        let mut args = String::new();
        for (arg, kind) in params.chars().enumerate() {
            let load = format!(
                "(i32.load (i32.add (local.get $rec) (i32.const {})))",
                4 + 4 * arg
            );
            if kind == 'I' {
                args.push_str(&format!(" (i64.extend_i32_s {load})"));
            } else {
                args.push(' ');
                args.push_str(&load);
            }
        }
        body = format!("(block $c{index} {body})\n (drop (call $h{index}{args})) (return)");
    }
    format!(
        r#"(module
{imports}
  (memory (export "memory") 2 2)
  (data (i32.const 0) "x-script")
  (global $heap (mut i32) (i32.const 65536))
  (global $script_len (mut i32) (i32.const 0))
  (func $malloc (export "malloc") (param $size i32) (result i32) (local $at i32)
    (if (i32.gt_u (local.get $size) (i32.const 65536)) (then (return (i32.const 0))))
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $size)) (i32.const 131072))
      (then (global.set $heap (i32.const 65536))))
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $call (param $rec i32)
    {body})
  (func $run (local $rec i32) (local $end i32)
    (local.set $rec (i32.const {SCRIPT_AT}))
    (local.set $end (i32.add (i32.const {SCRIPT_AT}) (global.get $script_len)))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $rec) (i32.const {RECORD})) (local.get $end)))
      (call $call (local.get $rec))
      (local.set $rec (i32.add (local.get $rec) (i32.const {RECORD})))
      (br $next))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; get_header_map_value(request headers, "x-script") -> (ptr at 16, len at 20)
    (if (i32.eqz (call $h19 (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 20)))
      (then
        (global.set $script_len (i32.load (i32.const 20)))
        (if (i32.gt_u (global.get $script_len) (i32.const {SCRIPT_MAX}))
          (then (global.set $script_len (i32.const {SCRIPT_MAX}))))
        (memory.copy (i32.const {SCRIPT_AT}) (i32.load (i32.const 16)) (global.get $script_len))))
    (call $run)
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $run)
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $run))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
"#
    )
}

/// The guest module, written to a file once.
fn guest_module() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        assert_eq!(
            HOST_CALLS[19].1, "proxy_get_header_map_value",
            "the guest's $h19"
        );
        let wasm = wat::parse_str(guest_wat()).expect("the guest's WAT is valid");
        let path =
            std::env::temp_dir().join(format!("sluice-fuzz-hostcalls-{}.wasm", std::process::id()));
        std::fs::write(&path, wasm).expect("write the guest module");
        path
    })
}

/// A fresh plugin of the guest (the module compiles once; the cache keeps it). Dropping it
/// drops what the guest left behind: its metrics, shared data and queues.
fn load_plugin() -> Arc<PluginSpec> {
    let yaml = format!("{{ name: fuzz, module: \"{}\" }}", guest_module().display());
    let config: sluice::config::FilterConfig = serde_yaml::from_str(&yaml).expect("filter config");
    let metrics = sluice::admin::Metrics::new();
    let health = metrics.plugin_health("fuzz");
    PluginSpec::load(
        &config,
        std::path::Path::new("."),
        Some(metrics.wasm_families()),
        health,
        Default::default(),
    )
    .expect("the guest loads: every import matches a host function")
}

fuzz_target!(|input: Input| {
    let spec = load_plugin();
    let mut pairs = vec![
        (":method".to_owned(), b"GET".to_vec()),
        (":path".to_owned(), b"/".to_vec()),
        (":authority".to_owned(), b"fuzz".to_vec()),
        ("x-script".to_owned(), script(&input.calls)),
    ];
    pairs.extend(input.headers);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let plugins = WorkerPlugins::new(Default::default());
        let info = Rc::new(StreamInfo::new(
            1,
            "127.0.0.1:1".parse().expect("address"),
            "127.0.0.1:2".parse().expect("address"),
            "HTTP/1.1",
        ));
        let chain = RefCell::new(FilterChain::new(info, 1 << 20));
        chain.borrow_mut().extend(&plugins, [&spec]);
        if sluice::wasm::request_headers(&chain, pairs, true, 0)
            .await
            .is_ok()
        {
            let response = vec![(":status".to_owned(), b"200".to_vec())];
            let _ = sluice::wasm::response_headers(&chain, response, true, 0).await;
        }
        chain.borrow_mut().finish();
    });
});
