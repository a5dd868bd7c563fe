//! The host side of request replay, Sluice's `sluice_prepare_replay` and `sluice_replay`
//! extensions: what the proxy keeps of one request so a filter can have it sent again, and
//! the filter's pending wish to do so. The HTTP pipeline (`http/service.rs`) does the
//! sending; when and how often to retry is the filter's policy.
//!
//! A replay is only possible while the response filters look at what an upstream attempt
//! gave (a response, or a failure such as `upstream_reset`), before anything of it went
//! downstream: so a client never sees two responses, and a filter's own local reply (a
//! circuit breaker failing fast) is never "retried" past the filter that made it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

/// Attempts one request may make in all, whatever the filters ask: a bound on the work one
/// client request can cause.
pub const MAX_ATTEMPTS: u32 = 16;
/// The default cap on the request body kept for replay.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// The largest cap a filter may ask for.
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// How a filter armed replay for its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The most request body bytes kept; a larger body makes the request not replayable.
    pub max_body: usize,
    /// How long each attempt may wait for response headers.
    pub per_try_timeout: Option<Duration>,
}

/// The replay state of one HTTP stream.
#[derive(Debug, Default)]
pub struct Replay {
    plan: Option<ReplayPlan>,
    body: BodyCopy,
    /// The request's deadline: the route timeout spans all attempts.
    deadline: Option<Instant>,
    /// Open while the response filters see an upstream attempt's answer.
    window: bool,
    requested: Option<Duration>,
    attempts: u32,
}

/// The request body as the upstream got it, kept while it fits.
#[derive(Debug, Default)]
struct BodyCopy {
    chunks: Vec<Bytes>,
    size: usize,
    /// Why this request cannot be sent again, once it cannot.
    lost: Option<&'static str>,
}

// === impl Replay ===

impl Replay {
    /// `sluice_prepare_replay`: keep what a replay needs. Only before the request is sent.
    pub fn arm(&mut self, plan: ReplayPlan) -> Result<(), &'static str> {
        if self.attempts > 0 {
            return Err("the request was sent already: prepare replay in the request phase");
        }
        self.plan = Some(plan);
        Ok(())
    }

    pub fn plan(&self) -> Option<ReplayPlan> {
        self.plan
    }

    /// The request cannot be replayed at all (an upgrade); a later `sluice_replay` says why.
    pub fn lose(&mut self, why: &'static str) {
        self.body.lost = Some(why);
        self.body.chunks.clear();
    }

    /// A chunk of request body on its way upstream.
    pub fn record_chunk(&mut self, chunk: &Bytes) {
        let Some(plan) = self.plan else { return };
        if self.body.lost.is_some() {
            return;
        }
        self.body.size += chunk.len();
        if self.body.size > plan.max_body {
            self.lose("the request body is larger than the replay buffer");
            return;
        }
        self.body.chunks.push(chunk.clone());
    }

    /// The body of the request to send again, in one piece.
    pub fn body(&self) -> Bytes {
        match self.body.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            chunks => {
                let mut joined = BytesMut::with_capacity(self.body.size);
                for chunk in chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }
    }

    /// An attempt is about to be sent.
    pub fn start_attempt(&mut self) {
        self.attempts += 1;
        self.requested = None;
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The request's deadline, which no replay may reach; set when the request is routed.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The response filters are about to see an upstream attempt's answer.
    pub fn open_window(&mut self) {
        self.window = true;
    }

    pub fn close_window(&mut self) {
        self.window = false;
    }

    /// `sluice_replay`: send the request again after `delay`, if it can be.
    pub fn request(&mut self, delay: Duration, now: Instant) -> Result<(), &'static str> {
        if !self.window {
            return Err("not in the response phase of an upstream attempt");
        }
        if self.plan.is_none() {
            return Err("replay was not prepared in the request phase (sluice_prepare_replay)");
        }
        // A body still arriving is fine: the next attempt sends what was read, then the rest.
        if let Some(why) = self.body.lost {
            return Err(why);
        }
        if self.attempts >= MAX_ATTEMPTS {
            return Err("the request made the most attempts the host allows (16)");
        }
        if self.deadline.is_some_and(|at| now + delay >= at) {
            return Err("the route timeout ends before the delay");
        }
        self.requested = Some(delay);
        Ok(())
    }

    pub fn is_requested(&self) -> bool {
        self.requested.is_some()
    }

    pub fn take_requested(&mut self) -> Option<Duration> {
        self.requested.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: ReplayPlan = ReplayPlan {
        max_body: 8,
        per_try_timeout: None,
    };

    fn armed_and_complete() -> Replay {
        let mut replay = Replay::default();
        replay.arm(PLAN).expect("armed");
        replay.record_chunk(&Bytes::from_static(b"abc"));
        replay.record_chunk(&Bytes::from_static(b"def"));
        replay.start_attempt();
        replay
    }

    #[test]
    fn a_kept_body_comes_back_whole() {
        let mut replay = armed_and_complete();
        replay.open_window();
        assert_eq!(replay.request(Duration::ZERO, Instant::now()), Ok(()));
        assert_eq!(replay.take_requested(), Some(Duration::ZERO));
        assert_eq!(replay.body(), Bytes::from_static(b"abcdef"));
    }

    #[test]
    fn replay_outside_the_response_window_is_refused() {
        let mut replay = armed_and_complete();
        let refused = replay.request(Duration::ZERO, Instant::now());
        assert_eq!(
            refused,
            Err("not in the response phase of an upstream attempt")
        );
        replay.open_window();
        replay.close_window();
        assert!(replay.request(Duration::ZERO, Instant::now()).is_err());
    }

    #[test]
    fn a_body_over_the_cap_is_not_replayable() {
        let mut replay = Replay::default();
        replay.arm(PLAN).expect("armed");
        replay.record_chunk(&Bytes::from_static(b"12345"));
        replay.record_chunk(&Bytes::from_static(b"6789"));
        replay.open_window();
        assert_eq!(
            replay.request(Duration::ZERO, Instant::now()),
            Err("the request body is larger than the replay buffer")
        );
    }

    #[test]
    fn an_unarmed_stream_is_not_replayable_and_an_unfinished_body_is() {
        let mut replay = Replay::default();
        replay.open_window();
        assert!(
            replay
                .request(Duration::ZERO, Instant::now())
                .is_err_and(|why| why.contains("not prepared"))
        );
        replay.arm(PLAN).expect("armed");
        replay.record_chunk(&Bytes::from_static(b"12"));
        assert_eq!(replay.request(Duration::ZERO, Instant::now()), Ok(()));
        assert_eq!(replay.body(), Bytes::from_static(b"12"));
    }

    #[test]
    fn arming_after_the_first_attempt_is_refused() {
        let mut replay = Replay::default();
        replay.start_attempt();
        assert!(replay.arm(PLAN).is_err());
    }

    #[test]
    fn the_deadline_and_the_attempt_limit_bound_replays() {
        let now = Instant::now();
        let mut replay = armed_and_complete();
        replay.set_deadline(Some(now + Duration::from_millis(100)));
        replay.open_window();
        assert_eq!(
            replay.request(Duration::from_millis(100), now),
            Err("the route timeout ends before the delay")
        );
        assert_eq!(replay.request(Duration::from_millis(10), now), Ok(()));
        for _ in 1..MAX_ATTEMPTS {
            replay.start_attempt();
        }
        assert!(
            replay
                .request(Duration::ZERO, now)
                .is_err_and(|why| why.contains("most attempts"))
        );
    }
}
