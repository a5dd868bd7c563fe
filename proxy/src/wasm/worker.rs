//! Each worker's VMs: one per plugin, created on first use, rebuilt after a failure. A single
//! failure costs only the streams that were on the VM: the next request gets a fresh VM.
//! Repeated failures with no successful stream between them are a crash loop: rebuilding
//! then waits (100ms doubling to 30s) and the plugin shows as unhealthy on `/ready`.
//!
//! When a new snapshot drops a plugin, the worker forgets its slot; streams that started on
//! the old snapshot still hold the slot, and the VM is freed when the last of them ends.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::callout::{CallKind, PendingCall, perform};
use super::error::VmFailure;
use super::grpc_stream::{self, PendingStream};
use super::plugin::PluginSpec;
use super::state::{ResumeSignals, StreamInfo};
use super::vm::PluginVm;
use crate::config::Snapshot;
use crate::upstream::UpstreamPools;

/// Failures in a row before rebuilding backs off.
const CRASH_LOOP_AFTER: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct WorkerPlugins {
    /// Slots of the plugins of the adopted snapshot, by `Arc` address of their spec.
    by_spec: RefCell<HashMap<usize, Rc<WorkerVm>>>,
    /// The snapshot version `by_spec` follows, and the spec addresses that snapshot has.
    adopted: Cell<u64>,
    current: RefCell<HashSet<usize>>,
    /// Slots of plugins an adopted snapshot dropped, while streams still hold them: a stream
    /// of the old snapshot that adds a filter late (a route filter after a paused listener
    /// filter) joins the old VM instead of starting one of its own.
    retired: RefCell<HashMap<usize, Weak<WorkerVm>>>,
    /// The worker's upstream connections, which callouts use too.
    pools: Rc<UpstreamPools>,
}

/// A plugin's VM slot on one worker.
pub struct WorkerVm {
    pub spec: Arc<PluginSpec>,
    pools: Rc<UpstreamPools>,
    vm: RefCell<Option<PluginVm>>,
    /// Bumped on every rebuild: a stream context belongs to one generation.
    generation: Cell<u64>,
    consecutive_failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
    timer: RefCell<Option<tokio::task::JoinHandle<()>>>,
    queue_listener: RefCell<Option<tokio::task::JoinHandle<()>>>,
}

// === impl WorkerPlugins ===

impl WorkerPlugins {
    pub fn new(pools: Rc<UpstreamPools>) -> Self {
        Self {
            by_spec: RefCell::default(),
            adopted: Cell::new(0),
            current: RefCell::default(),
            retired: RefCell::default(),
            pools,
        }
    }

    /// Follows `snapshot` if it is newer than the one adopted: slots of plugins it no longer
    /// has are forgotten (their VMs go with their last stream). Returns whether it was newer.
    pub fn adopt(&self, snapshot: &Snapshot) -> bool {
        if snapshot.version <= self.adopted.get() {
            return false;
        }
        self.adopted.set(snapshot.version);
        let current: HashSet<usize> = snapshot.plugins().map(spec_key).collect();
        let mut retired = self.retired.borrow_mut();
        retired.retain(|_, slot| slot.strong_count() > 0);
        self.by_spec.borrow_mut().retain(|key, slot| {
            let kept = current.contains(key);
            if !kept {
                retired.insert(*key, Rc::downgrade(slot));
            }
            kept
        });
        *self.current.borrow_mut() = current;
        true
    }

    /// Starts a VM for every plugin of `snapshot` that has none, so the first requests after
    /// a change do not pay for it.
    pub fn warm(&self, snapshot: &Snapshot) {
        for spec in snapshot.plugins() {
            if let Err(failure) = self.slot(spec).ensure_started() {
                tracing::warn!(plugin = %spec.info.name, %failure, "could not pre-start the plugin's VM");
            }
        }
    }

    /// The slot of `spec`. A spec of an older snapshot (a stream that started before a change)
    /// shares the slot its other streams hold, and nothing keeps it once they end.
    pub fn slot(&self, spec: &Arc<PluginSpec>) -> Rc<WorkerVm> {
        let key = spec_key(spec);
        if let Some(slot) = self.by_spec.borrow().get(&key) {
            return Rc::clone(slot);
        }
        // The caller holds `spec`, so its address cannot belong to another spec meanwhile.
        if let Some(slot) = self.retired.borrow().get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        let slot = Rc::new(WorkerVm {
            spec: Arc::clone(spec),
            pools: Rc::clone(&self.pools),
            vm: RefCell::new(None),
            generation: Cell::new(0),
            consecutive_failures: Cell::new(0),
            retry_at: Cell::new(None),
            timer: RefCell::new(None),
            queue_listener: RefCell::new(None),
        });
        if self.current.borrow().contains(&key) {
            self.by_spec.borrow_mut().insert(key, Rc::clone(&slot));
        } else {
            self.retired.borrow_mut().insert(key, Rc::downgrade(&slot));
        }
        slot
    }
}

