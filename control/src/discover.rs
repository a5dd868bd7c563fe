//! One proxy's discovery stream: the instances of the services it asked for at once, then
//! the whole instance list of each of those services that changes, and only those. Changes
//! that arrive together go out as one update.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::proto::{EndpointUpdate, Instance, ServiceInstances};
use crate::registry::{InstanceRecord, Registry};

/// Sends `services`' instances on `updates` until the proxy hangs up or `stopping` fires.
pub async fn stream_endpoints(
    registry: Arc<Registry>,
    services: Vec<String>,
    updates: mpsc::Sender<Result<EndpointUpdate, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let _watched = registry.watch_services(&services);
    let wanted: HashSet<Arc<str>> = services.iter().map(|s| Arc::from(s.as_str())).collect();
    let (mut changes, progress) = registry.watch();
    let mut settle = registry.settling().then(|| registry.settled_at());
    if updates.send(Ok(full(&registry, &wanted))).await.is_err() {
        return;
    }
    loop {
        let settled = async {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            change = changes.recv() => change,
            () = settled => {
                // The registry is complete now: what is missing really left.
                settle = None;
                if updates.send(Ok(full(&registry, &wanted))).await.is_err() {
                    return;
                }
                continue;
            }
            () = updates.closed() => return,
            // The `Ref` that `wait_for` gives is not `Send`: drop it inside.
            _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
        };
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut last_sequence = 0;
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(change) => {
                    last_sequence = change.sequence;
                    if wanted.contains(&change.service) && !changed.contains(&change.service) {
                        changed.push(change.service);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            // Whatever else is already queued goes out in the same update.
            next = match changes.try_recv() {
                Ok(change) => Some(Ok(change)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => None,
            };
        }
        let update = if lagged {
            // Changes were missed: start over with the whole picture.
            last_sequence = registry.sequence();
            Some(full(&registry, &wanted))
        } else if changed.is_empty() {
            None
        } else {
            Some(EndpointUpdate {
                full: false,
                services: changed
                    .iter()
                    .map(|service| service_instances(&registry, service))
                    .collect(),
                settling: registry.settling(),
            })
        };
        if let Some(update) = update
            && updates.send(Ok(update)).await.is_err()
        {
            return;
        }
        if last_sequence > 0 {
            progress.sent(last_sequence);
        }
    }
}

fn full(registry: &Registry, wanted: &HashSet<Arc<str>>) -> EndpointUpdate {
    let mut services: Vec<ServiceInstances> = wanted
        .iter()
        .map(|service| service_instances(registry, service))
        .collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    EndpointUpdate {
        full: true,
        services,
        settling: registry.settling(),
    }
}

fn service_instances(registry: &Registry, service: &str) -> ServiceInstances {
    ServiceInstances {
        service: service.to_owned(),
        instances: registry
            .instances(service)
            .iter()
            .map(|record| instance(registry, record))
            .collect(),
        withdrawn: registry
            .withdrawn(service)
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// An instance as the API carries it.
pub fn instance(registry: &Registry, record: &InstanceRecord) -> Instance {
    Instance {
        address: record.address.to_string(),
        identity: record.identity.clone(),
        labels: record
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        proxy_id: record.proxy_id.clone(),
        connected: record.lease_until.is_none(),
        lease_left_ms: registry
            .lease_left(record)
            .map_or(0, |left| left.as_millis() as u64),
        seconds_registered: record.registered_at.elapsed().as_secs(),
    }
}
