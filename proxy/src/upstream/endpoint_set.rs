//! A cluster's endpoints as balancers read them: the list, the part of it in this proxy's
//! zone, and the hash ring. Built whole when membership changes and swapped in, so a pick
//! never waits for and never sees a half-made set.

use std::ops::Deref;
use std::sync::Arc;

use super::endpoint::Endpoint;
use super::ring::HashRing;

pub struct EndpointSet {
    all: Vec<Arc<Endpoint>>,
    /// The endpoints whose `zone` is this proxy's (empty when it has no zone).
    local: Vec<Arc<Endpoint>>,
    /// For `ring_hash` clusters.
    ring: Option<HashRing>,
}

// === impl EndpointSet ===

impl EndpointSet {
    pub fn new(all: Vec<Arc<Endpoint>>, local_zone: Option<&str>, with_ring: bool) -> Self {
        let local = match local_zone {
            Some(zone) => all
                .iter()
                .filter(|e| e.zone.as_deref() == Some(zone))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let ring = with_ring.then(|| {
            let addresses: Vec<_> = all.iter().map(|e| e.addr).collect();
            HashRing::new(&addresses)
        });
        Self { all, local, ring }
    }

    pub fn empty() -> Self {
        Self::new(Vec::new(), None, false)
    }

    /// The endpoints a pick chooses among: those in this proxy's zone while one of them is
    /// available, else all (spill-over).
    pub fn preferred(&self, now_ms: u64) -> &[Arc<Endpoint>] {
        if self.local.iter().any(|e| e.is_available(now_ms)) {
            &self.local
        } else {
            &self.all
        }
    }

    pub fn ring(&self) -> Option<&HashRing> {
        self.ring.as_ref()
    }
}

impl Deref for EndpointSet {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &Self::Target {
        &self.all
    }
}
