//! Upstreams: clusters of endpoints, load balancing, connection pools, health checking.

mod cluster;
mod connect;
mod endpoint;
mod endpoint_set;
mod ewma;
mod health;
mod lb;
mod limits;
mod pool;
mod ring;
mod target;

pub use cluster::{Cluster, ClusterSettings, DiscoveredInstance, HealthCheckSettings};
pub use endpoint::{ActiveRequest, Endpoint, EndpointStats, OutlierPolicy};
pub use endpoint_set::EndpointSet;
pub use health::spawn_cluster_tasks;
pub use limits::{Limits, Overflow, RequestSlot};
pub use pool::{ConnReturn, UpstreamError, UpstreamPools, UpstreamResponse};
pub use target::EndpointTarget;
