//! Network (TCP) filters of one connection: `on_new_connection`, then every chunk read from
//! the client through `on_downstream_data` in chain order and every chunk from the upstream
//! through `on_upstream_data` in reverse, as Envoy's read and write filters. A filter that
//! returns StopIteration holds the bytes; later calls see them accumulated, and
//! `proxy_continue_stream(DOWNSTREAM)` releases held client bytes.

use std::rc::Rc;
use std::sync::Arc;

use super::error::VmFailure;
use super::plugin::PluginSpec;
use super::state::{ResumeSignals, StreamInfo};
use super::worker::{WorkerPlugins, WorkerVm};

/// What a chunk of TCP data turned into.
#[derive(Debug, PartialEq, Eq)]
pub enum NetStep {
    Forward(Vec<u8>),
    Held,
    /// Close the connection: a filter asked for it, or a fail-closed filter failed.
    Close,
}

struct NetFilter {
    slot: Rc<WorkerVm>,
    generation: u64,
    context: u32,
    skipped: bool,
    resumed: Rc<ResumeSignals>,
    /// Bytes held per direction: [client → upstream, upstream → client].
    held: [Option<Vec<u8>>; 2],
}

pub struct NetworkChain {
    filters: Vec<NetFilter>,
    /// Most bytes one filter may hold; more closes the connection.
    buffer_limit: usize,
    finished: bool,
}

// === impl NetworkChain ===

impl NetworkChain {
    /// Creates the connection's contexts and runs `on_new_connection`. `Err` names a
    /// fail-closed plugin that failed: the connection must close.
    pub fn start(
        plugins: &WorkerPlugins,
        specs: &[Arc<PluginSpec>],
        info: Rc<StreamInfo>,
        buffer_limit: usize,
    ) -> Result<Self, String> {
        let mut chain = Self {
            filters: Vec::with_capacity(specs.len()),
            buffer_limit,
            finished: false,
        };
        for spec in specs {
            let slot = plugins.slot(spec);
            let started =
                slot.open_context(Rc::clone(&info))
                    .and_then(|(generation, context, resumed)| {
                        // A StopIteration here would only delay later filters' on_new_connection.
                        slot.with_vm(generation, |vm| vm.on_new_connection(context))?;
                        Ok((generation, context, resumed))
                    });
            let (generation, context, resumed, skipped) = match started {
                Ok((generation, context, resumed)) => (generation, context, resumed, false),
                Err(failure) => {
                    spec.apply_fail_policy(&failure)?;
                    (0, 0, Rc::default(), true)
                }
            };
            chain.filters.push(NetFilter {
                slot,
                generation,
                context,
                skipped,
                resumed,
                held: [None, None],
            });
        }
        Ok(chain)
    }

    /// Client bytes (`downstream`) or upstream bytes through the filters, from filter `from`
    /// on in their direction's order.
    pub fn data(&mut self, downstream: bool, data: Vec<u8>, end_of_stream: bool) -> NetStep {
        let order: Vec<usize> = if downstream {
            (0..self.filters.len()).collect()
        } else {
            (0..self.filters.len()).rev().collect()
        };
        self.run(downstream, data, end_of_stream, &order)
    }

