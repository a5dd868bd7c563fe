//! Body chunks through the chain, with Envoy's buffering: a filter that pauses keeps the bytes
//! and sees the cumulative body on its next call.

use std::rc::Rc;

use super::{
    BodyStep, ChainFilter, FilterChain, Interruption, Phase, continue_flag, missing_stream,
    phase_order,
};
use crate::wasm::state::ResumeSignals;

impl FilterChain {
    /// One body chunk through filters `from..` (request order) or `..=from` (response,
    /// reverse order), with Envoy's buffering: a filter that pauses keeps the bytes and sees
    /// the cumulative body on its next call.
    pub(super) fn body(
        &mut self,
        phase: Phase,
        data: Vec<u8>,
        end_of_stream: bool,
        from: usize,
    ) -> BodyStep {
        let last = match phase {
            Phase::Request => usize::MAX,
            Phase::Response => 0,
        };
        self.body_span(phase, data, end_of_stream, from, last)
    }

    /// `body`, stopping after filter `through` (in the phase's order): the filters after it
    /// have not had the headers yet.
    pub(super) fn body_span(
        &mut self,
        phase: Phase,
        mut data: Vec<u8>,
        end_of_stream: bool,
        from: usize,
        through: usize,
    ) -> BodyStep {
        // The stream's contexts already ended (the response finished while the client was
        // still sending): the rest of the body passes untouched.
        if self.finished {
            return BodyStep::Forward(data);
        }
        let reached = |index: usize| match phase {
            Phase::Request => index <= through,
            Phase::Response => index >= through,
        };
        for index in phase_order(phase, from, self.filters.len()).take_while(|&i| reached(i)) {
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

    /// A request body chunk through filters `from..`: the ones it had not reached while a
    /// filter held the headers.
    pub fn request_body_from(
        &mut self,
        data: Vec<u8>,
        end_of_stream: bool,
        from: usize,
    ) -> BodyStep {
        self.body(Phase::Request, data, end_of_stream, from)
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
}
