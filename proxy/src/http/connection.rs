//! Serving one downstream connection: HTTP/1.1 or HTTP/2 (prior knowledge) detected from the
//! first bytes, with graceful shutdown on drain and an idle timeout that only counts time
//! without any request in flight (as Envoy's connection `idle_timeout` does).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::frame_guard::FrameGuard;
use super::send_timeout::SendTimeout;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;

use super::service::handle;
use crate::runtime::{DrainWatch, LocalExec, WorkerContext};

/// The smallest buffer hyper accepts; `max_request_headers_size` can't go below it.
pub const MIN_HEADER_BUFFER: usize = 8 * 1024;

/// What a request needs to know about the connection it arrived on.
pub struct DownstreamConn {
    pub worker: Rc<WorkerContext>,
    /// The listener's name: each request finds its listener in the snapshot it pins.
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The peer's IP as `x-forwarded-for` carries it ([`super::headers::client_address`]).
    pub client_address: http::HeaderValue,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Process-wide connection number (`connection.id` for filters).
    pub id: u64,
    pub scheme: &'static str,
    pub activity: Rc<Activity>,
    /// What the TLS handshake established, on a TLS listener.
    pub tls: Option<Rc<crate::tls::TlsInfo>>,
}

/// Requests in flight on one connection, and since when it has had none; and how many of its
/// requests the client abandoned before they were answered.
pub struct Activity {
    streams: Cell<usize>,
    idle_since: Cell<Instant>,
    /// Requests started on this connection, and those the client reset before their answer.
    started: Cell<u64>,
    premature_resets: Cell<u64>,
    /// Why the connection must end early, once it must, and the serving loop to wake then.
    /// The loop polls this on every wake-up of the connection, so it is a cell and a waker
    /// kept once, not a `Notify` (whose waiter list takes a lock on every poll).
    end: Cell<Option<EarlyEnd>>,
    end_waker: RefCell<Option<Waker>>,
}

#[derive(Debug, Clone, Copy)]
enum EarlyEnd {
    /// It carried its last request (`max_requests_per_connection`): HTTP/2 says GOAWAY and
    /// finishes what is in flight.
    Retired,
    /// The client's resets passed the budget: cut off.
    Abusive,
}

/// Requests a client may abandon before they are answered, on one connection, before it is cut
/// off (when they are also at least half of its requests). Each abandoned request may already
/// have cost an upstream request: an HTTP/2 client that opens and resets streams as fast as it
/// can would otherwise turn one connection into thousands of upstream requests a second.
const PREMATURE_RESET_BUDGET: u64 = 100;

/// Watches one request: dropped before `answered`, its client reset it (HTTP/2) or left.
pub struct ResetWatch {
    activity: Rc<Activity>,
    answered: bool,
}

/// One request in flight on a connection.
pub struct StreamGuard(Rc<Activity>);

pub struct ConnectionSettings {
    pub idle_timeout: Option<Duration>,
    /// HTTP/1: how long a request head may take to arrive (hyper's header read timeout).
    pub request_header_timeout: Option<Duration>,
    /// How long the client may accept no response bytes (see `send_timeout`).
    pub send_timeout: Option<Duration>,
    pub max_request_headers_size: usize,
    /// Counters of the connections cut off: the two timeouts above, and reset floods.
    pub header_timeouts: prometheus::IntCounter,
    pub send_timeouts: prometheus::IntCounter,
    pub reset_floods: prometheus::IntCounter,
    /// HTTP/2 connections cut off for frame floods (see `frame_guard`).
    pub frame_floods: prometheus::IntCounter,
    /// HTTP/2: most streams a client may have open at once.
    pub max_concurrent_streams: u32,
}

// === impl Activity ===

