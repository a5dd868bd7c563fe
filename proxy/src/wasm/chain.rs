//! The HTTP filter chain of one stream: every Wasm filter that applies to it, each with its
//! stream context on this worker's VM. Request callbacks run in chain order, response
//! callbacks in reverse, as in Envoy.
//!
//! Header maps move into the VM for the callback and back out after it (or after the
//! guest resumes a paused stream), so a filter sees them only inside its window. A failed
//! filter gets its plugin's fail policy: fail-open skips it for the rest of the stream;
//! fail-closed answers 503 `wasm_fail_stream`.

use std::rc::Rc;

use super::error::VmFailure;
use super::pairs::Pair;
use super::plugin::PluginSpec;
use super::state::{LocalResponse, MapSlot, ResumeSignals, StreamInfo};
use super::worker::{WorkerPlugins, WorkerVm};

/// Why the chain stopped the stream instead of letting it continue.
#[derive(Debug)]
pub enum Interruption {
    /// Filter `filter` answered itself with `proxy_send_local_response`.
    Local {
        response: LocalResponse,
        filter: usize,
    },
    /// A fail-closed plugin failed.
    Failed { plugin: String },
    /// The guest closed the stream (`proxy_close_stream`).
    Reset,
    /// A filter buffered more body than the listener's `max_body_buffer` allows.
    BodyTooLarge { plugin: String, limit: usize },
    /// The pipeline gave up waiting for a paused filter (the stream idle timeout).
    TimedOut,
}

/// What a body chunk turned into after the filters saw it.
pub enum BodyStep {
    /// Bytes to pass on (possibly empty).
    Forward(Vec<u8>),
    /// Filter `filter` is buffering: nothing passes until it continues.
    Held {
        filter: usize,
    },
    Interrupted(Interruption),
}

struct ChainFilter {
    slot: Rc<WorkerVm>,
    generation: u64,
    context: u32,
    /// Out of this stream after a fail-open failure (or never started).
    skipped: bool,
    resumed: Rc<ResumeSignals>,
    request_buffer: Option<Vec<u8>>,
    response_buffer: Option<Vec<u8>>,
}

pub struct FilterChain {
    filters: Vec<ChainFilter>,
    info: Rc<StreamInfo>,
    /// Most body bytes one filter may hold while it pauses.
    buffer_limit: usize,
    /// A fail-closed failure while creating contexts, reported by `take_start_failure`.
    start_failure: Option<String>,
    /// Request headers as the upstream got them, for `on_log`.
    logged_request: Option<Vec<Pair>>,
    logged_response: Option<Vec<Pair>>,
    /// An interruption raised while the request body streamed, for the pipeline to answer.
    interruption: Option<Interruption>,
    finished: bool,
}

/// What a headers callback decided.
enum HeadersStep {
    Continue(Vec<Pair>),
    /// Paused; for fail-open plugins, the map as it was, in case the VM fails meanwhile.
    Paused {
        backup: Option<Vec<Pair>>,
    },
}

/// Which phase a callback belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

// === impl FilterChain ===

impl FilterChain {
    pub fn new(info: Rc<StreamInfo>, buffer_limit: usize) -> Self {
        Self {
            filters: Vec::new(),
            info,
            buffer_limit,
            start_failure: None,
            logged_request: None,
            logged_response: None,
            interruption: None,
            finished: false,
        }
    }

    /// What the stream's filters see of it.
    pub fn info(&self) -> &Rc<StreamInfo> {
        &self.info
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Adds the filters of `specs` (creating their stream contexts) at the end of the chain.
    pub fn extend<'a>(
        &mut self,
        plugins: &WorkerPlugins,
        specs: impl IntoIterator<Item = &'a std::sync::Arc<PluginSpec>>,
    ) {
        for spec in specs {
            let slot = plugins.slot(spec);
            let created = slot.open_context(Rc::clone(&self.info));
            let filter = match created {
                Ok((generation, context, resumed)) => ChainFilter {
                    slot,
                    generation,
                    context,
                    skipped: false,
                    resumed,
                    request_buffer: None,
                    response_buffer: None,
                },
                Err(failure) => {
                    if let Err(plugin) = spec.apply_fail_policy(&failure)
                        && self.start_failure.is_none()
                    {
                        self.start_failure = Some(plugin);
                    }
                    ChainFilter {
                        slot,
                        generation: 0,
                        context: 0,
                        skipped: true,
                        resumed: Rc::default(),
                        request_buffer: None,
                        response_buffer: None,
                    }
                }
            };
            self.filters.push(filter);
        }
    }

