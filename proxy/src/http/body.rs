//! Body types of the proxy. Bodies stream frame by frame; nothing here buffers.
//!
//! [`UpstreamBody`] is an upstream response on its way downstream. It carries what must happen
//! when the response ends: the pooled connection goes back, the request's metrics are
//! recorded, the in-flight counts drop; and it enforces the route's deadline and idle timeout
//! while the body streams.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::admin::RouteStats;
use crate::upstream::{ActiveRequest, ConnReturn, RequestSlot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much of an abandoned response is read to keep its connection, and for how long.
const ABANDONED_BODY_DRAIN: usize = 64 * 1024;
const ABANDONED_BODY_WAIT: Duration = Duration::from_secs(1);

/// Every body the proxy sends, upstream or downstream.
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A downstream request body streamed to the upstream as it arrives.
    Downstream(DownstreamBody),
    Upstream(Box<UpstreamBody>),
    /// A body passing through Wasm filters.
    Filtered(Box<crate::wasm::FilteredBody>),
    /// A request body also kept for replay.
    Replayable(Box<super::replay::ReplayableBody>),
    /// A body the proxy sends piece by piece as it is handed the pieces (a filter's gRPC
    /// stream); it ends when the sender is dropped.
    Sent(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

/// What to record once a request is finished, whichever way it finishes.
pub struct Completion {
    /// Cleared for an attempt whose response was dropped for a replay: it is not the answer.
    record: bool,
    stats: RouteStats,
    status: http::StatusCode,
    started: Instant,
    _guards: Vec<Box<dyn std::any::Any>>,
}

pub struct UpstreamBody {
    inner: Incoming,
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    conn_return: Option<ConnReturn>,
    completion: Option<Completion>,
    _active: Option<ActiveRequest>,
    /// The request's place under the cluster's `max_requests`, until the response ends.
    _slot: RequestSlot,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("the route's timeout expired while the response was streaming")]
    Deadline,
    #[error("no response bytes for {0:?} (the route's idle timeout)")]
    Idle(Duration),
}

/// The client's request body failed: the client's fault, not the upstream's, whatever the
/// upstream exchange it broke reports (hyper's client reports it as the connection closing).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client's request body is malformed: {0}")]
    Malformed(String),
    #[error("the client went away before its request body ended: {0}")]
    Disconnected(String),
    #[error("the client sent no request body bytes for {0:?} (request_body_timeout)")]
    Stalled(Duration),
}

impl ClientBodyError {
    /// Invalid framing (a bad chunk size, a broken HTTP/2 DATA frame) is malformed; anything
    /// else (an early end of file, a reset, a cancelled stream) is the client leaving.
    fn classify(error: &hyper::Error) -> Self {
        let malformed = io_kinds(error).any(|kind| {
            matches!(
                kind,
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        }) || error.is_parse();
        if malformed {
            Self::Malformed(error.to_string())
        } else {
            Self::Disconnected(error.to_string())
        }
    }
}

/// The kinds of the I/O errors in `error`'s chain of causes.
fn io_kinds<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = std::io::ErrorKind> + 'a {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind))
}

/// Where a client's request body reports how it failed, for the exchange to blame the client.
pub trait ClientBodyWatch {
    fn body_failed(&self, failure: ClientBodyError);
    /// Whether the upstream's response has started: from then on a quiet client is a
    /// streaming one (gRPC, a watch), not a slow POST, and `request_body_timeout` is over.
    fn response_started(&self) -> bool;
}

/// A client's request body, which reports how it failed, and fails when the client sends
/// nothing for the listener's `request_body_timeout` while it is read before the response
/// starts (a slow POST holds an upstream request open; a body the upstream does not read yet
/// is not the client's delay, and a stream whose response flows may be quiet).
pub struct DownstreamBody {
    incoming: Incoming,
    watch: Rc<dyn ClientBodyWatch>,
    stall_limit: Option<Duration>,
    /// Armed while a read waits on the client; disarmed by any frame.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl DownstreamBody {
    pub fn new(
        incoming: Incoming,
        watch: Rc<dyn ClientBodyWatch>,
        stall_limit: Option<Duration>,
    ) -> Self {
        Self {
            incoming,
            watch,
            stall_limit,
            stalled: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let failure = match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Pending => match self.stall_limit {
                Some(_) if self.watch.response_started() => {
                    self.stalled = None;
                    return Poll::Pending;
                }
                Some(limit) => {
                    let timer = self
                        .stalled
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    ClientBodyError::Stalled(limit)
                }
                None => return Poll::Pending,
            },
            Poll::Ready(Some(Err(error))) => ClientBodyError::classify(&error),
            ready => {
                self.stalled = None;
                return ready.map_err(Into::into);
            }
        };
        self.watch.body_failed(failure.clone());
        Poll::Ready(Some(Err(Box::new(failure))))
    }
}

