//! Proxies' subscriptions: each one streams its proxy's view of the current version (the
//! common edits plus those targeted at it), holds the proxy's registrations in the registry
//! while it lasts, and keeps what the proxy acknowledged for `status`.

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::ControlService;
use super::proxy_book::SharedRecord;
use crate::proto::{AckRequest, ConfigUpdate, ProxyStatus, StatusReply, SubscribeRequest};
use crate::registry::RegistrationGuard;
use crate::store::now_unix;
use crate::targets::ProxyFacts;

/// How long `status` keeps a proxy that disconnected.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

pub(super) struct ProxyRecord {
    subscriptions: usize,
    applied: u64,
    rejected: u64,
    reason: String,
    seen: Instant,
    services: Vec<String>,
    registration_error: String,
    spiffe_id: String,
}

// === impl ControlService (subscriptions) ===

impl ControlService {
    pub(super) async fn start_subscription(
        &self,
        request: SubscribeRequest,
        spiffe_id: String,
    ) -> Result<ReceiverStream<Result<ConfigUpdate, Status>>, Status> {
        let id = request.proxy_id.clone();
        if id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is empty"));
        }
        // A refused registration does not refuse the subscription: the proxy keeps following
        // its config and hears (and `status` shows) why it is not registered.
        let (registration, registration_error) = match self.hold_registrations(&request).await {
            Ok(held) => (held, String::new()),
            Err(refused) => {
                tracing::warn!(proxy = %id, reason = %refused.message(), "registration refused");
                (None, refused.message().to_owned())
            }
        };
        let facts = match &registration {
            Some(held) => held.facts.clone(),
            None => ProxyFacts {
                proxy_id: id.clone(),
                ..ProxyFacts::default()
            },
        };
        {
            let mut proxies = self.proxies();
            // A proxy gone for an hour (its id usually dies with its process) leaves the list.
            proxies.retain(|_, r| r.subscriptions > 0 || r.seen.elapsed() < FORGET_AFTER);
            let record = proxies.entry(id.clone()).or_insert_with(|| ProxyRecord {
                subscriptions: 0,
                applied: 0,
                rejected: 0,
                reason: String::new(),
                seen: Instant::now(),
                services: Vec::new(),
                registration_error: String::new(),
                spiffe_id: String::new(),
            });
            record.subscriptions += 1;
            record.applied = request.applied_version;
            record.seen = Instant::now();
            record.services = facts.services.clone();
            record.registration_error.clone_from(&registration_error);
            record.spiffe_id = spiffe_id;
            self.share(&id, record);
        }
        tracing::info!(proxy = %id, applied = request.applied_version, services = ?facts.services, "proxy subscribed");

        let (updates, stream) = mpsc::channel(4);
        let (mut current, mut stopping) = (
            self.shared.store.versions().subscribe(),
            self.shared.stopping.subscribe(),
        );
        let service = self.clone();
        tokio::spawn(async move {
            // Held until the subscription ends; then the lease runs.
            let _registration = registration.map(|held| held.guard);
            loop {
                let update = {
                    let published = current.borrow_and_update();
                    let overlay = published.overlay.for_proxy(&facts);
                    ConfigUpdate {
                        version: published.version,
                        overlay_json: serde_json::to_string(&overlay).unwrap_or_default(),
                        registration_error: registration_error.clone(),
                    }
                };
                if updates.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = current.changed() => if changed.is_err() { break },
                    () = updates.closed() => break,
                    _ = stopping.wait_for(|stop| *stop) => break,
                }
            }
            if let Some(record) = service.proxies().get_mut(&id) {
                record.subscriptions = record.subscriptions.saturating_sub(1);
                record.seen = Instant::now();
                service.share(&id, record);
            }
            tracing::info!(proxy = %id, "proxy subscription ended");
        });
        Ok(ReceiverStream::new(stream))
    }

    pub(super) fn record_ack(&self, ack: AckRequest) -> Result<(), Status> {
        let mut proxies = self.proxies();
        let record = proxies.get_mut(&ack.proxy_id).ok_or_else(|| {
            Status::failed_precondition(format!("proxy {:?} never subscribed", ack.proxy_id))
        })?;
        record.seen = Instant::now();
        if ack.applied {
            record.applied = ack.version;
            tracing::info!(proxy = %ack.proxy_id, version = ack.version, "proxy applied");
        } else {
            record.rejected = ack.version;
            record.reason = ack.error.clone();
            tracing::warn!(proxy = %ack.proxy_id, version = ack.version, error = %ack.error, "proxy rejected");
        }
        self.share(&ack.proxy_id, record);
        Ok(())
    }

    /// Writes `record` to etcd for the other replicas' `status`, when they share one.
    fn share(&self, proxy_id: &str, record: &ProxyRecord) {
        if let Some(book) = &self.shared.proxy_book {
            book.record(
                proxy_id,
                SharedRecord {
                    replica: self.shared.replica.clone(),
                    connected: record.subscriptions > 0,
                    applied: record.applied,
                    rejected: record.rejected,
                    reason: record.reason.clone(),
                    services: record.services.clone(),
                    registration_error: record.registration_error.clone(),
                    seen_unix: now_unix(),
                    spiffe_id: record.spiffe_id.clone(),
                },
            );
        }
    }

    /// Every proxy of the mesh: from etcd when replicas share it (this replica's own if etcd
    /// cannot be read, saying so), else this service's.
    pub(super) async fn status_reply(&self) -> StatusReply {
        let current_version = self.shared.store.versions().current_version();
        let replica = self.shared.replica.clone();
        let partial = match &self.shared.proxy_book {
            None => String::new(),
            Some(book) => match book.read().await {
                Ok(proxies) => {
                    return StatusReply {
                        current_version,
                        proxies,
                        replica,
                        partial: String::new(),
                    };
                }
                Err(error) => format!("only the proxies of replica {replica}: {error}"),
            },
        };
        let proxies = self
            .proxies()
            .iter()
            .map(|(id, record)| ProxyStatus {
                proxy_id: id.clone(),
                connected: record.subscriptions > 0,
                applied_version: record.applied,
                rejected_version: record.rejected,
                rejected_reason: record.reason.clone(),
                seconds_since_seen: record.seen.elapsed().as_secs(),
                services: record.services.clone(),
                registration_error: record.registration_error.clone(),
                replica: replica.clone(),
                spiffe_id: record.spiffe_id.clone(),
            })
            .collect();
        StatusReply {
            current_version,
            proxies,
            replica,
            partial,
        }
    }
}

/// A subscription's registrations, held in the registry, and what targets see of its proxy.
pub(super) struct HeldRegistration {
    pub guard: RegistrationGuard,
    pub facts: ProxyFacts,
}