    pub fn set_interruption(&mut self, interruption: Interruption) {
        self.interruption.get_or_insert(interruption);
    }

    pub fn take_interruption(&mut self) -> Option<Interruption> {
        self.interruption.take()
    }

    pub fn take_start_failure(&mut self) -> Option<Interruption> {
        self.start_failure
            .take()
            .map(|plugin| Interruption::Failed { plugin })
    }

    /// Runs one headers callback for filter `index`.
    fn headers_callback(
        &mut self,
        index: usize,
        phase: Phase,
        pairs: Vec<Pair>,
        end_of_stream: bool,
    ) -> Result<HeadersStep, Interruption> {
        let filter = &mut self.filters[index];
        let context = filter.context;
        let count = pairs.len();
        // Fail-open continues with the map as it was; only then is a copy worth its cost.
        let backup = filter.slot.spec.fail_open.then(|| pairs.clone());
        let mut returned = None;
        let mut local = None;
        let mut close = false;
        let outcome = filter.slot.with_vm(filter.generation, |vm| {
            let stream = vm.stream(context).ok_or_else(missing_stream)?;
            *slot_for(stream, phase) = MapSlot {
                pairs: Some(pairs),
                writable: true,
            };
            // A continue issued while the stream was not paused must not release a later pause.
            *continue_flag(stream, phase) = false;
            let action = match phase {
                Phase::Request => vm.on_request_headers(context, count, end_of_stream)?,
                Phase::Response => vm.on_response_headers(context, count, end_of_stream)?,
            };
            let stream = vm.stream(context).ok_or_else(missing_stream)?;
            local = stream.local_response.take();
            close = stream.close_stream;
            // 0 Continue and 2 ContinueAndEndStream (Envoy treats it as Continue) go on.
            if action == 0 || action == 2 || local.is_some() {
                returned = slot_for(stream, phase).pairs.take();
            }
            Ok(action)
        });
        if let Some(response) = local {
            return Err(Interruption::Local {
                response,
                filter: index,
            });
        }
        if close {
            return Err(Interruption::Reset);
        }
        match outcome {
            Err(failure) => {
                self.fail(index, &failure)?;
                Ok(HeadersStep::Continue(backup.unwrap_or_default()))
            }
            Ok(0 | 2) => Ok(HeadersStep::Continue(returned.unwrap_or_default())),
            Ok(_) => Ok(HeadersStep::Paused { backup }),
        }
    }

    /// Waits until filter `index` resumes a paused stream; returns the header map it holds.
    async fn wait_for_resume(
        chain: &std::cell::RefCell<Self>,
        index: usize,
        phase: Phase,
        backup: Option<Vec<Pair>>,
    ) -> Result<Vec<Pair>, Interruption> {
        loop {
            let signals = Rc::clone(&chain.borrow().filters[index].resumed);
            match phase {
                Phase::Request => signals.request.notified().await,
                Phase::Response => signals.response.notified().await,
            }
            let mut this = chain.borrow_mut();
            let filter = &this.filters[index];
            let context = filter.context;
            let mut decision = None;
            let outcome = filter.slot.with_vm(filter.generation, |vm| {
                let stream = vm.stream(context).ok_or_else(missing_stream)?;
                if let Some(response) = stream.local_response.take() {
                    decision = Some(Err(Interruption::Local {
                        response,
                        filter: index,
                    }));
                } else if stream.close_stream {
                    decision = Some(Err(Interruption::Reset));
                } else {
                    let resumed = match phase {
                        Phase::Request => std::mem::take(&mut stream.continue_request),
                        Phase::Response => std::mem::take(&mut stream.continue_response),
                    };
                    if resumed {
                        decision =
                            Some(Ok(slot_for(stream, phase).pairs.take().unwrap_or_default()));
                    }
                }
                Ok(())
            });
            if let Err(failure) = outcome {
                this.fail(index, &failure)?;
                // Fail-open goes on with the map as it was when the filter paused.
                return Ok(backup.unwrap_or_default());
            }
            if let Some(decision) = decision {
                return decision;
            }
        }
    }

    /// A failure of filter `index`: fail-open skips it, fail-closed interrupts the stream.
    fn fail(&mut self, index: usize, failure: &VmFailure) -> Result<(), Interruption> {
        let filter = &mut self.filters[index];
        filter.skipped = true;
        filter
            .slot
            .spec
            .apply_fail_policy(failure)
            .map_err(|plugin| Interruption::Failed { plugin })
    }

