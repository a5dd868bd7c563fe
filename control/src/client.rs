//! Connecting to a control service, for `sluice push`, `sluice status` and subscribed proxies.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::SendBearer;
use crate::proto::control_client::ControlClient;

/// Where `sluice push`, `status` and `proxy --control` look without `--control`.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:9990";

pub type Client = ControlClient<InterceptedService<Channel, SendBearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: not a control service URL: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the control service at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The operators' identity client (join tokens), with the bearer token.
pub type IdentityAdminClient = crate::proto::identity_admin_client::IdentityAdminClient<
    InterceptedService<Channel, SendBearer>,
>;

/// The proxies' identity client (certificates); the join token is in each request.
pub type IdentityClient = crate::proto::identity_client::IdentityClient<Channel>;

/// Connects (within 2s) to the control service at `url`, sending `token` with every call.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    let bearer = SendBearer::new(token).map_err(|reason| ConnectError::Url {
        url: url.to_owned(),
        reason,
    })?;
    let channel = channel(url).await?;
    // The service enforces the module limit; a client takes whatever size it allows.
    Ok(ControlClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The join-token API at `url`, sending `token` with every call.
pub async fn connect_identity_admin(
    url: &str,
    token: Option<&str>,
) -> Result<IdentityAdminClient, ConnectError> {
    let bearer = SendBearer::new(token).map_err(|reason| ConnectError::Url {
        url: url.to_owned(),
        reason,
    })?;
    let channel = channel(url).await?;
    Ok(crate::proto::identity_admin_client::IdentityAdminClient::with_interceptor(channel, bearer))
}

/// The certificate API at `url`.
pub async fn connect_identity(url: &str) -> Result<IdentityClient, ConnectError> {
    Ok(crate::proto::identity_client::IdentityClient::new(
        channel(url).await?,
    ))
}

async fn channel(url: &str) -> Result<Channel, ConnectError> {
    let bad_url = |reason: String| ConnectError::Url {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| bad_url(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        // A control service that vanished without closing is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            url: url.to_owned(),
            source,
        })
}
