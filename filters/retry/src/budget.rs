//! The retry budget: retries over a sliding window may not exceed `ratio` times the requests
//! in it plus `min_per_second` times its length. It is kept in shared data, so every worker
//! counts against one budget, and a retry counts from the moment it is decided, while it
//! still waits out its backoff: a storm of failures cannot queue up more retries than the
//! budget allows.
//!
//! Workers count requests locally and write them in batches (see `UnflushedRequests`), so a
//! worker's last few dozen requests may not be in the window yet: the budget errs strict.
//!
//! Stored as one bucket per second of the window, each `second, requests, retries` as
//! little-endian `u64`s: cheap to read and write on every request.

use crate::config::BudgetConfig;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

impl Window {
    pub fn decode(bytes: Option<&[u8]>, seconds: usize) -> Self {
        let mut buckets = vec![Bucket::default(); seconds];
        let words: Vec<u64> = bytes
            .unwrap_or_default()
            .chunks_exact(8)
            .filter_map(|word| Some(u64::from_le_bytes(word.try_into().ok()?)))
            .collect();
        for (slot, stored) in buckets.iter_mut().zip(words.chunks_exact(3)) {
            *slot = Bucket {
                second: stored[0],
                requests: stored[1],
                retries: stored[2],
            };
        }
        Self { buckets }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.buckets
            .iter()
            .flat_map(|b| [b.second, b.requests, b.retries])
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// The bucket of `second`, emptied first if it held an older second.
    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let count = self.buckets.len().max(1) as u64;
        if self.buckets.is_empty() {
            self.buckets.push(Bucket::default());
        }
        let bucket = &mut self.buckets[(second % count) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket
    }

    pub fn record_requests(&mut self, second: u64, count: u64) {
        if count > 0 {
            self.bucket(second).requests += count;
        }
    }

    /// Takes one retry from the budget if it has one left.
    pub fn try_retry(&mut self, config: &BudgetConfig, second: u64) -> bool {
        let span = self.buckets.len() as u64;
        let live = |b: &&Bucket| b.second + span > second && b.second <= second;
        let requests: u64 = self.buckets.iter().filter(live).map(|b| b.requests).sum();
        let retries: u64 = self.buckets.iter().filter(live).map(|b| b.retries).sum();
        let allowed =
            config.ratio * requests as f64 + config.min_per_second * config.window.as_secs_f64();
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.bucket(second).retries += 1;
        true
    }

    /// Gives back a retry taken at `second` that did not happen (the host refused it).
    pub fn refund_retry(&mut self, second: u64) {
        if let Some(bucket) = self.buckets.iter_mut().find(|b| b.second == second) {
            bucket.retries = bucket.retries.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BUDGET: BudgetConfig = BudgetConfig {
        ratio: 0.5,
        min_per_second: 0.2,
        window: Duration::from_secs(5),
    };

    #[test]
    fn retries_are_bounded_by_the_ratio_plus_the_minimum() {
        let mut window = Window::decode(None, 5);
        // No traffic: the minimum alone, 0.2/s over 5s.
        assert!(window.try_retry(&BUDGET, 100));
        assert!(!window.try_retry(&BUDGET, 100));
        window.record_requests(101, 4);
        // 4 requests at 0.5 plus 1: 3 retries in all, one spent.
        assert!(window.try_retry(&BUDGET, 101));
        assert!(window.try_retry(&BUDGET, 102));
        assert!(!window.try_retry(&BUDGET, 102));
    }

    #[test]
    fn a_refunded_retry_is_available_again() {
        let mut window = Window::decode(None, 5);
        assert!(window.try_retry(&BUDGET, 100));
        assert!(!window.try_retry(&BUDGET, 100));
        window.refund_retry(100);
        assert!(window.try_retry(&BUDGET, 100));
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let mut window = Window::decode(None, 5);
        assert!(window.try_retry(&BUDGET, 100));
        assert!(!window.try_retry(&BUDGET, 104));
        assert!(window.try_retry(&BUDGET, 105));
    }

    #[test]
    fn it_survives_a_round_trip_through_bytes() {
        let mut window = Window::decode(None, 3);
        window.record_requests(7, 1);
        assert!(window.try_retry(&BUDGET, 7));
        let bytes = window.encode();
        assert_eq!(bytes.len(), 3 * 3 * 8);
        assert_eq!(Window::decode(Some(&bytes), 3), window);
        // A window of another length (a new configuration) starts from what fits.
        assert_eq!(Window::decode(Some(&bytes), 2).buckets.len(), 2);
    }
}
