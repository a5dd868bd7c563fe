//! The control service with real proxies subscribed on loopback: pushes reach every proxy,
//! bad pushes change nothing, and losing the service loses no config.

use std::time::Duration;

use sluice::control::{
    CommandError, ControlSubscription, FilterTarget, ProxyValidator, PushRequest,
    SubscriberSettings, push, wait_for_acks,
};
use sluice_control::{ControlSettings, RunningControl};

use crate::support::*;

async fn start_control(data_dir: &std::path::Path, token: Option<&str>) -> RunningControl {
    start_control_on("127.0.0.1:0".parse().unwrap(), data_dir, token).await
}

async fn start_control_on(
    listen: std::net::SocketAddr,
    data_dir: &std::path::Path,
    token: Option<&str>,
) -> RunningControl {
    let settings = ControlSettings {
        listen,
        store: sluice_control::StoreLocation::Dir(data_dir.to_owned()),
        token: token.map(str::to_owned),
        max_module_size: sluice_control::DEFAULT_MAX_MODULE_SIZE,
        lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
        name: None,
        tls: false,
        tls_names: Vec::new(),
        identity: sluice_control::IdentitySettings::default(),
    };
    RunningControl::start(settings, ProxyValidator::new())
        .await
        .unwrap()
}

fn url_of(control: &RunningControl) -> String {
    format!("http://{}", control.address())
}

async fn client_of(control: &str) -> sluice_control::Client {
    sluice_control::connect(control, None).await.unwrap()
}

