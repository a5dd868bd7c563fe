//! Small conveniences over the official SDK's host calls that every filter wants.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Defines counter `name` and returns its id for `increment_metric`; 0 (which no metric
/// has, so increments fail quietly) if the host refuses. Call from `on_configure`.
pub fn counter(name: &str) -> u32 {
    hostcalls::define_metric(MetricType::Counter, name).unwrap_or_default()
}

/// The cluster the stream was routed to: Envoy's `xds.cluster_name`, or `cluster_name`.
/// `None` before routing, which in Sluice comes after a listener's filters saw the request
/// headers (they may rewrite the path).
pub fn cluster_name() -> Option<String> {
    hostcalls::get_property(vec!["xds", "cluster_name"])
        .ok()
        .flatten()
        .or_else(|| hostcalls::get_property(vec!["cluster_name"]).ok().flatten())
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(&name).into_owned())
}

/// A property as text (lossy UTF-8); `None` when it is missing, null or empty. The host call
/// is made directly: the SDK's `get_property` panics on a null property (Envoy's
/// SERIALIZATION_FAILURE), which connection properties are without a client certificate.
pub fn text_property(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}