    fn run(
        &mut self,
        downstream: bool,
        mut data: Vec<u8>,
        end_of_stream: bool,
        order: &[usize],
    ) -> NetStep {
        let side = usize::from(!downstream);
        for &index in order {
            let filter = &mut self.filters[index];
            if filter.skipped {
                continue;
            }
            let mut current = match filter.held[side].take() {
                Some(mut held) => {
                    held.extend_from_slice(&data);
                    held
                }
                None => data,
            };
            if current.len() > self.buffer_limit {
                tracing::debug!(plugin = %filter.slot.spec.info.name, "network filter held more than max_body_buffer; closing");
                return NetStep::Close;
            }
            let backup = filter.slot.spec.fail_open.then(|| current.clone());
            let context = filter.context;
            let mut close = false;
            let outcome = filter.slot.with_vm(filter.generation, |vm| {
                let size = current.len();
                let stream = vm.stream(context).ok_or_else(gone)?;
                let buffer = if downstream {
                    &mut stream.downstream_data
                } else {
                    &mut stream.upstream_data
                };
                *buffer = Some(std::mem::take(&mut current));
                let action = vm.on_data(downstream, context, size, end_of_stream)?;
                let stream = vm.stream(context).ok_or_else(gone)?;
                let buffer = if downstream {
                    &mut stream.downstream_data
                } else {
                    &mut stream.upstream_data
                };
                current = buffer.take().unwrap_or_default();
                close = stream.close_stream;
                Ok(action)
            });
            match outcome {
                Err(failure) => {
                    filter.skipped = true;
                    if filter.slot.spec.apply_fail_policy(&failure).is_err() {
                        return NetStep::Close;
                    }
                    current = backup.unwrap_or_default();
                }
                Ok(_) if close => return NetStep::Close,
                Ok(0) => {}
                Ok(_) => {
                    filter.held[side] = Some(current);
                    return NetStep::Held;
                }
            }
            data = current;
        }
        NetStep::Forward(data)
    }

    /// The signal of the filter holding client bytes, if one does.
    pub fn downstream_resume_signal(&self) -> Option<Rc<ResumeSignals>> {
        self.filters
            .iter()
            .find(|f| f.held[0].is_some())
            .map(|f| Rc::clone(&f.resumed))
    }

    /// After the holding filter called `proxy_continue_stream(DOWNSTREAM)` (or closed): its
    /// held bytes go on through the filters after it. `None` if it has not resumed.
    pub fn release_downstream(&mut self) -> Option<NetStep> {
        let index = self.filters.iter().position(|f| f.held[0].is_some())?;
        let filter = &self.filters[index];
        let context = filter.context;
        let (mut resumed, mut close) = (false, false);
        let outcome = filter.slot.with_vm(filter.generation, |vm| {
            let stream = vm.stream(context).ok_or_else(gone)?;
            resumed = std::mem::take(&mut stream.continue_downstream);
            close = stream.close_stream;
            Ok(())
        });
        if outcome.is_err() || close {
            return Some(NetStep::Close);
        }
        if !resumed {
            return None;
        }
        let held = self.filters[index].held[0].take().unwrap_or_default();
        let rest: Vec<usize> = (index + 1..self.filters.len()).collect();
        Some(self.run(true, held, false, &rest))
    }

    /// One side closed: `proxy_on_downstream_connection_close` (peer 2 when the client closed,
    /// 1 when the proxy did) or `proxy_on_upstream_connection_close` (peer 0, as Envoy
    /// reports it).
    pub fn closed(&mut self, downstream: bool, by_peer: bool) {
        let peer = match (downstream, by_peer) {
            (true, true) => 2,
            (true, false) => 1,
            (false, _) => 0,
        };
        for filter in self.filters.iter().filter(|f| !f.skipped) {
            let context = filter.context;
            let _ = filter.slot.with_vm(filter.generation, |vm| {
                vm.on_connection_close(downstream, context, peer)
            });
        }
    }

    /// Ends every context: `on_done`, `on_log`, `on_delete`. Idempotent.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for filter in self.filters.iter().filter(|f| !f.skipped) {
            let context = filter.context;
            if filter
                .slot
                .with_vm(filter.generation, |vm| vm.finish_connection(context))
                .is_ok()
            {
                filter.slot.stream_succeeded();
            }
        }
    }
}

impl Drop for NetworkChain {
    fn drop(&mut self) {
        self.finish();
    }
}

fn gone() -> VmFailure {
    VmFailure {
        callback: "connection",
        kind: super::error::FailureKind::Gone,
        message: "the connection context is gone".into(),
    }
}
