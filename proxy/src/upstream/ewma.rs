//! Peak-EWMA latency of one endpoint, as Linkerd balances: a slower response raises the
//! estimate at once (the peak), faster ones pull it down with an exponential decay over
//! `DECAY`, and so does time without responses (so an endpoint that was slow is tried again
//! after a while). Balancers multiply it by the requests in flight, so an endpoint that slows
//! down loses traffic within a response or two, and wins it back over seconds.
//!
//! Every worker updates it, so it is two atomics; two updates that race lose one sample,
//! which an estimate can afford.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a sample takes to fade to 1/e of its weight.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint nothing was measured on yet: high enough that a new endpoint
/// is tried, low enough that it is not flooded before it answers.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

pub struct PeakEwma {
    /// The estimate in nanoseconds, as f64 bits.
    estimate_ns: AtomicU64,
    /// When the estimate was last updated, in the cluster's milliseconds.
    updated_ms: AtomicU64,
}

// === impl PeakEwma ===

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            estimate_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            updated_ms: AtomicU64::new(0),
        }
    }
}

impl PeakEwma {
    /// Folds in one response's latency, measured at `now_ms`.
    pub fn observe(&self, latency: Duration, now_ms: u64) {
        let sample = latency.as_nanos() as f64;
        let (stored, weight) = self.stored_and_weight(now_ms);
        let next = if sample > stored {
            sample
        } else {
            stored * weight + sample * (1.0 - weight)
        };
        self.estimate_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The estimate in nanoseconds at `now_ms`: decayed toward zero since the last response.
    pub fn estimate(&self, now_ms: u64) -> f64 {
        let (stored, weight) = self.stored_and_weight(now_ms);
        stored * weight
    }

    /// The last estimate, and the weight time since then leaves it.
    fn stored_and_weight(&self, now_ms: u64) -> (f64, f64) {
        let stored = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let elapsed = now_ms.saturating_sub(self.updated_ms.load(Ordering::Relaxed));
        let weight = (-(elapsed as f64) / DECAY.as_millis() as f64).exp();
        (stored, weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_response_raises_the_estimate_at_once_and_fast_ones_pull_it_down_over_time() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(200), 1_000);
        assert_eq!(ewma.estimate(1_000), 200e6, "the peak is taken at once");
        ewma.observe(Duration::from_millis(1), 1_100);
        let after_100ms = ewma.estimate(1_100);
        assert!(
            after_100ms > 190e6,
            "{after_100ms}: one fast sample moves it little"
        );
        ewma.observe(Duration::from_millis(1), 31_100);
        let after_30s = ewma.estimate(31_100);
        assert!(
            after_30s < 15e6,
            "{after_30s}: decayed over three time constants"
        );
        let idle = ewma.estimate(131_100);
        assert!(
            idle < 1e3,
            "{idle}: an endpoint left alone looks cheap again"
        );
    }
}
