//! The pipeline's half of request replay (see `wasm/replay.rs` for the host extension): a
//! request body that keeps what it sends and can be resumed by the next attempt, and the
//! request head kept to send it again.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ProxyBody};
use crate::wasm::StreamInfo;

/// A request body on its way upstream, kept (up to the replay cap) in the stream's replay
/// state as it goes. Every attempt gets one: a replay first sends what earlier attempts
/// read, then goes on with the rest of the downstream body where they left it. So a request
/// whose first attempt never read its body (a connect failure) or read only part of it can
/// still be sent again whole.
pub struct ReplayableBody {
    /// Bytes read by earlier attempts, sent first.
    kept: Option<Bytes>,
    rest: Rc<RestOfBody>,
    attempt: u32,
}

/// The part of the downstream body no attempt has read yet, shared by the attempts.
pub struct RestOfBody {
    body: RefCell<ProxyBody>,
    info: Rc<StreamInfo>,
    /// Only the newest attempt may read on: an earlier one may still sit in a connection
    /// task after its response was dropped.
    current: Cell<u32>,
}

/// An earlier attempt's request body, read after a replay took over.
#[derive(Debug, thiserror::Error)]
#[error("the request body was handed to a newer attempt")]
struct Superseded;

// === impl ReplayableBody ===

impl ReplayableBody {
    /// The first attempt's body, and what later attempts continue from.
    pub fn first(body: ProxyBody, info: Rc<StreamInfo>) -> (Self, Rc<RestOfBody>) {
        let rest = Rc::new(RestOfBody {
            body: RefCell::new(body),
            info,
            current: Cell::new(0),
        });
        let first = Self {
            kept: None,
            rest: Rc::clone(&rest),
            attempt: 0,
        };
        (first, rest)
    }

    /// The body of the next attempt, after [`RestOfBody::supersede`]: `kept` (what earlier
    /// attempts read), then the rest.
    pub fn again(rest: &Rc<RestOfBody>, kept: Bytes) -> Self {
        Self {
            kept: Some(kept).filter(|bytes| !bytes.is_empty()),
            rest: Rc::clone(rest),
            attempt: rest.current.get(),
        }
    }
}

// === impl RestOfBody ===

impl RestOfBody {
    /// Takes the body from the attempts so far, at once: an earlier attempt still sitting in
    /// a connection task reads no more of it, so what was kept stays whole while the next
    /// attempt waits out its delay.
    pub fn supersede(&self) {
        self.current.set(self.current.get() + 1);
    }
}

impl Body for ReplayableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.attempt != this.rest.current.get() {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(kept) = this.kept.take() {
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        let mut body = this.rest.body.borrow_mut();
        let polled = Pin::new(&mut *body).poll_frame(cx);
        let mut replay = this.rest.info.replay.borrow_mut();
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => replay.record_chunk(data),
                None => replay.lose("request trailers are not replayed"),
            },
            Poll::Ready(None) => *body = ProxyBody::Empty,
            Poll::Ready(Some(Err(_))) => replay.lose("the request body broke off"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kept.is_none() && self.rest.body.borrow().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let kept = self.kept.as_ref().map_or(0, |kept| kept.len() as u64);
        let rest = self.rest.body.borrow().size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + kept);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}
