use std::path::Path;

use crate::config::load_str;

fn paths(yaml: &str) -> Vec<String> {
    match load_str(yaml, Path::new("t.yaml")) {
        Ok(_) => Vec::new(),
        Err(error) => error
            .problems()
            .iter()
            .map(|p| format!("{}: {}", p.path, p.reason))
            .collect(),
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let found = paths(
        r#"
workers: 0
listeners:
  - name: a
    address: nowhere
    routes:
      - match: { prefix: api }
        cluster: missing
  - name: a
    address: 127.0.0.1:1
    protocol: tcp
clusters:
  - name: c
    endpoints: ["127.0.0.1"]
"#,
    );
    let expect = [
        "workers: must be at least 1",
        "listeners[0].address: \"nowhere\" is not an IP address",
        "listeners[0].routes[0].match: \"api\" must start with '/'",
        "listeners[0].routes[0].cluster: unknown cluster \"missing\" (defined clusters: c)",
        "listeners[1].name: duplicate listener name",
        "listeners[1].cluster: a tcp listener needs a cluster",
        "clusters[0].endpoints[0]: ",
    ];
    for prefix in expect {
        assert!(
            found.iter().any(|f| f.starts_with(prefix)),
            "missing {prefix:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn listeners_may_share_only_port_zero() {
    let yaml = |address: &str| {
        format!(
            "listeners:\n  - {{ name: a, address: \"{address}\", routes: [{{ match: {{ prefix: / }}, cluster: c }}] }}\n  - {{ name: b, address: \"{address}\", routes: [{{ match: {{ prefix: / }}, cluster: c }}] }}\nclusters: [{{ name: c, endpoints: [\"127.0.0.1:2\"] }}]\n"
        )
    };
    assert!(paths(&yaml("127.0.0.1:0")).is_empty());
    assert_eq!(
        paths(&yaml("127.0.0.1:8000")),
        ["listeners[1].address: 127.0.0.1:8000 is already used by another listener"]
    );
}

#[test]
fn filter_entries_are_checked() {
    let found = paths(
        r#"
listeners:
  - name: a
    address: 127.0.0.1:1
    filters:
      - { name: probe, module: "", limits: { memory: 2GiB, callback_time: 0 } }
      - { name: probe, module: probe.wasm, canary: { module: "", percent: 120 } }
    routes: [{ match: { prefix: / }, cluster: c }]
clusters: [{ name: c, endpoints: ["127.0.0.1:2"] }]
"#,
    );
    assert_eq!(
        found,
        [
            "listeners[0].filters[0].module: must name a .wasm file or sha256:<digest>",
            "listeners[0].filters[0].limits.memory: must be at most 1GiB",
            "listeners[0].filters[0].limits.callback_time: must be more than 0",
            "listeners[0].filters[1].name: duplicate filter name \"probe\" in this chain",
            "listeners[0].filters[1].canary.module: must name a .wasm file or sha256:<digest>",
            "listeners[0].filters[1].canary.percent: must be from 0 to 100, not 120",
        ]
    );
}

#[test]
fn route_needs_exactly_one_target() {
    let found = paths(
        r#"
listeners:
  - name: a
    address: 127.0.0.1:1
    routes:
      - match: { path: /x, headers: [{ name: x-a, exact: "1", present: true }] }
      - match: { prefix: / }
        weighted_clusters: [{ cluster: c, weight: 0 }]
clusters: [{ name: c, endpoints: ["localhost:2"] }]
"#,
    );
    assert!(
        found
            .contains(&"listeners[0].routes[0]: needs `cluster` or `weighted_clusters`".to_owned())
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("listeners[0].routes[0].match.headers[0]: set exactly one"))
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("listeners[0].routes[1].weighted_clusters: weights"))
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}
