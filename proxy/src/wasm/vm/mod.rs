//! Layer 2 of the host: one VM — a `Store` and instance — for one plugin on one worker.
//! Starting it runs the module's initializer, creates the root context and runs
//! `proxy_on_vm_start` and `proxy_on_configure`; a `false` from either rejects the plugin.
//! Every call into the guest gets a fresh epoch deadline, so a runaway callback is stopped.

mod calls;
mod http;
mod network;
mod start;

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
