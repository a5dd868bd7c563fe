//! Route matching and traffic splits through the real proxy.

use http::Request;
use http_body_util::Full;

use crate::support::*;

const ROUTES: &str = r#"
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { match: { path: /exact }, cluster: b }
      - { match: { prefix: /api, method: POST }, cluster: b }
      - { match: { prefix: /api, headers: [{ name: x-canary, exact: "yes" }] }, cluster: b }
      - { match: { prefix: /api }, cluster: a }
      - { name: split, match: { prefix: /split }, weighted_clusters: [{ cluster: a, weight: 80 }, { cluster: b, weight: 20 }] }
clusters:
  - { name: a, endpoints: ["{a}"] }
  - { name: b, endpoints: ["{b}"] }
"#;

async fn upstream_for(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    send(proxy.addr, request.body(Full::default()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_cluster_their_route_names() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let proxy = start_proxy(ROUTES, &[&a, &b]).await;
    let cases = [
        ("GET", "/exact", None, Some("b")),
        ("GET", "/exact/more", None, None),
        ("POST", "/api/orders", None, Some("b")),
        ("GET", "/api/orders", Some(("x-canary", "yes")), Some("b")),
        ("GET", "/api/orders", Some(("x-canary", "no")), Some("a")),
        ("GET", "/api/orders", None, Some("a")),
    ];
    for (method, path, header, expected) in cases {
        let reply = upstream_for(&proxy, method, path, header).await;
        match expected {
            Some(name) => assert_eq!(
                reply.header("x-upstream"),
                Some(name),
                "{method} {path} {header:?}"
            ),
            None => {
                assert_eq!(reply.status, 404, "{method} {path}");
                assert_eq!(reply.header("x-sluice-reason"), Some("no_route"));
                assert!(
                    reply.body.contains("no route matches GET /exact/more"),
                    "{}",
                    reply.body
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_split_traffic() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let proxy = start_proxy(ROUTES, &[&a, &b]).await;
    for _ in 0..400 {
        assert_eq!(get(proxy.addr, "/split").await.status, 200);
    }
    let to_b = b.requests();
    assert_eq!(a.requests() + to_b, 400);
    // 20% of 400 is 80; the bound is over four standard deviations wide.
    assert!(
        (45..=115).contains(&to_b),
        "{to_b} of 400 went to the 20% cluster"
    );
}
