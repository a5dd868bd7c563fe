//! Layer 2 of the host: one VM — a `Store` and instance — for one plugin on one worker.
//! Starting it runs the module's initializer, creates the root context and runs
//! `proxy_on_vm_start` and `proxy_on_configure`; a `false` from either rejects the plugin.
//! Every call into the guest gets a fresh epoch deadline, so a runaway callback is stopped.

use std::rc::Rc;
use std::sync::Arc;

use wasmtime::{Instance, Store, StoreLimitsBuilder, TypedFunc, WasmParams, WasmResults};

use super::callout::{CallOutcome, GrpcOutcome, PendingCall};
use super::error::{FailureKind, VmFailure, WasmError};
use super::grpc_stream::{
    GRPC_INITIAL_METADATA, GRPC_TRAILING_METADATA, PendingStream, StreamEvent,
};
use super::metrics::VmMetrics;
use super::plugin::PluginSpec;
use super::state::{HostState, StreamInfo, StreamState};
use super::status::AbiVersion;

/// `proxy_on_request_headers` and `proxy_on_response_headers` lost their end-of-stream
/// argument only in ABI 0.1.0.
enum HeadersCallback {
    WithEndOfStream(TypedFunc<(i32, i32, i32), i32>),
    Legacy(TypedFunc<(i32, i32), i32>),
}

/// `(context, size, end_of_stream) -> action`: body and TCP data callbacks.
type DataCallback = TypedFunc<(i32, i32, i32), i32>;

/// Envoy ends an HTTP stream's context log → done → delete, a TCP connection's done → log →
/// delete.
#[derive(Clone, Copy)]
enum EndOrder {
    Http,
    Tcp,
}

/// `proxy_on_http_call_response(root_id, token, headers, body_size, trailers)`.
type CallResponseCallback = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The guest's exported callbacks, resolved once. Absent ones mean "Continue" / no-op.
struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    request_headers: Option<HeadersCallback>,
    request_body: Option<DataCallback>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_headers: Option<HeadersCallback>,
    response_body: Option<DataCallback>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    log: Option<TypedFunc<i32, ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    http_call_response: Option<CallResponseCallback>,
    grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
    grpc_initial_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    grpc_trailing_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    new_connection: Option<TypedFunc<i32, i32>>,
    downstream_data: Option<DataCallback>,
    upstream_data: Option<DataCallback>,
    downstream_close: Option<TypedFunc<(i32, i32), ()>>,
    upstream_close: Option<TypedFunc<(i32, i32), ()>>,
}

pub struct PluginVm {
    store: Store<HostState>,
    callbacks: Callbacks,
    pub root_id: u32,
    spec: Arc<PluginSpec>,
}

