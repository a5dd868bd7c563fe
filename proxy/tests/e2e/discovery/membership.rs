//! Instances that register, leave on SIGTERM, die, restart in turn, and a control service
//! that restarts under them.

use std::time::Duration;

use super::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_follow_instances_as_they_register_leave_and_die() {
    let (folder, control) = start_control("discovery-follow");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
        TestUpstream::start("hello-3").await,
    ];
    let mut sidecars: Vec<SpawnedProxy> = start_hello_instances(
        "discovery-sidecar",
        &control.url,
        &token,
        &apps,
        "version: v1",
    );
    let gateway = start_gateway("discovery-gateway", &control.url);

    let all = ["hello-1", "hello-2", "hello-3"];
    assert!(
        until_answering(gateway.addr, &all, Duration::from_secs(10)).await,
        "the gateway spreads requests over the three instances:\n{}",
        gateway.log()
    );
    let listed = services(&control.url);
    assert_eq!(
        listed
            .matches("spiffe://sluice.local/ns/demo/sa/hello")
            .count(),
        3,
        "{listed}"
    );
    assert!(
        listed.contains("version=v1") && listed.contains("serving"),
        "{listed}"
    );

    // SIGTERM: the instance deregisters before it drains, so callers never send to it.
    let load = SteadyLoad::start(gateway.addr, 4, |parts| parts.status == 200);
    let mut leaving = sidecars.remove(2);
    let status = leaving.terminate(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", leaving.log());
    assert!(
        leaving
            .log()
            .contains("deregistered from the mesh registry")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}\n{}", gateway.log());
    assert_eq!(
        answering(gateway.addr, 12).await,
        names(&["hello-1", "hello-2"])
    );

    // SIGKILL: the instance leaves every caller when its lease runs out.
    let killed = sidecars.remove(1);
    drop(killed);
    assert!(
        eventually(Duration::from_secs(5), async || {
            !services(&control.url).contains("hello-2")
                && answering(gateway.addr, 1).await == names(&["hello-1"])
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            services(&control.url).matches("ns/demo/sa/hello").count() == 1
        })
        .await,
        "the lease of the killed instance ran out:\n{}",
        services(&control.url)
    );
    let load = SteadyLoad::start(gateway.addr, 4, |parts| parts.status == 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = load.stop().await;
    assert_eq!(
        outcome.failed, 0,
        "no request fails once it is gone: {outcome:?}"
    );

    // A third instance joins, and callers use it.
    sidecars.push(start_sidecar(
        "discovery-sidecar-new",
        &control.url,
        &token,
        free_port(),
        apps[2].addr,
        "hello",
        "version: v2",
    ));
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-3"],
            Duration::from_secs(5)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let (folder, control) = start_control("discovery-rolling");
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &[]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
        TestUpstream::start("hello-3").await,
    ];
    let ports: Vec<u16> = apps.iter().map(|_| free_port()).collect();
    let start = |i: usize, generation: usize| {
        start_sidecar(
            &format!("rolling-{i}-{generation}"),
            &control.url,
            &token,
            ports[i],
            apps[i].addr,
            "hello",
            "version: v1",
        )
    };
    let mut sidecars: Vec<SpawnedProxy> = (0..3).map(|i| start(i, 0)).collect();
    let gateway = start_gateway("rolling-gateway", &control.url);
    let all = ["hello-1", "hello-2", "hello-3"];
    assert!(until_answering(gateway.addr, &all, Duration::from_secs(10)).await);

    let load = SteadyLoad::start(gateway.addr, 4, |parts| parts.status == 200);
    for i in 0..3 {
        let status = sidecars[i].terminate(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()));
        sidecars[i] = start(i, 1);
        let restarted = apps[i].name;
        assert!(
            eventually(Duration::from_secs(5), async || {
                answering(gateway.addr, 12).await.contains(restarted)
            })
            .await,
            "{restarted} is back"
        );
    }
    let outcome = load.stop().await;
    assert!(outcome.served > 100, "{outcome:?}");
    assert_eq!(outcome.failed, 0, "{outcome:?}\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_control_service_restarts_and_register_again() {
    let folder = temp_folder("discovery-restart");
    let data_dir = folder.join("control");
    let listen = format!("127.0.0.1:{}", free_port());
    let control = SpawnedControl::start_with(&data_dir, &listen, &["--lease-ttl", LEASE_TTL]);
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let apps = [
        TestUpstream::start("hello-1").await,
        TestUpstream::start("hello-2").await,
    ];
    let _sidecars: Vec<SpawnedProxy> =
        start_hello_instances("restart-sidecar", &control.url, &token, &apps, "zone: a");
    let gateway = start_gateway("restart-gateway", &control.url);
    let both = names(&["hello-1", "hello-2"]);
    assert!(
        until_answering(
            gateway.addr,
            &["hello-1", "hello-2"],
            Duration::from_secs(10)
        )
        .await
    );

    let url = control.url.clone();
    control.kill();
    let load = SteadyLoad::start(gateway.addr, 2, |parts| parts.status == 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        answering(gateway.addr, 8).await,
        both,
        "the gateway keeps its endpoints without the control service"
    );
    let control = SpawnedControl::start_with(&data_dir, &listen, &["--lease-ttl", LEASE_TTL]);
    assert_eq!(control.url, url);
    assert!(
        eventually(Duration::from_secs(10), async || {
            services(&control.url).matches("ns/demo/sa/hello").count() == 2
        })
        .await,
        "both sidecars registered again:\n{}",
        services(&control.url)
    );
    // Past the settling window (6s: proxies reconnect within it), the restarted registry is
    // the truth again.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert_eq!(answering(gateway.addr, 8).await, both);
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_the_token_does_not_allow_is_refused_with_the_reason() {
    let folder = temp_folder("discovery-refused");
    let control = SpawnedControl::start_with(&folder.join("control"), "127.0.0.1:0", &[]);
    let token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let app = TestUpstream::start("billing").await;
    let sidecar = start_sidecar(
        "refused-sidecar",
        &control.url,
        &token,
        free_port(),
        app.addr,
        "billing",
        "",
    );
    assert!(
        eventually(Duration::from_secs(5), async || sidecar.log().contains(
            r#"does not allow registering service "billing" (it allows: hello)"#
        ))
        .await,
        "{}",
        sidecar.log()
    );
    assert_eq!(services(&control.url).trim(), "no service is registered");
    // The proxy itself keeps serving its file's config, and following the control service.
    assert_eq!(get(sidecar.addr, "/").await.status, 200);
    let status = sluice()
        .args(["status", "--control", &control.url])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let line = status
        .lines()
        .find(|l| l.starts_with("refused-sidecar"))
        .unwrap_or_default();
    assert!(
        line.contains("connected") && line.contains("registration refused: registrations[0]"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_instances_answers_503_naming_it() {
    let folder = temp_folder("discovery-empty");
    let control = SpawnedControl::start_with(&folder.join("control"), "127.0.0.1:0", &[]);
    let gateway = start_gateway("empty-gateway", &control.url);
    let reply = get(gateway.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-sluice-reason"), Some("no_healthy_upstream"));
    assert!(reply.body.contains("service hello"), "{}", reply.body);
    let listed = services(&control.url);
    assert!(
        listed.contains(
            "warning: hello is discovered by 1 proxy stream(s) but has no instance registered"
        ),
        "{listed}"
    );

    // `sluice check` accepts the cluster, and with --control warns that nobody registered it.
    let config = folder.join("check.yaml");
    std::fs::write(
        &config,
        "listeners: [{ name: main, address: \"127.0.0.1:0\", routes: [{ match: { prefix: / }, cluster: hello }] }]\nclusters: [{ name: hello, service: hello }]\n",
    )
    .unwrap();
    let output = sluice()
        .args([
            "check",
            "--config",
            config.to_str().unwrap(),
            "--control",
            &control.url,
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("clusters[0].service: no instance of \"hello\" is registered"),
        "{stderr}"
    );
}
