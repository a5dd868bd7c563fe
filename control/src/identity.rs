//! The identity services: `IdentityAdmin.CreateJoinToken` for operators and
//! `Identity.IssueCertificate` for proxies (see `ca.rs` and `tokens.rs`).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::ca::{CaError, MeshCa, check_workload};
use crate::proto::identity_admin_server::IdentityAdmin;
use crate::proto::identity_server::Identity;
use crate::proto::{
    CreateJoinTokenReply, CreateJoinTokenRequest, IssueCertificateReply, IssueCertificateRequest,
};
use crate::tokens::JoinTokens;

/// The mesh's trust domain and how long workload certificates live.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub trust_domain: String,
    pub cert_ttl: Duration,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            trust_domain: "sluice.local".to_owned(),
            cert_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone)]
pub struct IdentityService {
    ca: Arc<MeshCa>,
    tokens: Arc<JoinTokens>,
    cert_ttl: Duration,
}

impl IdentityService {
    pub fn new(ca: Arc<MeshCa>, tokens: Arc<JoinTokens>, cert_ttl: Duration) -> Self {
        Self {
            ca,
            tokens,
            cert_ttl,
        }
    }
}

fn refused(error: CaError) -> Status {
    match error {
        CaError::Refused(why) => Status::invalid_argument(why),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl IdentityAdmin for IdentityService {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenReply>, Status> {
        let request = request.into_inner();
        let workload = request.workload;
        check_workload(&workload).map_err(refused)?;
        for service in &request.services {
            crate::registry::check_service_name(service)
                .map_err(|why| Status::invalid_argument(format!("--services: {why}")))?;
        }
        let services = (!request.services.is_empty()).then_some(request.services);
        let token = self
            .tokens
            .create(&workload, services.clone())
            .await
            .map_err(crate::service::store_failed)?;
        tracing::info!(workload, ?services, "join token created");
        // The proxy checks the control service by the CA digest before it sends the secret.
        let token = format!("{token}.{}", self.ca.digest());
        Ok(Response::new(CreateJoinTokenReply {
            token,
            spiffe_id: self.ca.spiffe_id(&workload),
        }))
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateReply>, Status> {
        let peer = request
            .extensions()
            .get::<crate::tls::ControlPeer>()
            .and_then(|peer| peer.address);
        let request = request.into_inner();
        let grant = self
            .tokens
            .lookup(&request.join_token)
            .await
            .map_err(crate::service::store_failed)?;
        let Some(workload) = grant.map(|grant| grant.workload) else {
            tracing::warn!(?peer, "certificate refused: unknown join token");
            return Err(Status::unauthenticated(
                "unknown join token (create one with `sluice join-token <workload>`)",
            ));
        };
        let issued = self
            .ca
            .issue(&workload, &request.public_key, self.cert_ttl)
            .map_err(refused)?;
        tracing::info!(spiffe_id = %issued.spiffe_id, ?peer, "workload certificate issued");
        Ok(Response::new(IssueCertificateReply {
            certificate_chain_pem: issued.chain_pem,
            trust_bundle_pem: self.ca.trust_bundle().to_owned(),
            not_after_unix: issued.not_after_unix,
            spiffe_id: issued.spiffe_id,
        }))
    }
}
