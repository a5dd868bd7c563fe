//! Proxy-Wasm behaviour that filters written outside this project rely on, as Envoy 1.40
//! shows it (benches/envoy_diff.sh runs the same cases through Envoy).

mod bodies;
mod headers;
mod replies;

use crate::support::fixture;

/// One listener whose only filter is fixture `fixture_name` (with `config`, if any), routing
/// everything to the upstream `app`; `extra_clusters` are YAML entries after `backend`.
fn one_filter_config(fixture_name: &str, config: Option<&str>, extra_clusters: &str) -> String {
    let config = config.map_or(String::new(), |c| format!(", config: {c}"));
    format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    filters: [{{ name: {fixture_name}, module: "{}"{config} }}]
    routes: [{{ match: {{ prefix: / }}, cluster: backend }}]
clusters:
  - name: backend
    endpoints: ["{{app}}"]
{extra_clusters}"#,
        fixture(fixture_name).display()
    )
}
