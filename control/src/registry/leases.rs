//! Leases kept in this process: a task that sleeps until the earliest lease of a disconnected
//! proxy runs out, and then withdraws its instances.

use std::sync::Weak;

use tokio::time::Instant;

use super::Registry;

/// Runs until the registry is dropped (noticed within one lease TTL).
pub(super) async fn end_lapsed_leases(registry: Weak<Registry>) {
    while let Some(registry) = registry.upgrade() {
        // `notify_one` leaves a permit when nobody waits, so a lease that starts between the
        // sweep and the sleep still wakes this loop.
        let woken = registry.lease_started.notified();
        let now = Instant::now();
        let deadline = registry
            .end_lapsed(now)
            .unwrap_or(now + registry.ttl)
            .max(now);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = woken => {}
        }
    }
}
