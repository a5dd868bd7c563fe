//! What `sluice demo` starts, on free ports: the control service (the mesh CA), the apps and
//! their sidecars, the gateway, and the standard filters built from this tree.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_gateway_balances_and_runs_every_standard_filter() {
    let filters = tokio::task::spawn_blocking(sluice::demo::build_standard_filters)
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
    let addresses = sluice::demo::DemoAddresses {
        gateway: "127.0.0.1:0",
        admin: "127.0.0.1:0",
        control: "127.0.0.1:0",
    };
    let mesh = sluice::demo::start_mesh(&filters, &addresses)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let gateway = mesh.gateway.listener_address("gateway").unwrap();
    let admin = mesh.gateway.admin_address().unwrap();

    let first = get(gateway, "/hello").await.body;
    let second = get(gateway, "/hello").await.body;
    assert!(first.starts_with("hello from hello-"), "{first}");
    assert_ne!(first.lines().next(), second.lines().next(), "round robin");
    // Through the sidecars, over mutual TLS: the app hears who called.
    assert!(
        first.contains("caller (its mTLS identity, checked by the sidecar): spiffe://demo.sluice/ns/demo/sa/gateway"),
        "{first}"
    );
    // A client without a mesh certificate does not get past a sidecar.
    let sidecar = mesh.sidecars[0].listener_address("inbound").unwrap();
    let refused = raw_exchange(
        sidecar,
        b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(!refused.contains("200"), "{refused}");

    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(get(gateway, "/limited").await.status.as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);

    assert_eq!(get(gateway, "/admin/stats").await.status, 401);
    let key = sluice::demo::DEMO_API_KEY;
    let operator = get_with(gateway, "/admin/stats", &[("x-api-key", key)]).await;
    assert_eq!(operator.status, 200);

    let mut flaky = Vec::new();
    for _ in 0..5 {
        let reply = get(gateway, "/flaky").await;
        flaky.push((
            reply.status.as_u16(),
            reply.header("x-sluice-circuit-breaker").is_some(),
        ));
    }
    assert_eq!(
        flaky,
        [
            (503, false),
            (503, false),
            (503, false),
            (503, true),
            (503, true)
        ],
        "the app fails three times, then the breaker answers"
    );

    // Each instance fails every other /unsteady request; the retry filter hides it.
    let mut retried = 0;
    for _ in 0..6 {
        let reply = get(gateway, "/unsteady").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        retried += usize::from(reply.header("x-sluice-attempts").is_some());
    }
    assert!(retried >= 1, "some requests needed a retry");

    let metrics = get(admin, "/metrics").await.body;
    assert!(
        metrics.contains(r#"sluice_wasm_requests_total{cluster="hello",plugin="metrics",route="limited",status_class="4xx"} 2"#),
        "{metrics}"
    );

    // The third instance the demo suggests starting by hand registers, and gets traffic.
    let extra = &mesh.extra_instance;
    let control = format!("http://{}", mesh.control.address());
    let mut third = SpawnedProxy::start_listening(
        &extra.config,
        &[
            "--control",
            &control,
            "--join-token-file",
            extra.join_token.to_str().unwrap(),
            "--id",
            "hello-3-sidecar",
        ],
        "inbound",
    );
    let answering = async || {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..9 {
            let body = get(gateway, "/hello").await.body;
            names.insert(
                body.split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        names
    };
    let three: std::collections::BTreeSet<String> =
        ["hello-1", "hello-2", "hello-3"].map(str::to_owned).into();
    assert!(
        eventually(std::time::Duration::from_secs(10), async || answering()
            .await
            == three)
        .await,
        "{}",
        third.log()
    );
    assert!(
        third
            .terminate(std::time::Duration::from_secs(10))
            .await
            .is_some()
    );
    assert!(!answering().await.contains("hello-3"));
    mesh.shutdown().await;
}
