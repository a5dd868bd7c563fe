//! Proxies subscribed to a control service, and the push most control tests make.

use sluice::control::{ControlSubscription, PushRequest, SubscriberSettings};

use super::{TestProxy, TestUpstream, fixture, simple_config, start_proxy};

/// A proxy routing to `app`, subscribed to `control` (one URL or several, comma-separated)
/// as `id`.
pub async fn subscribed_proxy(
    app: &TestUpstream,
    control: &str,
    id: &str,
) -> (TestProxy, ControlSubscription) {
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[app]).await;
    let settings = SubscriberSettings {
        url: control.to_owned(),
        join_token: None,
        trust: sluice_control::ControlTrust::default(),
        token: None,
        proxy_id: id.to_owned(),
    };
    let subscription = ControlSubscription::start(settings, proxy.proxy.applier());
    (proxy, subscription)
}

/// Sets the `headers` fixture as filter `tagger`, which tags responses with `config`.
pub fn push_tagger(config: &str) -> PushRequest {
    PushRequest {
        to: None,
        module: fixture("headers"),
        name: "tagger".into(),
        config: Some(config.into()),
        vm_config: None,
        listener: None,
        fail_open: false,
        canary_percent: None,
        route: None,
    }
}