// === impl PluginVm ===

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

    pub fn spec(&self) -> &Arc<PluginSpec> {
        &self.spec
    }

    pub fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    pub fn stream(&mut self, context: u32) -> Option<&mut StreamState> {
        self.store.data_mut().streams.get_mut(&context)
    }

    /// Calls into the guest on behalf of `context`, with a fresh CPU deadline.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        context: u32,
        params: P,
        callback: &'static str,
    ) -> Result<R, VmFailure> {
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            func,
            context,
            params,
            callback,
        )
    }

    /// Creates a stream context (`proxy_on_context_create(id, root)`).
    pub fn create_stream(&mut self, info: Rc<StreamInfo>) -> Result<u32, VmFailure> {
        let id = self.store.data_mut().contexts.allocate();
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(info));
        if let Some(create) = &self.callbacks.context_create {
            let ticks = self.spec.callback_deadline_ticks;
            let params = (id as i32, self.root_id as i32);
            invoke(
                &mut self.store,
                ticks,
                create,
                id,
                params,
                "proxy_on_context_create",
            )?;
        }
        Ok(id)
    }

    pub fn on_request_headers(
        &mut self,
        context: u32,
        count: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        let callback = self.callbacks.request_headers.as_ref();
        headers(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            callback,
            context,
            count,
            end_of_stream,
            "proxy_on_request_headers",
        )
    }

    pub fn on_response_headers(
        &mut self,
        context: u32,
        count: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        let callback = self.callbacks.response_headers.as_ref();
        headers(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            callback,
            context,
            count,
            end_of_stream,
            "proxy_on_response_headers",
        )
    }

    pub fn on_request_body(
        &mut self,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        self.body(false, context, size, end_of_stream)
    }

    pub fn on_response_body(
        &mut self,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        self.body(true, context, size, end_of_stream)
    }

    fn body(
        &mut self,
        response: bool,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        if response {
            self.data_callback(
                |c| &c.response_body,
                "proxy_on_response_body",
                context,
                size,
                end_of_stream,
            )
        } else {
            self.data_callback(
                |c| &c.request_body,
                "proxy_on_request_body",
                context,
                size,
                end_of_stream,
            )
        }
    }

    /// Calls a `(context, size, end_of_stream) -> action` callback (bodies and TCP data).
    fn data_callback(
        &mut self,
        pick: impl Fn(&Callbacks) -> &Option<DataCallback>,
        name: &'static str,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        let Some(f) = pick(&self.callbacks) else {
            return Ok(0);
        };
        let params = (context as i32, size as i32, i32::from(end_of_stream));
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            params,
            name,
        )
    }

    pub fn on_request_trailers(&mut self, context: u32, count: usize) -> Result<i32, VmFailure> {
        self.trailers(false, context, count)
    }

    pub fn on_response_trailers(&mut self, context: u32, count: usize) -> Result<i32, VmFailure> {
        self.trailers(true, context, count)
    }

    fn trailers(&mut self, response: bool, context: u32, count: usize) -> Result<i32, VmFailure> {
        let (callback, name) = if response {
            (
                &self.callbacks.response_trailers,
                "proxy_on_response_trailers",
            )
        } else {
            (
                &self.callbacks.request_trailers,
                "proxy_on_request_trailers",
            )
        };
        let Some(f) = callback else { return Ok(0) };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            (context as i32, count as i32),
            name,
        )
    }

    /// Ends a stream context the way Envoy does for HTTP: `on_log`, `on_done`, `on_delete`.
    /// Whether stream `context` made an HTTP or gRPC call that has not been answered yet.
    pub fn awaits_call(&self, context: u32) -> bool {
        self.store
            .data()
            .call_owners
            .values()
            .any(|owner| *owner == context)
    }

    pub fn finish_stream(&mut self, context: u32) -> Result<(), VmFailure> {
        self.store
            .data_mut()
            .call_owners
            .retain(|_, owner| *owner != context);
        if let Some(stream) = self.stream(context) {
            stream.in_log = true;
            stream.request_headers.writable = false;
            stream.response_headers.writable = false;
            stream.response_trailers.writable = false;
            stream.request_trailers.pairs = None;
        }
        self.end_context(context, EndOrder::Http)
    }

    /// The plugin is leaving (a new snapshot no longer has it, and its last stream ended):
    /// the root context gets `on_done` and `on_delete`, as Envoy does when a plugin is removed.
    /// The VM is freed right after, so a root that answers `false` to `on_done` cannot defer.
    pub fn retire(&mut self) -> Result<(), VmFailure> {
        let root = self.root_id;
        let ticks = self.spec.callback_deadline_ticks;
        if let Some(f) = &self.callbacks.done {
            invoke(
                &mut self.store,
                ticks,
                f,
                root,
                root as i32,
                "proxy_on_done",
            )
            .map(drop)?;
        }
        if let Some(f) = &self.callbacks.delete {
            invoke(
                &mut self.store,
                ticks,
                f,
                root,
                root as i32,
                "proxy_on_delete",
            )?;
        }
        Ok(())
    }

    pub fn on_tick(&mut self) -> Result<(), VmFailure> {
        let Some(f) = &self.callbacks.tick else {
            return Ok(());
        };
        let root = self.root_id;
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            root,
            root as i32,
            "proxy_on_tick",
        )
    }

    pub fn on_queue_ready(&mut self, token: u32) -> Result<(), VmFailure> {
        let Some(f) = &self.callbacks.queue_ready else {
            return Ok(());
        };
        let root = self.root_id;
        let params = (root as i32, token as i32);
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            root,
            params,
            "proxy_on_queue_ready",
        )
    }

    pub fn on_new_connection(&mut self, context: u32) -> Result<i32, VmFailure> {
        let Some(f) = &self.callbacks.new_connection else {
            return Ok(0);
        };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            context as i32,
            "proxy_on_new_connection",
        )
    }

    /// TCP data one way: `downstream` is client → upstream (`proxy_on_downstream_data`).
    pub fn on_data(
        &mut self,
        downstream: bool,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        if downstream {
            self.data_callback(
                |c| &c.downstream_data,
                "proxy_on_downstream_data",
                context,
                size,
                end_of_stream,
            )
        } else {
            self.data_callback(
                |c| &c.upstream_data,
                "proxy_on_upstream_data",
                context,
                size,
                end_of_stream,
            )
        }
    }

    /// A side of a TCP connection closed; `peer` is 0 unknown, 1 local, 2 remote.
    pub fn on_connection_close(
        &mut self,
        downstream: bool,
        context: u32,
        peer: u32,
    ) -> Result<(), VmFailure> {
        let (callback, name) = if downstream {
            (
                &self.callbacks.downstream_close,
                "proxy_on_downstream_connection_close",
            )
        } else {
            (
                &self.callbacks.upstream_close,
                "proxy_on_upstream_connection_close",
            )
        };
        let Some(f) = callback else { return Ok(()) };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            (context as i32, peer as i32),
            name,
        )
    }

    /// Ends a TCP connection context in Envoy's order for network filters: `on_done`,
    /// `on_log`, `on_delete`.
    pub fn finish_connection(&mut self, context: u32) -> Result<(), VmFailure> {
        self.end_context(context, EndOrder::Tcp)
    }

    fn end_context(&mut self, context: u32, order: EndOrder) -> Result<(), VmFailure> {
        let ticks = self.spec.callback_deadline_ticks;
        let id = context as i32;
        let callbacks = &self.callbacks;
        let log = |store: &mut Store<HostState>| match &callbacks.log {
            Some(f) => invoke(store, ticks, f, context, id, "proxy_on_log"),
            None => Ok(()),
        };
        // A stream's answer to on_done is not honoured (only roots may defer their deletion).
        let done = |store: &mut Store<HostState>| match &callbacks.done {
            Some(f) => invoke(store, ticks, f, context, id, "proxy_on_done").map(drop),
            None => Ok(()),
        };
        let store = &mut self.store;
        let outcome = (|| {
            match order {
                EndOrder::Http => {
                    log(store)?;
                    done(store)?;
                }
                EndOrder::Tcp => {
                    done(store)?;
                    log(store)?;
                }
            }
            match &callbacks.delete {
                Some(f) => invoke(store, ticks, f, context, id, "proxy_on_delete"),
                None => Ok(()),
            }
        })();
        let state = self.store.data_mut();
        state.streams.remove(&context);
        state.contexts.live.remove(&context);
        outcome
    }

    /// Whether the guest asked for callouts, streams or a new tick period since the last look:
    /// after most callbacks it did not, and the owner need not take anything. Checks exactly
    /// what `take_pending_calls`, `take_pending_streams` and `take_tick_change` drain; a new
    /// kind of guest request must be added to both.
    pub fn has_guest_requests(&self) -> bool {
        let state = self.store.data();
        !state.pending_calls.is_empty() || !state.pending_streams.is_empty() || state.tick_changed
    }

    /// Callouts the guest asked for since the last look.
    pub fn take_pending_calls(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.store.data_mut().pending_calls)
    }

    /// Delivers a callout's outcome to the root context (`proxy_on_http_call_response`); the
    /// response is readable only during the callback, as in Envoy.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        outcome: CallOutcome,
    ) -> Result<(), VmFailure> {
        let (counts, response, status) = match outcome {
            CallOutcome::Response(response) => {
                let counts = (
                    response.headers.len(),
                    response.body.len(),
                    response.trailers.len(),
                );
                (counts, Some(response), (0, Vec::new()))
            }
            // Envoy reports a broken-off call with code 11 (BROKEN_CONNECTION) and "reset".
            CallOutcome::Reset => ((0, 0, 0), None, (11, b"reset".to_vec())),
        };
        let state = self.store.data_mut();
        state.call_owners.remove(&token);
        state.call_response = response;
        state.call_status = status;
        let outcome = match &self.callbacks.http_call_response {
            Some(f) => {
                let root = self.root_id;
                let params = (
                    root as i32,
                    token as i32,
                    counts.0 as i32,
                    counts.1 as i32,
                    counts.2 as i32,
                );
                invoke(
                    &mut self.store,
                    self.spec.callback_deadline_ticks,
                    f,
                    root,
                    params,
                    "proxy_on_http_call_response",
                )
            }
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        outcome
    }

    /// Delivers a unary gRPC call's result to the root context: `proxy_on_grpc_receive` with
    /// the message in buffer 5, or `proxy_on_grpc_close` with the status (message via
    /// `proxy_get_status`), as Envoy does.
    pub fn on_grpc_response(&mut self, token: u32, outcome: GrpcOutcome) -> Result<(), VmFailure> {
        self.store.data_mut().call_owners.remove(&token);
        // A call the guest cancelled (or closed) meanwhile has nobody to hear it.
        if self.store.data_mut().grpc_calls.remove(&token).is_none() {
            return Ok(());
        }
        let root = self.root_id;
        let ticks = self.spec.callback_deadline_ticks;
        let outcome = match outcome {
            GrpcOutcome::Message(message) => {
                let size = message.len() as i32;
                let state = self.store.data_mut();
                state.grpc_message = Some(message);
                state.call_status = (0, Vec::new());
                match &self.callbacks.grpc_receive {
                    Some(f) => invoke(
                        &mut self.store,
                        ticks,
                        f,
                        root,
                        (root as i32, token as i32, size),
                        "proxy_on_grpc_receive",
                    ),
                    None => Ok(()),
                }
            }
            GrpcOutcome::Closed { status, message } => {
                self.store.data_mut().call_status = (status, message);
                match &self.callbacks.grpc_close {
                    Some(f) => invoke(
                        &mut self.store,
                        ticks,
                        f,
                        root,
                        (root as i32, token as i32, status as i32),
                        "proxy_on_grpc_close",
                    ),
                    None => Ok(()),
                }
            }
        };
        self.store.data_mut().grpc_message = None;
        outcome
    }

    /// Gets a gRPC stream's next event to the root context, as Envoy does: the metadata in
    /// map 4 or 5 and a message in buffer 5, readable only during their callback; the close
    /// with its status and message via `proxy_get_status`. Returns whether the stream should
    /// go on: not after the close, nor once the guest cancelled it.
    pub fn on_grpc_stream_event(
        &mut self,
        token: u32,
        event: StreamEvent,
    ) -> Result<bool, VmFailure> {
        let state = self.store.data_mut();
        let Some(stream) = state.grpc_streams.get_mut(&token) else {
            return Ok(false);
        };
        let (root, ticks) = (self.root_id, self.spec.callback_deadline_ticks);
        let closed = matches!(event, StreamEvent::Close { .. });
        let (callback, name, count) = match event {
            StreamEvent::InitialMetadata(pairs) => {
                let count = pairs.len();
                state.grpc_metadata = Some((GRPC_INITIAL_METADATA, pairs));
                (
                    &self.callbacks.grpc_initial_metadata,
                    "proxy_on_grpc_receive_initial_metadata",
                    count,
                )
            }
            StreamEvent::Message(message) => {
                let size = message.len();
                state.grpc_message = Some(message);
                (&self.callbacks.grpc_receive, "proxy_on_grpc_receive", size)
            }
            StreamEvent::TrailingMetadata(pairs) => {
                let count = pairs.len();
                state.grpc_metadata = Some((GRPC_TRAILING_METADATA, pairs));
                (
                    &self.callbacks.grpc_trailing_metadata,
                    "proxy_on_grpc_receive_trailing_metadata",
                    count,
                )
            }
            StreamEvent::Close { status, message } => {
                stream.remote_closed = true;
                state.call_status = (status, message);
                (
                    &self.callbacks.grpc_close,
                    "proxy_on_grpc_close",
                    status as usize,
                )
            }
        };
        let outcome = match callback {
            Some(f) => invoke(
                &mut self.store,
                ticks,
                f,
                root,
                (root as i32, token as i32, count as i32),
                name,
            ),
            None => Ok(()),
        };
        let state = self.store.data_mut();
        state.grpc_metadata = None;
        state.grpc_message = None;
        outcome?;
        if closed {
            // Forgotten once both sides closed; a guest that has not closed its side still
            // may, and gets OK.
            if state
                .grpc_streams
                .get(&token)
                .is_some_and(|s| s.local_closed)
            {
                state.grpc_streams.remove(&token);
            }
            return Ok(false);
        }
        Ok(state.grpc_streams.contains_key(&token))
    }

    /// Streams the guest opened since the last look.
    pub fn take_pending_streams(&mut self) -> Vec<PendingStream> {
        std::mem::take(&mut self.store.data_mut().pending_streams)
    }

    /// The tick period if the guest changed it since the last look.
    pub fn take_tick_change(&mut self) -> Option<Option<std::time::Duration>> {
        let state = self.store.data_mut();
        std::mem::take(&mut state.tick_changed).then_some(state.tick_period)
    }
}

/// Calls `func` on behalf of `context` with a fresh CPU deadline (the effective context resets
/// at every entry, as in Envoy).
fn invoke<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    deadline_ticks: u64,
    func: &TypedFunc<P, R>,
    context: u32,
    params: P,
    callback: &'static str,
) -> Result<R, VmFailure> {
    let contexts = &mut store.data_mut().contexts;
    contexts.current = context;
    contexts.effective = None;
    store.set_epoch_deadline(deadline_ticks);
    func.call(&mut *store, params)
        .map_err(|error| VmFailure::from_error(callback, &error))
}

fn headers(
    store: &mut Store<HostState>,
    deadline_ticks: u64,
    callback: Option<&HeadersCallback>,
    context: u32,
    count: usize,
    end_of_stream: bool,
    name: &'static str,
) -> Result<i32, VmFailure> {
    let (ctx, count, eos) = (context as i32, count as i32, i32::from(end_of_stream));
    match callback {
        Some(HeadersCallback::WithEndOfStream(f)) => {
            invoke(store, deadline_ticks, f, context, (ctx, count, eos), name)
        }
        Some(HeadersCallback::Legacy(f)) => {
            invoke(store, deadline_ticks, f, context, (ctx, count), name)
        }
        None => Ok(0),
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
