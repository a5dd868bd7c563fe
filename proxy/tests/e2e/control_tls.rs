//! TLS on control connections: a replica serves TLS with a certificate from the mesh CA; a
//! proxy checks it by the CA digest its join token carries before it sends anything; the CLI
//! checks it by `SLUICE_CONTROL_CA_SHA256`; plaintext is refused beyond loopback.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

/// `sluice` with the control service's CA pinned, as an operator's shell would have it.
fn cli(control: &SpawnedControl) -> Command {
    let mut command = sluice();
    command.env("SLUICE_CONTROL_CA_SHA256", control.ca_digest());
    command.env("SLUICE_CONTROL", &control.url);
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `sluice join-token WORKLOAD` through `control`, saved in `folder`.
fn join_token(control: &SpawnedControl, folder: &Path, workload: &str) -> std::path::PathBuf {
    let output = cli(control)
        .args(["join-token", workload])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let file = folder.join(format!("{}.token", workload.replace('/', "_")));
    std::fs::write(&file, &output.stdout).unwrap();
    file
}

fn proxy_config(name: &str, app: &TestUpstream) -> std::path::PathBuf {
    write_config(name, &simple_config(&format!("\"{}\"", app.addr), "", ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_checks_the_replica_by_the_ca_its_join_token_names_then_follows_it_over_tls() {
    let folder = temp_folder("control-tls");
    let control = SpawnedControl::start_with(&folder.join("control"), "127.0.0.1:0", &["--tls"]);
    assert!(control.url.starts_with("https://"), "{}", control.url);
    let token = join_token(&control, &folder, "ns/shop/sa/cart");
    let written = std::fs::read_to_string(&token).unwrap();
    assert!(
        written
            .trim()
            .ends_with(&format!(".{}", control.ca_digest())),
        "the token carries the CA digest: {written}"
    );

    let app = TestUpstream::start("app").await;
    let proxy = SpawnedProxy::start_with(
        &proxy_config("control-tls-proxy", &app),
        &[
            "--control",
            &control.url,
            "--join-token-file",
            token.to_str().unwrap(),
            "--id",
            "tls-proxy",
        ],
    );
    let output = cli(&control)
        .args(["push", "--name", "tagger", "--config", "over-tls", "--wait"])
        .arg(fixture("headers"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        proxy.log()
    );
    assert_eq!(
        get(proxy.addr, "/").await.header("x-wasm-tag"),
        Some("over-tls")
    );
    let status = text(&cli(&control).arg("status").output().unwrap());
    assert!(
        status.lines().any(|l| l.starts_with("tls-proxy")
            && l.contains("connected")
            && l.contains("spiffe://sluice.local/ns/shop/sa/cart")),
        "the proxy subscribed with its workload certificate: {status}"
    );
    // `/ready` is served on the same TLS port.
    let ready = Command::new("curl")
        .args(["-sk", &format!("{}/ready", control.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_holding_a_token_for_another_ca_refuses_the_control_plane() {
    let folder = temp_folder("control-tls-other");
    let ours = SpawnedControl::start_with(&folder.join("ours"), "127.0.0.1:0", &["--tls"]);
    let impostor = SpawnedControl::start_with(&folder.join("impostor"), "127.0.0.1:0", &["--tls"]);
    let token = join_token(&ours, &folder, "ns/shop/sa/cart");
    let app = TestUpstream::start("app").await;
    let output = sluice()
        .args(["proxy", "--config"])
        .arg(proxy_config("control-tls-other-proxy", &app))
        .args(["--control", &impostor.url, "--join-token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("is not the mesh CA pinned"), "{said}");
    // It never showed the impostor its token.
    assert!(
        !impostor.log().contains("certificate refused"),
        "{}",
        impostor.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_beyond_loopback_and_an_unverifiable_replica_are_refused_with_what_to_do() {
    let output = sluice()
        .args(["status", "--control", "http://192.0.2.10:9990"])
        .output()
        .unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("plaintext control connections are allowed only on loopback: use https://192.0.2.10:9990"),
        "{said}"
    );

    let control = SpawnedControl::start_with(
        &temp_folder("control-tls-unpinned").join("control"),
        "127.0.0.1:0",
        &["--tls"],
    );
    let output = sluice()
        .args(["status", "--control", &control.url])
        .env_remove("SLUICE_CONTROL_CA_SHA256")
        .env_remove("SLUICE_CONTROL_CA")
        .output()
        .unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("set SLUICE_CONTROL_CA"), "{said}");

    // Beyond loopback a replica always serves TLS.
    let wide = SpawnedControl::start_with(
        &temp_folder("control-tls-wide").join("control"),
        "0.0.0.0:0",
        &["--token", "s3cret"],
    );
    assert!(wide.url.starts_with("https://0.0.0.0:"), "{}", wide.url);
    let port = wide.url.rsplit(':').next().unwrap();
    let output = cli(&wide)
        .args(["status", "--control", &format!("https://127.0.0.1:{port}")])
        .env("SLUICE_CONTROL_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
}
