//! Opening upstream connections: TCP within the connect timeout (feeding passive ejection),
//! TLS when the cluster asks for it, and the HTTP/1.1 or HTTP/2 handshake, with a task that
//! drives each connection.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::cluster::Cluster;
use super::endpoint::Endpoint;
use super::pool::{OpenConn, UpstreamError};
use crate::http::ProxyBody;
use crate::runtime::LocalExec;
use crate::tls::ClientTls;

pub(super) async fn handshake_http2<S>(
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
pub(super) async fn connect_transport(
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
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// `open`: the pool's count of the connection, which its task holds until it ends.
pub(super) async fn connect_http1(
    cluster: &Cluster,
    endpoint: &Endpoint,
    tls: Option<Arc<ClientTls>>,
    open: Option<OpenConn>,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
    match connect_transport(cluster, endpoint, tls).await? {
        Transport::Plain(stream) => handshake_http1(endpoint.addr, stream, open).await,
        Transport::Tls(stream) => handshake_http1(endpoint.addr, stream, open).await,
    }
}

async fn handshake_http1<S>(
    addr: SocketAddr,
    stream: S,
    open: Option<OpenConn>,
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
        let _open = open;
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(endpoint = %addr, %error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}