fn spec_key(spec: &Arc<PluginSpec>) -> usize {
    Arc::as_ptr(spec) as usize
}

// === impl WorkerVm ===

impl WorkerVm {
    /// The current generation, starting a VM if there is none (unless in backoff).
    pub fn ensure_started(self: &Rc<Self>) -> Result<u64, VmFailure> {
        if self.vm.borrow().is_some() {
            return Ok(self.generation.get());
        }
        if let Some(at) = self.retry_at.get()
            && Instant::now() < at
        {
            return Err(VmFailure::start(&super::WasmError::Start {
                plugin: self.spec.info.name.clone(),
                what: "the VM is crash-looping; waiting before rebuilding it".into(),
            }));
        }
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let started = PluginVm::start(&self.spec, Some(events_tx));
        self.spec.health.vm_starts.inc();
        match started {
            Ok(vm) => {
                self.spec.health.vms_live.inc();
                *self.vm.borrow_mut() = Some(vm);
                self.generation.set(self.generation.get() + 1);
                self.listen_to_queues(events_rx);
                self.after_call();
                Ok(self.generation.get())
            }
            Err(error) => {
                let failure = VmFailure::start(&error);
                self.record_failure(&failure);
                Err(failure)
            }
        }
    }

    /// Starts the VM if needed and creates a stream context on it: the VM generation, the
    /// context id, and the signal the context pokes when the guest resumes or answers.
    pub fn open_context(
        self: &Rc<Self>,
        info: Rc<StreamInfo>,
    ) -> Result<(u64, u32, Rc<ResumeSignals>), VmFailure> {
        let generation = self.ensure_started()?;
        self.with_vm(generation, |vm| {
            let context = vm.create_stream(info)?;
            let resumed = vm
                .stream(context)
                .map(|s| Rc::clone(&s.resumed))
                .unwrap_or_default();
            Ok((generation, context, resumed))
        })
    }

    /// Runs `f` on the VM of generation `generation`; a failure destroys the VM.
    pub fn with_vm<T>(
        self: &Rc<Self>,
        generation: u64,
        f: impl FnOnce(&mut PluginVm) -> Result<T, VmFailure>,
    ) -> Result<T, VmFailure> {
        if generation != self.generation.get() {
            return Err(self.gone());
        }
        let outcome = {
            let mut slot = self.vm.borrow_mut();
            let vm = slot.as_mut().ok_or_else(|| self.gone())?;
            f(vm)
        };
        match &outcome {
            Ok(_) => self.after_call(),
            Err(failure) if failure.kind == super::error::FailureKind::Gone => {}
            Err(failure) => self.fail(failure),
        }
        outcome
    }

    /// A stream finished on this VM without failing it: the crash streak is over.
    pub fn stream_succeeded(&self) {
        if self.consecutive_failures.replace(0) >= CRASH_LOOP_AFTER {
            self.spec
                .health
                .crash_looping
                .fetch_sub(1, Ordering::Relaxed);
            self.spec.health.crash_looping_gauge.dec();
        }
        self.retry_at.set(None);
    }

    fn gone(&self) -> VmFailure {
        VmFailure {
            callback: "stream",
            kind: super::error::FailureKind::Gone,
            message: "the plugin's VM failed while this stream was in flight".into(),
        }
    }

    fn fail(&self, failure: &VmFailure) {
        tracing::error!(plugin = %self.spec.info.name, %failure, "plugin VM failed; it will be rebuilt");
        // Streams paused on this VM must learn that it is gone (and get the fail policy)
        // rather than wait for a resume that can no longer come.
        if let Some(mut vm) = self.vm.borrow_mut().take() {
            self.spec.health.vms_live.dec();
            for stream in vm.state().streams.values() {
                stream.resumed.wake_all();
            }
        }
        if let Some(timer) = self.timer.borrow_mut().take() {
            timer.abort();
        }
        if let Some(listener) = self.queue_listener.borrow_mut().take() {
            listener.abort();
        }
        self.record_failure(failure);
    }

    fn record_failure(&self, failure: &VmFailure) {
        self.spec
            .health
            .failures
            .with_label_values(&[self.spec.health.label.as_str(), failure.kind.as_str()])
            .inc();
        let failures = self.consecutive_failures.get() + 1;
        self.consecutive_failures.set(failures);
        if failures == CRASH_LOOP_AFTER {
            self.spec
                .health
                .crash_looping
                .fetch_add(1, Ordering::Relaxed);
            self.spec.health.crash_looping_gauge.inc();
            tracing::error!(plugin = %self.spec.info.name, failures, "plugin is crash-looping; rebuilding with backoff");
        }
        if failures >= CRASH_LOOP_AFTER {
            let exponent = (failures - CRASH_LOOP_AFTER).min(16);
            let backoff = (Duration::from_millis(100) * 2u32.pow(exponent)).min(MAX_BACKOFF);
            self.retry_at.set(Some(Instant::now() + backoff));
        }
    }

