//! `sluice control --store etcd://... --import-data-dir DIR`: a single-machine control plane
//! moved into etcd keeps its version numbers, its CA and its join tokens.

use std::process::Stdio;

use sluice::control::{list_versions, push};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_moves_into_etcd_with_its_version_numbers_ca_and_join_tokens() {
    let Some(cluster) = EtcdCluster::start("replicas-import", 3).await else {
        return;
    };
    let data_dir = temp_folder("replicas-import-dir").join("control");
    let single = SpawnedControl::start(&data_dir);
    for tag in ["one", "two"] {
        push(&mut client_of(&single.url).await, push_tagger(tag))
            .await
            .unwrap();
    }
    let token = create_join_token(&single.url, "ns/shop/sa/cart").await;
    let bundle = issue_certificate(&single.url, &token)
        .await
        .unwrap()
        .trust_bundle_pem;
    let before = list_versions(&mut client_of(&single.url).await)
        .await
        .unwrap();
    single.kill();

    let dir = data_dir.to_str().unwrap();
    let moved = replica_with(&cluster, "import-a", &["--import-data-dir", dir]);
    let after = list_versions(&mut client_of(&moved.url).await)
        .await
        .unwrap();
    let described = |reply: &sluice_control::proto::ListVersionsReply| {
        reply
            .versions
            .iter()
            .map(|v| (v.version, v.description.clone(), v.module_sha256.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(described(&after), described(&before));
    assert_eq!(after.current, 2);
    let moved_bundle = issue_certificate(&moved.url, &token).await.unwrap();
    assert_eq!(moved_bundle.trust_bundle_pem, bundle);
    // The next change continues the numbering, and its module was imported too.
    let pushed = push(&mut client_of(&moved.url).await, push_tagger("three"))
        .await
        .unwrap();
    assert_eq!(pushed.version, 3);

    // Importing into a prefix that has moved on is refused, saying why; nothing changes.
    let store = cluster.store_url();
    let output = sluice()
        .args(["control", "--listen", "127.0.0.1:0", "--store", &store])
        .args(["--store-prefix", "/test", "--import-data-dir", dir])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds 3 versions; import only into an empty prefix"),
        "{stderr}"
    );
    let listed = list_versions(&mut client_of(&moved.url).await)
        .await
        .unwrap();
    assert_eq!(listed.versions.len(), 3);
}