// === impl ProxyBody ===

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::Full(Some(data.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(data) => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            Self::Downstream(downstream) => downstream.poll_frame(cx),
            Self::Upstream(upstream) => Pin::new(upstream.as_mut()).poll_frame(cx),
            Self::Filtered(filtered) => Pin::new(filtered.as_mut()).poll_frame(cx),
            Self::Replayable(replayable) => Pin::new(replayable.as_mut()).poll_frame(cx),
            Self::Sent(pieces) => pieces
                .poll_recv(cx)
                .map(|piece| piece.map(|p| Ok(Frame::data(p)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(data) => data.as_ref().is_none_or(Bytes::is_empty),
            Self::Downstream(downstream) => downstream.incoming.is_end_stream(),
            Self::Upstream(upstream) => upstream.inner.is_end_stream(),
            Self::Filtered(filtered) => filtered.is_end_stream(),
            Self::Replayable(replayable) => replayable.is_end_stream(),
            Self::Sent(pieces) => pieces.is_closed() && pieces.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Downstream(downstream) => downstream.incoming.size_hint(),
            Self::Upstream(upstream) => upstream.inner.size_hint(),
            Self::Filtered(filtered) => filtered.size_hint(),
            Self::Replayable(replayable) => replayable.size_hint(),
            Self::Sent(_) => SizeHint::default(),
        }
    }
}

// === impl Completion ===

impl Completion {
    pub fn new(stats: RouteStats, status: http::StatusCode, started: Instant) -> Self {
        Self {
            record: true,
            stats,
            status,
            started,
            _guards: Vec::new(),
        }
    }

    /// Keeps `guard` alive until the request is finished (in-flight gauges, stream counts).
    pub fn hold(mut self, guard: impl std::any::Any) -> Self {
        self._guards.push(Box::new(guard));
        self
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.record {
            self.stats.record(self.status, self.started.elapsed());
        }
    }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        deadline: Option<Instant>,
        idle_timeout: Option<Duration>,
        conn_return: Option<ConnReturn>,
        completion: Completion,
        active: Option<ActiveRequest>,
        slot: RequestSlot,
    ) -> Self {
        Self {
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            idle: idle_timeout.map(|period| (period, Box::pin(tokio::time::sleep(period)))),
            conn_return,
            completion: Some(completion),
            _active: active,
            _slot: slot,
        }
    }

    /// A response no client will see (a filter replays the request instead): it is not
    /// recorded, and a short rest of it is read in the background so its pooled connection
    /// can serve again instead of closing.
    pub fn abandon(mut self: Box<Self>) {
        if let Some(mut completion) = self.completion.take() {
            completion.record = false;
        }
        if self.conn_return.is_none() || self.inner.is_end_stream() {
            return;
        }
        tokio::task::spawn_local(async move {
            use http_body_util::BodyExt as _;
            let mut drained = 0;
            let draining = async {
                while let Some(Ok(frame)) = self.frame().await {
                    drained += frame.data_ref().map_or(0, Bytes::len);
                    if drained > ABANDONED_BODY_DRAIN {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(ABANDONED_BODY_WAIT, draining).await;
        });
    }

    /// The response ended: a complete read frees the connection for reuse.
    fn finish(&mut self, read_to_end: bool) {
        if let Some(conn) = self.conn_return.take()
            && read_to_end
        {
            conn.give_back();
        }
        self.completion.take();
    }

    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Option<StreamError> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Some(StreamError::Deadline);
        }
        if let Some((period, sleep)) = &mut self.idle
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Some(StreamError::Idle(*period));
        }
        None
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((period, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(Instant::now() + *period);
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "upstream response body failed");
                this.finish(false);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => {
                let Some(error) = this.poll_timers(cx) else {
                    return Poll::Pending;
                };
                tracing::debug!(%error, "resetting the response stream");
                this.finish(false);
                // Dropping the upstream body closes that connection; the error resets ours.
                Poll::Ready(Some(Err(Box::new(error) as BoxError)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304) is never polled: it ended all the same.
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}
