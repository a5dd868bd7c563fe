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

use super::chain::{BodyStep, FilterChain, Interruption};
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
    inner_done: bool,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("a filter stopped the stream: {0:?}")]
pub struct StreamStopped(pub String);

impl FilteredBody {
    pub fn request(inner: ProxyBody, chain: Rc<RefCell<FilterChain>>) -> Self {
        Self::new(inner, chain, false, 0)
    }

    pub fn response(inner: ProxyBody, chain: Rc<RefCell<FilterChain>>, upto: usize) -> Self {
        Self::new(inner, chain, true, upto)
    }

    fn new(inner: ProxyBody, chain: Rc<RefCell<FilterChain>>, response: bool, upto: usize) -> Self {
        Self {
            inner,
            chain,
            response,
            upto,
            ready: VecDeque::new(),
            waiting: None,
            inner_done: false,
            done: false,
        }
    }

    fn run(&mut self, data: Vec<u8>, end_of_stream: bool) -> Result<(), BoxError> {
        let step = {
            let mut chain = self.chain.borrow_mut();
            if self.response {
                chain.response_body(data, end_of_stream, self.upto)
            } else {
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
                        let end_of_stream = this.inner.is_end_stream();
                        this.inner_done = end_of_stream;
                        if let Err(error) = this.run(data.to_vec(), end_of_stream) {
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        // Bytes a filter held go on before the trailers, as Envoy flushes them.
                        if let Err(error) = this.flush_held() {
                            return Poll::Ready(Some(Err(error)));
                        }
                        let filtered = this
                            .chain
                            .borrow_mut()
                            .trailers(this.response, header_pairs(&trailers));
                        match filtered {
                            Ok(pairs) => this
                                .ready
                                .push_back(Frame::trailers(pairs_header_map(pairs))),
                            Err(interruption) => {
                                return Poll::Ready(Some(Err(this.stopped(interruption))));
                            }
                        }
                        this.inner_done = true;
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
