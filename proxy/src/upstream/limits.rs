//! A cluster's circuit-breaker thresholds, Envoy's: at most `max_requests` requests in flight
//! and `max_connections` HTTP/1.1 connections open across all workers, and at most
//! `max_pending_requests` requests waiting for a connection when the connections are all
//! busy. Past a limit a request gets 503 `upstream_overflow` naming it, so an overload that
//! reaches the proxy is not passed on to the upstream whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// The thresholds, from the cluster's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

/// Envoy's default for each threshold.
pub const DEFAULT_LIMIT: u32 = 1024;

/// How long a waiting request sleeps at most before it looks for a connection again.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// What a cluster carries now, shared by every worker.
#[derive(Debug, Default)]
pub struct Load {
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
    /// Woken when a connection closes or goes back to a pool: waiting requests look again.
    freed: Notify,
}

/// Which limit a request ran into, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("max_requests ({0}) requests are in flight")]
    Requests(u32),
    #[error(
        "max_pending_requests ({pending}) requests already wait for one of its max_connections ({connections}) connections"
    )]
    Pending { pending: u32, connections: u32 },
}

/// One request in flight, until dropped.
#[derive(Debug)]
pub struct RequestSlot(Arc<Load>);

/// One open HTTP/1.1 connection, until dropped (its connection task holds it).
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Load>);

/// A request waiting for a connection, until dropped.
struct PendingSlot<'a>(&'a Load);

impl Load {
    /// Admits one more request, unless `limit` are in flight.
    pub fn admit_request(self: &Arc<Self>, limit: u32) -> Result<RequestSlot, Overflow> {
        admit(&self.requests, limit).map_err(|()| Overflow::Requests(limit))?;
        Ok(RequestSlot(Arc::clone(self)))
    }

    /// A slot for a new connection: at once while fewer than the limit are open (or when
    /// `must_connect`: a worker with no connection of its own to the endpoint always gets
    /// one, as Envoy's per-worker pools do, so no worker starves behind another's idle
    /// connections). Otherwise `None` after a connection was freed, for the caller to look
    /// for an idle one again; or an overflow when too many requests wait already.
    pub async fn connection_slot(
        self: &Arc<Self>,
        limits: &Limits,
        must_connect: bool,
    ) -> Result<Option<ConnectionSlot>, Overflow> {
        let freed = self.freed.notified();
        tokio::pin!(freed);
        // Registered before the check, so a connection freed in between is not missed.
        freed.as_mut().enable();
        if must_connect {
            self.connections.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(ConnectionSlot(Arc::clone(self))));
        }
        if admit(&self.connections, limits.max_connections).is_ok() {
            return Ok(Some(ConnectionSlot(Arc::clone(self))));
        }
        admit(&self.pending, limits.max_pending_requests).map_err(|()| Overflow::Pending {
            pending: limits.max_pending_requests,
            connections: limits.max_connections,
        })?;
        let _waiting = PendingSlot(self);
        // A connection returned to a pool wakes waiters only when some are counted (see
        // `connection_returned`); one returned just before this request was counted is found
        // at the next look, at most `RECHECK` later.
        let _ = tokio::time::timeout(RECHECK, freed).await;
        Ok(None)
    }

    /// A pooled connection is free for another request. Every response's end comes here, so
    /// waking nobody must cost nothing: the waiters' list has a lock all workers share.
    pub fn connection_returned(&self) {
        if self.pending.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        )
    }
}

/// Adds one to `count` unless it is at `limit`.
fn admit(count: &AtomicU32, limit: u32) -> Result<(), ()> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .map(|_| ())
        .map_err(|_| ())
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: 2,
    };

    #[test]
    fn requests_past_the_limit_overflow_until_one_ends() {
        let load = Arc::new(Load::default());
        let first = load.admit_request(2).unwrap();
        let _second = load.admit_request(2).unwrap();
        assert_eq!(load.admit_request(2).unwrap_err(), Overflow::Requests(2));
        drop(first);
        assert!(load.admit_request(2).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_freed_connection_and_one_more_overflows() {
        let load = Arc::new(Load::default());
        let open = load.connection_slot(&LIMITS, false).await.unwrap().unwrap();
        let waiter = {
            let load = Arc::clone(&load);
            tokio::spawn(async move { load.connection_slot(&LIMITS, false).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(load.counts(), (0, 1, 1));
        assert_eq!(
            load.connection_slot(&LIMITS, false).await.unwrap_err(),
            Overflow::Pending {
                pending: 1,
                connections: 1
            }
        );
        // A worker without a connection of its own gets one anyway.
        let own = load.connection_slot(&LIMITS, true).await.unwrap().unwrap();
        drop(own);
        drop(open);
        // Woken to look again; nothing is pending any more.
        assert!(waiter.await.unwrap().unwrap().is_none());
        assert_eq!(load.counts(), (0, 0, 0));
    }
}
