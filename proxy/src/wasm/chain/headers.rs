//! Headers through the chain: each filter's headers callback in the phase's order, waiting out
//! a filter that pauses until it resumes the stream.

use std::cell::RefCell;
use std::rc::Rc;

use super::early::PeerBody;
use super::{
    FilterChain, Interruption, Phase, continue_flag, missing_stream, phase_order, slot_for,
};
use crate::wasm::pairs::Pair;
use crate::wasm::state::MapSlot;

/// What a headers callback decided.
enum HeadersStep {
    Continue(Vec<Pair>),
    /// Paused; for fail-open plugins, the map as it was, in case the VM fails meanwhile.
    Paused {
        backup: Option<Vec<Pair>>,
    },
}

impl FilterChain {
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

    /// Whether filter `index`, paused in a headers callback, has resumed (with the header map
    /// it holds), answered, closed the stream or failed since.
    fn resume_decision(
        &mut self,
        index: usize,
        phase: Phase,
        backup: &Option<Vec<Pair>>,
    ) -> Option<Result<Vec<Pair>, Interruption>> {
        let filter = &self.filters[index];
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
            } else if std::mem::take(continue_flag(stream, phase)) {
                decision = Some(Ok(slot_for(stream, phase).pairs.take().unwrap_or_default()));
            }
            Ok(())
        });
        match outcome {
            Err(failure) => Some(
                self.fail(index, &failure)
                    // Fail-open goes on with the map as it was when the filter paused.
                    .map(|()| backup.clone().unwrap_or_default()),
            ),
            Ok(()) => decision,
        }
    }

    /// The header map filter `index` holds, after its body callback let the body through.
    fn take_held_headers(
        &mut self,
        index: usize,
        phase: Phase,
        backup: Option<Vec<Pair>>,
    ) -> Vec<Pair> {
        let filter = &self.filters[index];
        let context = filter.context;
        let mut held = None;
        // A filter that failed (fail-open) since it paused has no map left: the backup goes on.
        let _ = filter.slot.with_vm(filter.generation, |vm| {
            if let Some(stream) = vm.stream(context) {
                let slot = slot_for(stream, phase);
                held = slot.pairs.take();
                // As in Envoy, the filter keeps the map it paused with: later body callbacks
                // may still read and write it (the headers left already, so writes go nowhere),
                // where a missing map would fail the SDKs' header calls.
                slot.pairs.clone_from(&held);
            }
            Ok(())
        });
        held.or(backup).unwrap_or_default()
    }

    /// Waits until filter `index` resumes a paused stream; returns the header map it holds.
    /// With the body behind the headers (`peer`), the body reaches the filter meanwhile, and
    /// a body callback that lets it through resumes the headers too (see `early`).
    async fn wait_for_resume(
        chain: &RefCell<Self>,
        index: usize,
        phase: Phase,
        backup: Option<Vec<Pair>>,
        mut peer: Option<&mut PeerBody<'_>>,
        first: usize,
    ) -> Result<Vec<Pair>, Interruption> {
        loop {
            if peer.is_some() && chain.borrow_mut().feed_early(phase, index)? {
                return Ok(chain.borrow_mut().take_held_headers(index, phase, backup));
            }
            let signals = Rc::clone(&chain.borrow().filters[index].resumed);
            let signal = async {
                match phase {
                    Phase::Request => signals.request.notified().await,
                    Phase::Response => signals.response.notified().await,
                }
            };
            let reading = match peer.as_deref_mut() {
                Some(peer) if !chain.borrow_mut().early_mut(phase).ended => Some(peer),
                _ => None,
            };
            match reading {
                Some(peer) => {
                    tokio::select! {
                        biased;
                        () = signal => {}
                        read = peer.read() => {
                            let read = read.map_err(|error| Interruption::BodyFailed(error.to_string()))?;
                            chain.borrow_mut().keep_read(phase, read, first);
                            continue;
                        }
                    }
                }
                None => signal.await,
            }
            let mut this = chain.borrow_mut();
            if let Some(decision) = this.resume_decision(index, phase, &backup) {
                if decision.is_ok() {
                    this.release_early_hold(phase, index);
                }
                return decision;
            }
        }
    }
}

/// Runs the headers phase of `phase` over the chain, waiting out pauses.
async fn run_headers(
    chain: &RefCell<FilterChain>,
    phase: Phase,
    mut pairs: Vec<Pair>,
    end_of_stream: bool,
    indexes: impl Iterator<Item = usize>,
    mut peer: Option<PeerBody<'_>>,
    first: usize,
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
                // Without a body to come, only the filter can resume the stream.
                let peer = peer.as_mut().filter(|_| !end_of_stream);
                FilterChain::wait_for_resume(chain, index, phase, backup, peer, first).await?
            }
        };
        // Or asked for it while paused (after a callout), then resumed.
        if replay_requested(chain, phase) {
            return Ok(Vec::new());
        }
    }
    Ok(pairs)
}

fn replay_requested(chain: &RefCell<FilterChain>, phase: Phase) -> bool {
    phase == Phase::Response && chain.borrow().info.replay.borrow().is_requested()
}

/// Request headers through filters `from..` in order.
pub async fn request_headers(
    chain: &RefCell<FilterChain>,
    pairs: Vec<Pair>,
    end_of_stream: bool,
    from: usize,
    peer: Option<PeerBody<'_>>,
) -> Result<Vec<Pair>, Interruption> {
    let indexes = phase_order(Phase::Request, from, chain.borrow().filters.len());
    // The body reaches every filter from the first, which all passed the headers before.
    run_headers(
        chain,
        Phase::Request,
        pairs,
        end_of_stream,
        indexes,
        peer,
        0,
    )
    .await
}

/// Response headers through filters `..=upto` in reverse order.
pub async fn response_headers(
    chain: &RefCell<FilterChain>,
    pairs: Vec<Pair>,
    end_of_stream: bool,
    upto: usize,
    peer: Option<PeerBody<'_>>,
) -> Result<Vec<Pair>, Interruption> {
    let indexes = phase_order(Phase::Response, upto, chain.borrow().filters.len());
    run_headers(
        chain,
        Phase::Response,
        pairs,
        end_of_stream,
        indexes,
        peer,
        upto,
    )
    .await
}
