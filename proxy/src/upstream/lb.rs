//! Load balancers: choose one available endpoint of a cluster for a request.
//!
//! They never allocate: they scan the endpoint slice in place, skipping endpoints that are
//! unhealthy or ejected, so an unhealthy endpoint gets no traffic while a healthy one exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
use crate::config::LbPolicy;

pub struct LoadBalancer {
    policy: LbPolicy,
    /// Round-robin position, shared by all workers.
    cursor: AtomicUsize,
}

// === impl LoadBalancer ===

impl LoadBalancer {
    pub fn new(policy: LbPolicy) -> Self {
        Self {
            policy,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self, endpoints: &[Arc<Endpoint>], now_ms: u64) -> Option<Arc<Endpoint>> {
        if endpoints.is_empty() {
            return None;
        }
        match self.policy {
            LbPolicy::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                first_available(endpoints, start, now_ms)
            }
            LbPolicy::Random => {
                first_available(endpoints, fastrand::usize(..endpoints.len()), now_ms)
            }
            LbPolicy::LeastRequest => {
                let first = first_available(endpoints, fastrand::usize(..endpoints.len()), now_ms)?;
                let second =
                    first_available(endpoints, fastrand::usize(..endpoints.len()), now_ms)?;
                // Power of two choices: the less loaded of two random picks avoids the herd
                // that "global least" causes while staying O(1).
                Some(if second.in_flight() < first.in_flight() {
                    second
                } else {
                    first
                })
            }
        }
    }

    /// Like `pick`, but an endpoint of `avoid` (those a request already tried) only when no
    /// other is available, as Envoy's `previous_hosts` retry predicate does.
    pub fn pick_avoiding(
        &self,
        endpoints: &[Arc<Endpoint>],
        now_ms: u64,
        avoid: &[std::net::SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let picked = self.pick(endpoints, now_ms)?;
        if !avoid.contains(&picked.addr) {
            return Some(picked);
        }
        first_matching(endpoints, fastrand::usize(..endpoints.len()), |endpoint| {
            endpoint.is_available(now_ms) && !avoid.contains(&endpoint.addr)
        })
        .or(Some(picked))
    }
}

/// The first available endpoint at or after `start` (wrapping around).
fn first_available(
    endpoints: &[Arc<Endpoint>],
    start: usize,
    now_ms: u64,
) -> Option<Arc<Endpoint>> {
    first_matching(endpoints, start, |endpoint| endpoint.is_available(now_ms))
}

/// The first endpoint at or after `start` (wrapping around) that `accept` takes.
fn first_matching(
    endpoints: &[Arc<Endpoint>],
    start: usize,
    accept: impl Fn(&Endpoint) -> bool,
) -> Option<Arc<Endpoint>> {
    let count = endpoints.len();
    (0..count)
        .map(|offset| &endpoints[(start + offset) % count])
        .find(|endpoint| accept(endpoint))
        .cloned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::upstream::endpoint::tests::test_stats;

    fn endpoints(count: u16) -> Vec<Arc<Endpoint>> {
        (1..=count)
            .map(|port| Arc::new(Endpoint::new(([127, 0, 0, 1], port).into(), test_stats())))
            .collect()
    }

    fn spread(lb: &LoadBalancer, endpoints: &[Arc<Endpoint>], picks: usize) -> HashMap<u16, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            let chosen = lb.pick(endpoints, 0).expect("an endpoint");
            *seen.entry(chosen.addr.port()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn round_robin_visits_each_endpoint_in_turn() {
        let eps = endpoints(3);
        let seen = spread(&LoadBalancer::new(LbPolicy::RoundRobin), &eps, 300);
        assert_eq!(seen, HashMap::from([(1, 100), (2, 100), (3, 100)]));
    }

    #[test]
    fn unhealthy_endpoints_get_nothing_while_a_healthy_one_exists() {
        let eps = endpoints(3);
        eps[0].set_actively_healthy(false, 0);
        eps[2].set_actively_healthy(false, 0);
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let seen = spread(&LoadBalancer::new(policy), &eps, 200);
            assert_eq!(seen, HashMap::from([(2, 200)]), "{policy:?}");
        }
        eps[1].set_actively_healthy(false, 0);
        assert!(
            LoadBalancer::new(LbPolicy::RoundRobin)
                .pick(&eps, 0)
                .is_none()
        );
    }

    #[test]
    fn retries_avoid_tried_endpoints_while_another_is_available() {
        let eps = endpoints(3);
        let tried = [eps[0].addr, eps[1].addr];
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let lb = LoadBalancer::new(policy);
            for _ in 0..50 {
                let picked = lb.pick_avoiding(&eps, 0, &tried).expect("an endpoint");
                assert_eq!(picked.addr, eps[2].addr, "{policy:?}");
            }
        }
        // All tried: the balancer's choice stands rather than no endpoint at all.
        let all: Vec<_> = eps.iter().map(|e| e.addr).collect();
        let lb = LoadBalancer::new(LbPolicy::RoundRobin);
        assert!(lb.pick_avoiding(&eps, 0, &all).is_some());
    }

    #[test]
    fn random_reaches_every_endpoint() {
        let eps = endpoints(4);
        let seen = spread(&LoadBalancer::new(LbPolicy::Random), &eps, 400);
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let eps = endpoints(2);
        let _busy: Vec<_> = (0..10).map(|_| eps[0].begin_request()).collect();
        let seen = spread(&LoadBalancer::new(LbPolicy::LeastRequest), &eps, 400);
        // Only a draw of the busy endpoint twice picks it: about a quarter of the time.
        let busy = seen.get(&1).copied().unwrap_or(0);
        assert!(busy < 160, "busy endpoint picked {busy} of 400 times");
        assert!(seen[&2] > 240);
    }
}
