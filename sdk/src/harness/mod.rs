//! Test a compiled filter on the real Sluice host, in-process, from `cargo test`.
//!
//! ```no_run
//! use sluice_sdk::harness::{Harness, Scripted};
//!
//! # async fn example(module: std::path::PathBuf) {
//! let harness = Harness::builder()
//!     .filter("ratelimit", &module, r#"{"key": "header:x-user", "rate": 1, "per": "1s"}"#)
//!     .start()
//!     .await
//!     .unwrap();
//! harness.upstream().script([Scripted::status(503), Scripted::status(200)]);
//! let reply = harness.get("/", &[("x-user", "ann")]).await;
//! assert_eq!(reply.status, 503);
//! assert_eq!(harness.upstream().requests().len(), 1);
//! # }
//! ```
//!
//! The proxy is the one `sluice proxy` runs: one listener on 127.0.0.1, the filters in the
//! order given, every request routed to one cluster (`upstream`) whose endpoint is a
//! [`ScriptedUpstream`]. Each harness gives its filters a `vm_id` of its own, so tests that
//! run in parallel in one process do not share shared data or queues.
//! Build the `.wasm` with [`build_filters`] so the test runs the module you will ship.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sluice::RunningProxy;

mod upstream;

pub use upstream::{Scripted, ScriptedUpstream, SeenRequest};

/// Builds every filter crate of the cargo workspace (or single crate) at `manifest` for
/// `wasm32-wasip1`, in release mode, into `target_dir`; returns the folder of the `.wasm`
/// files (`<crate_name_with_underscores>.wasm`).
pub fn build_filters(manifest: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    sluice::wasm::build_wasm_workspace(manifest, target_dir)
}

pub struct HarnessBuilder {
    filters: Vec<serde_json::Value>,
    workers: usize,
    route_name: String,
    dead_endpoints: usize,
}

/// A running proxy with the filters under test, its upstream, and a client.
pub struct Harness {
    proxy: RunningProxy,
    upstream: ScriptedUpstream,
    address: SocketAddr,
    admin: SocketAddr,
}

/// What the client got.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// === impl HarnessBuilder ===

impl HarnessBuilder {
    /// Adds filter `name` running `module` with configuration `config` (JSON text, or any
    /// string the filter understands). Filters run in the order added.
    pub fn filter(mut self, name: &str, module: &Path, config: &str) -> Self {
        self.filters.push(serde_json::json!({
            "name": name,
            "module": module.display().to_string(),
            "config": config,
        }));
        self
    }

    /// Worker threads [1]. More than one shows whether state is shared across workers.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// The name of the one route (the `route_name` property filters see) [default].
    pub fn route_name(mut self, name: &str) -> Self {
        self.route_name = name.to_owned();
        self
    }

    /// Adds `count` endpoints to the cluster that refuse connections (a port nothing listens
    /// on), after the scripted one; round robin visits each in turn.
    pub fn dead_endpoints(mut self, count: usize) -> Self {
        self.dead_endpoints = count;
        self
    }

    /// Starts the upstream and the proxy. Call inside a multi-threaded tokio runtime
    /// (`#[tokio::test(flavor = "multi_thread")]`).
    pub async fn start(mut self) -> Result<Harness, String> {
        // Shared data and queues are process-wide per `vm_id`: a `vm_id` of its own keeps
        // this proxy's state apart from other harnesses' in the same test binary.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let vm_id = format!(
            "harness-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        for filter in &mut self.filters {
            filter["vm_id"] = serde_json::Value::String(vm_id.clone());
        }
        let upstream = ScriptedUpstream::start().await?;
        let mut endpoints = vec![upstream.address().to_string()];
        for _ in 0..self.dead_endpoints {
            endpoints.push(closed_port().await?.to_string());
        }
        // JSON is YAML, so the proxy reads this as it reads any config file.
        let config = serde_json::json!({
            "admin": { "address": "127.0.0.1:0" },
            "workers": self.workers,
            "listeners": [{
                "name": "main",
                "address": "127.0.0.1:0",
                "filters": self.filters,
                "routes": [{ "name": self.route_name, "match": { "prefix": "/" }, "cluster": "upstream" }],
            }],
            "clusters": [{
                "name": "upstream",
                "endpoints": endpoints,
                // Filters decide about failing endpoints here, not the proxy's own outlier
                // detection (and a scripted reset must not eject the only endpoint).
                "outlier_detection": { "consecutive_connect_failures": 0 },
            }],
        });
        let loaded = sluice::config::load_str(&config.to_string(), Path::new("harness.yaml"))
            .map_err(|e| e.to_string())?;
        let proxy = RunningProxy::start(&loaded)
            .await
            .map_err(|e| e.to_string())?;
        let address = proxy
            .listener_address("main")
            .ok_or("the proxy has no listener")?;
        let admin = proxy.admin_address().ok_or("the proxy has no admin")?;
        Ok(Harness {
            proxy,
            upstream,
            address,
            admin,
        })
    }
}

