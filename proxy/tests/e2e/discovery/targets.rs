//! `--to`: a change reaches exactly the proxies that registered a service, carry a label, or
//! have an id; `rollback --to` takes back only those edits.

use std::process::Stdio;
use std::time::Duration;

use super::*;
use crate::support::*;

/// Runs `sluice ARGS --control URL`; its stdout, or a panic with its stderr.
fn cli(control: &str, args: &[&str]) -> String {
    let output = sluice()
        .args(args)
        .args(["--control", control])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The tag the headers fixture stamped on a response from `addr`, if any.
async fn tag(addr: std::net::SocketAddr) -> Option<String> {
    get(addr, "/").await.header("x-wasm-tag").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_for_one_service_reaches_exactly_its_proxies() {
    let (folder, control) = start_control("targets");
    let hello_token = join_token(&control.url, &folder, "ns/demo/sa/hello", &["hello"]);
    let world_token = join_token(&control.url, &folder, "ns/demo/sa/world", &["world"]);
    let app = TestUpstream::start("app").await;
    let hello_a = start_sidecar(
        "targets-hello-a",
        &control.url,
        &hello_token,
        free_port(),
        app.addr,
        "hello",
        "zone: a",
    );
    let hello_b = start_sidecar(
        "targets-hello-b",
        &control.url,
        &hello_token,
        free_port(),
        app.addr,
        "hello",
        "zone: b",
    );
    let world = start_sidecar(
        "targets-world",
        &control.url,
        &world_token,
        free_port(),
        app.addr,
        "world",
        "zone: b",
    );
    // A proxy that registers nothing, straight in front of the app.
    let edge_config = write_config(
        "targets-edge",
        &simple_config(&format!("\"{}\"", app.addr), "", ""),
    );
    let edge = SpawnedProxy::start_with(&edge_config, &["--control", &control.url, "--id", "edge"]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            cli(&control.url, &["status"]).matches("connected").count() == 4
        })
        .await
    );
    let status = cli(&control.url, &["status"]);
    let services_of = |proxy: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(proxy))
            .unwrap_or_default();
        line.split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(services_of("targets-hello-a"), "hello", "{status}");
    assert_eq!(services_of("targets-world"), "world", "{status}");
    assert_eq!(services_of("edge"), "-", "{status}");

    let module = fixture("headers");
    let pushed = cli(
        &control.url,
        &[
            "push",
            module.to_str().unwrap(),
            "--name",
            "tagger",
            "--config",
            "for-hello",
            "--to",
            "service=hello",
            "--wait",
        ],
    );
    assert!(pushed.contains("(for service=hello)"), "{pushed}");
    assert_eq!(tag(hello_a.addr).await.as_deref(), Some("for-hello"));
    assert_eq!(tag(hello_b.addr).await.as_deref(), Some("for-hello"));
    assert_eq!(tag(world.addr).await, None, "another service's proxy");
    assert_eq!(
        tag(edge.addr).await,
        None,
        "a proxy that registered nothing"
    );

    // A label picks across services; a later target's edit wins where both apply.
    cli(
        &control.url,
        &[
            "push",
            module.to_str().unwrap(),
            "--name",
            "tagger",
            "--config",
            "zone-b",
            "--to",
            "label=zone=b",
            "--wait",
        ],
    );
    assert_eq!(tag(hello_a.addr).await.as_deref(), Some("for-hello"));
    assert_eq!(tag(hello_b.addr).await.as_deref(), Some("zone-b"));
    assert_eq!(tag(world.addr).await.as_deref(), Some("zone-b"));
    assert_eq!(tag(edge.addr).await, None);

    // Rolling back hello's edits leaves the label's.
    let rolled = cli(&control.url, &["rollback", "0", "--to", "service=hello"]);
    assert!(rolled.contains("(for service=hello)"), "{rolled}");
    assert!(
        eventually(Duration::from_secs(5), async || tag(hello_a.addr)
            .await
            .is_none())
        .await
    );
    assert_eq!(tag(world.addr).await.as_deref(), Some("zone-b"));

    let versions = cli(&control.url, &["versions"]);
    assert!(versions.contains("(for label=zone=b)"), "{versions}");
    let refused = sluice()
        .args([
            "push",
            module.to_str().unwrap(),
            "--name",
            "t",
            "--to",
            "zone=b",
        ])
        .args(["--control", &control.url])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("expected service=NAME, label=KEY=VALUE or proxy=ID"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
