//! HTTP/2 frames that cost the proxy work and carry no request: a client can send millions a
//! second of PING, SETTINGS or PRIORITY frames, WINDOW_UPDATEs for data it was never sent, or
//! empty DATA frames, each one parsed and often answered. This watches the frames a client
//! sends (and the DATA frames it is sent) as they pass, and cuts the connection off when it
//! goes past a budget no well-behaved client comes near, as Envoy's flood limits do:
//!
//! - PING, SETTINGS and PRIORITY frames (acknowledgements too): a bucket of 1,000, refilled
//!   by 100 for each HEADERS frame the client sends (up to 10,000), by 1 for each DATA frame
//!   the proxy sends (gRPC clients ping as data arrives, to size their window), and by 10 a
//!   second (keepalive pings are far fewer);
//! - WINDOW_UPDATE: 1,000, plus 10 for each DATA frame the proxy sent the client and 2 for
//!   each HEADERS frame the client sent (some clients open each stream's window at once);
//! - DATA or CONTINUATION frames with no payload and no END_STREAM: 10 in a row, a run only
//!   a DATA frame with payload or a HEADERS frame ends.
//!
//! HTTP/1 connections are left alone after their first bytes.

mod parser;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use parser::{FrameHead, FrameParser};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

const CONTROL_BURST: f64 = 1000.0;
const CONTROL_PER_REQUEST: f64 = 100.0;
const CONTROL_PER_SECOND: f64 = 10.0;
const CONTROL_PER_DATA_SENT: f64 = 1.0;
/// Credit earned by requests and data stops here.
const CONTROL_CAP: f64 = 10_000.0;
const WINDOW_UPDATES_PER_REQUEST: u64 = 2;
const WINDOW_UPDATES_FREE: u64 = 1000;
const WINDOW_UPDATES_PER_DATA_SENT: u64 = 10;
const EMPTY_IN_A_ROW: u32 = 10;

/// Which budget a client went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Control,
    WindowUpdate,
    EmptyFrames,
}

impl Flood {
    fn describe(self) -> &'static str {
        match self {
            Self::Control => "PING, SETTINGS or PRIORITY frames far beyond its requests",
            Self::WindowUpdate => "WINDOW_UPDATE frames far beyond the data it was sent",
            Self::EmptyFrames => "a run of empty DATA or CONTINUATION frames",
        }
    }
}

/// What one connection may still send.
#[derive(Debug)]
struct Budget {
    control: f64,
    refilled_at: Option<Instant>,
    window_updates: u64,
    data_sent: u64,
    headers_received: u64,
    empty_in_a_row: u32,
}

impl Budget {
    fn new() -> Self {
        Self {
            control: CONTROL_BURST,
            refilled_at: None,
            window_updates: 0,
            data_sent: 0,
            headers_received: 0,
            empty_in_a_row: 0,
        }
    }

