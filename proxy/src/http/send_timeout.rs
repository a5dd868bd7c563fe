//! A client that stops reading is cut off. A response blocked behind a client that accepts no
//! bytes keeps its downstream socket, its upstream request and the buffered bytes between them
//! for as long as the client likes: the upstream is not silent, so no idle timeout fires, and
//! the response body is not polled, so no deadline on it does either. This wraps the client's
//! connection: a write that stays blocked for `send_timeout` fails the connection, hyper drops
//! its streams, and the upstream requests behind them go with them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct SendTimeout<S> {
    inner: S,
    /// None: never cut off.
    timeout: Option<Duration>,
    /// Armed while a write is blocked; disarmed by any progress.
    blocked: Option<Pin<Box<Sleep>>>,
    cutoffs: IntCounter,
}

impl<S> SendTimeout<S> {
    /// `cutoffs` counts the connections this cuts off (`reason="send_timeout"`).
    pub fn new(inner: S, timeout: Option<Duration>, cutoffs: IntCounter) -> Self {
        Self {
            inner,
            timeout,
            blocked: None,
            cutoffs,
        }
    }

    /// After the inner stream answered a write with `Pending`: fails once it has been blocked
    /// for the timeout, else keeps the timer armed (and registered with the waker).
    fn check_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.cutoffs.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client accepted no response bytes for {timeout:?} (send_timeout)"),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.check_blocked(cx),
            ready => {
                this.blocked = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.check_blocked(cx),
            ready => {
                this.blocked = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check_blocked(cx).map_ok(|_| ()),
            ready => {
                this.blocked = None;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_timeout_fails_and_progress_resets_the_clock() {
        // A 64-byte pipe whose reader reads nothing: the writer blocks once it is full.
        let (client, mut server) = tokio::io::duplex(64);
        let cutoffs = IntCounter::new("cutoffs", "test").unwrap();
        let mut writer = SendTimeout::new(client, Some(Duration::from_secs(30)), cutoffs.clone());
        writer.write_all(&[0; 64]).await.unwrap();
        // Progress within the timeout keeps the connection.
        let reading = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let mut buf = [0; 64];
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
                .await
                .unwrap();
            server
        });
        writer.write_all(&[1; 64]).await.unwrap();
        let _server = reading.await.unwrap();
        assert_eq!(cutoffs.get(), 0);
        // Now nobody reads: the next write fails after 30s, not before.
        let started = Instant::now();
        let error = writer.write_all(&[2; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(cutoffs.get(), 1);
    }
}
