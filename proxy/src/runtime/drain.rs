//! Graceful drain: one signal from the control side; each worker stops accepting, lets its
//! connections finish in-flight requests, and waits for them within the drain timeout.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::{Notify, watch};

/// The control side's handle: fire once to drain every worker.
pub struct DrainTrigger(watch::Sender<bool>);

/// A worker's or connection's view of the drain signal.
#[derive(Clone)]
pub struct DrainWatch(watch::Receiver<bool>);

/// Counts a worker's open connections so the drain can wait for the last one.
#[derive(Clone, Default)]
pub struct ConnectionTracker {
    open: Rc<Cell<usize>>,
    closed: Rc<Notify>,
}

/// One open connection; dropping it tells the tracker.
pub struct TrackedConnection(ConnectionTracker);

pub fn drain_channel() -> (DrainTrigger, DrainWatch) {
    let (sender, receiver) = watch::channel(false);
    (DrainTrigger(sender), DrainWatch(receiver))
}

// === impl DrainTrigger ===

impl DrainTrigger {
    pub fn drain(&self) {
        self.0.send_replace(true);
    }
}

// === impl DrainWatch ===

impl DrainWatch {
    /// Resolves once draining has started (at once if it already has). If the trigger is gone
    /// without firing, the process is going away anyway: treat it as a drain.
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

// === impl ConnectionTracker ===

impl ConnectionTracker {
    pub fn track(&self) -> TrackedConnection {
        self.open.set(self.open.get() + 1);
        TrackedConnection(self.clone())
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Resolves when no tracked connection is left.
    pub async fn all_closed(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        let tracker = &self.0;
        tracker.open.set(tracker.open.get().saturating_sub(1));
        if tracker.open.get() == 0 {
            tracker.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waits_for_the_last_connection() {
        let tracker = ConnectionTracker::default();
        let first = tracker.track();
        let second = tracker.track();
        let waiting = tokio::task::LocalSet::new();
        waiting
            .run_until(async {
                let watcher = {
                    let tracker = tracker.clone();
                    tokio::task::spawn_local(async move { tracker.all_closed().await })
                };
                tokio::task::yield_now().await;
                drop(first);
                tokio::task::yield_now().await;
                assert!(!watcher.is_finished());
                drop(second);
                watcher.await.expect("watcher finishes");
            })
            .await;
        assert_eq!(tracker.open(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_signal_reaches_every_watcher() {
        let (trigger, watch) = drain_channel();
        let mut a = watch.clone();
        let mut b = watch;
        trigger.drain();
        a.signaled().await;
        b.signaled().await;
    }
}
