//! The HTTP filter chain of one stream: every Wasm filter that applies to it, each with its
//! stream context on this worker's VM. Request callbacks run in chain order, response
//! callbacks in reverse, as in Envoy.
//!
//! Header maps move into the VM for the callback and back out after it (or after the
//! guest resumes a paused stream), so a filter sees them only inside its window. A failed
//! filter gets its plugin's fail policy: fail-open skips it for the rest of the stream;
//! fail-closed answers 503 `wasm_fail_stream`.

mod body;
mod early;
mod headers;
mod trailers;

use std::rc::Rc;

use super::error::VmFailure;
use super::pairs::Pair;
use super::plugin::PluginSpec;
use super::state::{LocalResponse, MapSlot, ResumeSignals, StreamInfo};
use super::worker::{WorkerPlugins, WorkerVm};

pub use early::{EarlyBody, PeerBody};
pub use headers::{request_headers, response_headers};

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
    /// The peer's body failed while a filter held the headers to wait for it.
    BodyFailed(String),
    /// A filter left a request header HTTP cannot carry (`convert::InvalidHeader`'s text).
    InvalidHeader(String),
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
    /// Body read while a filter held the headers to wait for it (see `early`).
    early_request: EarlyBody,
    early_response: EarlyBody,
    request_body_read: bool,
    finished: bool,
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
            early_request: EarlyBody::default(),
            early_response: EarlyBody::default(),
            request_body_read: false,
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
