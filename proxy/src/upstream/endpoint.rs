//! One upstream address and what the proxy knows about it: active health, passive ejection,
//! and in-flight requests (for least-request balancing). Shared by every worker, so all state
//! is atomic; the data path only reads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

/// When passive ejection kicks in and for how long.
#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// `0` disables ejection.
    pub consecutive_connect_failures: u32,
    pub ejection_time: Duration,
}

/// The metric handles of one endpoint, resolved once so the data path never hashes labels.
#[derive(Clone)]
pub struct EndpointStats {
    pub healthy: IntGauge,
    pub connect_failures: IntCounter,
    pub ejections: IntCounter,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    /// The SPIFFE ID that registered a discovered endpoint: mesh mTLS requires exactly it.
    pub identity: Option<Arc<str>>,
    /// The `zone` label of a discovered endpoint, for zone-aware balancing.
    pub zone: Option<Arc<str>>,
    active_healthy: AtomicBool,
    consecutive_connect_failures: AtomicU32,
    /// Milliseconds on the cluster's clock until which the endpoint is ejected; 0 = never.
    ejected_until_ms: AtomicU64,
    active_requests: AtomicUsize,
    /// Response latency, for `ewma` balancing.
    latency: super::ewma::PeakEwma,
    stats: EndpointStats,
}

/// Counts a request as in flight on an endpoint until dropped.
pub struct ActiveRequest(Arc<Endpoint>);

// === impl Endpoint ===

impl Endpoint {
    pub fn new(addr: SocketAddr, stats: EndpointStats) -> Self {
        Self::discovered(addr, None, None, stats)
    }

    /// An endpoint from the mesh registry, with the identity that registered it.
    pub fn discovered(
        addr: SocketAddr,
        identity: Option<Arc<str>>,
        zone: Option<Arc<str>>,
        stats: EndpointStats,
    ) -> Self {
        stats.healthy.set(1);
        Self {
            addr,
            identity,
            zone,
            active_healthy: AtomicBool::new(true),
            consecutive_connect_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            active_requests: AtomicUsize::new(0),
            latency: super::ewma::PeakEwma::default(),
            stats,
        }
    }

    /// Records how long a response took to arrive (its headers), for `ewma` balancing.
    pub fn observe_latency(&self, latency: Duration, now_ms: u64) {
        self.latency.observe(latency, now_ms);
    }

    /// What `ewma` balancing minimizes at `now_ms`: expected latency times the requests
    /// waiting for it.
    pub fn ewma_cost(&self, now_ms: u64) -> f64 {
        self.latency.estimate(now_ms) * (self.in_flight() as f64 + 1.0)
    }

    /// May receive traffic: passes active health checks and is not ejected.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    pub fn is_actively_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    pub fn set_actively_healthy(&self, healthy: bool, now_ms: u64) {
        let was = self.active_healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            tracing::info!(endpoint = %self.addr, healthy, "active health check changed endpoint state");
        }
        self.refresh_gauge(now_ms);
    }

    pub fn in_flight(&self) -> usize {
        self.active_requests.load(Ordering::Relaxed)
    }

    pub fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(Arc::clone(self))
    }

    pub fn record_connect_success(&self) {
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
    }

    /// Counts a failed connect; ejects the endpoint when the policy's threshold is reached.
    /// Returns whether this failure ejected it.
    pub fn record_connect_failure(&self, policy: &OutlierPolicy, now_ms: u64) -> bool {
        self.stats.connect_failures.inc();
        let failures = self
            .consecutive_connect_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if policy.consecutive_connect_failures == 0
            || failures < policy.consecutive_connect_failures
        {
            return false;
        }
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
        let until = now_ms.saturating_add(policy.ejection_time.as_millis() as u64);
        // A longer ejection (a filter's) stands.
        self.ejected_until_ms.fetch_max(until, Ordering::Relaxed);
        self.stats.ejections.inc();
        self.stats.healthy.set(0);
        tracing::warn!(
            endpoint = %self.addr,
            failures,
            ejection_ms = policy.ejection_time.as_millis() as u64,
            "ejecting endpoint after consecutive connect failures"
        );
        true
    }

    /// Takes the endpoint out of load balancing until `until_ms` (a filter's decision, through
    /// the `sluice_eject_endpoint` host extension). An ejection that lasts longer stands.
    pub fn eject_until(&self, until_ms: u64) {
        let previous = self.ejected_until_ms.fetch_max(until_ms, Ordering::Relaxed);
        if previous < until_ms {
            self.stats.ejections.inc();
            self.stats.healthy.set(0);
        }
    }

    /// Brings the health gauge in line with the state at `now_ms` (ejections end by time alone).
    pub fn refresh_gauge(&self, now_ms: u64) {
        let ejected = self.ejected_until_ms.load(Ordering::Relaxed) > now_ms;
        let healthy = self.active_healthy.load(Ordering::Relaxed) && !ejected;
        self.stats.healthy.set(i64::from(healthy));
    }
}

// === impl ActiveRequest ===

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn test_stats() -> EndpointStats {
        EndpointStats {
            healthy: IntGauge::new("h", "h").unwrap(),
            connect_failures: IntCounter::new("c", "c").unwrap(),
            ejections: IntCounter::new("e", "e").unwrap(),
        }
    }

    #[test]
    fn consecutive_connect_failures_eject_for_a_while() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().unwrap(), test_stats());
        let policy = OutlierPolicy {
            consecutive_connect_failures: 3,
            ejection_time: Duration::from_secs(30),
        };
        assert!(!endpoint.record_connect_failure(&policy, 1_000));
        assert!(!endpoint.record_connect_failure(&policy, 1_000));
        endpoint.record_connect_success();
        assert!(!endpoint.record_connect_failure(&policy, 1_000));
        assert!(!endpoint.record_connect_failure(&policy, 1_000));
        assert!(
            endpoint.record_connect_failure(&policy, 1_000),
            "third in a row ejects"
        );
        assert!(!endpoint.is_available(1_000));
        assert!(!endpoint.is_available(30_999));
        assert!(endpoint.is_available(31_000));
        assert_eq!(endpoint.stats.ejections.get(), 1);
        assert_eq!(endpoint.stats.connect_failures.get(), 5);
    }

    #[test]
    fn a_zero_threshold_never_ejects() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().unwrap(), test_stats());
        let policy = OutlierPolicy {
            consecutive_connect_failures: 0,
            ejection_time: Duration::from_secs(30),
        };
        for _ in 0..100 {
            assert!(!endpoint.record_connect_failure(&policy, 0));
        }
        assert!(endpoint.is_available(0));
    }

    #[test]
    fn in_flight_counts_follow_guards() {
        let endpoint = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap(), test_stats()));
        let a = endpoint.begin_request();
        let b = endpoint.begin_request();
        assert_eq!(endpoint.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(endpoint.in_flight(), 0);
    }
}
