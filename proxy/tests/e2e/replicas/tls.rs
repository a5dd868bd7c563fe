//! Replicas serving TLS: they share the mesh CA, so the digest a join token carries checks
//! every replica, and a proxy fails over between them over TLS.

use std::process::Command;
use std::time::Duration;

use super::*;

/// `sluice ARGS` with the mesh CA pinned.
fn cli(digest: &str, args: &[&str]) -> std::process::Output {
    let mut command: Command = sluice();
    command
        .env("SLUICE_CONTROL_CA_SHA256", digest)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fails_over_between_replicas_serving_tls() {
    let Some(cluster) = EtcdCluster::start("replicas-tls", 3).await else {
        return;
    };
    let (a, b) = (
        replica_with(&cluster, "tls-a", &["--tls"]),
        replica_with(&cluster, "tls-b", &["--tls"]),
    );
    assert_eq!(
        a.ca_digest(),
        b.ca_digest(),
        "one mesh CA for every replica"
    );
    let digest = a.ca_digest();
    let folder = temp_folder("replicas-tls-token");
    let made = cli(
        &digest,
        &["join-token", "ns/shop/sa/cart", "--control", &a.url],
    );
    assert!(made.status.success());
    let token = folder.join("cart.token");
    std::fs::write(&token, &made.stdout).unwrap();

    let app = TestUpstream::start("app").await;
    let config = write_config(
        "replicas-tls-proxy",
        &simple_config(&format!("\"{}\"", app.addr), "", ""),
    );
    let both = format!("{},{}", a.url, b.url);
    let proxy = SpawnedProxy::start_with(
        &config,
        &[
            "--control",
            &both,
            "--join-token-file",
            token.to_str().unwrap(),
            "--id",
            "tls-proxy",
        ],
    );
    let pushed = cli_push(&digest, "before", &b.url);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(tagged(&proxy, "before").await, "{}", proxy.log());

    let load = SteadyLoad::start(proxy.addr, 2, |parts| parts.status == 200);
    a.kill();
    let pushed = cli_push(&digest, "after", &b.url);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(tagged(&proxy, "after").await, "{}", proxy.log());
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
}

fn cli_push(digest: &str, tag: &str, through: &str) -> std::process::Output {
    sluice()
        .env("SLUICE_CONTROL_CA_SHA256", digest)
        .args([
            "push",
            "--name",
            "tagger",
            "--config",
            tag,
            "--control",
            through,
        ])
        .arg(fixture("headers"))
        .output()
        .unwrap()
}

async fn tagged(proxy: &SpawnedProxy, tag: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        get(proxy.addr, "/").await.header("x-wasm-tag") == Some(tag)
    })
    .await
}