async fn connected(client: &mut sluice_control::Client, count: usize) -> bool {
    eventually(Duration::from_secs(10), async || {
        let status = sluice::control::status(client).await.unwrap();
        status.proxies.iter().filter(|p| p.connected).count() == count
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_every_proxy_and_bad_pushes_change_nothing() {
    let app = TestUpstream::start("app").await;
    let control = start_control(&temp_folder("control-push"), None).await;
    let url = url_of(&control);
    let (one, _s1) = subscribed_proxy(&app, &url, "one").await;
    let (two, _s2) = subscribed_proxy(&app, &url, "two").await;
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 2).await);

    let pushed = push(&mut client, push_tagger("pushed")).await.unwrap();
    assert_eq!(pushed.version, 1);
    let acks = wait_for_acks(&mut client, 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(acks.len(), 2);
    assert!(acks.iter().all(|p| p.applied_version == 1), "{acks:?}");
    for proxy in [&one, &two] {
        assert_eq!(
            get(proxy.addr, "/").await.header("x-wasm-tag"),
            Some("pushed")
        );
    }

    // A module whose on_configure refuses its configuration.
    let refused = PushRequest {
        to: None,
        module: fixture("hostile"),
        name: "hostile".into(),
        config: Some("reject".into()),
        ..push_tagger("")
    };
    let error = push(&mut client, refused).await.err().unwrap();
    assert!(matches!(error, CommandError::Refused(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains("proxy_on_configure returned false"),
        "{error}"
    );

    // Bytes that are not WebAssembly.
    let garbage = temp_folder("control-garbage").join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0\x01 cut short").unwrap();
    let error = push(
        &mut client,
        PushRequest {
            to: None,
            module: garbage,
            ..push_tagger("x")
        },
    )
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("does not compile"), "{error}");
    assert_eq!(error.exit_code(), 2);

    let versions = sluice::control::list_versions(&mut client).await.unwrap();
    assert_eq!(versions.current, 1, "rejected pushes make no version");
    assert_eq!(
        get(one.addr, "/").await.header("x-wasm-tag"),
        Some("pushed")
    );

    // Rolling back to "nothing pushed" takes the filter out again.
    let version = sluice::control::rollback(&mut client, 0, None)
        .await
        .unwrap();
    wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(get(two.addr, "/").await.header("x-wasm-tag"), None);
}

/// How many of `count` requests got each `x-wasm-tag`.
async fn tags_over(
    addr: std::net::SocketAddr,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..count {
        let reply = get(addr, "/").await;
        assert_eq!(reply.status, 200);
        let tag = reply.header("x-wasm-tag").unwrap_or("none").to_owned();
        *seen.entry(tag).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_then_is_promoted_or_rolled_back() {
    let app = TestUpstream::start("app").await;
    let control = start_control(&temp_folder("control-canary"), None).await;
    let url = url_of(&control);
    let (proxy, _subscription) = subscribed_proxy(&app, &url, "edge").await;
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 1).await);

    push(&mut client, push_tagger("stable")).await.unwrap();
    let canary = PushRequest {
        to: None,
        canary_percent: Some(50.0),
        ..push_tagger("canary")
    };
    let version = push(&mut client, canary).await.unwrap().version;
    wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    let seen = tags_over(proxy.addr, 200).await;
    assert!(seen.get("stable").is_some_and(|n| *n >= 40), "{seen:?}");
    assert!(seen.get("canary").is_some_and(|n| *n >= 40), "{seen:?}");
    // Each version has its own metrics.
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_wasm_vms{plugin="tagger@canary"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_wasm_vms{plugin="tagger"} 2"#),
        "{metrics}"
    );

    // Rolling back to the version before the canary is one command.
    let back = sluice::control::rollback(&mut client, version - 1, None)
        .await
        .unwrap();
    wait_for_acks(&mut client, back, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(tags_over(proxy.addr, 20).await.get("stable"), Some(&20));

    // So is promoting it.
    let canary = PushRequest {
        to: None,
        canary_percent: Some(10.0),
        ..push_tagger("next")
    };
    push(&mut client, canary).await.unwrap();
    let promoted = sluice::control::promote(&mut client, tagger_target(None))
        .await
        .unwrap();
    wait_for_acks(&mut client, promoted, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(tags_over(proxy.addr, 20).await.get("next"), Some(&20));
    let error = sluice::control::promote(&mut client, tagger_target(None))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("has no canary to promote"),
        "{error}"
    );
}

fn tagger_target(route: Option<&str>) -> FilterTarget {
    FilterTarget {
        to: None,
        name: "tagger".into(),
        listener: None,
        route: route.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_go_on_a_named_route_and_come_off_again() {
    let app = TestUpstream::start("app").await;
    let control = start_control(&temp_folder("control-route"), None).await;
    let url = url_of(&control);
    let proxy = start_proxy(
        &simple_config("\"{app}\"", "", "        name: api"),
        &[&app],
    )
    .await;
    let settings = SubscriberSettings {
        url: url.clone(),
        join_token: None,
        trust: sluice_control::ControlTrust::default(),
        token: None,
        proxy_id: "edge".into(),
    };
    let _subscription = ControlSubscription::start(settings, proxy.proxy.applier());
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 1).await);

    let routed = PushRequest {
        to: None,
        route: Some("api".into()),
        ..push_tagger("on-route")
    };
    let version = push(&mut client, routed).await.unwrap().version;
    wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        get(proxy.addr, "/").await.header("x-wasm-tag"),
        Some("on-route")
    );

    let version = sluice::control::remove(&mut client, tagger_target(Some("api")))
        .await
        .unwrap();
    wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(get(proxy.addr, "/").await.header("x-wasm-tag"), None);

    // A route this proxy does not have: the proxy says so, and keeps serving.
    let nowhere = PushRequest {
        to: None,
        route: Some("missing".into()),
        ..push_tagger("x")
    };
    let version = push(&mut client, nowhere).await.unwrap().version;
    let acks = wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(acks[0].rejected_version, version);
    assert!(
        acks[0]
            .rejected_reason
            .contains(r#"no HTTP listener with a route named "missing""#),
        "{acks:?}"
    );
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_without_the_control_service_and_resync_when_it_returns() {
    let app = TestUpstream::start("app").await;
    let data_dir = temp_folder("control-restart");
    let control = start_control(&data_dir, None).await;
    let (address, url) = (control.address(), url_of(&control));
    let (proxy, _subscription) = subscribed_proxy(&app, &url, "sidecar").await;
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 1).await);
    push(&mut client, push_tagger("before")).await.unwrap();
    wait_for_acks(&mut client, 1, Duration::from_secs(10))
        .await
        .unwrap();

    control.shutdown().await;
    for _ in 0..5 {
        let reply = get(proxy.addr, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-wasm-tag"), Some("before"));
    }

    // While the service is down, its data dir gains a version (as a restore would): the
    // proxy must pick it up on reconnecting, with no push.
    {
        let mut store = sluice_control::store::DirStore::open(&data_dir).unwrap();
        let current = store.current().unwrap().overlay.clone();
        let mut retagged = current.clone();
        retagged.filters[0].config = "while-away".into();
        store.append(retagged, "edited offline".into()).unwrap();
    }
    let control = start_control_on(address, &data_dir, None).await;
    let mut client = client_of(&url_of(&control)).await;
    assert!(connected(&mut client, 1).await, "the proxy reconnected");
    wait_for_acks(&mut client, 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        get(proxy.addr, "/").await.header("x-wasm-tag"),
        Some("while-away")
    );
}

/// A version refused because the proxy's file lacks what it names applies by itself once
/// the file has it, and the control service hears so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_applies_when_the_file_catches_up() {
    let app = TestUpstream::start("app").await;
    let control = start_control(&temp_folder("control-catch-up"), None).await;
    let url = url_of(&control);
    let (proxy, _subscription) = subscribed_proxy(&app, &url, "edge").await;
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 1).await);
    let routed = PushRequest {
        to: None,
        route: Some("api".into()),
        ..push_tagger("late")
    };
    let version = push(&mut client, routed).await.unwrap().version;
    let acks = wait_for_acks(&mut client, version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(acks[0].rejected_version, version);

    // The file gains a route named api.
    let file = test_config(
        &simple_config("\"{app}\"", "", "        name: api"),
        &[&app],
    );
    proxy.proxy.applier().apply(file).await.unwrap();
    assert_eq!(
        get(proxy.addr, "/").await.header("x-wasm-tag"),
        Some("late")
    );
    let applied = eventually(Duration::from_secs(10), async || {
        let status = sluice::control::status(&mut client).await.unwrap();
        status.proxies[0].applied_version == version
    })
    .await;
    assert!(
        applied,
        "the proxy told the control service it applied version {version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_service_refuses_calls_without_its_token() {
    let control = start_control(&temp_folder("control-token"), Some("s3cret")).await;
    let url = url_of(&control);
    let mut anonymous = client_of(&url).await;
    let error = sluice::control::status(&mut anonymous).await.unwrap_err();
    assert!(error.to_string().contains("bearer token"), "{error}");

    let mut holder = sluice_control::connect(&url, Some("s3cret")).await.unwrap();
    assert!(sluice::control::status(&mut holder).await.is_ok());

    let settings = ControlSettings {
        listen: "0.0.0.0:0".parse().unwrap(),
        store: sluice_control::StoreLocation::Dir(temp_folder("control-unguarded")),
        token: None,
        max_module_size: 1 << 20,
        lease_ttl: sluice_control::DEFAULT_LEASE_TTL,
        name: None,
        tls: false,
        tls_names: Vec::new(),
        identity: sluice_control::IdentitySettings::default(),
    };
    let error = RunningControl::start(settings, ProxyValidator::new())
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("without a token"), "{error}");
}

/// The commands as a user types them: `sluice control`, `sluice proxy --control`,
/// `sluice push --wait`, `sluice status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_to_a_proxy_and_shows_its_status() {
    let app = TestUpstream::start("app").await;
    let folder = temp_folder("control-cli");
    let control = SpawnedControl::start(&folder.join("data"));
    let url = control.url.clone();
    let config = write_config(
        "control-cli-proxy",
        &simple_config(&format!("\"{}\"", app.addr), "", ""),
    );
    let proxy = SpawnedProxy::start_with(&config, &["--control", &url, "--id", "edge-1"]);

    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 1).await, "{}", proxy.log());

    let push = tokio::task::block_in_place(|| {
        sluice()
            .arg("push")
            .arg(fixture("headers"))
            .args([
                "--name",
                "tagger",
                "--config",
                "from-cli",
                "--wait",
                "--control",
                &url,
            ])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&push.stdout);
    assert!(
        push.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&push.stderr)
    );
    assert!(stdout.contains("accepted as version 1"), "{stdout}");
    assert!(stdout.contains("edge-1: applied"), "{stdout}");
    assert_eq!(
        get(proxy.addr, "/").await.header("x-wasm-tag"),
        Some("from-cli")
    );

    let status = tokio::task::block_in_place(|| {
        sluice()
            .args(["status", "--control", &url])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success());
    assert!(stdout.contains("control version 1"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("edge-1"))
        .unwrap_or_default();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns.get(1..3), Some(&["connected", "1"][..]), "{stdout}");

    let unreachable = tokio::task::block_in_place(|| {
        sluice()
            .args(["status", "--control", "http://127.0.0.1:1"])
            .output()
            .unwrap()
    });
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("cannot reach the control service at http://127.0.0.1:1"),
    );
    drop(control);
}

