//! The registry's calls: registering over a subscription (checked against the join token),
//! discovery streams, deregistration, and the list `sluice services` prints.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::ControlService;
use super::subscription::HeldRegistration;
use crate::proto::{
    DeregisterRequest, DiscoverRequest, EndpointUpdate, ListServicesReply, ServiceInstances,
    SubscribeRequest, WantedService,
};
use crate::registry::{RegistrationError, check_registrations, check_service_name};
use crate::targets::ProxyFacts;
use crate::tokens::TokenGrant;

/// Most services one discovery stream may ask for.
const MAX_DISCOVERED_SERVICES: usize = 10_000;

// === impl ControlService (registry) ===

impl ControlService {
    /// Holds what a subscribing proxy registers. `None` for a proxy that registers nothing
    /// and shows no join token this service knows (it just follows the config).
    pub(super) async fn hold_registrations(
        &self,
        request: &SubscribeRequest,
    ) -> Result<Option<HeldRegistration>, Status> {
        if request.registrations.is_empty() {
            // An empty set still replaces what this proxy registered before, when it can
            // say who it is; a token this service does not know just registers nothing.
            if request.join_token.is_empty() || self.grant(&request.join_token).await.is_err() {
                return Ok(None);
            }
        } else if request.join_token.is_empty() {
            return Err(Status::unauthenticated(
                "registering services needs the workload's join token: start the proxy with --join-token-file",
            ));
        }
        let grant = self.grant(&request.join_token).await?;
        let instances =
            check_registrations(&request.registrations, &grant).map_err(|error| match error {
                RegistrationError::NotAllowed { .. } => {
                    Status::permission_denied(error.to_string())
                }
                RegistrationError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            })?;
        let identity = self.shared.ca.spiffe_id(&grant.workload);
        let mut services: Vec<String> = instances.iter().map(|i| i.service.clone()).collect();
        services.sort();
        services.dedup();
        let labels = instances
            .iter()
            .flat_map(|i| i.labels.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        let guard = self.shared.registry.register_at(
            request.sequence,
            &request.proxy_id,
            &identity,
            instances,
        );
        Ok(Some(HeldRegistration {
            guard,
            facts: ProxyFacts {
                proxy_id: request.proxy_id.clone(),
                services,
                labels,
            },
        }))
    }

    async fn grant(&self, join_token: &str) -> Result<TokenGrant, Status> {
        self.shared
            .tokens
            .lookup(join_token)
            .await
            .map_err(super::store_failed)?
            .ok_or_else(|| {
                Status::unauthenticated(
                    "unknown join token (create one with `sluice join-token <workload>`)",
                )
            })
    }

    pub(super) fn start_discovery(
        &self,
        request: DiscoverRequest,
    ) -> Result<ReceiverStream<Result<EndpointUpdate, Status>>, Status> {
        if request.services.len() > MAX_DISCOVERED_SERVICES {
            return Err(Status::invalid_argument(format!(
                "{} services asked for; at most {MAX_DISCOVERED_SERVICES} per stream",
                request.services.len()
            )));
        }
        for (index, service) in request.services.iter().enumerate() {
            check_service_name(service)
                .map_err(|why| Status::invalid_argument(format!("services[{index}]: {why}")))?;
        }
        tracing::debug!(proxy = %request.proxy_id, services = ?request.services, "discovery stream");
        let (updates, stream) = mpsc::channel(16);
        tokio::spawn(crate::discover::stream_endpoints(
            Arc::clone(&self.shared.registry),
            request.services,
            updates,
            self.shared.stopping.subscribe(),
        ));
        Ok(ReceiverStream::new(stream))
    }

    pub(super) async fn withdraw(&self, request: DeregisterRequest) -> Result<u32, Status> {
        let grant = self.grant(&request.join_token).await?;
        let identity = self.shared.ca.spiffe_id(&grant.workload);
        let removed = self
            .shared
            .registry
            .deregister_at(request.sequence, &request.proxy_id, &identity)
            .await
            .map_err(|error| match error {
                crate::registry::DeregisterError::NotYours(why) => Status::permission_denied(why),
                crate::registry::DeregisterError::Store(error) => super::store_failed(error),
            })?;
        tracing::info!(proxy = %request.proxy_id, removed, "proxy deregistered");
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    pub(super) fn services_reply(&self, only: &str) -> ListServicesReply {
        let registry = &self.shared.registry;
        let services = registry
            .services()
            .into_iter()
            .filter(|(name, _)| only.is_empty() || name == only)
            .map(|(service, instances)| ServiceInstances {
                service,
                instances: instances
                    .iter()
                    .map(|record| crate::discover::instance(registry, record))
                    .collect(),
                withdrawn: Vec::new(),
            })
            .collect();
        let unregistered = registry
            .unregistered_wanted()
            .into_iter()
            .filter(|(name, _)| only.is_empty() || name == only)
            .map(|(service, watchers)| WantedService {
                service,
                watchers: u32::try_from(watchers).unwrap_or(u32::MAX),
            })
            .collect();
        ListServicesReply {
            services,
            lease_ttl_ms: registry.ttl().as_millis() as u64,
            unregistered,
        }
    }
}
