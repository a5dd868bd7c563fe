//! Pausing for the body. A filter that returns Pause from a headers callback while a body
//! follows keeps the headers, and the body comes to it meanwhile: Envoy's behaviour with
//! `allow_on_headers_stop_iteration: true`, which ../shared/design/architecture.md promises
//! (Envoy's default, stopping everything, leaves such a filter waiting forever). When the
//! filter lets a body chunk through, or resumes the stream, its headers go on to the next
//! filters, and the chunks it let through follow them there.
//!
//! The body read this early is kept in the chain (`EarlyBody`) until the filters after the
//! paused one are ready for it: a later filter that pauses too gets it first, and the
//! `FilteredBody` that carries the rest of the stream passes on what is left.

use std::collections::VecDeque;

use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;

use super::{BodyStep, FilterChain, Interruption, Phase};
use crate::http::{BoxError, ProxyBody};

/// The body of one phase as far as it was read while a filter held the headers.
#[derive(Default)]
pub struct EarlyBody {
    /// In arrival order, each with the filter it goes to next.
    pub chunks: VecDeque<EarlyChunk>,
    /// The peer's body was read to its end (its last data, or its trailers).
    pub ended: bool,
    /// Trailers that arrived while the headers were held; they follow the body.
    pub trailers: Option<HeaderMap>,
}

pub struct EarlyChunk {
    pub data: Vec<u8>,
    pub end_of_stream: bool,
    /// The filter (in the phase's order) this chunk reaches next; None once past them all.
    pub next: Option<usize>,
}

/// What one read of the peer's body brought while a filter held the headers.
pub enum PeerRead {
    Data { data: Vec<u8>, end_of_stream: bool },
    Trailers(HeaderMap),
}

/// The body behind headers a filter may hold, lent to the headers phase so it can read ahead.
pub struct PeerBody<'a> {
    body: &'a mut ProxyBody,
    split_end: bool,
    /// The last data was read from an HTTP/1 peer: the empty end comes next, unasked.
    end_pending: bool,
}

impl<'a> PeerBody<'a> {
    /// `split_end`: the peer speaks HTTP/1, whose end of message Envoy's codec reports as an
    /// empty last chunk after the data (see `FilteredBody::request`).
    pub fn new(body: &'a mut ProxyBody, split_end: bool) -> Self {
        Self {
            body,
            split_end,
            end_pending: false,
        }
    }

    /// The next frame; an error is the peer's body failing (a client reset, an upstream that
    /// went away).
    pub async fn read(&mut self) -> Result<PeerRead, BoxError> {
        if std::mem::take(&mut self.end_pending) {
            return Ok(PeerRead::Data {
                data: Vec::new(),
                end_of_stream: true,
            });
        }
        let read = match self.body.frame().await.transpose()? {
            None => PeerRead::Data {
                data: Vec::new(),
                end_of_stream: true,
            },
            Some(frame) => match frame.into_data() {
                Ok(data) => {
                    let at_end = self.body.is_end_stream();
                    self.end_pending = at_end && self.split_end;
                    PeerRead::Data {
                        data: Vec::from(data),
                        end_of_stream: at_end && !self.split_end,
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => PeerRead::Trailers(trailers),
                    // Frames are data or trailers; anything else carries nothing for filters.
                    Err(_) => PeerRead::Data {
                        data: Vec::new(),
                        end_of_stream: false,
                    },
                },
            },
        };
        Ok(read)
    }
}

impl FilterChain {
    pub(super) fn early_mut(&mut self, phase: Phase) -> &mut EarlyBody {
        match phase {
            Phase::Request => &mut self.early_request,
            Phase::Response => &mut self.early_response,
        }
    }

    /// Whether the client's whole request body was read (while a filter held the headers, or
    /// through the filters since).
    pub fn request_body_read(&self) -> bool {
        self.request_body_read || self.early_request.ended
    }

    pub fn mark_request_body_read(&mut self) {
        self.request_body_read = true;
    }

