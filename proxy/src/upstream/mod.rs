//! Upstreams: clusters of endpoints, load balancing, connection pools, health checking.

mod cluster;
mod endpoint;
mod health;
mod lb;
mod pool;
mod target;

pub use cluster::{Cluster, ClusterSettings, HealthCheckSettings};
pub use endpoint::{ActiveRequest, Endpoint, EndpointStats, OutlierPolicy};
pub use health::spawn_cluster_tasks;
pub use pool::{ConnReturn, UpstreamError, UpstreamPools, UpstreamResponse};
pub use target::EndpointTarget;
