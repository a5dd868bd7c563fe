//! Sluice's host extensions (`proxy/src/wasm/hostcalls/extensions.rs`) through a fixture that
//! uses them as a circuit breaker would.

use crate::support::*;

fn config(endpoints: &str) -> String {
    simple_config(endpoints, "", "").replace(
        "    routes:\n",
        &format!(
            "    filters: [{{ name: ejector, module: \"{}\" }}]\n    routes:\n",
            fixture("ejector").display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_ejects_the_endpoint_that_failed() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let proxy = start_proxy(&config("\"{a}\", \"{b}\""), &[&a, &b]).await;

    let failed = get(proxy.addr, "/status/503").await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.header("x-eject-status"), Some("ejected"));
    let bad = failed.header("x-upstream").unwrap().to_owned();
    let bad_address = if bad == "a" { a.addr } else { b.addr };
    assert_eq!(
        failed.header("x-upstream-address"),
        Some(bad_address.to_string().as_str())
    );
    assert_eq!(
        failed.header("x-upstream-failure"),
        None,
        "the upstream did answer"
    );

    // Every worker now avoids the ejected endpoint.
    for _ in 0..6 {
        let reply = get(proxy.addr, "/").await;
        assert_ne!(reply.header("x-upstream"), Some(bad.as_str()));
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"sluice_upstream_endpoint_ejections_total{{cluster="backend",endpoint="{bad_address}"}} 1"#
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_learns_why_there_was_no_upstream_response() {
    let proxy = start_proxy(&config("\"127.0.0.1:1\""), &[]).await;
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("x-upstream-failure"),
        Some("upstream_connect_failure")
    );
    assert_eq!(reply.header("x-upstream-address"), Some("127.0.0.1:1"));
    assert_eq!(
        reply.header("x-eject-status"),
        None,
        "a failed connect is the proxy's to handle"
    );
}