    /// The body read ahead in a phase, for the `FilteredBody` that carries the rest.
    pub fn take_early(&mut self, response: bool) -> EarlyBody {
        let phase = if response {
            Phase::Response
        } else {
            Phase::Request
        };
        std::mem::take(self.early_mut(phase))
    }

    /// Keeps what one read brought; a data chunk starts at the phase's first filter.
    pub(super) fn keep_read(&mut self, phase: Phase, read: PeerRead, first: usize) {
        match read {
            PeerRead::Data {
                data,
                end_of_stream,
            } => {
                if phase == Phase::Request {
                    let received = &self.info.request_body_bytes;
                    received.set(received.get().saturating_add(data.len() as u64));
                }
                let early = self.early_mut(phase);
                early.ended = end_of_stream;
                early.chunks.push_back(EarlyChunk {
                    data,
                    end_of_stream,
                    next: Some(first),
                });
            }
            PeerRead::Trailers(trailers) => {
                let early = self.early_mut(phase);
                early.ended = true;
                early.trailers = Some(trailers);
            }
        }
    }

    /// Passes the chunks read ahead on until they reach filter `paused`, which holds the
    /// headers. True when `paused` let one through: its headers go on, and so does that chunk.
    pub(super) fn feed_early(&mut self, phase: Phase, paused: usize) -> Result<bool, Interruption> {
        let mut kept = VecDeque::new();
        let mut released = false;
        while let Some(chunk) = self.early_mut(phase).chunks.pop_front() {
            let Some(from) = chunk.next.filter(|_| !released) else {
                // Past `paused` already, or waiting behind a chunk that just got through.
                kept.push_back(chunk);
                continue;
            };
            if !reaches(phase, from, paused) {
                kept.push_back(chunk);
                continue;
            }
            match self.body_span(phase, chunk.data, chunk.end_of_stream, from, paused) {
                BodyStep::Forward(data) => {
                    // A filter that holds the headers for its own callout (an authorizer) has
                    // not decided yet: its body callback letting a chunk through must not send
                    // the request on before the answer. The chunk waits after it.
                    released = !self.awaits_call(paused);
                    kept.push_back(EarlyChunk {
                        data,
                        end_of_stream: chunk.end_of_stream,
                        next: after(phase, paused),
                    });
                }
                // A filter up to `paused` keeps the bytes; they come back with its next call.
                BodyStep::Held { .. } => {}
                BodyStep::Interrupted(interruption) => return Err(interruption),
            }
        }
        self.early_mut(phase).chunks = kept;
        Ok(released)
    }

    /// Whether filter `index` made a call for this stream that is not answered yet.
    fn awaits_call(&self, index: usize) -> bool {
        let filter = &self.filters[index];
        let context = filter.context;
        filter
            .slot
            .with_vm(filter.generation, |vm| Ok(vm.awaits_call(context)))
            .unwrap_or(false)
    }

    /// After filter `paused` resumed its headers itself (`proxy_continue_stream`): the body it
    /// held goes on with them, to the filters after it.
    pub(super) fn release_early_hold(&mut self, phase: Phase, paused: usize) {
        let filter = &mut self.filters[paused];
        let held = match phase {
            Phase::Request => filter.request_buffer.take(),
            Phase::Response => filter.response_buffer.take(),
        };
        let Some(data) = held else { return };
        let early = self.early_mut(phase);
        let end_of_stream = early.ended && early.chunks.is_empty() && early.trailers.is_none();
        early.chunks.push_front(EarlyChunk {
            data,
            end_of_stream,
            next: after(phase, paused),
        });
    }
}

/// Whether a chunk that goes to filter `from` next reaches `paused` (in the phase's order).
fn reaches(phase: Phase, from: usize, paused: usize) -> bool {
    match phase {
        Phase::Request => from <= paused,
        Phase::Response => from >= paused,
    }
}

/// The filter after `index` in the phase's order, if any (the caller bounds the request side).
fn after(phase: Phase, index: usize) -> Option<usize> {
    match phase {
        Phase::Request => Some(index + 1),
        Phase::Response => index.checked_sub(1),
    }
}
