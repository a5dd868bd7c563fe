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
use tokio::time::Instant;

use super::cluster::Cluster;
use super::connect::{Transport, connect_http1, connect_transport, handshake_http2};
use super::endpoint::Endpoint;
use super::limits::{ConnectionSlot, Load, Overflow};
use crate::config::UpstreamProtocol;
use crate::http::ProxyBody;
use crate::runtime::FastHashing;
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
    /// A circuit-breaker threshold of the cluster (`limits`).
    #[error("cluster {cluster}: {overflow}")]
    Overflow { cluster: String, overflow: Overflow },
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
    /// The cluster's load: a request waiting for a connection hears of this one.
    load: Arc<Load>,
}

/// An open HTTP/1.1 connection of one worker's pool, held by the task that drives it: its
/// end frees its place under the cluster's `max_connections` and in the endpoint's count.
pub(super) struct OpenConn {
    pools: Weak<UpstreamPools>,
    key: PoolKey,
    _slot: ConnectionSlot,
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
    /// HTTP/1.1 connections of this worker to the endpoint, busy or idle.
    open_http1: usize,
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
        let mut sender = connect_http1(cluster, endpoint, cluster.tls(), None).await?;
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
        loop {
            // A pooled connection may have been closed by the upstream while idle; hyper hands
            // the request back unsent in that case and we try the next one, then a new one.
            while let Some(mut sender) =
                self.take_idle_http1(key, cluster.settings.pool_idle_timeout)
            {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        return Ok(self.pooled_response(response, sender, cluster, key));
                    }
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(UpstreamError::from_send(addr, error.into_error())),
                    },
                }
            }
            // A new connection, within the cluster's max_connections; at the limit the request
            // waits for one to be freed and looks again.
            let must_connect = self.open_http1(key) == 0;
            let slot = cluster
                .load
                .connection_slot(&cluster.settings.limits, must_connect)
                .await
                .map_err(|overflow| UpstreamError::Overflow {
                    cluster: cluster.name.clone(),
                    overflow,
                })?;
            let Some(slot) = slot else { continue };
            let open = self.open_conn(key, slot);
            let mut sender = connect_http1(cluster, endpoint, tls, Some(open)).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| UpstreamError::from_send(addr, e))?;
            return Ok(self.pooled_response(response, sender, cluster, key));
        }
    }

    /// This worker's HTTP/1.1 connections to an endpoint.
    fn open_http1(&self, key: PoolKey) -> usize {
        self.by_endpoint
            .borrow()
            .get(&key)
            .map_or(0, |conns| conns.open_http1)
    }

    /// Counts a connection about to open; the guard uncounts it when its task ends.
    fn open_conn(self: &Rc<Self>, key: PoolKey, slot: ConnectionSlot) -> OpenConn {
        self.by_endpoint
            .borrow_mut()
            .entry(key)
            .or_default()
            .open_http1 += 1;
        OpenConn {
            pools: Rc::downgrade(self),
            key,
            _slot: slot,
        }
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
                load: Arc::clone(&cluster.load),
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
            self.load.connection_returned();
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        let Some(pools) = self.pools.upgrade() else {
            return;
        };
        if let Some(conns) = pools.by_endpoint.borrow_mut().get_mut(&self.key) {
            conns.open_http1 = conns.open_http1.saturating_sub(1);
        }
    }
}
