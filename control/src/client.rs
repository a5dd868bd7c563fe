//! Connecting to a control service, for `sluice push`, `sluice status` and subscribed proxies.
//!
//! `--control` (and `SLUICE_CONTROL`) may name several replicas, comma-separated, or a host
//! name with several addresses: each is a candidate, tried in turn until one answers.
//!
//! `https://` replicas are checked with a [`ControlTrust`]; plaintext `http://` is refused
//! beyond loopback, before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::SendBearer;
use crate::proto::control_client::ControlClient;
use crate::tls::{ControlTrust, is_loopback};

/// Where `sluice push`, `status` and `proxy --control` look without `--control`.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:9990";

pub type Client = ControlClient<InterceptedService<Channel, SendBearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: not a control service URL: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the control service at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot reach any of the control services: {0}")]
    NoneReachable(String),
    /// The replica answered, but its certificate is not one to trust: a configuration
    /// problem (the wrong CA, or a name its certificate lacks), not a network one.
    #[error("refusing the control service at {url}: {reason}")]
    Untrusted { url: String, reason: String },
}

/// The operators' identity client (join tokens), with the bearer token.
pub type IdentityAdminClient = crate::proto::identity_admin_client::IdentityAdminClient<
    InterceptedService<Channel, SendBearer>,
>;

/// The proxies' identity client (certificates); the join token is in each request.
pub type IdentityClient = crate::proto::identity_client::IdentityClient<Channel>;

/// Connects (within 2s) to the control service at `url`, sending `token` with every call;
/// an `https://` one is checked as the environment says ([`ControlTrust::from_env`]).
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    connect_with(url, token, &env_trust(url)?).await
}

/// As [`connect`], checking an `https://` service with `trust`.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    trust: &ControlTrust,
) -> Result<Client, ConnectError> {
    Ok(connect_from(url, token, 0, trust).await?.0)
}

fn env_trust(url: &str) -> Result<ControlTrust, ConnectError> {
    ControlTrust::from_env().map_err(|reason| ConnectError::Url {
        url: url.to_owned(),
        reason,
    })
}

/// As [`connect`], trying the candidates from the `start`th on (wrapping around); returns
/// the client and the index of the candidate that answered, so a caller that lost it can
/// start with the next one.
pub async fn connect_from(
    urls: &str,
    token: Option<&str>,
    start: usize,
    trust: &ControlTrust,
) -> Result<(Client, usize), ConnectError> {
    let bearer = SendBearer::new(token).map_err(|reason| ConnectError::Url {
        url: urls.to_owned(),
        reason,
    })?;
    let (channel, used) = channel(urls, start, trust).await?;
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
    let (channel, _) = channel(url, 0, &env_trust(url)?).await?;
    Ok(crate::proto::identity_admin_client::IdentityAdminClient::with_interceptor(channel, bearer))
}

/// The certificate API at `url`, checked with `trust` if it is `https://`.
pub async fn connect_identity(
    url: &str,
    trust: &ControlTrust,
) -> Result<IdentityClient, ConnectError> {
    Ok(crate::proto::identity_client::IdentityClient::new(
        channel(url, 0, trust).await?.0,
    ))
}

/// A channel to the first candidate of `urls`, from the `start`th on, that answers.
async fn channel(
    urls: &str,
    start: usize,
    trust: &ControlTrust,
) -> Result<(Channel, usize), ConnectError> {
    let candidates = candidates(urls).await?;
    let mut failures = Vec::new();
    for offset in 0..candidates.len() {
        let index = (start + offset) % candidates.len();
        match channel_to(&candidates[index], trust).await {
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
/// One replica to try: its URL (the name TLS checks), and the address to dial when its
/// name has several.
struct Candidate {
    url: String,
    address: Option<std::net::SocketAddr>,
}

async fn candidates(urls: &str) -> Result<Vec<Candidate>, ConnectError> {
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
        if addresses.len() > 1 {
            // Each address on its own, under the name the certificate must carry.
            candidates.extend(addresses.iter().map(|&address| Candidate {
                url: url.to_owned(),
                address: Some(address),
            }));
        } else {
            // One address, or a name that does not resolve now: the connection says why.
            candidates.push(Candidate {
                url: url.to_owned(),
                address: None,
            });
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

async fn channel_to(candidate: &Candidate, trust: &ControlTrust) -> Result<Channel, ConnectError> {
    let url = candidate.url.as_str();
    let bad_url = |reason: String| ConnectError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(e.to_string()))?;
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = match uri.scheme_str() {
        Some("http") if is_loopback(&host) => None,
        Some("http") => {
            return Err(bad_url(format!(
                "plaintext control connections are allowed only on loopback: use https://{} (replicas serve TLS beyond loopback)",
                uri.authority().map_or(host.as_str(), |a| a.as_str())
            )));
        }
        Some("https") if trust.is_empty() => {
            return Err(bad_url(
                "nothing to check the control service's certificate with: give the proxy its join token (--join-token-file), or set SLUICE_CONTROL_CA to the mesh CA's PEM file, or SLUICE_CONTROL_CA_SHA256 to its digest (`sluice control` prints it)".into(),
            ));
        }
        Some("https") => Some(Arc::new(trust.client_config().map_err(bad_url)?)),
        _ => {
            return Err(bad_url(
                "expected http://HOST:PORT or https://HOST:PORT".into(),
            ));
        }
    };
    // tonic speaks plaintext HTTP/2 to whatever the connector returns; TLS is done there.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let plain = match candidate.address {
        Some(address) if tls.is_none() => format!("http://{address}"),
        _ => format!("http://{authority}"),
    };
    let dial = candidate
        .address
        .map_or_else(|| authority.to_owned(), |a| a.to_string());
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| bad_url(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        // A control service that vanished without closing is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let unreachable = |error: tonic::transport::Error| {
        let reason = chain(&error);
        // rustls refused the certificate: the handshake reached a server.
        if reason.contains("invalid peer certificate") || reason.contains("mesh CA pinned") {
            ConnectError::Untrusted {
                url: url.to_owned(),
                reason,
            }
        } else {
            ConnectError::Unreachable {
                url: url.to_owned(),
                reason,
            }
        }
    };
    let Some(config) = tls else {
        return endpoint.connect().await.map_err(unreachable);
    };
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| bad_url(e.to_string()))?;
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, name, dial) = (Arc::clone(&config), name.clone(), dial.clone());
        async move {
            // Each address gets its own two seconds: one that drops packets does not use up
            // the time of the next.
            let tcp =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(dial))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no TCP connection within 2s",
                        )
                    })??;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    tokio::time::timeout(
        Duration::from_secs(5),
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| ConnectError::Unreachable {
        url: url.to_owned(),
        reason: "no TLS connection within 5s".into(),
    })?
    .map_err(unreachable)
}

/// An error and its causes, as one line: tonic's own message alone says "transport error".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some layers repeat their cause's message in their own.
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
