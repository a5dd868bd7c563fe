//! The admin endpoint and the metrics it serves.

mod metrics;
mod server;

pub use metrics::{ListenerStats, Metrics, RouteStats};
pub use server::serve_admin;