    /// One body chunk through filters `from..` (request order) or `..=from` (response,
    /// reverse order), with Envoy's buffering: a filter that pauses keeps the bytes and sees
    /// the cumulative body on its next call.
    fn body(
        &mut self,
        phase: Phase,
        mut data: Vec<u8>,
        end_of_stream: bool,
        from: usize,
    ) -> BodyStep {
        // The stream's contexts already ended (the response finished while the client was
        // still sending): the rest of the body passes untouched.
        if self.finished {
            return BodyStep::Forward(data);
        }
        for index in phase_order(phase, from, self.filters.len()) {
            if self.filters[index].skipped {
                continue;
            }
            let filter = &mut self.filters[index];
            let buffered = match phase {
                Phase::Request => filter.request_buffer.take(),
                Phase::Response => filter.response_buffer.take(),
            };
            let mut current = match buffered {
                Some(mut held) => {
                    held.extend_from_slice(&data);
                    held
                }
                None => data,
            };
            // Envoy's buffer limit: a filter may not make the proxy hold unbounded bodies.
            if current.len() > self.buffer_limit {
                return BodyStep::Interrupted(Interruption::BodyTooLarge {
                    plugin: filter.slot.spec.info.name.clone(),
                    limit: self.buffer_limit,
                });
            }
            let context = filter.context;
            let backup = filter.slot.spec.fail_open.then(|| current.clone());
            let mut local = None;
            let mut close = false;
            let outcome = filter.slot.with_vm(filter.generation, |vm| {
                let stream = vm.stream(context).ok_or_else(missing_stream)?;
                let size = current.len();
                let body = match phase {
                    Phase::Request => &mut stream.request_body,
                    Phase::Response => &mut stream.response_body,
                };
                *body = Some(std::mem::take(&mut current));
                *continue_flag(stream, phase) = false;
                let action = match phase {
                    Phase::Request => vm.on_request_body(context, size, end_of_stream)?,
                    Phase::Response => vm.on_response_body(context, size, end_of_stream)?,
                };
                let stream = vm.stream(context).ok_or_else(missing_stream)?;
                let body = match phase {
                    Phase::Request => &mut stream.request_body,
                    Phase::Response => &mut stream.response_body,
                };
                current = body.take().unwrap_or_default();
                local = stream.local_response.take();
                close = stream.close_stream;
                Ok(action)
            });
            if let Some(response) = local {
                return BodyStep::Interrupted(Interruption::Local {
                    response,
                    filter: index,
                });
            }
            if close {
                return BodyStep::Interrupted(Interruption::Reset);
            }
            match outcome {
                Err(failure) => {
                    if let Err(interruption) = self.fail(index, &failure) {
                        return BodyStep::Interrupted(interruption);
                    }
                    current = backup.unwrap_or_default();
                }
                Ok(0) => {}
                Ok(_) => {
                    let filter = &mut self.filters[index];
                    match phase {
                        Phase::Request => filter.request_buffer = Some(current),
                        Phase::Response => filter.response_buffer = Some(current),
                    }
                    return BodyStep::Held { filter: index };
                }
            }
            data = current;
        }
        BodyStep::Forward(data)
    }

    pub fn request_body(&mut self, data: Vec<u8>, end_of_stream: bool) -> BodyStep {
        self.body(Phase::Request, data, end_of_stream, 0)
    }

    pub fn response_body(&mut self, data: Vec<u8>, end_of_stream: bool, upto: usize) -> BodyStep {
        self.body(Phase::Response, data, end_of_stream, upto)
    }

    /// After filter `filter` resumed a held body: its buffer goes on through the filters after
    /// it (request) or before it (response).
    pub fn release_held(&mut self, filter: usize, response: bool, end_of_stream: bool) -> BodyStep {
        let slot = &mut self.filters[filter];
        if response {
            let held = slot.response_buffer.take().unwrap_or_default();
            if filter == 0 {
                return BodyStep::Forward(held);
            }
            self.body(Phase::Response, held, end_of_stream, filter - 1)
        } else {
            let held = slot.request_buffer.take().unwrap_or_default();
            self.body(Phase::Request, held, end_of_stream, filter + 1)
        }
    }

    /// The first filter (in the phase's order) holding body bytes, if any.
    pub fn first_holder(&self, response: bool) -> Option<usize> {
        let holds = |f: &ChainFilter| {
            if response {
                f.response_buffer.is_some()
            } else {
                f.request_buffer.is_some()
            }
        };
        if response {
            self.filters.iter().rposition(holds)
        } else {
            self.filters.iter().position(holds)
        }
    }