    /// A frame the client sent.
    fn received(&mut self, head: FrameHead) -> Result<(), Flood> {
        let empty = head.length == 0 && head.flags & END_STREAM == 0;
        match head.kind {
            DATA | CONTINUATION if empty => {
                self.empty_in_a_row += 1;
                if self.empty_in_a_row > EMPTY_IN_A_ROW {
                    return Err(Flood::EmptyFrames);
                }
            }
            DATA => self.empty_in_a_row = 0,
            HEADERS => {
                self.empty_in_a_row = 0;
                self.headers_received += 1;
                self.control = (self.control + CONTROL_PER_REQUEST).min(CONTROL_CAP);
            }
            PRIORITY | SETTINGS | PING => self.spend_control()?,
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let allowed = WINDOW_UPDATES_FREE
                    + self.data_sent * WINDOW_UPDATES_PER_DATA_SENT
                    + self.headers_received * WINDOW_UPDATES_PER_REQUEST;
                if self.window_updates > allowed {
                    return Err(Flood::WindowUpdate);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn spend_control(&mut self) -> Result<(), Flood> {
        let now = Instant::now();
        if let Some(then) = self.refilled_at {
            let earned = now.duration_since(then).as_secs_f64() * CONTROL_PER_SECOND;
            self.control = (self.control + earned).min(CONTROL_BURST.max(self.control));
        }
        self.refilled_at = Some(now);
        self.control -= 1.0;
        if self.control < 0.0 {
            return Err(Flood::Control);
        }
        Ok(())
    }

    /// A frame the proxy sent.
    fn sent(&mut self, head: FrameHead) {
        if head.kind == DATA {
            self.data_sent += 1;
            self.control = (self.control + CONTROL_PER_DATA_SENT).min(CONTROL_CAP);
        }
    }
}

/// The client's connection, watched frame by frame.
pub struct FrameGuard<S> {
    inner: S,
    from_client: FrameParser,
    to_client: FrameParser,
    budget: Budget,
    /// Set once the client went past a budget: every read fails from then on.
    flooded: Option<Flood>,
    cutoffs: IntCounter,
}

impl<S> FrameGuard<S> {
    /// `cutoffs` counts the connections this cuts off (`reason="frame_flood"`).
    pub fn new(inner: S, cutoffs: IntCounter) -> Self {
        Self {
            inner,
            from_client: FrameParser::client_side(),
            to_client: FrameParser::server_side(),
            budget: Budget::new(),
            flooded: None,
            cutoffs,
        }
    }

    fn flood_error(flood: Flood) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the client sent {}: cut off", flood.describe()),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(flood) = this.flooded {
            return Poll::Ready(Err(Self::flood_error(flood)));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.from_client.is_off() {
            return read;
        }
        let budget = &mut this.budget;
        let fresh = &buf.filled()[before..];
        if let Err(flood) = this.from_client.feed(fresh, |head| budget.received(head)) {
            this.flooded = Some(flood);
            this.cutoffs.inc();
            tracing::info!(
                reason = flood.describe(),
                "closing an HTTP/2 connection that flooded the proxy with frames"
            );
            return Poll::Ready(Err(Self::flood_error(flood)));
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(count)) = &written
            && this.from_client.is_http2()
        {
            let budget = &mut this.budget;
            let _ = this.to_client.feed::<()>(&buf[..*count], |head| {
                budget.sent(head);
                Ok(())
            });
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(count)) = &written
            && this.from_client.is_http2()
        {
            let (budget, parser) = (&mut this.budget, &mut this.to_client);
            let mut left = *count;
            for slice in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(slice.len());
                let _ = parser.feed::<()>(&slice[..take], |head| {
                    budget.sent(head);
                    Ok(())
                });
                left -= take;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn head(kind: u8, flags: u8, length: u32) -> FrameHead {
        FrameHead {
            length,
            kind,
            flags,
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_ping_flood_is_cut_off_but_keepalive_pings_and_requests_are_not() {
        let mut budget = Budget::new();
        // Keepalive: a ping every 10 seconds for a day, with no request at all.
        for _ in 0..8640 {
            budget.received(head(PING, 0, 8)).unwrap();
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // A gRPC client pinging as each message arrives, to size its window.
        let mut budget = Budget::new();
        for _ in 0..100_000 {
            budget.sent(head(DATA, 0, 100));
            budget.received(head(PING, 0, 8)).unwrap();
        }
        let mut budget = Budget::new();
        let sent = (0..100_000).find(|_| budget.received(head(PING, 0, 8)).is_err());
        assert_eq!(sent, Some(1000));
        // Each request earns a hundred more.
        let mut budget = Budget::new();
        for _ in 0..50 {
            budget.received(head(HEADERS, 4, 20)).unwrap();
        }
        for _ in 0..5000 {
            budget.received(head(SETTINGS, 0, 6)).unwrap();
        }
    }

    #[test]
    fn window_updates_follow_the_data_sent() {
        let mut budget = Budget::new();
        for _ in 0..1000 {
            budget.received(head(WINDOW_UPDATE, 0, 4)).unwrap();
        }
        assert_eq!(
            budget.received(head(WINDOW_UPDATE, 0, 4)),
            Err(Flood::WindowUpdate)
        );
        let mut budget = Budget::new();
        for _ in 0..10_000 {
            budget.sent(head(DATA, 0, 16384));
            budget.received(head(WINDOW_UPDATE, 0, 4)).unwrap();
            budget.received(head(WINDOW_UPDATE, 0, 4)).unwrap();
        }
    }

    #[test]
    fn a_run_of_empty_frames_is_cut_off_but_an_empty_end_of_stream_is_not() {
        let mut budget = Budget::new();
        for _ in 0..1000 {
            budget.received(head(DATA, END_STREAM, 0)).unwrap();
            budget.received(head(DATA, 0, 0)).unwrap();
            budget.received(head(DATA, 0, 10)).unwrap();
        }
        let mut budget = Budget::new();
        let sent = (0..100).find(|_| budget.received(head(DATA, 0, 0)).is_err());
        assert_eq!(sent, Some(10));
        // A PING between them does not end the run.
        let mut budget = Budget::new();
        let sent = (0..100).find(|_| {
            budget.received(head(PING, 1, 8)).unwrap();
            budget.received(head(DATA, 0, 0)).is_err()
        });
        assert_eq!(sent, Some(10));
    }
}
