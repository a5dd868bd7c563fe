//! One TCP connection: pick an endpoint, connect within the cluster's connect timeout, and
//! splice bytes both ways until either side closes, the connection idles out, or the drain
//! timeout ends the worker.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::activity::TrackedStream;
use crate::admin::ListenerStats;
use crate::upstream::Cluster;
use crate::wasm::{NetStep, NetworkChain, PluginSpec, StreamInfo, WorkerPlugins};

/// The Wasm network filters of a tcp listener, and this worker's VMs for them.
pub struct NetworkFilters<'a> {
    pub specs: &'a [Arc<PluginSpec>],
    pub plugins: &'a WorkerPlugins,
    pub info: Rc<StreamInfo>,
    /// Most bytes a filter may hold (the listener's `max_body_buffer`).
    pub buffer_limit: usize,
}

/// Proxies `downstream` to an endpoint of `cluster`. `preread` is what was read from the
/// client already (a TLS hello read for passthrough routing): it goes upstream first.
pub async fn proxy_tcp(
    downstream: TcpStream,
    preread: Vec<u8>,
    peer: SocketAddr,
    cluster: Arc<Cluster>,
    idle_timeout: Option<Duration>,
    stats: &ListenerStats,
    filters: NetworkFilters<'_>,
) {
    // As in Envoy, the filters see the connection before the upstream is dialled.
    let chain = if filters.specs.is_empty() {
        None
    } else {
        match NetworkChain::start(
            filters.plugins,
            filters.specs,
            filters.info,
            filters.buffer_limit,
        ) {
            Ok(chain) => Some(chain),
            Err(plugin) => {
                tracing::debug!(%peer, %plugin, "closing the connection: a fail-closed network filter failed");
                return;
            }
        }
    };
    let Some(endpoint) = cluster.pick() else {
        tracing::debug!(%peer, cluster = %cluster.name, "no healthy endpoint; closing the connection");
        return;
    };
    let _active = endpoint.begin_request();
    let connect = tokio::time::timeout(
        cluster.settings.connect_timeout,
        TcpStream::connect(endpoint.addr),
    )
    .await;
    let upstream = match connect {
        Ok(Ok(stream)) => {
            endpoint.record_connect_success();
            stream
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, endpoint = %endpoint.addr, %error, "tcp upstream connect failed");
            cluster.record_connect_failure(&endpoint);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, endpoint = %endpoint.addr, "tcp upstream connect timed out");
            cluster.record_connect_failure(&endpoint);
            return;
        }
    };
    let mut upstream = upstream;
    let _ = upstream.set_nodelay(true);
    if let Some(mut chain) = chain {
        filtered_splice(
            downstream,
            preread,
            upstream,
            &mut chain,
            idle_timeout,
            stats,
        )
        .await;
        chain.finish();
        return;
    }
    if !preread.is_empty() {
        stats
            .tcp_bytes_downstream_to_upstream
            .inc_by(preread.len() as u64);
        if let Err(error) = upstream.write_all(&preread).await {
            tracing::debug!(%peer, %error, "tcp upstream write failed");
            return;
        }
    }

    let last_activity = Rc::new(Cell::new(Instant::now()));
    let mut downstream = TrackedStream::new(
        downstream,
        Rc::clone(&last_activity),
        stats.tcp_bytes_downstream_to_upstream.clone(),
    );
    let mut upstream = TrackedStream::new(
        upstream,
        Rc::clone(&last_activity),
        stats.tcp_bytes_upstream_to_downstream.clone(),
    );
    let splice = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
    let idle = async {
        let Some(timeout) = idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let deadline = last_activity.get() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    // A raw byte stream has no request boundary to finish at, so a drain leaves it running
    // until the worker's drain timeout ends it.
    tokio::select! {
        result = splice => match result {
            Ok((sent, received)) => tracing::debug!(%peer, sent, received, "tcp connection closed"),
            Err(error) => tracing::debug!(%peer, %error, "tcp connection failed"),
        },
        () = idle => tracing::debug!(%peer, "closing idle tcp connection"),
    }
}

/// Splices the two sides through the network filters: each chunk read goes through the chain
/// before it is written to the other side.
async fn filtered_splice(
    mut downstream: TcpStream,
    preread: Vec<u8>,
    mut upstream: TcpStream,
    chain: &mut NetworkChain,
    idle_timeout: Option<Duration>,
    stats: &ListenerStats,
) {
    let (mut client_read, mut client_write) = downstream.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    // What was read before the upstream was chosen is the client's first data.
    if !preread.is_empty() {
        stats
            .tcp_bytes_downstream_to_upstream
            .inc_by(preread.len() as u64);
        match chain.data(true, preread, false) {
            NetStep::Forward(bytes) if !bytes.is_empty() => {
                if upstream_write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            NetStep::Close => return,
            NetStep::Forward(_) | NetStep::Held => {}
        }
    }
    let (mut client_buffer, mut upstream_buffer) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_open, mut upstream_open) = (true, true);
    let mut last_activity = Instant::now();
    while client_open || upstream_open {
        let resume = chain.downstream_resume_signal();
        let idle_deadline = idle_timeout.map(|t| last_activity + t);
        tokio::select! {
            read = client_read.read(&mut client_buffer), if client_open => {
                let count = read.unwrap_or(0);
                last_activity = Instant::now();
                stats.tcp_bytes_downstream_to_upstream.inc_by(count as u64);
                let end = count == 0;
                match chain.data(true, client_buffer[..count].to_vec(), end) {
                    NetStep::Forward(bytes) if !bytes.is_empty() => {
                        if upstream_write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    NetStep::Close => break,
                    NetStep::Forward(_) | NetStep::Held => {}
                }
                if end {
                    client_open = false;
                    chain.closed(true, true);
                    let _ = upstream_write.shutdown().await;
                }
            }
            read = upstream_read.read(&mut upstream_buffer), if upstream_open => {
                let count = read.unwrap_or(0);
                last_activity = Instant::now();
                stats.tcp_bytes_upstream_to_downstream.inc_by(count as u64);
                let end = count == 0;
                match chain.data(false, upstream_buffer[..count].to_vec(), end) {
                    NetStep::Forward(bytes) if !bytes.is_empty() => {
                        if client_write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    NetStep::Close => break,
                    NetStep::Forward(_) | NetStep::Held => {}
                }
                if end {
                    upstream_open = false;
                    chain.closed(false, true);
                    let _ = client_write.shutdown().await;
                }
            }
            () = wait_for(resume) => match chain.release_downstream() {
                Some(NetStep::Forward(bytes)) => {
                    if upstream_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(NetStep::Close) => break,
                Some(NetStep::Held) | None => {}
            },
            () = wait_until(idle_deadline) => break,
        }
    }
    // Whatever is still open is being closed by the proxy.
    if client_open {
        chain.closed(true, false);
    }
    if upstream_open {
        chain.closed(false, false);
    }
}

async fn wait_for(signal: Option<Rc<crate::wasm::ResumeSignals>>) {
    match signal {
        // The client direction is the "request" side of a connection's signals.
        Some(signal) => signal.request.notified().await,
        None => std::future::pending().await,
    }
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
