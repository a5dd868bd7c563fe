//! Per-worker upstream connections: HTTP/1.1 keep-alive pools and one shared HTTP/2
//! connection per endpoint. A worker's pool is touched by that worker's thread only, so it
//! needs no lock (`RefCell` inside an `Rc`).
//!
//! An HTTP/1.1 connection goes back to the pool only once its response body has been read
//! to the end ([`ConnReturn`]); a connection whose response was abandoned is closed, because
//! the unread bytes would be taken for the next response.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::endpoint::Endpoint;
use crate::config::UpstreamProtocol;
use crate::http::ProxyBody;
use crate::runtime::{FastHashing, LocalExec};
use crate::tls::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {endpoint} failed: {source}")]
    ConnectFailed {
        endpoint: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout {
        endpoint: SocketAddr,
        timeout: Duration,
    },
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        endpoint: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {endpoint} failed: {source}")]
    Handshake {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {endpoint} closed or reset the stream before responding: {source}")]
    Reset {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {endpoint} sent an invalid response: {source}")]
    Protocol {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// An upstream response, and the connection to pool again once its body is read.
pub struct UpstreamResponse {
    pub response: http::Response<Incoming>,
    pub conn_return: Option<ConnReturn>,
}

/// An HTTP/1.1 connection waiting for its response body to end before it is reused.
pub struct ConnReturn {
    pools: Weak<UpstreamPools>,
    key: PoolKey,
    sender: http1::SendRequest<ProxyBody>,
    max_idle: usize,
}

/// Connections are pooled per endpoint and per transport: a plaintext connection never
/// carries a request of a TLS cluster, nor one verified for another cluster's peers, even
/// when they have an endpoint in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    endpoint: SocketAddr,
    /// [`ClientTls::id`]; 0 for plaintext.
    transport: u64,
}

impl PoolKey {
    fn of(endpoint: &Endpoint, tls: Option<&ClientTls>) -> Self {
        // A connection verified for one registered identity never serves another.
        let identity = |tls: &ClientTls| match &endpoint.identity {
            Some(identity) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                (tls.id(), identity).hash(&mut hasher);
                hasher.finish().max(1)
            }
            None => tls.id(),
        };
        Self {
            endpoint: endpoint.addr,
            transport: tls.map_or(0, identity),
        }
    }
}

#[derive(Default)]
pub struct UpstreamPools {
    /// Keys are the clusters' endpoints, which no client chooses; a request looks its
    /// endpoint up three times.
    by_endpoint: RefCell<HashMap<PoolKey, EndpointConns, FastHashing>>,
}

#[derive(Default)]
struct EndpointConns {
    idle_http1: Vec<IdleHttp1>,
    http2: Option<http2::SendRequest<ProxyBody>>,
}

struct IdleHttp1 {
    sender: http1::SendRequest<ProxyBody>,
    idle_since: Instant,
}

// === impl UpstreamError ===

impl UpstreamError {
    fn from_send(endpoint: SocketAddr, source: hyper::Error) -> Self {
        if source.is_parse() || source.is_parse_status() {
            Self::Protocol { endpoint, source }
        } else {
            Self::Reset { endpoint, source }
        }
    }
}

// === impl UpstreamPools ===

impl UpstreamPools {
    /// Sends `request` to `endpoint`, reusing a pooled connection when one is alive.
    pub async fn send(
        self: &Rc<Self>,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match cluster.settings.protocol {
            UpstreamProtocol::Http1 => self.send_http1(cluster, endpoint, request).await,
            UpstreamProtocol::Http2 => self.send_http2(cluster, endpoint, request).await,
        }
    }

    /// Sends an upgrade request (WebSocket and friends) on a fresh connection of its own; after
    /// a `101` the connection belongs to the upgraded stream and never returns to a pool.
    pub async fn send_upgrade(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut sender = connect_http1(cluster, endpoint, cluster.tls()).await?;
        sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::from_send(endpoint.addr, e))
    }

    async fn send_http1(
        self: &Rc<Self>,
        cluster: &Cluster,
        endpoint: &Endpoint,
        mut request: Request<ProxyBody>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let addr = endpoint.addr;
        let tls = cluster.tls();
        let key = PoolKey::of(endpoint, tls.as_deref());
        // A pooled connection may have been closed by the upstream while idle; hyper hands
        // the request back unsent in that case and we try the next one, then a new one.
        while let Some(mut sender) = self.take_idle_http1(key, cluster.settings.pool_idle_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.pooled_response(response, sender, cluster, key)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::from_send(addr, error.into_error())),
                },
            }
        }
        let mut sender = connect_http1(cluster, endpoint, tls).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::from_send(addr, e))?;
        Ok(self.pooled_response(response, sender, cluster, key))
    }

    fn pooled_response(
        self: &Rc<Self>,
        response: http::Response<Incoming>,
        sender: http1::SendRequest<ProxyBody>,
        cluster: &Cluster,
        key: PoolKey,
    ) -> UpstreamResponse {
        UpstreamResponse {
            response,
            conn_return: Some(ConnReturn {
                pools: Rc::downgrade(self),
                key,
                sender,
                max_idle: cluster.settings.max_idle_connections,
            }),
        }
    }

    fn take_idle_http1(
        &self,
        key: PoolKey,
        max_idle_time: Duration,
    ) -> Option<http1::SendRequest<ProxyBody>> {
        let mut by_endpoint = self.by_endpoint.borrow_mut();
        let idle = &mut by_endpoint.get_mut(&key)?.idle_http1;
        // Newest first: the most recently used connection is the least likely to be stale.
        while let Some(candidate) = idle.pop() {
            if candidate.idle_since.elapsed() < max_idle_time && !candidate.sender.is_closed() {
                return Some(candidate.sender);
            }
        }
        None
    }

    async fn send_http2(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        mut request: Request<ProxyBody>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let addr = endpoint.addr;
        let tls = cluster.tls();
        let key = PoolKey::of(endpoint, tls.as_deref());
        let shared = self
            .by_endpoint
            .borrow()
            .get(&key)
            .and_then(|conns| conns.http2.clone())
            .filter(|sender| !sender.is_closed());
        if let Some(mut sender) = shared
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(UpstreamResponse {
                        response,
                        conn_return: None,
                    });
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::from_send(addr, error.into_error())),
                },
            }
        }
        let mut sender = match connect_transport(cluster, endpoint, tls).await? {
            Transport::Plain(stream) => handshake_http2(addr, stream).await?,
            Transport::Tls(stream) => handshake_http2(addr, stream).await?,
        };
        self.by_endpoint.borrow_mut().entry(key).or_default().http2 = Some(sender.clone());
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::from_send(addr, e))?;
        Ok(UpstreamResponse {
            response,
            conn_return: None,
        })
    }
}

