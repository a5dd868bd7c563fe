//! Trailers through the chain: request trailers in order, response trailers reversed.

use super::{FilterChain, Interruption, Phase, missing_stream, phase_order};
use crate::wasm::pairs::Pair;
use crate::wasm::state::MapSlot;

impl FilterChain {
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
}