/// Two real proxy processes under a steady load while a filter is pushed 50 times: no
/// request fails, every proxy applies every version, and memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pushes_under_load_fail_nothing_on_any_proxy() {
    let app = TestUpstream::start("app").await;
    let control = start_control(&temp_folder("control-load"), None).await;
    let url = url_of(&control);
    let proxies: Vec<SpawnedProxy> = (0..2)
        .map(|index| {
            let yaml = format!(
                "workers: 1\n{}",
                simple_config(&format!("\"{}\"", app.addr), "", "").replace("workers: 2\n", "")
            );
            let config = write_config(&format!("control-load-{index}"), &yaml);
            SpawnedProxy::start_with(&config, &["--control", &url, "--id", &format!("p{index}")])
        })
        .collect();
    let mut client = client_of(&url).await;
    assert!(connected(&mut client, 2).await);
    let loads: Vec<SteadyLoad> = proxies
        .iter()
        .map(|proxy| SteadyLoad::start(proxy.addr, 2, |reply| reply.status == 200))
        .collect();

    let mut rss_before = Vec::new();
    for swap in 1..=50u64 {
        let pushed = push(&mut client, push_tagger(&format!("v{swap}")))
            .await
            .unwrap();
        let acks = wait_for_acks(&mut client, pushed.version, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            acks.iter().all(|p| p.applied_version == pushed.version),
            "{acks:?}"
        );
        if swap == 5 {
            // The first swaps grow the allocator's pools to their working size.
            rss_before = proxies.iter().map(SpawnedProxy::rss_kib).collect();
        }
    }
    for proxy in &proxies {
        assert_eq!(get(proxy.addr, "/").await.header("x-wasm-tag"), Some("v50"));
    }
    for (proxy, before) in proxies.iter().zip(rss_before) {
        let after = proxy.rss_kib();
        assert!(
            after.saturating_sub(before) < 6 * 1024,
            "RSS grew from {before} KiB to {after} KiB over 45 pushes"
        );
    }
    for load in loads {
        let outcome = load.stop().await;
        assert_eq!(outcome.failed, 0, "{outcome:?}");
        assert!(outcome.served > 100, "{outcome:?}");
    }
}
