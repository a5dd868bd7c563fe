//! The hot-path handles of one listener and of one (listener, route, cluster), resolved once
//! when a snapshot is built, so a request only bumps atomics.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};

/// Counters for one (listener, route, cluster): requests by status class and their latency.
#[derive(Clone)]
pub struct RouteStats {
    pub(super) by_status_class: [IntCounter; 5],
    pub(super) duration: Histogram,
}

/// Gauges and counters of one listener.
#[derive(Clone)]
pub struct ListenerStats {
    pub listener: Arc<str>,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub requests_active: IntGauge,
    pub tcp_bytes_downstream_to_upstream: IntCounter,
    pub tcp_bytes_upstream_to_downstream: IntCounter,
    /// Connections cut off for a request head too slow, or a client that stopped reading.
    pub header_timeouts: IntCounter,
    pub send_timeouts: IntCounter,
    /// Connections closed at accept because the listener had `max_connections` open.
    pub max_connections_refused: IntCounter,
    /// Connections cut off because their client reset too many requests before the answer.
    pub reset_floods: IntCounter,
    /// HTTP/2 connections cut off for floods of control or empty frames.
    pub frame_floods: IntCounter,
    /// Connections closed at accept while the proxy sheds load, and whether it does.
    pub overload_refused: IntCounter,
    pub overload: Arc<crate::runtime::overload::Overload>,
}

impl RouteStats {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_status_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
