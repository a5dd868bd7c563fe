//! Bodies through the filter chain. A chunk passes each filter's body callback in turn; a
//! filter that pauses holds what it got and sees the cumulative body next time (Envoy's
//! StopIterationAndBuffer). At the end of the stream a held body waits for the filter to
//! resume it. The response body also ends the chain's contexts when it is done.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chain::{BodyStep, EarlyBody, FilterChain, Interruption};
use super::convert::{header_pairs, pairs_header_map};
use crate::http::{BoxError, ProxyBody};

/// Resolves when a paused filter pokes its stream (resume, local reply or close).
type ResumeWait = Pin<Box<dyn Future<Output = ()>>>;

pub struct FilteredBody {
    inner: ProxyBody,
    chain: Rc<RefCell<FilterChain>>,
    response: bool,
    /// Response bodies pass filters `..=upto` in reverse.
    upto: usize,
    ready: VecDeque<Frame<Bytes>>,
    /// A filter holds the body at its end and we wait for it to resume.
    waiting: Option<(usize, ResumeWait)>,
    /// The peer speaks HTTP/1: its last data frame is not marked as the end (see `request`).
    split_end: bool,
    /// Body read while a filter held the headers, passed on before anything else.
    early: Option<EarlyBody>,
    inner_done: bool,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("a filter stopped the stream: {0:?}")]
pub struct StreamStopped(pub String);

impl FilteredBody {
    /// The request body. `split_end` when the client speaks HTTP/1: Envoy's HTTP/1 codec
    /// hands filters every data chunk as not the last and then an empty chunk that ends the
    /// stream, even when a Content-Length body came in one read; over HTTP/2 a DATA frame
    /// with END_STREAM is one callback marked as the end. Filters that check or sign the
    /// body depend on that sequence.
    pub fn request(inner: ProxyBody, chain: Rc<RefCell<FilterChain>>, split_end: bool) -> Self {
        Self::new(inner, chain, false, 0, split_end)
    }

    /// The response body, through filters `..=upto`; `split_end` for an HTTP/1 upstream's body
    /// (as for `request`).
    pub fn response(
        inner: ProxyBody,
        chain: Rc<RefCell<FilterChain>>,
        upto: usize,
        split_end: bool,
    ) -> Self {
        Self::new(inner, chain, true, upto, split_end)
    }

    fn new(
        inner: ProxyBody,
        chain: Rc<RefCell<FilterChain>>,
        response: bool,
        upto: usize,
        split_end: bool,
    ) -> Self {
        let early = chain.borrow_mut().take_early(response);
        Self {
            inner,
            chain,
            response,
            upto,
            ready: VecDeque::new(),
            waiting: None,
            split_end,
            early: Some(early),
            inner_done: false,
            done: false,
        }
    }

    /// Passes on the body read while a filter held the headers, each chunk from the filter it
    /// had not reached yet.
    fn pass_early(&mut self, early: EarlyBody) -> Result<(), BoxError> {
        self.inner_done = early.ended;
        for chunk in early.chunks {
            let step = match chunk.next {
                None => BodyStep::Forward(chunk.data),
                Some(from) => {
                    let mut chain = self.chain.borrow_mut();
                    if self.response {
                        chain.response_body(chunk.data, chunk.end_of_stream, from)
                    } else {
                        chain.request_body_from(chunk.data, chunk.end_of_stream, from)
                    }
                }
            };
            self.take_step(step, chunk.end_of_stream)?;
        }
        if let Some(trailers) = early.trailers {
            self.pass_trailers(&trailers)?;
        }
        // A filter that kept the whole body while the headers waited holds it until it resumes.
        if self.inner_done && self.waiting.is_none() {
            let holder = self.chain.borrow().first_holder(self.response);
            if let Some(holder) = holder {
                self.waiting = Some((holder, self.resume_wait(holder)));
            }
        }
        Ok(())
    }

    /// `request.size` without a content-length counts what the client sent.
    fn count_request_bytes(&self, len: usize) {
        let chain = self.chain.borrow();
        let received = &chain.info().request_body_bytes;
        received.set(received.get().saturating_add(len as u64));
    }

    /// Trailers through the filters, after the bytes they held (as Envoy flushes them).
    fn pass_trailers(&mut self, trailers: &http::HeaderMap) -> Result<(), BoxError> {
        self.flush_held()?;
        let filtered = self
            .chain
            .borrow_mut()
            .trailers(self.response, header_pairs(trailers));
        match filtered {
            Ok(pairs) => {
                self.ready
                    .push_back(Frame::trailers(pairs_header_map(pairs)));
                self.inner_done = true;
                Ok(())
            }
            Err(interruption) => Err(self.stopped(interruption)),
        }
    }

