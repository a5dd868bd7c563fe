//! Starting a plugin's VM: instantiate the module within its limits, run its initializer
//! (`_initialize`, `_start`), and resolve the callbacks it exports, as Envoy does.

use super::*;

impl PluginVm {
    /// Instantiates and configures a VM. `queue_events` receives notifications for shared
    /// queues this VM registers (none for a canary).
    pub fn start(
        spec: &Arc<PluginSpec>,
        queue_events: Option<tokio::sync::mpsc::UnboundedSender<u32>>,
    ) -> Result<Self, WasmError> {
        let plugin = &spec.info.name;
        let start_error = |what: String| WasmError::Start {
            plugin: plugin.clone(),
            what,
        };
        let limits = StoreLimitsBuilder::new()
            .memory_size(spec.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let metrics = VmMetrics::new(&spec.health.label, spec.metric_families.clone());
        let mut state = HostState::new(Arc::clone(&spec.info), spec.abi, limits, metrics);
        state.queue_events = queue_events;
        state.clusters = Some(Arc::clone(&spec.clusters));
        let mut store = Store::new(spec.runtime_engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(spec.start_deadline_ticks);

        let instance = spec
            .instance_pre
            .instantiate(&mut store)
            .map_err(|e| start_error(format!("instantiation failed: {e:?}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| start_error("the module exports no memory".into()))?;
        // cpp-host looks for `malloc` first, then `proxy_on_memory_allocate`.
        let allocator = optional::<i32, i32>(&mut store, &instance, "malloc")
            .transpose()
            .or_else(|| optional::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate").transpose())
            .transpose()
            .map_err(start_error)?
            .ok_or_else(|| start_error("missing malloc function (neither malloc nor proxy_on_memory_allocate is exported)".into()))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocator = Some(allocator);

        run_initializer(&mut store, &instance).map_err(start_error)?;
        let callbacks = resolve_callbacks(&mut store, &instance, spec.abi).map_err(start_error)?;

        let root_id = store.data_mut().contexts.allocate();
        store.data_mut().contexts.root = root_id;
        let mut vm = Self {
            store,
            callbacks,
            root_id,
            spec: Arc::clone(spec),
        };
        let root = root_id as i32;
        if let Some(create) = vm.callbacks.context_create.clone() {
            vm.call(&create, root_id, (root, 0), "proxy_on_context_create")
                .map_err(|f| start_error(f.to_string()))?;
        }
        if let Some(vm_start) = vm.callbacks.vm_start.clone() {
            let size = spec.info.vm_config.len() as i32;
            let accepted = vm
                .call(&vm_start, root_id, (root, size), "proxy_on_vm_start")
                .map_err(|f| start_error(f.to_string()))?;
            if accepted == 0 {
                return Err(WasmError::Rejected {
                    plugin: plugin.clone(),
                    callback: "proxy_on_vm_start",
                    rejected: "vm_config",
                });
            }
        }
        if let Some(configure) = vm.callbacks.configure.clone() {
            let size = spec.info.plugin_config.len() as i32;
            vm.store.data_mut().in_configure = true;
            let outcome = vm.call(&configure, root_id, (root, size), "proxy_on_configure");
            vm.store.data_mut().in_configure = false;
            if outcome.map_err(|f| start_error(f.to_string()))? == 0 {
                return Err(WasmError::Rejected {
                    plugin: plugin.clone(),
                    callback: "proxy_on_configure",
                    rejected: "config",
                });
            }
        }
        Ok(vm)
    }
}

/// An export with exactly this signature; a wrong signature fails the load, as Envoy's
/// default runtime does, instead of silently skipping the callback.
fn optional<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(func) => func
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| format!("export {name} has the wrong signature: {e}")),
    }
}

/// WASI reactor (`_initialize`, then `main(0, 0)` or `__main_void`) or command (`_start`).
fn run_initializer(store: &mut Store<HostState>, instance: &Instance) -> Result<(), String> {
    let failed = |name: &str, e: wasmtime::Error| format!("{name} failed: {e:?}");
    if let Some(initialize) = optional::<(), ()>(store, instance, "_initialize")? {
        initialize
            .call(&mut *store, ())
            .map_err(|e| failed("_initialize", e))?;
        if let Some(main) = optional::<(i32, i32), i32>(store, instance, "main")? {
            main.call(&mut *store, (0, 0))
                .map_err(|e| failed("main", e))?;
        } else if let Some(main) = optional::<(), i32>(store, instance, "__main_void")? {
            main.call(&mut *store, ())
                .map_err(|e| failed("__main_void", e))?;
        }
    } else if let Some(start) = optional::<(), ()>(store, instance, "_start")? {
        // TinyGo ends `_start` with proc_exit(0): a normal finish, not a failure.
        if let Err(error) = start.call(&mut *store, ())
            && !format!("{error:?}").contains("proc_exit(0)")
        {
            return Err(failed("_start", error));
        }
    }
    Ok(())
}

fn resolve_callbacks(
    store: &mut Store<HostState>,
    instance: &Instance,
    abi: AbiVersion,
) -> Result<Callbacks, String> {
    let headers =
        |store: &mut Store<HostState>, name: &str| -> Result<Option<HeadersCallback>, String> {
            Ok(if abi == AbiVersion::V0_1_0 {
                optional(store, instance, name)?.map(HeadersCallback::Legacy)
            } else {
                optional(store, instance, name)?.map(HeadersCallback::WithEndOfStream)
            })
        };
    Ok(Callbacks {
        context_create: optional(store, instance, "proxy_on_context_create")?,
        vm_start: optional(store, instance, "proxy_on_vm_start")?,
        configure: optional(store, instance, "proxy_on_configure")?,
        request_headers: headers(store, "proxy_on_request_headers")?,
        request_body: optional(store, instance, "proxy_on_request_body")?,
        request_trailers: optional(store, instance, "proxy_on_request_trailers")?,
        response_headers: headers(store, "proxy_on_response_headers")?,
        response_body: optional(store, instance, "proxy_on_response_body")?,
        response_trailers: optional(store, instance, "proxy_on_response_trailers")?,
        log: optional(store, instance, "proxy_on_log")?,
        done: optional(store, instance, "proxy_on_done")?,
        delete: optional(store, instance, "proxy_on_delete")?,
        tick: optional(store, instance, "proxy_on_tick")?,
        queue_ready: optional(store, instance, "proxy_on_queue_ready")?,
        http_call_response: optional(store, instance, "proxy_on_http_call_response")?,
        grpc_receive: optional(store, instance, "proxy_on_grpc_receive")?,
        grpc_close: optional(store, instance, "proxy_on_grpc_close")?,
        grpc_initial_metadata: optional(store, instance, "proxy_on_grpc_receive_initial_metadata")?,
        grpc_trailing_metadata: optional(
            store,
            instance,
            "proxy_on_grpc_receive_trailing_metadata",
        )?,
        new_connection: optional(store, instance, "proxy_on_new_connection")?,
        downstream_data: optional(store, instance, "proxy_on_downstream_data")?,
        upstream_data: optional(store, instance, "proxy_on_upstream_data")?,
        downstream_close: optional(store, instance, "proxy_on_downstream_connection_close")?,
        upstream_close: optional(store, instance, "proxy_on_upstream_connection_close")?,
    })
}

impl VmFailure {
    pub fn start(what: &WasmError) -> Self {
        Self {
            callback: "vm start",
            kind: FailureKind::Start,
            message: what.to_string(),
        }
    }
}
