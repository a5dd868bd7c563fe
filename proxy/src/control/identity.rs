//! Getting and keeping this proxy's workload identity: it makes a key pair, shows its join
//! token to the control service's `Identity.IssueCertificate`, and serves the certificate it
//! gets. At two thirds of the certificate's life it asks for a new one (with a new key); if
//! the service is away it keeps the current certificate and tries again with backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::tls::{IssuedIdentity, MeshIdentity, UnusableCertificate};

/// Why no certificate came.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Unreachable(#[from] sluice_control::ConnectError),
    #[error("the control service at {url} refused a certificate: {message}")]
    Refused { url: String, message: String },
    #[error("{0}")]
    Unusable(#[from] UnusableCertificate),
    #[error("cannot make a key pair: {0}")]
    Key(String),
    #[error("the renewed certificate is not one this proxy can use: {0}")]
    Mismatch(String),
}

/// Where the identity comes from.
#[derive(Clone)]
pub struct IdentitySource {
    pub url: String,
    pub join_token: String,
    /// How an `https://` control service is checked (the CA the join token names).
    pub trust: sluice_control::ControlTrust,
}

/// Retry pauses after a failed renewal: from `FIRST_RETRY`, doubling, up to `LAST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

impl IdentitySource {
    /// The first certificate, and the identity serving it.
    pub async fn obtain(&self) -> Result<Arc<MeshIdentity>, IdentityError> {
        let reply = self.request().await?;
        let issued = IssuedIdentity::from_pem(&reply.0.certificate_chain_pem, reply.1)?;
        check_valid(&issued)?;
        tracing::info!(spiffe_id = %reply.0.spiffe_id, "workload certificate received");
        Ok(MeshIdentity::new(
            reply.0.spiffe_id,
            issued,
            &reply.0.trust_bundle_pem,
        )?)
    }

    /// Renews `identity` before each certificate expires, for as long as the runtime runs.
    pub fn keep_renewed(self, identity: Arc<MeshIdentity>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let current = identity.current();
                tokio::time::sleep(renew_after(current.not_after(), SystemTime::now())).await;
                let mut retry = FIRST_RETRY;
                loop {
                    match self.renewed(&identity).await {
                        Ok(renewed) => {
                            tracing::info!(spiffe_id = %identity.spiffe_id(), "workload certificate renewed");
                            identity.renew(renewed);
                            break;
                        }
                        Err(error) => {
                            let left = current
                                .not_after()
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            tracing::warn!(%error, valid_for = ?left, "renewing the workload certificate failed; the current one serves meanwhile");
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(LAST_RETRY);
                        }
                    }
                }
            }
        })
    }

    /// A new certificate for `identity`: the same SPIFFE ID from the same CA, still valid.
    async fn renewed(&self, identity: &MeshIdentity) -> Result<IssuedIdentity, IdentityError> {
        let (reply, key) = self.request().await?;
        if reply.spiffe_id != identity.spiffe_id() {
            return Err(IdentityError::Mismatch(format!(
                "it is for {}, not {}",
                reply.spiffe_id,
                identity.spiffe_id()
            )));
        }
        // Peers trust the bundle this proxy started with; a certificate from another CA
        // would fail every handshake. Rotating the CA needs a restart today.
        if reply.trust_bundle_pem != identity.trust_bundle_pem() {
            return Err(IdentityError::Mismatch(
                "the control service's CA changed; restart the proxies to trust the new one".into(),
            ));
        }
        let issued = IssuedIdentity::from_pem(&reply.certificate_chain_pem, key)?;
        check_valid(&issued)?;
        Ok(issued)
    }

    /// One request with a fresh key pair: the reply and the key (PKCS#8).
    async fn request(
        &self,
    ) -> Result<(sluice_control::proto::IssueCertificateReply, Vec<u8>), IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        let mut client = sluice_control::connect_identity(&self.url, &self.trust).await?;
        let reply = client
            .issue_certificate(sluice_control::proto::IssueCertificateRequest {
                join_token: self.join_token.clone(),
                public_key: key.public_key_raw().to_vec(),
            })
            .await
            .map_err(|status| IdentityError::Refused {
                url: self.url.clone(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        Ok((reply, key.serialize_der()))
    }
}

/// A certificate that has already expired is refused (a control service with a wrong clock).
fn check_valid(issued: &IssuedIdentity) -> Result<(), IdentityError> {
    if issued.not_after() <= SystemTime::now() {
        return Err(IdentityError::Mismatch(
            "it has expired already (check the control service's clock)".into(),
        ));
    }
    Ok(())
}

/// How long to wait before renewing a certificate valid until `not_after`: two thirds of
/// its remaining life, and not less than a second.
fn renew_after(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    (left * 2 / 3).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds_of_the_remaining_life() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renew_after(now + Duration::from_secs(3600), now),
            Duration::from_secs(2400)
        );
        assert_eq!(
            renew_after(now, now),
            Duration::from_secs(1),
            "expired: at once"
        );
    }
}
