//! Control replicas on a real three-member etcd (Debian's etcd-server): `versions` for what
//! changes share, `registry` for the mesh registry and `sluice status` across replicas.

mod import;
mod registry;
mod tls;
mod versions;

use std::time::Duration;

pub use crate::support::etcd::EtcdCluster;
pub use crate::support::*;

/// `sluice control` on etcd, on a free loopback port.
pub fn replica(cluster: &EtcdCluster, name: &str) -> SpawnedControl {
    replica_with(cluster, name, &[])
}

/// The same, with more arguments.
pub fn replica_with(cluster: &EtcdCluster, name: &str, arguments: &[&str]) -> SpawnedControl {
    let store = cluster.store_url();
    let mut all = vec!["--store", &store, "--store-prefix", "/test", "--name", name];
    all.extend_from_slice(arguments);
    SpawnedControl::start_with(&temp_folder(name), "127.0.0.1:0", &all)
}

/// A join token for `workload`, made through `url`.
pub async fn create_join_token(url: &str, workload: &str) -> String {
    sluice_control::connect_identity_admin(url, None)
        .await
        .unwrap()
        .create_join_token(sluice_control::proto::CreateJoinTokenRequest {
            workload: workload.into(),
            services: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// A certificate for a fresh key, asked for through `url` with `token`.
pub async fn issue_certificate(
    url: &str,
    token: &str,
) -> Result<sluice_control::proto::IssueCertificateReply, tonic::Status> {
    let key = rcgen::KeyPair::generate().unwrap();
    sluice_control::connect_identity(url, &sluice_control::ControlTrust::default())
        .await
        .unwrap()
        .issue_certificate(sluice_control::proto::IssueCertificateRequest {
            join_token: token.to_owned(),
            public_key: key.public_key_raw().to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The socket address of a control URL (`http://127.0.0.1:PORT`).
pub fn address_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

pub async fn client_of(url: &str) -> sluice_control::Client {
    sluice_control::connect(url, None).await.unwrap()
}

pub async fn serves_tag(proxy: &TestProxy, tag: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        get(proxy.addr, "/").await.header("x-wasm-tag") == Some(tag)
    })
    .await
}

/// How many proxies `sluice status` through `url` shows connected to replica `name`.
pub async fn connected_to(url: &str, name: &str) -> usize {
    let mut client = client_of(url).await;
    sluice::control::status(&mut client)
        .await
        .unwrap()
        .proxies
        .iter()
        .filter(|p| p.connected && p.replica == name)
        .count()
}
