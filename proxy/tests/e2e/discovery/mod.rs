//! Service discovery with the real binaries: a control service, app instances behind
//! sidecars that register them, and gateways whose clusters name the service. `membership`:
//! instances coming and going; `balancing`: the balancers over a discovered set; `targets`:
//! changes for some proxies only.

mod balancing;
mod identity;
mod membership;
mod targets;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// Short, so a killed instance leaves within the test's patience.
pub const LEASE_TTL: &str = "1s";

/// A control service with a short lease TTL, its data in a fresh folder for `test`.
pub fn start_control(test: &str) -> (PathBuf, SpawnedControl) {
    let folder = temp_folder(test);
    let control = SpawnedControl::start_with(
        &folder.join("control"),
        "127.0.0.1:0",
        &["--lease-ttl", LEASE_TTL],
    );
    (folder, control)
}

/// A port free right now, for addresses a config must name before the proxy binds them.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sluice join-token WORKLOAD [--services ...]`, written to a file in `folder`.
pub fn join_token(control: &str, folder: &Path, workload: &str, services: &[&str]) -> PathBuf {
    let mut command = sluice();
    command.args(["join-token", workload, "--control", control]);
    if !services.is_empty() {
        command.args(["--services", &services.join(",")]);
    }
    let output = command.stderr(Stdio::null()).output().unwrap();
    assert!(output.status.success(), "join-token failed");
    let file = folder.join(format!("{}.token", workload.replace('/', "_")));
    std::fs::write(&file, &output.stdout).unwrap();
    file
}

/// `sluice services` against `control`.
pub fn services(control: &str) -> String {
    let output = sluice()
        .args(["services", "--control", control])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// A sidecar: listener `main` on `port` in front of `app`, registering `service` there.
pub fn start_sidecar(
    name: &str,
    control: &str,
    token: &Path,
    port: u16,
    app: SocketAddr,
    service: &str,
    labels: &str,
) -> SpawnedProxy {
    let config = write_config(
        name,
        &format!(
            r#"
admin: {{ address: "127.0.0.1:0" }}
workers: 1
register:
  - {{ service: {service}, address: "127.0.0.1:{port}", labels: {{ {labels} }} }}
listeners:
  - name: main
    address: 127.0.0.1:{port}
    routes:
      - match: {{ prefix: / }}
        cluster: app
clusters:
  - name: app
    endpoints: ["{app}"]
"#
        ),
    );
    SpawnedProxy::start_with(
        &config,
        &[
            "--control",
            control,
            "--join-token-file",
            token.to_str().unwrap(),
            "--id",
            name,
        ],
    )
}

/// A sidecar per app, each registering `hello` with `labels`, named `<prefix>-<index>`.
pub fn start_hello_instances(
    prefix: &str,
    control: &str,
    token: &Path,
    apps: &[TestUpstream],
    labels: &str,
) -> Vec<SpawnedProxy> {
    apps.iter()
        .enumerate()
        .map(|(i, app)| {
            let name = format!("{prefix}-{i}");
            start_sidecar(
                &name,
                control,
                token,
                free_port(),
                app.addr,
                "hello",
                labels,
            )
        })
        .collect()
}

/// A gateway whose cluster `hello` discovers the service `hello`.
pub fn start_gateway(name: &str, control: &str) -> SpawnedProxy {
    start_gateway_with(name, control, "", "")
}

/// The same, with more top-level settings and more settings of the cluster.
pub fn start_gateway_with(
    name: &str,
    control: &str,
    top_extra: &str,
    cluster_extra: &str,
) -> SpawnedProxy {
    let config = write_config(
        name,
        &format!(
            r#"
admin: {{ address: "127.0.0.1:0" }}
workers: 1
{top_extra}
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: {{ prefix: / }}
        cluster: hello
clusters:
  - name: hello
    service: hello
{cluster_extra}
"#
        ),
    );
    SpawnedProxy::start_with(&config, &["--control", control, "--id", name])
}

/// The upstreams that answered `rounds` requests through `gateway`.
pub async fn answering(gateway: SocketAddr, rounds: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..rounds {
        let reply = get(gateway, "/").await;
        if reply.status == 200
            && let Some(name) = reply.header("x-upstream")
        {
            names.insert(name.to_owned());
        }
    }
    names
}

pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether, within `within`, `rounds` requests through `gateway` reach exactly `expected`.
pub async fn until_answering(gateway: SocketAddr, expected: &[&str], within: Duration) -> bool {
    let expected = names(expected);
    let rounds = expected.len() * 4;
    eventually(within, async || {
        answering(gateway, rounds).await == expected
    })
    .await
}