    /// The signals filter `filter` pokes when it resumes or answers.
    pub fn resume_signals(&self, filter: usize) -> Rc<ResumeSignals> {
        Rc::clone(&self.filters[filter].resumed)
    }

    /// Whether filter `filter` has resumed (or interrupted) since it paused.
    pub fn poll_body_resume(
        &mut self,
        filter: usize,
        response: bool,
    ) -> Option<Result<(), Interruption>> {
        if self.finished {
            return Some(Ok(()));
        }
        let entry = &self.filters[filter];
        let context = entry.context;
        let mut decision = None;
        let outcome = entry.slot.with_vm(entry.generation, |vm| {
            let stream = vm.stream(context).ok_or_else(missing_stream)?;
            if let Some(response) = stream.local_response.take() {
                decision = Some(Err(Interruption::Local { response, filter }));
            } else if stream.close_stream {
                decision = Some(Err(Interruption::Reset));
            } else {
                let flag = if response {
                    &mut stream.continue_response
                } else {
                    &mut stream.continue_request
                };
                if std::mem::take(flag) {
                    decision = Some(Ok(()));
                }
            }
            Ok(())
        });
        match outcome {
            Err(failure) => Some(self.fail(filter, &failure)),
            Ok(()) => decision,
        }
    }

    /// Trailers through the filters: request trailers in order, response trailers reversed.
    pub fn trailers(
        &mut self,
        response: bool,
        trailers: Vec<Pair>,
    ) -> Result<Vec<Pair>, Interruption> {
        if self.finished {
            return Ok(trailers);
        }
        let (phase, from) = if response {
            (Phase::Response, usize::MAX)
        } else {
            (Phase::Request, 0)
        };
        let mut pairs = trailers;
        for index in phase_order(phase, from, self.filters.len()) {
            if self.filters[index].skipped {
                continue;
            }
            let filter = &self.filters[index];
            let context = filter.context;
            let count = pairs.len();
            let mut local = None;
            let mut moved = std::mem::take(&mut pairs);
            let outcome = filter.slot.with_vm(filter.generation, |vm| {
                let stream = vm.stream(context).ok_or_else(missing_stream)?;
                let slot = if response {
                    &mut stream.response_trailers
                } else {
                    &mut stream.request_trailers
                };
                *slot = MapSlot {
                    pairs: Some(std::mem::take(&mut moved)),
                    writable: true,
                };
                // A paused trailers callback can only be resumed by a callout, which this
                // build does not have; the trailers continue either way.
                if response {
                    vm.on_response_trailers(context, count)?;
                } else {
                    vm.on_request_trailers(context, count)?;
                }
                let stream = vm.stream(context).ok_or_else(missing_stream)?;
                local = stream.local_response.take();
                let slot = if response {
                    &mut stream.response_trailers
                } else {
                    &mut stream.request_trailers
                };
                moved = slot.pairs.take().unwrap_or_default();
                if response {
                    stream.response_trailers.pairs = Some(moved.clone());
                    stream.response_trailers.writable = false;
                }
                Ok(())
            });
            if let Err(failure) = outcome {
                self.fail(index, &failure)?;
            }
            if let Some(response) = local {
                return Err(Interruption::Local {
                    response,
                    filter: index,
                });
            }
            pairs = moved;
        }
        Ok(pairs)
    }

    /// Records the response status for `response.code` and keeps the final maps for `on_log`.
    pub fn remember_for_log(&mut self, request: Option<Vec<Pair>>, response: Option<Vec<Pair>>) {
        if request.is_some() {
            self.logged_request = request;
        }
        if response.is_some() {
            self.logged_response = response;
        }
    }

    pub fn set_response_code(&mut self, code: u16) {
        for filter in self.filters.iter().filter(|f| !f.skipped) {
            let context = filter.context;
            let _ = filter.slot.with_vm(filter.generation, |vm| {
                if let Some(stream) = vm.stream(context) {
                    stream.response_code = Some(code);
                }
                Ok(())
            });
        }
    }

    /// Ends every context: `on_log`, `on_done`, `on_delete`. Idempotent.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let last_live = self.filters.iter().rposition(|f| !f.skipped);
        for (index, filter) in self.filters.iter().enumerate() {
            if filter.skipped {
                continue;
            }
            let context = filter.context;
            // Every filter's on_log sees the maps; the last one can have them without a copy.
            let (request, response) = if Some(index) == last_live {
                (self.logged_request.take(), self.logged_response.take())
            } else {
                (self.logged_request.clone(), self.logged_response.clone())
            };
            let outcome = filter.slot.with_vm(filter.generation, |vm| {
                if let Some(stream) = vm.stream(context) {
                    stream.request_headers.pairs = request;
                    stream.response_headers.pairs = response;
                }
                vm.finish_stream(context)
            });
            if outcome.is_ok() {
                filter.slot.stream_succeeded();
            }
        }
    }
}

