//! The accept loop of one listener on one worker: hand each connection to the HTTP or TCP
//! path, until the worker drains or a new config retires the socket.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::ListenerProtocol;
use crate::http::{Activity, ConnectionSettings, DownstreamConn, client_address, serve_http};
use crate::runtime::{ConnectionTracker, DrainWatch, WorkerContext};
use crate::tcp::{NetworkFilters, proxy_tcp};
use crate::tls::{Accepted, NameTable, read_server_name};
use crate::upstream::Cluster;
use crate::wasm::StreamInfo;

pub async fn accept_loop(
    worker: Rc<WorkerContext>,
    name: Arc<str>,
    socket: TcpListener,
    tracker: ConnectionTracker,
    mut drain: DrainWatch,
    mut retired: DrainWatch,
) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = drain.signaled() => return,
            () = retired.signaled() => {
                tracing::debug!(listener = %name, worker = worker.id, "socket retired");
                return;
            }
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = worker.snapshot();
        let Some(listener) = snapshot.listener(&name) else {
            // Removed by the config published a moment ago; this socket is being retired.
            continue;
        };
        // Over the listener's limit (counted across workers): closed at once, as Envoy's
        // connection limit does, so the connections it has keep their share.
        if let Some(limit) = listener.max_connections
            && listener.stats.connections_active.get() >= i64::from(limit)
        {
            listener.stats.max_connections_refused.inc();
            tracing::debug!(listener = %name, %peer, limit, "connection refused: max_connections");
            drop(stream);
            continue;
        }
        // Past `overload.max_memory`: a new connection would only grow it.
        if listener.stats.overload.is_shedding() {
            listener.stats.overload_refused.inc();
            drop(stream);
            continue;
        }
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        let stats = listener.stats.clone();
        stats.connections_total.inc();
        stats.connections_active.inc();
        let tracked = tracker.track();
        match listener.protocol {
            ListenerProtocol::Http => {
                let (drain, retired) = (drain.clone(), retired.clone());
                let tls = listener.tls.clone();
                let mut conn = DownstreamConn {
                    worker: Rc::clone(&worker),
                    listener: Arc::clone(&name),
                    peer,
                    client_address: client_address(peer),
                    local: stream.local_addr().unwrap_or(listener.address),
                    id: next_connection_id(),
                    scheme: if tls.is_some() { "https" } else { "http" },
                    activity: Activity::new(),
                    tls: None,
                };
                let settings = ConnectionSettings {
                    idle_timeout: listener.idle_timeout,
                    request_header_timeout: listener.request_header_timeout,
                    send_timeout: listener.send_timeout,
                    max_request_headers_size: listener.max_request_headers_size,
                    header_timeouts: listener.stats.header_timeouts.clone(),
                    send_timeouts: listener.stats.send_timeouts.clone(),
                    reset_floods: listener.stats.reset_floods.clone(),
                    frame_floods: listener.stats.frame_floods.clone(),
                    max_concurrent_streams: listener.max_concurrent_streams,
                };
                let metrics = Arc::clone(&worker.state.metrics);
                let name = Arc::clone(&name);
                tokio::task::spawn_local(async move {
                    match tls {
                        None => serve_http(stream, conn, settings, drain, retired).await,
                        // The handshake runs in the connection's own task: a slow or hostile
                        // client delays nobody else.
                        Some(tls) => match tls.accept_or_plaintext(stream).await {
                            Ok(Accepted::Plaintext(stream)) => {
                                metrics.tls_handshake(&name, "plaintext");
                                conn.scheme = "http";
                                serve_http(stream, conn, settings, drain, retired).await;
                            }
                            Ok(Accepted::Tls(stream, info)) => {
                                metrics.tls_handshake(&name, "ok");
                                conn.tls = Some(Rc::new(info));
                                serve_http(stream, conn, settings, drain, retired).await;
                            }
                            Err(error) => {
                                metrics.tls_handshake(&name, error.reason());
                                tracing::info!(listener = %name, %peer, %error, "TLS handshake failed");
                            }
                        },
                    }
                    stats.connections_active.dec();
                    drop(tracked);
                });
            }
            ListenerProtocol::Tcp => {
                let fallback = listener.tcp_cluster.clone();
                let sni_routes = listener.sni_routes.clone();
                if fallback.is_none() && sni_routes.is_none() {
                    continue;
                }
                let idle_timeout = listener.idle_timeout;
                let specs: Vec<_> = listener
                    .filters
                    .iter()
                    .map(|filter| std::sync::Arc::clone(filter.pick()))
                    .collect();
                let buffer_limit = listener.max_body_buffer;
                let worker = Rc::clone(&worker);
                let info = Rc::new(StreamInfo::new(
                    next_connection_id(),
                    peer,
                    stream.local_addr().unwrap_or(listener.address),
                    "",
                ));
                let name = Arc::clone(&name);
                tokio::task::spawn_local(async move {
                    let mut stream = stream;
                    let routed = match sni_routes {
                        Some(routes) => {
                            route_by_server_name(
                                &mut stream,
                                &routes,
                                fallback,
                                &worker,
                                &name,
                                peer,
                            )
                            .await
                        }
                        None => fallback.map(|cluster| (cluster, Vec::new())),
                    };
                    if let Some((cluster, preread)) = routed {
                        info.set_routed("", &cluster.name);
                        let filters = NetworkFilters {
                            specs: &specs,
                            plugins: &worker.plugins,
                            info,
                            buffer_limit,
                        };
                        proxy_tcp(
                            stream,
                            preread,
                            peer,
                            cluster,
                            idle_timeout,
                            &stats,
                            filters,
                        )
                        .await;
                    }
                    stats.connections_active.dec();
                    drop(tracked);
                });
            }
        }
    }
}

/// How long a passthrough client may take to send its TLS hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS passthrough: the cluster for the server name of the client's TLS hello (or the
/// listener's `cluster` for other names), and the bytes read to learn it. `None` closes the
/// connection: no route for the name, or not TLS.
async fn route_by_server_name(
    stream: &mut tokio::net::TcpStream,
    routes: &NameTable<Arc<Cluster>>,
    fallback: Option<Arc<Cluster>>,
    worker: &WorkerContext,
    listener: &str,
    peer: std::net::SocketAddr,
) -> Option<(Arc<Cluster>, Vec<u8>)> {
    let metrics = &worker.state.metrics;
    let (server_name, hello) = match read_server_name(stream, HELLO_TIMEOUT).await {
        Ok(read) => read,
        Err(error) => {
            metrics.sni_routing(listener, error.reason());
            tracing::info!(listener, %peer, %error, "closing a passthrough connection");
            return None;
        }
    };
    let routed = server_name.as_deref().and_then(|name| routes.get(name));
    let (cluster, result) = match (routed, fallback) {
        (Some(cluster), _) => (Arc::clone(cluster), "routed"),
        (None, Some(fallback)) => (fallback, "default"),
        (None, None) => {
            metrics.sni_routing(listener, "no_route");
            tracing::info!(listener, %peer, server_name = server_name.as_deref().unwrap_or("(none)"), "no sni_route for the server name; closing the connection");
            return None;
        }
    };
    metrics.sni_routing(listener, result);
    Some((cluster, hello))
}

/// A process-wide connection number (`connection.id` for filters).
fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