// === impl Harness ===

impl Harness {
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            filters: Vec::new(),
            workers: 1,
            route_name: "default".to_owned(),
            dead_endpoints: 0,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn upstream(&self) -> &ScriptedUpstream {
        &self.upstream
    }

    pub fn proxy(&self) -> &RunningProxy {
        &self.proxy
    }

    /// `GET path` with `headers`, on a new connection.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path).header("host", "harness.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::default()).unwrap_or_default())
            .await
    }

    /// `POST path` with `body` and `headers`, on a new connection.
    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::post(path).header("host", "harness.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap_or_default();
        self.send(request).await
    }

    /// Sends `request` on a new HTTP/1.1 connection. A request that fails on the wire (the
    /// proxy reset it) panics with the reason, failing the test.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        exchange(self.address, request)
            .await
            .unwrap_or_else(|e| panic!("request to the proxy at {}: {e}", self.address))
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let request = Request::get("/metrics")
            .header("host", "admin")
            .body(Full::default())
            .unwrap_or_default();
        exchange(self.admin, request)
            .await
            .unwrap_or_else(|e| panic!("admin endpoint at {}: {e}", self.admin))
            .body
    }

    /// The value of a counter or gauge a filter defined (`proxy_define_metric`) by its name,
    /// summed over the plugins that define it; `None` if no plugin did.
    pub async fn filter_metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        sum_of(
            &text,
            &["sluice_wasm_counter{", "sluice_wasm_gauge{"],
            "",
            name,
        )
    }

    /// How many values a histogram a filter defined has recorded; `None` if none defined it.
    pub async fn filter_histogram_count(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        sum_of(&text, &["sluice_wasm_histogram_count{"], "_count", name)
    }
}

/// The sum of the samples of the metric a filter defined as `name`: in the flat `families`
/// by its `name` label, or, for a tagged name (`name;key=value`), in its own family (with
/// `suffix`, such as `_count`) by its labels.
fn sum_of(text: &str, families: &[&str], suffix: &str, name: &str) -> Option<f64> {
    let escape = |value: &str| value.replace('\\', "\\\\").replace('"', "\\\"");
    let (prefixes, labels): (Vec<String>, Vec<String>) = match sluice::wasm::TaggedName::parse(name)
    {
        Some(tagged) => (
            vec![format!("{}{suffix}{{", tagged.family)],
            tagged
                .labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
                .collect(),
        ),
        None => (
            families.iter().map(|f| (*f).to_owned()).collect(),
            vec![format!("name=\"{}\"", escape(name))],
        ),
    };
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            prefixes
                .iter()
                .any(|prefix| line.starts_with(prefix.as_str()))
        })
        .filter(|line| {
            labels.iter().all(|label| {
                line.contains(&format!("{{{label}")) || line.contains(&format!(",{label}"))
            })
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// An address on 127.0.0.1 where nothing listens: bound, then let go.
async fn closed_port() -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// One request on a new HTTP/1.1 connection, and the whole response.
async fn exchange(address: SocketAddr, request: Request<Full<Bytes>>) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed on the wire: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("the response body broke off: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
