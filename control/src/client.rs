//! Connecting to a control service, for `sluice push`, `sluice status` and subscribed proxies.
//!
//! `--control` (and `SLUICE_CONTROL`) may name several replicas, comma-separated, or a host
//! name with several addresses: each is a candidate, tried in turn until one answers.

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
    #[error("cannot reach any of the control services: {0}")]
    NoneReachable(String),
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
    let (channel, _) = channel(url, 0).await?;
    Ok(client_of(channel, bearer))
}

/// As [`connect`], trying the candidates from the `start`th on (wrapping around); returns
/// the client and the index of the candidate that answered, so a caller that lost it can
/// start with the next one.
pub async fn connect_from(
    urls: &str,
    token: Option<&str>,
    start: usize,
) -> Result<(Client, usize), ConnectError> {
    let bearer = SendBearer::new(token).map_err(|reason| ConnectError::Url {
        url: urls.to_owned(),
        reason,
    })?;
    let (channel, used) = channel(urls, start).await?;
    Ok((client_of(channel, bearer), used))
}

fn client_of(channel: Channel, bearer: SendBearer) -> Client {
    // The service enforces the module limit; a client takes whatever size it allows.
    ControlClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
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
    let (channel, _) = channel(url, 0).await?;
    Ok(crate::proto::identity_admin_client::IdentityAdminClient::with_interceptor(channel, bearer))
}

/// The certificate API at `url`.
pub async fn connect_identity(url: &str) -> Result<IdentityClient, ConnectError> {
    Ok(crate::proto::identity_client::IdentityClient::new(
        channel(url, 0).await?.0,
    ))
}

/// A channel to the first candidate of `urls`, from the `start`th on, that answers.
async fn channel(urls: &str, start: usize) -> Result<(Channel, usize), ConnectError> {
    let candidates = candidates(urls).await?;
    let mut failures = Vec::new();
    for offset in 0..candidates.len() {
        let index = (start + offset) % candidates.len();
        match channel_to(&candidates[index]).await {
            Ok(channel) => return Ok((channel, index)),
            Err(error) if candidates.len() == 1 => return Err(error),
            Err(error) => failures.push(error.to_string()),
        }
    }
    Err(ConnectError::NoneReachable(failures.join("; ")))
}

/// Each URL of a comma-separated list; a host name with several addresses becomes one URL
/// per address, so a replica that is gone is skipped quickly rather than being the name's
/// first answer every time.
async fn candidates(urls: &str) -> Result<Vec<String>, ConnectError> {
    let mut candidates = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let bad_url = |reason: String| ConnectError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_url(e.to_string()))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(bad_url("expected http://HOST:PORT".into()));
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let named = host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
        let addresses: Vec<std::net::SocketAddr> = match named {
            true => tokio::net::lookup_host((host, port))
                .await
                .map(Iterator::collect)
                .unwrap_or_default(),
            false => Vec::new(),
        };
        if scheme == "http" && addresses.len() > 1 {
            candidates.extend(addresses.iter().map(|a| format!("http://{a}")));
        } else {
            // One address, or a name that does not resolve now: the connection says why.
            candidates.push(url.to_owned());
        }
    }
    if candidates.is_empty() {
        return Err(ConnectError::Url {
            url: urls.to_owned(),
            reason: "no URL given".into(),
        });
    }
    Ok(candidates)
}

async fn channel_to(url: &str) -> Result<Channel, ConnectError> {
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
