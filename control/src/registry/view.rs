//! The registry's state: who holds which instances, and from that each service's instance
//! list. Every mutation returns the services whose list changed, numbered, so watchers send
//! on only those: a membership change costs O(changed service), not O(mesh).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::Registration;

/// A proxy and the instances it registered.
pub(super) struct Holder {
    pub identity: String,
    pub instances: Vec<Registration>,
    /// Open subscriptions holding the lease (a reconnecting proxy may briefly have two).
    pub subscriptions: usize,
    /// Set while no subscription holds it: when the instances go.
    pub lease_until: Option<Instant>,
    pub registered_at: Instant,
}

/// One instance of a service, as watchers and `sluice services` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub address: SocketAddr,
    pub identity: String,
    pub labels: BTreeMap<String, String>,
    pub proxy_id: String,
    /// `Some` while its proxy is disconnected: when the lease runs out.
    pub lease_until: Option<Instant>,
    pub registered_at: Instant,
}

/// A service whose instance list changed, numbered in the order changes happened.
#[derive(Debug, Clone)]
pub struct Change {
    pub sequence: u64,
    pub service: Arc<str>,
}

#[derive(Default)]
pub(super) struct RegistryView {
    holders: BTreeMap<String, Holder>,
    services: BTreeMap<String, Arc<[InstanceRecord]>>,
    /// Addresses that left each service while the registry settles.
    withdrawn: BTreeMap<String, BTreeSet<SocketAddr>>,
    sequence: u64,
}

// === impl RegistryView ===

impl RegistryView {
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn holder(&self, proxy_id: &str) -> Option<&Holder> {
        self.holders.get(proxy_id)
    }

