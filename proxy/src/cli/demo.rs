//! `sluice demo`: a small mesh on loopback, and what to try with it.

use super::{Failure, wait_for_shutdown_signal};

pub async fn run() -> Result<(), Failure> {
    println!(
        "Building the standard filters (authz, circuit-breaker, metrics, ratelimit, retry) for wasm32-wasip1; the first time takes a minute or two..."
    );
    let filters = tokio::task::spawn_blocking(sluice::demo::build_standard_filters)
        .await
        .map_err(Failure::runtime)?
        .map_err(Failure::runtime)?;
    println!("Starting the control service, two apps with their sidecars, and the gateway...");
    let control_address = sluice::demo::CONTROL_ADDRESS;
    let (gateway, admin) = (sluice::demo::GATEWAY_ADDRESS, sluice::demo::ADMIN_ADDRESS);
    let addresses = sluice::demo::DemoAddresses {
        gateway,
        admin,
        control: control_address,
    };
    let mesh = sluice::demo::start_mesh(&filters, &addresses)
        .await
        .map_err(Failure::runtime)?;
    let sidecars: Vec<String> = mesh
        .sidecars
        .iter()
        .filter_map(|s| s.listener_address("inbound"))
        .map(|a| a.to_string())
        .collect();
    let ([sidecar_1, sidecar_2], [app_1, app_2]) = (sidecars.as_slice(), mesh.apps.as_slice())
    else {
        return Err(Failure::runtime("the demo's two sidecars did not start"));
    };
    let ratelimit = filters.join("ratelimit.wasm");
    let api_key = sluice::demo::DEMO_API_KEY;
    let domain = sluice::demo::TRUST_DOMAIN;
    let extra = &mesh.extra_instance;
    println!(
        "\nSluice demo is running on loopback:\n  \
         gateway   http://{gateway}  (filters: metrics and authz everywhere, ratelimit on /limited, circuit-breaker on /flaky, retry on /unsteady)\n  \
         sidecars  {} -> hello-1 at {}, {} -> hello-2 at {}\n            \
         each registers the service hello; the gateway discovers it (cluster `service: hello`)\n            \
         mutual TLS from the gateway (spiffe://{domain}/ns/demo/sa/gateway); only that identity gets in\n  \
         admin     http://{admin}\n  \
         control   http://{control_address}  (the mesh CA and registry; every proxy subscribes to it)\n\n\
         Try:\n  \
         curl -s http://{gateway}/hello          # run it twice: both instances answer, and name their caller\n  \
         curl -s --http2-prior-knowledge http://{gateway}/h2\n  \
         curl -s -o /dev/null -w '%{{http_code}}\\n' http://{}/hello   # the sidecar refuses a client without a mesh certificate\n  \
         for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}} ' http://{gateway}/limited; done; echo\n                                          \
         # 3 requests per 10s, then 429 with retry-after\n  \
         curl -s -i http://{gateway}/admin/stats      # 401: needs an API key\n  \
         curl -s -H 'x-api-key: {api_key}' http://{gateway}/admin/stats\n  \
         for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}} ' http://{gateway}/flaky; done; echo\n                                          \
         # the app fails 3 times, then the breaker answers for 10s\n  \
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} %header{{x-sluice-attempts}}  ' http://{gateway}/unsteady; done; echo\n                                          \
         # the app fails every other request; clients see 200, some after a retry\n  \
         curl -s http://{admin}/metrics | grep sluice_wasm_requests_total   # what the metrics filter counts, by route\n  \
         curl -s http://{admin}/config\n  \
         cargo run --release -p sluice -- services   # the registry: hello's instances, identity, labels\n\n\
         Start a third instance (an app is waiting at {}); the gateway uses it within a moment:\n  \
         cargo run --release -p sluice -- proxy --config {} --control http://{control_address} --join-token-file {} --id hello-3-sidecar\n  \
         for i in 1 2 3 4 5 6; do curl -s http://{gateway}/hello | head -1; done\n                                          \
         # hello-1, hello-2 and hello-3 take turns; Ctrl-C on that proxy and hello-3 leaves first\n\n\
         Change a filter while it serves (no restart, no failed request):\n  \
         cargo run --release -p sluice -- push {} --name ratelimit --route limited --config '{{\"rate\": 100, \"per\": \"10s\"}}' --wait\n  \
         cargo run --release -p sluice -- status\n  \
         cargo run --release -p sluice -- rollback 0     # back to the file's 3 per 10s\n\n\
         Ctrl-C stops everything.",
        sidecar_1,
        app_1,
        sidecar_2,
        app_2,
        sidecar_1,
        extra.app,
        extra.config.display(),
        extra.join_token.display(),
        ratelimit.display(),
    );
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    mesh.shutdown().await;
    Ok(())
}
