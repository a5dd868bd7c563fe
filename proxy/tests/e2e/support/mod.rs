//! What every end-to-end test needs: real upstreams, the real proxy in-process, clients.

pub mod client;
pub mod etcd;
pub mod fixtures;
pub mod load;
pub mod process;
pub mod subscribed;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;

pub use client::*;
pub use fixtures::{assemblyscript_fixture, cpp_fixture, fixture, go_fixture, legacy_fixture};
pub use load::SteadyLoad;
pub use process::*;
use sluice::RunningProxy;
use sluice::config::LoadedConfig;
pub use subscribed::{push_tagger, subscribed_proxy};
pub use upstream::TestUpstream;

pub struct TestProxy {
    pub proxy: RunningProxy,
    /// The address of the listener named `main`.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts the proxy from YAML. Listeners and admin should use port 0; `{name}` placeholders are
/// replaced by the address of the upstream of that name.
pub async fn start_proxy(yaml: &str, upstreams: &[&TestUpstream]) -> TestProxy {
    start_loaded(&test_config(yaml, upstreams)).await
}

/// Starts the proxy from a config already loaded (and perhaps adjusted) by [`test_config`].
pub async fn start_loaded(loaded: &LoadedConfig) -> TestProxy {
    let proxy = RunningProxy::start(loaded).await.unwrap();
    let addr = proxy
        .listener_address("main")
        .expect("a listener named main");
    let admin = proxy.admin_address().expect("admin endpoint");
    TestProxy { proxy, addr, admin }
}

/// Parses and validates a test config, with the `{name}` placeholders and the admin endpoint
/// of [`start_proxy`].
pub fn test_config(yaml: &str, upstreams: &[&TestUpstream]) -> LoadedConfig {
    let mut yaml = yaml.to_owned();
    for upstream in upstreams {
        yaml = yaml.replace(
            &format!("{{{}}}", upstream.name),
            &upstream.addr.to_string(),
        );
    }
    if !yaml.contains("admin:") {
        yaml = format!("admin: {{ address: \"127.0.0.1:0\" }}\n{yaml}");
    }
    sluice::config::load_str(&yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// `main` routes to cluster `backend` ({endpoint}) through filter `tagger`: the headers
/// fixture at `module`, which stamps `tag` on responses (`x-wasm-tag`), so a response shows
/// which plugin config served it.
pub fn tagger_config(module: &str, endpoint: &str, tag: &str, workers: usize) -> String {
    format!(
        r#"
workers: {workers}
listeners:
  - name: main
    address: 127.0.0.1:0
    filters:
      - name: tagger
        module: {module}
        config: "{tag}"
    routes:
      - match: {{ prefix: / }}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["{endpoint}"]
"#
    )
}

/// One listener `main` routing everything to cluster `backend` with the given endpoints.
pub fn simple_config(endpoints: &str, cluster_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: {{ prefix: / }}
        cluster: backend
{route_extra}
clusters:
  - name: backend
    endpoints: [{endpoints}]
{cluster_extra}
"#
    )
}

impl TestProxy {
    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.body
    }
}