    /// After every guest call: send the callouts and open the gRPC streams it asked for, and
    /// re-arm the tick timer if the guest changed its period.
    fn after_call(self: &Rc<Self>) {
        let (calls, streams, change) = match self.vm.borrow_mut().as_mut() {
            Some(vm) if !vm.has_guest_requests() => return,
            Some(vm) => (
                vm.take_pending_calls(),
                vm.take_pending_streams(),
                vm.take_tick_change(),
            ),
            None => return,
        };
        for call in calls {
            self.spawn_call(call);
        }
        for stream in streams {
            self.spawn_stream(stream);
        }
        let Some(period) = change else { return };
        if let Some(timer) = self.timer.borrow_mut().take() {
            timer.abort();
        }
        let Some(period) = period else { return };
        let weak = Rc::downgrade(self);
        let generation = self.generation.get();
        *self.timer.borrow_mut() = Some(tokio::task::spawn_local(tick_loop(
            weak, generation, period,
        )));
    }

    /// Sends a callout and delivers its answer to this VM, unless the VM was rebuilt
    /// meanwhile (its successor never made the call) or the guest cancelled it.
    fn spawn_call(self: &Rc<Self>, mut call: PendingCall) {
        let (slot, generation, pools) = (
            Rc::downgrade(self),
            self.generation.get(),
            Rc::clone(&self.pools),
        );
        tokio::task::spawn_local(async move {
            let (token, kind) = (call.token, call.kind);
            let outcome = match call.cancelled.take() {
                Some(cancelled) => tokio::select! {
                    outcome = perform(pools, call) => outcome,
                    // The guest cancelled the call, or its VM is gone.
                    _ = cancelled => return,
                },
                None => perform(pools, call).await,
            };
            if let Some(slot) = slot.upgrade() {
                let _ = slot.with_vm(generation, |vm| match kind {
                    CallKind::Http => vm.on_http_call_response(token, outcome),
                    CallKind::Grpc => {
                        vm.on_grpc_response(token, grpc_stream::unary_outcome(outcome))
                    }
                });
            }
        });
    }

    /// Runs a gRPC stream the guest opened, delivering its events to this VM.
    fn spawn_stream(self: &Rc<Self>, stream: PendingStream) {
        let (slot, generation, pools) = (
            Rc::downgrade(self),
            self.generation.get(),
            Rc::clone(&self.pools),
        );
        tokio::task::spawn_local(async move {
            let token = stream.token;
            grpc_stream::run(pools, stream, |event| {
                // A rebuilt VM never opened this stream; a failed callback ends it.
                slot.upgrade().is_some_and(|slot| {
                    matches!(
                        slot.with_vm(generation, |vm| vm.on_grpc_stream_event(token, event)),
                        Ok(true)
                    )
                })
            })
            .await;
        });
    }

    fn listen_to_queues(self: &Rc<Self>, mut events: tokio::sync::mpsc::UnboundedReceiver<u32>) {
        let weak = Rc::downgrade(self);
        let generation = self.generation.get();
        let listener = tokio::task::spawn_local(async move {
            while let Some(token) = events.recv().await {
                let Some(slot) = weak.upgrade() else { return };
                if slot
                    .with_vm(generation, |vm| vm.on_queue_ready(token))
                    .is_err()
                {
                    return;
                }
            }
        });
        *self.queue_listener.borrow_mut() = Some(listener);
    }
}

impl Drop for WorkerVm {
    /// The last stream of a retired plugin ended: the root context hears it is done, timers
    /// stop, and the VM's memory goes back.
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get_mut().take() {
            timer.abort();
        }
        if let Some(listener) = self.queue_listener.get_mut().take() {
            listener.abort();
        }
        if let Some(mut vm) = self.vm.get_mut().take() {
            self.spec.health.vms_live.dec();
            if let Err(failure) = vm.retire() {
                tracing::warn!(plugin = %self.spec.info.name, %failure, "the retiring plugin failed in on_done/on_delete");
            }
        }
        if self.consecutive_failures.get() >= CRASH_LOOP_AFTER {
            self.spec
                .health
                .crash_looping
                .fetch_sub(1, Ordering::Relaxed);
            self.spec.health.crash_looping_gauge.dec();
        }
    }
}

async fn tick_loop(slot: Weak<WorkerVm>, generation: u64, period: Duration) {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(slot) = slot.upgrade() else { return };
        if slot.with_vm(generation, PluginVm::on_tick).is_err() {
            return;
        }
    }
}
