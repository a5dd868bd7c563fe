//! Proxy-Wasm filters built with the official Rust SDK, run by the real proxy in front of a
//! real upstream. Each test states the behaviour Envoy shows for the same module.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

/// A config with one listener `main`; `{filters}` and `{route_filters}` are YAML lists.
fn wasm_config(filters: &str, extra_routes: &str) -> String {
    format!(
        r#"
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    filters: {filters}
    routes:
{extra_routes}
      - match: {{ prefix: / }}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["{{app}}"]
"#
    )
}

fn filter(name: &str, fixture_name: &str, extra: &str) -> String {
    format!(
        "{{ name: {name}, module: \"{}\"{extra} }}",
        fixture(fixture_name).display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_read_and_rewritten_in_chain_order() {
    let upstream = TestUpstream::start("app").await;
    let filters = format!(
        "[{}, {}]",
        filter("first", "headers", ", config: a"),
        filter("second", "headers", ", config: b")
    );
    let proxy = start_proxy(&wasm_config(&filters, ""), &[&upstream]).await;
    let request = Request::get("/echo")
        .header("x-wasm-remove-me", "1")
        .body(Full::default())
        .unwrap();
    let reply = send(proxy.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Request phase in chain order: first, then second.
    assert!(
        reply.body.contains("x-wasm-order: a\nx-wasm-order: b\n"),
        "{}",
        reply.body
    );
    assert_eq!(reply.echoed("x-wasm-remove-me"), None);
    assert_eq!(
        reply.echoed("x-wasm-plugin"),
        Some("second"),
        "plugin_name is the filter's name"
    );
    assert!(
        reply
            .echoed("x-wasm-source")
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{}",
        reply.body
    );
    assert_eq!(reply.echoed("x-wasm-method"), Some("GET"));
    // Response phase in reverse: second, then first (whose `set` wins).
    let order: Vec<&str> = reply
        .headers
        .get_all("x-wasm-order")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(reply.header("x-wasm-tag"), Some("a"));
    assert_eq!(reply.header("x-wasm-saw-status"), Some("200"));

    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_wasm_counter{name="requests",plugin="first"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_wasm_counter{name="requests",plugin="second"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_skips_the_upstream_and_later_filters() {
    let upstream = TestUpstream::start("app").await;
    let filters = format!(
        "[{}, {}]",
        filter("first", "headers", ", config: a"),
        filter("second", "headers", ", config: b")
    );
    let proxy = start_proxy(&wasm_config(&filters, ""), &[&upstream]).await;
    let reply = get(proxy.addr, "/deny").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "denied by wasm\n");
    assert_eq!(reply.header("x-denied-by"), Some("a"));
    // The reply passed back through the filter that sent it, and not through `second`.
    let order: Vec<&str> = reply
        .headers
        .get_all("x-wasm-order")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["a"]);
    assert_eq!(reply.header("x-wasm-saw-status"), Some("403"));
    assert_eq!(upstream.requests(), 0);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"sluice_http_local_replies_total{listener="main",reason="filter_local_reply"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_sees_the_path_a_listener_filter_rewrote_and_route_filters_apply_per_route() {
    let (app, other) = (
        TestUpstream::start("app").await,
        TestUpstream::start("other").await,
    );
    let route_filter = filter("route-only", "headers", ", config: routed");
    let routes = format!(
        "      - match: {{ path: /rewritten }}\n        cluster: other\n      - match: {{ prefix: /routed }}\n        cluster: backend\n        filters: [{route_filter}]\n"
    );
    let yaml = wasm_config(
        &format!("[{}]", filter("first", "headers", ", config: a")),
        &routes,
    ) + "  - name: other\n    endpoints: [\"{other}\"]\n";
    let proxy = start_proxy(&yaml, &[&app, &other]).await;

    let rewritten = get(proxy.addr, "/rewrite/me").await;
    assert_eq!(
        rewritten.header("x-upstream"),
        Some("other"),
        "the route was chosen after the rewrite"
    );
    assert!(
        rewritten.body.starts_with("GET /rewritten HTTP/1.1"),
        "{}",
        rewritten.body
    );

    let routed = get(proxy.addr, "/routed").await;
    assert!(
        routed
            .body
            .contains("x-wasm-order: a\nx-wasm-order: routed\n"),
        "{}",
        routed.body
    );
    let plain = get(proxy.addr, "/plain").await;
    assert!(
        !plain.body.contains("routed"),
        "the route filter runs only on its route:\n{}",
        plain.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_buffered_and_rewritten() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &wasm_config(&format!("[{}]", filter("body", "body", "")), ""),
        &[&upstream],
    )
    .await;
    let raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n7\r\n, wasm \r\n5\r\nworld\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.addr, raw, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("HELLO, WASM WORLD"),
        "the upstream got the rewritten body:\n{response}"
    );
    // The note names the size of the whole buffered response body the filter saw.
    assert!(
        response.contains("HELLO, WASM WORLD\n-- seen by wasm: 175 bytes\r\n"),
        "{response}"
    );

    let large: Vec<u8> = std::iter::repeat_n(b'x', 300_000).collect();
    let reply = send(
        proxy.addr,
        Request::post("/echo")
            .body(Full::new(Bytes::from(large)))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains(&"X".repeat(300_000)),
        "a body in many chunks is buffered whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_past_the_limit_is_refused_with_413() {
    let upstream = TestUpstream::start("app").await;
    let yaml = wasm_config(&format!("[{}]", filter("body", "body", "")), "").replace(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    max_body_buffer: 64KiB\n",
    );
    let proxy = start_proxy(&yaml, &[&upstream]).await;
    let large: Vec<u8> = std::iter::repeat_n(b'x', 300_000).collect();
    let reply = send(
        proxy.addr,
        Request::post("/echo")
            .body(Full::new(Bytes::from(large)))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.header("x-sluice-reason"), Some("body_too_large"));
    // Envoy's words, and the reply runs back through the filter, which notes what it saw.
    assert_eq!(reply.body, "Payload Too Large\n-- seen by wasm: 17 bytes");
    let small = send(
        proxy.addr,
        Request::post("/echo")
            .body(Full::new(Bytes::from_static(b"fits")))
            .unwrap(),
    )
    .await;
    assert_eq!(small.status, 200);
}

fn hostile_config(extra: &str) -> String {
    wasm_config(&format!("[{}]", filter("hostile", "hostile", extra)), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_filter_fails_closed_and_the_next_request_gets_a_fresh_vm() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &hostile_config("").replace("workers: 2", "workers: 1"),
        &[&upstream],
    )
    .await;
    let reply = get(proxy.addr, "/panic").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-sluice-reason"), Some("wasm_fail_stream"));
    assert_eq!(reply.body, "", "Envoy's fail-closed reply has no body");
    assert_eq!(upstream.requests(), 0);
    let next = get(proxy.addr, "/fine").await;
    assert_eq!(
        next.status, 200,
        "a trap does not poison the plugin: {}",
        next.body
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_wasm_vm_failures_total{plugin="hostile",reason="trap"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_wasm_fail_policy_total{plugin="hostile",policy="closed"} 1"#),
        "{metrics}"
    );
    assert_eq!(get(proxy.admin, "/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_a_failing_filter() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&hostile_config(", fail_open: true"), &[&upstream]).await;
    let reply = get(proxy.addr, "/panic").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-upstream"), Some("app"));
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_wasm_fail_policy_total{plugin="hostile",policy="open"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_and_memory_hogging_callbacks_are_stopped() {
    let upstream = TestUpstream::start("app").await;
    let limits = ", limits: { callback_time: 200ms, memory: 64MiB }";
    let proxy = start_proxy(&hostile_config(limits), &[&upstream]).await;
    let looping = tokio::time::timeout(Duration::from_secs(10), get(proxy.addr, "/loop"))
        .await
        .expect("an infinite loop is interrupted");
    assert_eq!(looping.status, 503);
    let hog = get(proxy.addr, "/hog").await;
    assert_eq!(hog.status, 503);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_wasm_vm_failures_total{plugin="hostile",reason="timeout"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_wasm_vm_failures_total{plugin="hostile",reason="memory"} 1"#),
        "{metrics}"
    );
    assert_eq!(get(proxy.addr, "/fine").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guest_pointers_are_refused_with_status_6() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&hostile_config(""), &[&upstream]).await;
    let reply = get(proxy.addr, "/bad-pointers").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.echoed("x-log-status"), Some("6"));
    assert_eq!(reply.echoed("x-map-status"), Some("6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off_and_shows_on_ready() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &hostile_config("").replace("workers: 2", "workers: 1"),
        &[&upstream],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/panic").await.status, 503);
    }
    let ready = get(proxy.admin, "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("plugin hostile is crash-looping"),
        "{}",
        ready.body
    );
    // After the backoff a fresh VM serves again, and a good request ends the crash loop.
    let recovered = eventually(Duration::from_secs(5), async || {
        get(proxy.addr, "/fine").await.status == 200
    })
    .await;
    assert!(recovered);
    assert_eq!(get(proxy.admin, "/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_requests_resume_from_a_tick_and_shared_state_spans_workers() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &wasm_config(&format!("[{}]", filter("pauser", "pauser", "")), ""),
        &[&upstream],
    )
    .await;
    let paused = tokio::time::timeout(Duration::from_secs(5), get(proxy.addr, "/pause"))
        .await
        .expect("the tick resumes the paused request");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let mut hits = Vec::new();
    for _ in 0..6 {
        let reply = get(proxy.addr, "/count").await;
        hits.push(reply.echoed("x-hits").unwrap().parse::<u64>().unwrap());
    }
    // One counter for all workers' VMs, so hits strictly increase.
    assert!(hits.windows(2).all(|w| w[1] > w[0]), "{hits:?}");
    let dequeued = eventually(Duration::from_secs(5), async || {
        get(proxy.addr, "/count")
            .await
            .header("x-dequeued")
            .is_some_and(|d| d != "0")
    })
    .await;
    assert!(dequeued, "queue events reach on_queue_ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_that_cannot_serve_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("sluice-wasm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let no_abi = dir.join("no-abi.wasm");
    std::fs::write(&no_abi, b"\0asm\x01\0\0\0").unwrap();

    let cases = [
        (
            format!("{{ name: f, module: \"{}\" }}", garbage.display()),
            "does not compile",
        ),
        (
            format!("{{ name: f, module: \"{}\" }}", no_abi.display()),
            "exports no known Proxy-Wasm ABI version",
        ),
        (
            filter("f", "hostile", ", config: reject"),
            "proxy_on_configure returned false",
        ),
        (
            "{ name: f, module: missing.wasm }".to_owned(),
            "cannot read module",
        ),
    ];
    for (entry, expected) in cases {
        let yaml = wasm_config(&format!("[{entry}]"), "").replace("{app}", "127.0.0.1:1");
        let error = sluice::config::load_str(&yaml, std::path::Path::new("test.yaml"))
            .map_err(|e| e.to_string())
            .and_then(|loaded| {
                sluice::config::Snapshot::build(&loaded, 1, &sluice::admin::Metrics::new(), None)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .expect_err(expected);
        assert!(
            error.starts_with("test.yaml: listeners[0].filters[0]: "),
            "{error}"
        );
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_lists_each_plugin_with_its_digest() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &wasm_config(
            &format!("[{}]", filter("first", "headers", ", config: a")),
            "",
        ),
        &[&upstream],
    )
    .await;
    let json: serde_json::Value =
        serde_json::from_str(&get(proxy.admin, "/config").await.body).unwrap();
    let module = &json["modules"][0];
    assert_eq!(module["plugin"], "first");
    assert_eq!(module["abi"], "0.2.1");
    assert_eq!(module["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_hold_the_request_until_the_answer() {
    let (app, auth) = (
        TestUpstream::start("app").await,
        TestUpstream::start("auth").await,
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = wasm_config(&format!("[{}]", filter("authz", "callout", "")), "")
        + &format!(
            "  - name: auth\n    endpoints: [\"{{auth}}\"]\n  - name: dead\n    endpoints: [\"{dead}\"]\n"
        );
    let proxy = start_proxy(&yaml, &[&app, &auth]).await;
    let ask = |headers: &'static [(&'static str, &'static str)]| {
        get_with(proxy.addr, "/resource", headers)
    };

    let allowed = ask(&[]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        allowed.echoed("x-auth-said"),
        Some("GET /allow HTTP/1.1"),
        "{}",
        allowed.body
    );
    assert_eq!(auth.requests(), 1);

    let denied = ask(&[("x-check-path", "/status/403")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied: auth answered 403: status\n");

    // Upstream trouble arrives as the response Envoy's async client makes up.
    let timeout = ask(&[
        ("x-check-path", "/slow/3000"),
        ("x-check-timeout-ms", "100"),
    ])
    .await;
    assert_eq!(
        (timeout.status.as_u16(), timeout.header("x-auth-status")),
        (403, Some("504"))
    );
    assert!(
        timeout.body.ends_with("upstream request timeout"),
        "{}",
        timeout.body
    );
    let unreachable = ask(&[("x-check-cluster", "dead")]).await;
    assert_eq!(
        unreachable.header("x-auth-status"),
        Some("503"),
        "{}",
        unreachable.body
    );
    // Envoy 1.40's router words it so, and the filter passes its text on.
    assert!(
        unreachable.body.ends_with(
            "upstream connect error or disconnect/reset before headers. \
             reset reason: remote connection failure"
        ),
        "{}",
        unreachable.body
    );

    // An unknown cluster is BAD_ARGUMENT, which the SDK reports as an error.
    let unknown = ask(&[("x-check-cluster", "nope")]).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.body.as_str()),
        (500, "callout refused: BadArgument\n")
    );

    // A response that breaks off is a failed call: no headers, and get_status says reset.
    let broken = ask(&[("x-check-path", "/die-mid-body")]).await;
    assert_eq!(
        (broken.status.as_u16(), broken.body.as_str()),
        (502, "callout failed: 11 reset\n")
    );
    assert_eq!(
        app.requests(),
        1,
        "only the allowed request reached the app"
    );
}

/// A tcp listener with the network fixture in front of an echo server.
async fn network_proxy(extra: &str) -> TestProxy {
    let echo_addr = start_tcp_echo().await;
    let yaml = format!(
        "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    protocol: tcp\n    cluster: echo\n    filters: [{}]\nclusters:\n  - {{ name: echo, endpoints: [\"{echo_addr}\"] }}\n",
        filter("shouter", "network", extra)
    );
    start_proxy(&yaml, &[]).await
}

async fn exchange(stream: &mut tokio::net::TcpStream, send: &[u8], expect: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(send).await.unwrap();
    let mut received = vec![0u8; expect];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut received))
        .await
        .expect("an answer")
        .unwrap();
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_filters_see_and_rewrite_tcp_data() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = network_proxy("").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut stream, b"hello", 5).await, b"HELLO");
    // Held bytes accumulate: the filter sees "hold" and the next chunk together.
    stream.write_all(b"hold").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        exchange(&mut stream, b"-release", 12).await,
        b"HOLD-RELEASE"
    );
    // The upstream's answer can make the filter close the connection.
    stream.write_all(b"close-me").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the filter closed the connection");
    let metrics = eventually(Duration::from_secs(5), async || {
        proxy
            .metrics()
            .await
            .contains(r#"sluice_wasm_counter{name="closes",plugin="shouter"} 1"#)
    })
    .await;
    assert!(metrics, "{}", proxy.metrics().await);
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"sluice_wasm_counter{name="connections",plugin="shouter"} 1"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_network_filter_closes_only_its_connection() {
    use tokio::io::AsyncReadExt;
    let proxy = network_proxy("").await;
    let mut bystander = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut bystander, b"before", 6).await, b"BEFORE");
    let mut victim = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    victim.write_all(b"panic").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), victim.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok() && rest.is_empty(),
        "fail closed: the connection ends, nothing forwarded"
    );
    let mut fresh = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut fresh, b"after", 5).await, b"AFTER");
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"sluice_wasm_fail_policy_total{plugin="shouter",policy="closed"} 1"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_0_1_0_modules_run() {
    let upstream = TestUpstream::start("app").await;
    let legacy = format!(
        "[{{ name: legacy, module: \"{}\" }}]",
        legacy_fixture().display()
    );
    let proxy = start_proxy(&wasm_config(&legacy, ""), &[&upstream]).await;
    let reply = get(proxy.addr, "/old").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.echoed("x-legacy-method"), Some("GET"));
    // In 0.1.0 a missing header is OK and empty; the 0.1 SDK reads that as None.
    assert_eq!(reply.echoed("x-legacy-missing"), Some("None"));
    let json: serde_json::Value =
        serde_json::from_str(&get(proxy.admin, "/config").await.body).unwrap();
    assert_eq!(json["modules"][0]["abi"], "0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_never_resumes_meets_the_stream_idle_timeout() {
    let (app, auth) = (
        TestUpstream::start("app").await,
        TestUpstream::start("auth").await,
    );
    let route = format!(
        "      - match: {{ prefix: /held }}\n        cluster: backend\n        idle_timeout: 200ms\n        filters: [{}]\n",
        filter("authz", "callout", "")
    );
    let yaml = wasm_config("[]", &route) + "  - name: auth\n    endpoints: [\"{auth}\"]\n";
    let proxy = start_proxy(&yaml, &[&app, &auth]).await;
    let request = Request::get("/held")
        .header("x-check-path", "/slow/3000")
        .header("x-check-timeout-ms", "10000")
        .body(Full::default())
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(2), send(proxy.addr, request))
        .await
        .expect("the idle timeout answers long before the callout does");
    assert_eq!(reply.status, 408);
    assert_eq!(reply.header("x-sluice-reason"), Some("stream_idle_timeout"));
    assert_eq!(app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_pass_filters_with_authority_from_the_uri() {
    let upstream = TestUpstream::start("app").await;
    let filters = format!("[{}]", filter("first", "headers", ", config: h2"));
    let proxy = start_proxy(&wasm_config(&filters, ""), &[&upstream]).await;
    let request = Request::get("http://svc.example/over-h2")
        .body(Full::default())
        .unwrap();
    let reply = send_h2(proxy.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with("GET /over-h2 HTTP/1.1\n"),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("host"),
        Some("svc.example"),
        ":authority reaches the upstream as Host"
    );
    assert_eq!(reply.echoed("x-wasm-order"), Some("h2"));
    assert_eq!(reply.header("x-wasm-tag"), Some("h2"));
}

/// A proxy running the `grpc` fixture in front of `app`, with the cluster `grpc` (our gRPC
/// upstream, over HTTP/2) and the `extra_clusters` (YAML list entries).
async fn start_grpc_caller(extra_clusters: &str) -> (TestUpstream, TestUpstream, TestProxy) {
    let (app, grpc) = (
        TestUpstream::start("app").await,
        TestUpstream::start("grpc").await,
    );
    let yaml = wasm_config(&format!("[{}]", filter("caller", "grpc", "")), "")
        + "  - name: grpc\n    endpoints: [\"{grpc}\"]\n    protocol: http2\n"
        + extra_clusters;
    let proxy = start_proxy(&yaml, &[&app, &grpc]).await;
    (app, grpc, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grpc_callouts_answer_with_a_message_or_a_status() {
    let (app, _grpc, proxy) = start_grpc_caller("").await;
    let ask = |headers: &'static [(&'static str, &'static str)]| {
        get_with(proxy.addr, "/resource", headers)
    };
    let ok = ask(&[]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.echoed("x-grpc-reply"),
        Some("ping"),
        "the echoed message reached on_grpc_receive"
    );

    let denied = ask(&[("x-grpc-method", "Refuse")]).await;
    assert_eq!(
        (denied.status.as_u16(), denied.body.as_str()),
        // Envoy's gRPC client adds the response code details to the message.
        (403, "grpc failed: 7 denied{via_upstream}")
    );

    // Envoy answers an unknown cluster with PARSE_FAILURE, which the SDK reports as an error.
    let unknown = ask(&[("x-grpc-cluster", "nope")]).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.body.as_str()),
        (500, "grpc refused: ParseFailure")
    );
    assert_eq!(app.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grpc_calls_can_be_cancelled_before_their_answer() {
    let (_app, _grpc, proxy) = start_grpc_caller("").await;
    let cancelled = get_with(proxy.addr, "/resource", &[("x-grpc-cancel", "1")]).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    // Envoy forgets a cancelled call: cancelling it again is NOT_FOUND.
    assert_eq!(
        cancelled.echoed("x-grpc-cancelled"),
        Some("Ok(()) then Err(NotFound)")
    );
    // Had the answer been delivered anyway, the filter would resume a finished request and
    // the SDK would look up a context it has deleted; the requests after show the VM is fine.
    for _ in 0..4 {
        let ok = get_with(proxy.addr, "/resource", &[]).await;
        assert_eq!(ok.echoed("x-grpc-reply"), Some("ping"), "{}", ok.body);
    }
}

/// The `grpc` fixture's log of one stream: its callbacks, in order.
async fn stream_log(proxy: &TestProxy, headers: &[(&'static str, &'static str)]) -> String {
    let reply = get_with(proxy.addr, "/resource", headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
        .echoed("x-grpc-stream-log")
        .unwrap_or_else(|| panic!("no stream log in {}", reply.body))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_carry_messages_both_ways_with_envoys_callbacks_and_statuses() {
    let (app, _grpc, proxy) = start_grpc_caller(
        "  - name: dead\n    endpoints: [\"127.0.0.1:1\"]\n    protocol: http2\n",
    )
    .await;

    // The statuses Envoy gives (the SDK panics on any other). The first stream of a VM is 6.
    let probe = get_with(proxy.addr, "/resource", &[("x-grpc-probe", "1")]).await;
    assert_eq!(
        probe.echoed("x-grpc-probe"),
        Some(
            "unknown-cluster=Err(ParseFailure) token=6 send-to-call=Err(BadArgument) \
             send-to-unknown=Err(NotFound) cancel-unknown=Err(NotFound) close=Ok(()) \
             cancel=Ok(()) close-again=Err(NotFound)"
        ),
        "{}",
        probe.body
    );

    // Each message is sent only after the answer to the last one arrived: both directions
    // are open at once. Then the filter closes its side and the server ends with trailers.
    let log = stream_log(&proxy, &[("x-grpc-stream", "a,b,c")]).await;
    let parts: Vec<&str> = log.split(" | ").collect();
    assert!(
        parts[0].starts_with("initial ")
            && parts[0].contains(":status,content-type,x-chat,x-caller-seen")
            && parts[0].ends_with("x-caller-seen=wasm"),
        "initial metadata, with the filter's own metadata seen by the server: {log}"
    );
    let count = parts[0].split(' ').nth(1).unwrap();
    let names = parts[0]
        .split('[')
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    assert_eq!(count, names.split(',').count().to_string(), "{log}");
    assert_eq!(
        parts[1..],
        [
            "message echo:a",
            "message echo:b",
            "message echo:c",
            "closed",
            "trailing 3 [grpc-status,grpc-message,x-count]",
            "close 0 bye{via_upstream}",
        ],
        "{log}"
    );

    // A trailers-only reply: no initial metadata, the headers as trailing metadata.
    let refused = stream_log(
        &proxy,
        &[("x-grpc-stream", "a"), ("x-grpc-method", "Refuse")],
    )
    .await;
    let parts: Vec<&str> = refused.split(" | ").collect();
    assert_eq!(parts[0], "initial 0 [] x-caller-seen=", "{refused}");
    assert!(
        parts[1].starts_with("trailing ") && parts[1].contains("grpc-status,grpc-message"),
        "{refused}"
    );
    assert_eq!(parts[2..], ["close 7 denied{via_upstream}"], "{refused}");

    // An unreachable upstream is UNAVAILABLE, as Envoy's router reports it to gRPC.
    let dead = stream_log(
        &proxy,
        &[("x-grpc-stream", "a"), ("x-grpc-cluster", "dead")],
    )
    .await;
    assert_eq!(
        dead,
        "initial 0 [] x-caller-seen= | \
         trailing 4 [:status,content-type,grpc-status,grpc-message] | \
         close 14 upstream connect error or disconnect/reset before headers. \
         reset reason: remote connection failure{upstream_reset_before_response_started\
         {remote_connection_failure|delayed_connect_error:_Connection_refused}}"
    );

    // Cancelled at the first answer: no callback follows (the SDK would panic on one, and
    // the VM would fail the requests after).
    let cancelled = stream_log(&proxy, &[("x-grpc-stream", "a,b"), ("x-grpc-cancel", "1")]).await;
    assert!(
        cancelled.ends_with("message echo:a | cancelled"),
        "{cancelled}"
    );
    for _ in 0..4 {
        let log = stream_log(&proxy, &[("x-grpc-stream", "z")]).await;
        assert!(log.ends_with("message echo:z | closed | trailing 3 [grpc-status,grpc-message,x-count] | close 0 bye{via_upstream}"), "{log}");
    }
    assert_eq!(app.requests(), 9);
}

#[test]
fn body_chunks_after_the_stream_ended_pass_through_without_failing_the_vm() {
    use std::cell::RefCell;
    use std::rc::Rc;

    use sluice::wasm::{FilterChain, PluginSpec, StreamInfo, WorkerPlugins};

    // The response can end (and with it the stream's filter contexts) while the client is
    // still uploading; later request chunks then meet a finished chain.
    let metrics = sluice::admin::Metrics::new();
    let yaml = format!(
        "{{ name: late, module: \"{}\" }}",
        fixture("body").display()
    );
    let config: sluice::config::FilterConfig = serde_yaml::from_str(&yaml).unwrap();
    let health = metrics.plugin_health("late");
    let spec = PluginSpec::load(
        &config,
        std::path::Path::new("."),
        Some(metrics.wasm_families()),
        health,
        Default::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let plugins = WorkerPlugins::new(Default::default());
        let info = Rc::new(StreamInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "HTTP/1.1",
        ));
        let chain = Rc::new(RefCell::new(FilterChain::new(info, 1 << 20)));
        chain.borrow_mut().extend(&plugins, &[Arc::clone(&spec)]);
        chain.borrow_mut().finish();
        let step = chain.borrow_mut().request_body(b"late".to_vec(), false);
        assert!(matches!(step, sluice::wasm::BodyStep::Forward(ref data) if data == b"late"));
    });
    let text = metrics.render();
    assert!(
        !text.contains("sluice_wasm_vm_failures_total{"),
        "the VM did not fail:\n{text}"
    );
}