async fn handshake_http2<S>(
    addr: SocketAddr,
    stream: S,
) -> Result<http2::SendRequest<ProxyBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake {
            endpoint: addr,
            source,
        })?;
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.await {
            tracing::debug!(endpoint = %addr, %error, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

// === impl ConnReturn ===

impl ConnReturn {
    /// The response body was read to its end: the connection may carry another request.
    pub fn give_back(self) {
        let Some(pools) = self.pools.upgrade() else {
            return;
        };
        if self.sender.is_closed() {
            return;
        }
        let mut by_endpoint = pools.by_endpoint.borrow_mut();
        let idle = &mut by_endpoint.entry(self.key).or_default().idle_http1;
        if idle.len() < self.max_idle {
            idle.push(IdleHttp1 {
                sender: self.sender,
                idle_since: Instant::now(),
            });
        }
    }
}

/// Opens a TCP connection within the cluster's connect timeout, feeding the outcome to passive
/// ejection.
async fn connect(cluster: &Cluster, endpoint: &Endpoint) -> Result<TcpStream, UpstreamError> {
    let addr = endpoint.addr;
    let timeout = cluster.settings.connect_timeout;
    let outcome = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
    let error = match outcome {
        Ok(Ok(stream)) => {
            endpoint.record_connect_success();
            // Proxied request/response heads are small writes; Nagle would hold them back.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(endpoint = %addr, %error, "could not set TCP_NODELAY");
            }
            return Ok(stream);
        }
        Ok(Err(source)) => UpstreamError::ConnectFailed {
            endpoint: addr,
            source,
        },
        Err(_) => UpstreamError::ConnectTimeout {
            endpoint: addr,
            timeout,
        },
    };
    cluster.record_connect_failure(endpoint);
    Err(error)
}

/// A connection to the endpoint, in TLS if the cluster speaks it. A failed TLS handshake
/// counts as a failed connect for passive ejection, as in Envoy.
async fn connect_transport(
    cluster: &Cluster,
    endpoint: &Endpoint,
    tls: Option<Arc<ClientTls>>,
) -> Result<Transport, UpstreamError> {
    let stream = connect(cluster, endpoint).await?;
    let Some(tls) = tls else {
        return Ok(Transport::Plain(stream));
    };
    let handshake = tls.connect(stream, endpoint.identity.as_ref());
    match tokio::time::timeout(cluster.settings.connect_timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Transport::Tls(Box::new(stream))),
        Ok(Err(source)) => {
            cluster.record_connect_failure(endpoint);
            Err(UpstreamError::Tls {
                endpoint: endpoint.addr,
                source,
            })
        }
        Err(_) => {
            cluster.record_connect_failure(endpoint);
            Err(UpstreamError::ConnectTimeout {
                endpoint: endpoint.addr,
                timeout: cluster.settings.connect_timeout,
            })
        }
    }
}

/// A connection to an endpoint: plain TCP, or TLS over it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect_http1(
    cluster: &Cluster,
    endpoint: &Endpoint,
    tls: Option<Arc<ClientTls>>,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
    match connect_transport(cluster, endpoint, tls).await? {
        Transport::Plain(stream) => handshake_http1(endpoint.addr, stream).await,
        Transport::Tls(stream) => handshake_http1(endpoint.addr, stream).await,
    }
}

async fn handshake_http1<S>(
    addr: SocketAddr,
    stream: S,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake {
            endpoint: addr,
            source,
        })?;
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(endpoint = %addr, %error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}
