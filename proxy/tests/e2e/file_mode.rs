//! `sluice proxy --config FILE` follows edits to FILE and to its modules: each settled change
//! is applied while serving, a broken one is logged and changes nothing.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// A folder holding `tagger.wasm` (the headers fixture) and `proxy.yaml` naming it relatively.
fn tagged_setup(name: &str, endpoint: &str) -> (PathBuf, PathBuf) {
    let folder = temp_folder(name);
    std::fs::copy(fixture("headers"), folder.join("tagger.wasm")).unwrap();
    let config = folder.join("proxy.yaml");
    std::fs::write(&config, tagged_yaml(endpoint, "v1")).unwrap();
    (config, folder.join("tagger.wasm"))
}

fn tagged_yaml(endpoint: &str, tag: &str) -> String {
    let config = tagger_config("tagger.wasm", endpoint, tag, 1);
    format!("admin: {{ address: \"127.0.0.1:0\" }}\n{config}")
}

async fn tag_served(proxy: &SpawnedProxy) -> Option<String> {
    get(proxy.addr, "/")
        .await
        .header("x-wasm-tag")
        .map(str::to_owned)
}

async fn serves_tag(proxy: &SpawnedProxy, tag: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        tag_served(proxy).await.as_deref() == Some(tag)
    })
    .await
}

/// Waits until the proxy has logged `count` applied changes.
async fn applied(proxy: &SpawnedProxy, count: usize) -> bool {
    eventually(Duration::from_secs(10), async || {
        proxy.log().matches("config applied").count() >= count
    })
    .await
}

/// Waits until the proxy has logged `count` rejected changes.
async fn rejected(proxy: &SpawnedProxy, count: usize) -> bool {
    eventually(Duration::from_secs(10), async || {
        proxy.log().matches("config change rejected").count() >= count
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_while_serving_and_broken_ones_change_nothing() {
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let (config, module) = tagged_setup("file-edits", &endpoint);
    let proxy = SpawnedProxy::start(&config);
    assert_eq!(tag_served(&proxy).await.as_deref(), Some("v1"));

    replace_file(&config, tagged_yaml(&endpoint, "v2").as_bytes());
    assert!(serves_tag(&proxy, "v2").await, "{}", proxy.log());

    // An edit in place that breaks the YAML: the reason names file, field and problem.
    std::fs::write(
        &config,
        tagged_yaml(&endpoint, "v3").replace("workers:", "wrokers:"),
    )
    .unwrap();
    assert!(rejected(&proxy, 1).await, "{}", proxy.log());
    let log = proxy.log();
    assert!(log.contains("unknown field `wrokers`"), "{log}");
    assert!(log.contains(&config.display().to_string()), "{log}");
    assert_eq!(tag_served(&proxy).await.as_deref(), Some("v2"));

    // A module that does not compile, under a good config. A file renamed into place is
    // read at once, so each replacement is a change of its own.
    replace_file(&config, tagged_yaml(&endpoint, "v2").as_bytes());
    assert!(applied(&proxy, 2).await, "{}", proxy.log());
    replace_file(&module, b"\0asm\x01\0\0\0 truncated");
    assert!(rejected(&proxy, 2).await, "{}", proxy.log());
    assert!(
        proxy.log().contains("listeners[0].filters[0]: tagger.wasm"),
        "{}",
        proxy.log()
    );
    replace_file(&config, tagged_yaml(&endpoint, "v3").as_bytes());
    assert!(rejected(&proxy, 3).await, "{}", proxy.log());
    assert_eq!(tag_served(&proxy).await.as_deref(), Some("v2"));

    // Fixing the module is a change too.
    replace_file(&module, &std::fs::read(fixture("headers")).unwrap());
    assert!(serves_tag(&proxy, "v3").await, "{}", proxy.log());
}

/// A Kubernetes ConfigMap volume: `proxy.yaml` links to `..data/proxy.yaml`, and an update
/// renames a new `..data` link over the old one, with no event on `proxy.yaml` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let folder = temp_folder("file-configmap");
    let version = |name: &str, tag: &str| {
        let dir = folder.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture("headers"), dir.join("tagger.wasm")).unwrap();
        std::fs::write(dir.join("proxy.yaml"), tagged_yaml(&endpoint, tag)).unwrap();
    };
    version("..2026_v1", "v1");
    symlink("..2026_v1", folder.join("..data")).unwrap();
    for file in ["proxy.yaml", "tagger.wasm"] {
        symlink(format!("..data/{file}"), folder.join(file)).unwrap();
    }
    let proxy = SpawnedProxy::start(&folder.join("proxy.yaml"));
    assert_eq!(tag_served(&proxy).await.as_deref(), Some("v1"));

    version("..2026_v2", "v2");
    symlink("..2026_v2", folder.join("..data_tmp")).unwrap();
    std::fs::rename(folder.join("..data_tmp"), folder.join("..data")).unwrap();
    assert!(serves_tag(&proxy, "v2").await, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_nothing_and_memory_stays_flat() {
    let app = TestUpstream::start("app").await;
    let endpoint = app.addr.to_string();
    let (config, _) = tagged_setup("file-swaps", &endpoint);
    let proxy = SpawnedProxy::start(&config);

    let load = SteadyLoad::start(proxy.addr, 4, |reply| {
        reply.status == 200 && reply.headers.contains_key("x-wasm-tag")
    });

    let swap_to = async |swap: usize| {
        replace_file(
            &config,
            tagged_yaml(&endpoint, &format!("v{swap}")).as_bytes(),
        );
        assert!(
            serves_tag(&proxy, &format!("v{swap}")).await,
            "{}",
            proxy.log()
        );
    };
    // The first swaps grow the allocator's pools to their working size.
    for swap in 2..=6 {
        swap_to(swap).await;
    }
    let rss_before = proxy.rss_kib();
    for swap in 7..=51 {
        swap_to(swap).await;
    }
    let rss_after = proxy.rss_kib();
    let outcome = load.stop().await;
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(outcome.served > 100, "{outcome:?}");
    let log = proxy.log();
    assert_eq!(log.matches("config applied").count(), 50, "{log}");
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(
        growth_kib < 6 * 1024,
        "RSS grew by {growth_kib} KiB over 45 swaps ({rss_before} -> {rss_after})"
    );
}
