//! A consistent-hash ring over a cluster's endpoints (Envoy's `ring_hash`): each endpoint
//! owns many points on a 64-bit circle, and a request's key goes to the owner of the first
//! point at or after its hash. When another endpoint comes or goes, only the keys on its own
//! points move.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

/// Points per endpoint: enough that load spreads within a few percent.
const POINTS_PER_ENDPOINT: usize = 128;

pub struct HashRing {
    /// (point, index into the endpoint list), sorted by point.
    points: Vec<(u64, usize)>,
}

// === impl HashRing ===

impl HashRing {
    /// A ring over `addresses`, indexed as given.
    pub fn new(addresses: &[SocketAddr]) -> Self {
        let mut points = Vec::with_capacity(addresses.len() * POINTS_PER_ENDPOINT);
        for (index, address) in addresses.iter().enumerate() {
            for replica in 0..POINTS_PER_ENDPOINT {
                points.push((stable_hash(&(address.to_string(), replica)), index));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Endpoint indexes in ring order from `key`'s point on, each once: the first that is
    /// available serves the key.
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(point, _)| *point < key);
        let (before, after) = self.points.split_at(start);
        let mut seen = Vec::new();
        after
            .iter()
            .chain(before)
            .map(|(_, index)| *index)
            .filter(move |index| {
                let new = !seen.contains(index);
                if new {
                    seen.push(*index);
                }
                new
            })
    }
}

/// A hash that is the same in every process and worker (keys must land alike on every
/// proxy of the mesh): SipHash with fixed keys.
pub fn stable_hash(value: &impl Hash) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(0x736c_7569_6365, 0x7269_6e67);
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(ports: &[u16]) -> Vec<SocketAddr> {
        ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect()
    }

    #[test]
    fn keys_stay_put_when_another_endpoint_leaves_and_spread_evenly() {
        let before = addresses(&[1, 2, 3, 4]);
        let after = addresses(&[1, 2, 4]);
        let (ring_before, ring_after) = (HashRing::new(&before), HashRing::new(&after));
        let mut counts = [0usize; 4];
        for key in 0..4000u64 {
            let hash = stable_hash(&key);
            let owner = before[ring_before.walk(hash).next().unwrap()];
            counts[usize::from(owner.port()) - 1] += 1;
            if owner.port() != 3 {
                assert_eq!(after[ring_after.walk(hash).next().unwrap()], owner);
            }
        }
        for count in counts {
            assert!((600..1400).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn the_walk_visits_every_endpoint_once() {
        let ring = HashRing::new(&addresses(&[1, 2, 3]));
        let mut order: Vec<usize> = ring.walk(42).collect();
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2]);
    }
}