impl Drop for FilterChain {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs the headers phase of `phase` over the chain, waiting out pauses.
async fn run_headers(
    chain: &std::cell::RefCell<FilterChain>,
    phase: Phase,
    mut pairs: Vec<Pair>,
    end_of_stream: bool,
    indexes: impl Iterator<Item = usize>,
) -> Result<Vec<Pair>, Interruption> {
    for index in indexes {
        if chain.borrow().filters[index].skipped {
            continue;
        }
        let step = chain.borrow_mut().headers_callback(
            index,
            phase,
            std::mem::take(&mut pairs),
            end_of_stream,
        )?;
        // A filter replays the request (`sluice_replay`): this attempt's response goes no
        // further, whatever the callback returned.
        if replay_requested(chain, phase) {
            return Ok(Vec::new());
        }
        pairs = match step {
            HeadersStep::Continue(returned) => returned,
            HeadersStep::Paused { backup } => {
                FilterChain::wait_for_resume(chain, index, phase, backup).await?
            }
        };
        // Or asked for it while paused (after a callout), then resumed.
        if replay_requested(chain, phase) {
            return Ok(Vec::new());
        }
    }
    Ok(pairs)
}

fn replay_requested(chain: &std::cell::RefCell<FilterChain>, phase: Phase) -> bool {
    phase == Phase::Response && chain.borrow().info.replay.borrow().is_requested()
}

/// Request headers through filters `from..` in order.
pub async fn request_headers(
    chain: &std::cell::RefCell<FilterChain>,
    pairs: Vec<Pair>,
    end_of_stream: bool,
    from: usize,
) -> Result<Vec<Pair>, Interruption> {
    let indexes = phase_order(Phase::Request, from, chain.borrow().filters.len());
    run_headers(chain, Phase::Request, pairs, end_of_stream, indexes).await
}

/// Response headers through filters `..=upto` in reverse order.
pub async fn response_headers(
    chain: &std::cell::RefCell<FilterChain>,
    pairs: Vec<Pair>,
    end_of_stream: bool,
    upto: usize,
) -> Result<Vec<Pair>, Interruption> {
    let indexes = phase_order(Phase::Response, upto, chain.borrow().filters.len());
    run_headers(chain, Phase::Response, pairs, end_of_stream, indexes).await
}

/// The filters a phase runs through, of `len`: from `from` on for the request, from `from` down
/// to the first for the response (as in Envoy). Counted, not collected: it runs for every
/// headers, body and trailers step.
fn phase_order(phase: Phase, from: usize, len: usize) -> impl Iterator<Item = usize> {
    let (start, end) = match phase {
        Phase::Request => (from.min(len), len),
        Phase::Response => (0, from.saturating_add(1).min(len)),
    };
    (0..end - start).map(move |step| match phase {
        Phase::Request => start + step,
        Phase::Response => end - 1 - step,
    })
}

fn slot_for(stream: &mut super::state::StreamState, phase: Phase) -> &mut MapSlot {
    match phase {
        Phase::Request => &mut stream.request_headers,
        Phase::Response => &mut stream.response_headers,
    }
}

fn continue_flag(stream: &mut super::state::StreamState, phase: Phase) -> &mut bool {
    match phase {
        Phase::Request => &mut stream.continue_request,
        Phase::Response => &mut stream.continue_response,
    }
}

fn missing_stream() -> VmFailure {
    VmFailure {
        callback: "stream",
        kind: super::error::FailureKind::Gone,
        message: "the stream context is gone".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_run_forward_from_a_filter_and_responses_back_to_the_first() {
        let order = |phase, from, len| phase_order(phase, from, len).collect::<Vec<_>>();
        assert_eq!(order(Phase::Request, 0, 3), [0, 1, 2]);
        assert_eq!(order(Phase::Request, 1, 4), [1, 2, 3]);
        assert_eq!(order(Phase::Request, 5, 3), [] as [usize; 0]);
        assert_eq!(order(Phase::Response, 2, 4), [2, 1, 0]);
        assert_eq!(order(Phase::Response, usize::MAX, 3), [2, 1, 0]);
        assert_eq!(order(Phase::Response, 0, 3), [0]);
        assert_eq!(order(Phase::Response, 5, 0), [] as [usize; 0]);
    }
}
