//! One TCP connection: pick an endpoint, connect within the cluster's connect timeout, and
//! splice bytes both ways until either side closes, the connection idles out, or the drain
//! timeout ends the worker.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::activity::TrackedStream;
use crate::admin::ListenerStats;
use crate::upstream::Cluster;

pub async fn proxy_tcp(
    downstream: TcpStream,
    peer: SocketAddr,
    cluster: Arc<Cluster>,
    idle_timeout: Option<Duration>,
    stats: &ListenerStats,
) {
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
    let _ = upstream.set_nodelay(true);

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