impl Activity {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            streams: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            started: Cell::new(0),
            premature_resets: Cell::new(0),
            end: Cell::new(None),
            end_waker: RefCell::new(None),
        })
    }

    /// Requests started on this connection so far.
    pub fn requests_started(&self) -> u64 {
        self.started.get()
    }

    /// The connection takes no more requests; those in flight finish.
    pub fn retire(&self) {
        self.end_early(EarlyEnd::Retired);
    }

    fn end_early(&self, why: EarlyEnd) {
        // Being cut off outranks retiring.
        if !matches!(self.end.get(), Some(EarlyEnd::Abusive)) {
            self.end.set(Some(why));
        }
        if let Some(waker) = self.end_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves with the reason once the connection must end early.
    fn poll_end(&self, cx: &mut Context<'_>) -> Poll<EarlyEnd> {
        if let Some(end) = self.end.get() {
            return Poll::Ready(end);
        }
        let mut stored = self.end_waker.borrow_mut();
        if !stored.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *stored = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// A watch for a request that starts now.
    pub fn watch_reset(self: &Rc<Self>) -> ResetWatch {
        self.started.set(self.started.get() + 1);
        ResetWatch {
            activity: Rc::clone(self),
            answered: false,
        }
    }

    fn premature_reset(&self) {
        let resets = self.premature_resets.get() + 1;
        self.premature_resets.set(resets);
        if resets >= PREMATURE_RESET_BUDGET && resets * 2 >= self.started.get() {
            self.end_early(EarlyEnd::Abusive);
        }
    }

    pub fn stream(self: &Rc<Self>) -> StreamGuard {
        self.streams.set(self.streams.get() + 1);
        StreamGuard(Rc::clone(self))
    }

    /// Resolves once the connection has been without requests for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wake_at = self.idle_since.get() + timeout;
            if self.streams.get() == 0 && Instant::now() >= wake_at {
                return;
            }
            let next_check = if self.streams.get() == 0 {
                wake_at
            } else {
                Instant::now() + timeout
            };
            tokio::time::sleep_until(next_check).await;
        }
    }
}

impl ResetWatch {
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        if !self.answered {
            self.activity.premature_reset();
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let left = self.0.streams.get().saturating_sub(1);
        self.0.streams.set(left);
        if left == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// Serves HTTP on `stream` until the client closes, the idle timeout passes, the worker
/// drains or the listener is retired (removed, or moved to another address by a new config):
/// then in-flight requests finish and the connection closes gracefully.
pub async fn serve_http<S>(
    stream: S,
    conn: DownstreamConn,
    settings: ConnectionSettings,
    mut drain: DrainWatch,
    mut retired: DrainWatch,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let activity = Rc::clone(&conn.activity);
    let conn = Rc::new(conn);
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_header_timeout)
        .max_buf_size(settings.max_request_headers_size.max(MIN_HEADER_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_request_headers_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.max_concurrent_streams);
    let service = service_fn(move |request| handle(Rc::clone(&conn), request));
    let stream = FrameGuard::new(
        SendTimeout::new(
            stream,
            settings.send_timeout,
            settings.send_timeouts.clone(),
        ),
        settings.frame_floods.clone(),
    );
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let idle = async {
        match settings.idle_timeout {
            Some(timeout) => activity.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = retired.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = &mut idle => {
            tracing::debug!(%peer, "closing idle connection");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        end = std::future::poll_fn(|cx| activity.poll_end(cx)) => match end {
            EarlyEnd::Abusive => {
                // Dropping the connection closes it and cancels every upstream request it
                // started.
                settings.reset_floods.inc();
                tracing::info!(%peer, resets = activity.premature_resets.get(), "closing a connection whose client reset too many requests before their answer");
                return;
            }
            EarlyEnd::Retired => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        },
    };
    if let Err(error) = result {
        let header_timeout = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if header_timeout {
            settings.header_timeouts.inc();
        }
        tracing::debug!(%peer, %error, "downstream connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn idle_time_counts_only_without_requests() {
        let activity = Activity::new();
        let guard = activity.stream();
        let idle = activity.idle_for(Duration::from_secs(10));
        tokio::pin!(idle);
        // A request in flight for a minute keeps the connection open.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut idle)
                .await
                .is_err()
        );
        drop(guard);
        let released = Instant::now();
        idle.await;
        assert!(released.elapsed() >= Duration::from_secs(10));
    }
}