    fn run(&mut self, data: Vec<u8>, end_of_stream: bool) -> Result<(), BoxError> {
        let step = {
            let mut chain = self.chain.borrow_mut();
            if self.response {
                chain.response_body(data, end_of_stream, self.upto)
            } else {
                if end_of_stream {
                    chain.mark_request_body_read();
                }
                chain.request_body(data, end_of_stream)
            }
        };
        self.take_step(step, end_of_stream)
    }

    fn take_step(&mut self, step: BodyStep, end_of_stream: bool) -> Result<(), BoxError> {
        match step {
            BodyStep::Forward(data) => {
                if !data.is_empty() {
                    self.ready.push_back(Frame::data(Bytes::from(data)));
                }
                Ok(())
            }
            BodyStep::Held { filter } if end_of_stream => {
                self.waiting = Some((filter, self.resume_wait(filter)));
                Ok(())
            }
            BodyStep::Held { .. } => Ok(()),
            BodyStep::Interrupted(interruption) => Err(self.stopped(interruption)),
        }
    }

    fn stopped(&mut self, interruption: Interruption) -> BoxError {
        let text = format!("{interruption:?}");
        // The request side cannot answer from here; the pipeline picks the reply up when the
        // upstream exchange fails because this body stopped.
        if !self.response {
            self.chain.borrow_mut().set_interruption(interruption);
        }
        Box::new(StreamStopped(text))
    }

    /// Sends on whatever filters still hold (no end of stream: trailers follow).
    fn flush_held(&mut self) -> Result<(), BoxError> {
        loop {
            let holder = self.chain.borrow().first_holder(self.response);
            let Some(holder) = holder else { return Ok(()) };
            let step = self
                .chain
                .borrow_mut()
                .release_held(holder, self.response, false);
            match step {
                BodyStep::Forward(data) => {
                    if !data.is_empty() {
                        self.ready.push_back(Frame::data(Bytes::from(data)));
                    }
                }
                BodyStep::Held { .. } => {}
                BodyStep::Interrupted(interruption) => return Err(self.stopped(interruption)),
            }
        }
    }

    /// Resolves when filter `filter` pokes this body's phase.
    fn resume_wait(&self, filter: usize) -> ResumeWait {
        let signals = self.chain.borrow().resume_signals(filter);
        let response = self.response;
        Box::pin(async move {
            if response {
                signals.response.notified().await;
            } else {
                signals.request.notified().await;
            }
        })
    }

    fn end(&mut self) {
        self.done = true;
        if self.response {
            self.chain.borrow_mut().finish();
        }
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(early) = this.early.take()
            && let Err(error) = this.pass_early(early)
        {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some((filter, wait)) = &mut this.waiting {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let filter = *filter;
                let resumed = this
                    .chain
                    .borrow_mut()
                    .poll_body_resume(filter, this.response);
                match resumed {
                    None => {
                        this.waiting = Some((filter, this.resume_wait(filter)));
                    }
                    Some(Err(interruption)) => {
                        this.waiting = None;
                        return Poll::Ready(Some(Err(this.stopped(interruption))));
                    }
                    Some(Ok(())) => {
                        this.waiting = None;
                        let step =
                            this.chain
                                .borrow_mut()
                                .release_held(filter, this.response, true);
                        if let Err(error) = this.take_step(step, true) {
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                }
                continue;
            }
            if this.inner_done {
                this.end();
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.inner_done = true;
                    // The last data frame did not know it was last: tell the filters now.
                    if let Err(error) = this.run(Vec::new(), true) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if !this.response {
                            this.count_request_bytes(data.len());
                        }
                        let at_end = this.inner.is_end_stream();
                        this.inner_done = at_end;
                        if let Err(error) = this.run(data.to_vec(), at_end && !this.split_end) {
                            return Poll::Ready(Some(Err(error)));
                        }
                        // The empty end at once: a peer that knows the length (hyper's client)
                        // may never ask for the body's end.
                        if at_end
                            && this.split_end
                            && let Err(error) = this.run(Vec::new(), true)
                        {
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        if let Err(error) = this.pass_trailers(&trailers) {
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length; only "at least nothing" is certain.
        SizeHint::default()
    }
}

impl Drop for FilteredBody {
    fn drop(&mut self) {
        if self.response && !self.done {
            self.chain.borrow_mut().finish();
        }
    }
}
