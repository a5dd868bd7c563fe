//! Load balancers: choose one available endpoint of a cluster for a request.
//!
//! They scan the endpoint slice in place, skipping endpoints that are unhealthy or ejected,
//! so an unhealthy endpoint gets no traffic while a healthy one exists. When the proxy has a
//! zone, endpoints in it are chosen among first, and the others only when none of them is
//! available (ring hash excepted: affinity comes first there).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
use super::endpoint_set::EndpointSet;
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

    /// One endpoint for a request whose hash key (for `ring_hash`) is `key`.
    pub fn pick(&self, set: &EndpointSet, now_ms: u64, key: Option<u64>) -> Option<Arc<Endpoint>> {
        if set.is_empty() {
            return None;
        }
        if let (Some(ring), Some(key)) = (set.ring(), key) {
            return ring
                .walk(key)
                .map(|index| &set[index])
                .find(|endpoint| endpoint.is_available(now_ms))
                .cloned();
        }
        self.pick_among(set.preferred(now_ms), now_ms)
    }

    fn pick_among(&self, endpoints: &[Arc<Endpoint>], now_ms: u64) -> Option<Arc<Endpoint>> {
        match self.policy {
            LbPolicy::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                first_available(endpoints, start, now_ms)
            }
            // A ring hash request without a key is spread at random, as in Envoy.
            LbPolicy::Random | LbPolicy::RingHash => {
                first_available(endpoints, fastrand::usize(..endpoints.len()), now_ms)
            }
            LbPolicy::Ewma => {
                // Two distinct draws, as Linkerd's p2c: the costlier of two never wins, and
                // a slow endpoint is tried again once its estimate has decayed.
                let count = endpoints.len();
                let start = fastrand::usize(..count);
                let other = (start + 1 + fastrand::usize(..count.max(2) - 1)) % count;
                let first = first_available(endpoints, start, now_ms)?;
                let second = first_available(endpoints, other, now_ms)?;
                Some(if second.ewma_cost(now_ms) < first.ewma_cost(now_ms) {
                    second
                } else {
                    first
                })
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
        set: &EndpointSet,
        now_ms: u64,
        avoid: &[std::net::SocketAddr],
        key: Option<u64>,
    ) -> Option<Arc<Endpoint>> {
        let picked = self.pick(set, now_ms, key)?;
        if !avoid.contains(&picked.addr) {
            return Some(picked);
        }
        if let (Some(ring), Some(key)) = (set.ring(), key) {
            // The next owner around the ring, so a retried key still lands predictably.
            return ring
                .walk(key)
                .map(|index| &set[index])
                .find(|e| e.is_available(now_ms) && !avoid.contains(&e.addr))
                .cloned()
                .or(Some(picked));
        }
        let endpoints = set.preferred(now_ms);
        first_matching(endpoints, fastrand::usize(..endpoints.len()), |endpoint| {
            endpoint.is_available(now_ms) && !avoid.contains(&endpoint.addr)
        })
        .or_else(|| {
            first_matching(set, fastrand::usize(..set.len()), |endpoint| {
                endpoint.is_available(now_ms) && !avoid.contains(&endpoint.addr)
            })
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

    fn endpoints(count: u16) -> EndpointSet {
        zoned(&vec![None; usize::from(count)], None, false)
    }

    /// Endpoints on ports 1, 2, … in the given zones, for a proxy in `local`.
    fn zoned(zones: &[Option<&str>], local: Option<&str>, ring: bool) -> EndpointSet {
        let all = zones
            .iter()
            .zip(1u16..)
            .map(|(zone, port)| {
                Arc::new(Endpoint::discovered(
                    ([127, 0, 0, 1], port).into(),
                    None,
                    zone.map(Arc::from),
                    test_stats(),
                ))
            })
            .collect();
        EndpointSet::new(all, local, ring)
    }

    fn spread(lb: &LoadBalancer, endpoints: &EndpointSet, picks: usize) -> HashMap<u16, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            let chosen = lb.pick(endpoints, 0, None).expect("an endpoint");
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
            LbPolicy::Ewma,
        ] {
            let seen = spread(&LoadBalancer::new(policy), &eps, 200);
            assert_eq!(seen, HashMap::from([(2, 200)]), "{policy:?}");
        }
        eps[1].set_actively_healthy(false, 0);
        assert!(
            LoadBalancer::new(LbPolicy::RoundRobin)
                .pick(&eps, 0, None)
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
            LbPolicy::Ewma,
        ] {
            let lb = LoadBalancer::new(policy);
            for _ in 0..50 {
                let picked = lb
                    .pick_avoiding(&eps, 0, &tried, None)
                    .expect("an endpoint");
                assert_eq!(picked.addr, eps[2].addr, "{policy:?}");
            }
        }
        // All tried: the balancer's choice stands rather than no endpoint at all.
        let all: Vec<_> = eps.iter().map(|e| e.addr).collect();
        let lb = LoadBalancer::new(LbPolicy::RoundRobin);
        assert!(lb.pick_avoiding(&eps, 0, &all, None).is_some());
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

    #[test]
    fn ewma_prefers_the_fast_endpoint_but_keeps_trying_the_slow_one() {
        let eps = endpoints(3);
        eps[0].observe_latency(std::time::Duration::from_millis(200), 0);
        eps[1].observe_latency(std::time::Duration::from_millis(2), 0);
        eps[2].observe_latency(std::time::Duration::from_millis(2), 0);
        let lb = LoadBalancer::new(LbPolicy::Ewma);
        let seen = spread(&lb, &eps, 300);
        assert_eq!(
            seen.get(&1),
            None,
            "the slow one loses every draw: {seen:?}"
        );
        // Busy fast endpoints cost more than an idle slow one would.
        let _busy: Vec<_> = (0..200)
            .flat_map(|_| [eps[1].begin_request(), eps[2].begin_request()])
            .collect();
        assert!(spread(&lb, &eps, 100).get(&1).copied().unwrap_or(0) > 0);
    }

    #[test]
    fn the_local_zone_is_preferred_and_others_take_over_when_it_has_no_available_endpoint() {
        let eps = zoned(&[Some("a"), Some("b"), Some("a"), None], Some("a"), false);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin);
        assert_eq!(spread(&lb, &eps, 100), HashMap::from([(1, 50), (3, 50)]));
        eps[0].set_actively_healthy(false, 0);
        assert_eq!(spread(&lb, &eps, 100), HashMap::from([(3, 100)]));
        eps[2].set_actively_healthy(false, 0);
        let spilled = spread(&lb, &eps, 100);
        assert_eq!(
            spilled
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [2, 4].into()
        );
        // A retry avoiding the only local endpoint goes to another zone.
        let eps = zoned(&[Some("a"), Some("b")], Some("a"), false);
        let picked = lb.pick_avoiding(&eps, 0, &[eps[0].addr], None).unwrap();
        assert_eq!(picked.addr.port(), 2);
    }

    #[test]
    fn ring_hash_sends_a_key_to_one_endpoint_and_the_next_one_when_it_is_down() {
        let eps = zoned(&[None, None, None], None, true);
        let lb = LoadBalancer::new(LbPolicy::RingHash);
        let key = crate::upstream::ring::stable_hash(&"user-42");
        let owner = lb.pick(&eps, 0, Some(key)).unwrap();
        for _ in 0..20 {
            assert_eq!(lb.pick(&eps, 0, Some(key)).unwrap().addr, owner.addr);
        }
        owner.set_actively_healthy(false, 0);
        let next = lb.pick(&eps, 0, Some(key)).unwrap();
        assert_ne!(next.addr, owner.addr);
        owner.set_actively_healthy(true, 0);
        assert_eq!(lb.pick(&eps, 0, Some(key)).unwrap().addr, owner.addr);
    }
}
