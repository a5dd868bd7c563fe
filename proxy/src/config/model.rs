//! The YAML config file, field for field. Field names are a contract
//! (`shared/design/config-contract.md`): add fields, never rename or remove them.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored setting.
//! Defaults live in the `default_*` functions next to the field they fill, and are written out
//! in the docs of each field.

use serde::{Deserialize, Serialize};

use super::cluster_model::ClusterConfig;
use super::discovery_model::{Locality, ServiceRegistration};
use super::units::{ByteSize, ConfigDuration};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Admin endpoint (metrics, readiness, running config). Absent: no admin endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Data-plane worker threads. [number of CPUs]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting anyway. [10s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Services this proxy's workload provides, registered in the control service's mesh
    /// registry while the proxy runs (needs `--control` and `--join-token-file`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub register: Vec<ServiceRegistration>,
    /// Where this proxy runs, for zone-aware balancing. [the `zone` label of `register:`]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// Shedding load before the kernel's OOM killer decides. [none]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// Past this resident memory, new connections are closed at accept and new requests get
    /// 503 `overload`, until it falls under 95% of it. At least 1MiB.
    pub max_memory: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Proxy-Wasm filters: on http listeners the HTTP chain (request phase in order, response in
    /// reverse); on tcp listeners network filters (client data in order, upstream in reverse).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// HTTP routes, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// `protocol: tcp` only: the cluster every connection is proxied to (with `sni_routes`,
    /// the one for names no route lists; without it those connections are closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `protocol: tcp` only: TLS passthrough. The server name of the client's TLS hello
    /// picks the cluster; the TLS bytes go through untouched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRoute>,
    /// Close a downstream connection after this long without traffic; `0` never. [1h]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<ConfigDuration>,
    /// HTTP/1: close a connection whose request head (line and headers) has not fully
    /// arrived this long after its first byte (slowloris); `0` never. [10s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_timeout: Option<ConfigDuration>,
    /// Answer 408 to a request whose client sends no body bytes for this long while the body
    /// is read (a slow POST holding an upstream request); `0` never. [60s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_timeout: Option<ConfigDuration>,
    /// Reset a connection whose client accepts no response bytes for this long, freeing the
    /// upstream request behind it; `0` never. [30s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_timeout: Option<ConfigDuration>,
    /// Most requests one connection carries; after its last, HTTP/1.1 says `connection: close`
    /// and HTTP/2 sends GOAWAY, so clients spread over new connections. [none]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/2: most streams a client may have open at once on one connection. [100]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Most connections open at once on this listener (all workers); more are closed at
    /// accept. [none]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most body bytes a Wasm filter may hold while it pauses (buffers) a request or response;
    /// more gets 413 (request) or a reset (response already started). [1MiB]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_buffer: Option<ByteSize>,
    /// Largest request head (request line + headers) accepted; larger gets 431. [60KiB]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_size: Option<ByteSize>,
    /// Terminate TLS on this listener (http listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// `api.example.com`, or `*.example.com` for any one label before it.
    pub server_names: Vec<String>,
    pub cluster: String,
}

/// TLS termination on a listener. Paths are relative to the config file's folder; the files
/// are watched, and a changed certificate serves new handshakes at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// One or more (unless `mesh` is set). A client's server name (SNI) picks the
    /// certificate that lists it; the first one serves clients without a name or with a name
    /// none lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<TlsCertificate>,
    /// Mesh mTLS with this proxy's workload identity (issued by the control service):
    /// `strict` requires a mesh client certificate; `permissive` also serves clients without
    /// one and plaintext clients, for migration. Needs `sluice proxy --join-token-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshMode>,
    /// ALPN protocols offered, in preference order. [h2, http/1.1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// The oldest TLS version accepted: 1.2 or 1.3. [1.2]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<serde_yaml::Value>,
    /// A PEM bundle of the CAs client certificates must chain to (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// With `client_ca`: `required` refuses clients without a valid certificate; `optional`
    /// also accepts clients without one (a certificate sent must still be valid). [required]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
    /// How long a client may take to complete the handshake. [10s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<ConfigDuration>,
    /// Also serve clients that speak plaintext HTTP on this port (told apart by their first
    /// byte): the permissive mode for moving a service to mTLS. [false]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key: String,
    /// The names (`api.example.com`, `*.example.com`) this certificate serves. [its DNS SANs]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    Strict,
    Permissive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificate {
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub name: String,
    pub module: String,
    /// Plugin configuration; a YAML mapping is handed to the plugin as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_yaml::Value>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FilterLimits>,
    /// Plugins with the same `vm_id` share shared data and queues. [""]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// Selects the root context in SDKs that host several (C++, AssemblyScript). [""]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// The plugin's log level: trace, debug, info, warn, error or critical. [info]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<PluginLogLevel>,
    /// Another version of the filter that takes `percent` of the streams (gradual rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
}

/// The candidate version of a filter during a gradual rollout: its own module and
/// configuration, the same name, limits and ids. Its metrics carry `plugin="<name>@canary"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_yaml::Value>,
    /// Share of streams (requests, or connections on tcp listeners) that get the canary,
    /// from 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginLogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_time: Option<ConfigDuration>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label in metrics; defaults to the match written out (e.g. `prefix:/api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Whole-request deadline, from the request's start until the response's last byte;
    /// `0` disables it. [15s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
    /// Reset the stream after this long with no response bytes; `0` disables it. [5m]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<ConfigDuration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exact path (the query string is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// Matches one request header. Exactly one of `exact`, `prefix`, `present` is set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}