    pub fn instances(&self, service: &str) -> Arc<[InstanceRecord]> {
        self.services
            .get(service)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    pub fn withdrawn(&self, service: &str) -> Vec<SocketAddr> {
        self.withdrawn
            .get(service)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn services(&self) -> Vec<(String, Arc<[InstanceRecord]>)> {
        self.services
            .iter()
            .map(|(name, instances)| (name.clone(), Arc::clone(instances)))
            .collect()
    }

    /// A subscription of `proxy_id` holds `instances` (replacing what it held).
    pub fn hold(
        &mut self,
        proxy_id: &str,
        identity: &str,
        instances: Vec<Registration>,
        settling: bool,
    ) -> Vec<Change> {
        let (touched, holder) = self.replace_holder(proxy_id, identity, instances);
        holder.subscriptions += 1;
        holder.lease_until = None;
        self.rebuild(touched, settling)
    }

    /// Sets what `proxy_id` holds to exactly what etcd says (a shared registry): connected,
    /// or with a lease running until `lease_until`.
    pub fn mirror(
        &mut self,
        proxy_id: &str,
        identity: &str,
        instances: Vec<Registration>,
        lease_until: Option<Instant>,
    ) -> Vec<Change> {
        let (touched, holder) = self.replace_holder(proxy_id, identity, instances);
        holder.subscriptions = usize::from(lease_until.is_none());
        holder.lease_until = lease_until;
        self.rebuild(touched, false)
    }

    /// Gives `proxy_id` these instances; returns the services that may have changed, and the
    /// holder for its lease state.
    fn replace_holder(
        &mut self,
        proxy_id: &str,
        identity: &str,
        instances: Vec<Registration>,
    ) -> (BTreeSet<String>, &mut Holder) {
        let mut touched = self.services_of(proxy_id);
        touched.extend(instances.iter().map(|i| i.service.clone()));
        let now = Instant::now();
        let holder = self
            .holders
            .entry(proxy_id.to_owned())
            .or_insert_with(|| Holder {
                identity: identity.to_owned(),
                instances: Vec::new(),
                subscriptions: 0,
                lease_until: None,
                registered_at: now,
            });
        if holder.instances != instances || holder.identity != identity {
            holder.registered_at = now;
        }
        holder.identity = identity.to_owned();
        holder.instances = instances;
        (touched, holder)
    }

    /// The proxies holding instances.
    pub fn holder_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.holders.keys().cloned()
    }

    /// A subscription of `proxy_id` ended: when the last one goes, the lease starts.
    pub fn let_go(&mut self, proxy_id: &str, lease_until: Instant) {
        let Some(holder) = self.holders.get_mut(proxy_id) else {
            return;
        };
        holder.subscriptions = holder.subscriptions.saturating_sub(1);
        if holder.subscriptions > 0 {
            return;
        }
        holder.lease_until = Some(lease_until);
        // The instances stay, so watchers hear nothing; only what `sluice services` shows of
        // them (the lease running) changes.
        for service in self.services_of(proxy_id) {
            let refreshed = self.collect(&service);
            if !refreshed.is_empty() {
                self.services.insert(service, refreshed);
            }
        }
    }

    /// Withdraws `proxy_id`'s instances at once.
    pub fn release(&mut self, proxy_id: &str, settling: bool) -> Vec<Change> {
        let touched = self.services_of(proxy_id);
        self.holders.remove(proxy_id);
        self.rebuild(touched, settling)
    }

    /// Ends the leases that ran out by `now`; returns the changes and the next deadline.
    pub fn end_lapsed(&mut self, now: Instant, settling: bool) -> (Vec<Change>, Option<Instant>) {
        let lapsed: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| h.lease_until.is_some_and(|until| until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes = Vec::new();
        for proxy_id in lapsed {
            tracing::info!(proxy = %proxy_id, "registry lease ran out; its instances leave");
            changes.extend(self.release(&proxy_id, settling));
        }
        let next = self.holders.values().filter_map(|h| h.lease_until).min();
        (changes, next)
    }

    fn services_of(&self, proxy_id: &str) -> BTreeSet<String> {
        self.holders
            .get(proxy_id)
            .map(|h| h.instances.iter().map(|i| i.service.clone()).collect())
            .unwrap_or_default()
    }

    /// Recomputes the instance lists of `touched` services; numbers those that changed.
    fn rebuild(&mut self, touched: BTreeSet<String>, settling: bool) -> Vec<Change> {
        if !settling {
            self.withdrawn.clear();
        }
        let mut changes = Vec::new();
        for service in touched {
            let next = self.collect(&service);
            let previous = self.instances(&service);
            if same_membership(&previous, &next) {
                // Only the lease state moved: kept for `sluice services`, not announced.
                if !next.is_empty() {
                    self.services.insert(service, next);
                }
                continue;
            }
            if settling {
                let gone = previous
                    .iter()
                    .map(|i| i.address)
                    .filter(|a| !next.iter().any(|i| i.address == *a));
                self.withdrawn
                    .entry(service.clone())
                    .or_default()
                    .extend(gone);
            }
            if next.is_empty() {
                self.services.remove(&service);
            } else {
                self.services.insert(service.clone(), next);
            }
            self.sequence += 1;
            changes.push(Change {
                sequence: self.sequence,
                service: service.into(),
            });
        }
        changes
    }

    /// The instances of `service` across holders. One address is one instance: when two
    /// proxies register it, the one that registered first stands for it.
    fn collect(&self, service: &str) -> Arc<[InstanceRecord]> {
        let mut by_address: BTreeMap<SocketAddr, InstanceRecord> = BTreeMap::new();
        for (proxy_id, holder) in &self.holders {
            for instance in holder.instances.iter().filter(|i| i.service == service) {
                let record = InstanceRecord {
                    address: instance.address,
                    identity: holder.identity.clone(),
                    labels: instance.labels.clone(),
                    proxy_id: proxy_id.clone(),
                    lease_until: holder.lease_until,
                    registered_at: holder.registered_at,
                };
                match by_address.get(&instance.address) {
                    Some(existing) if existing.registered_at <= record.registered_at => {
                        if existing.identity != record.identity {
                            tracing::warn!(
                                service,
                                address = %instance.address,
                                kept = %existing.identity,
                                ignored = %record.identity,
                                "two workloads registered one address; keeping the first"
                            );
                        }
                    }
                    _ => {
                        by_address.insert(instance.address, record);
                    }
                }
            }
        }
        by_address.into_values().collect()
    }
}

/// Whether callers would see the same instances: addresses, identities and labels.
fn same_membership(a: &[InstanceRecord], b: &[InstanceRecord]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.address == b.address && a.identity == b.identity && a.labels == b.labels
        })
}
