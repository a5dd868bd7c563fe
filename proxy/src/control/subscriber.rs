//! A proxy subscribed to a control service: it applies each version it receives (fetching
//! and verifying the modules it names) and acknowledges it as applied or rejected with the
//! reason. Losing the service changes nothing in the data path: the proxy keeps its last good
//! config and reconnects with backoff, and the service sends the current version again.

use std::collections::HashSet;
use std::time::Duration;

use sluice_control::proto::{AckRequest, ConfigUpdate, GetModuleRequest, SubscribeRequest};
use sluice_control::{Client, Overlay};

use crate::runtime::ConfigApplier;
use crate::wasm::{hold_module, is_held, release_modules_except};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SubscriberSettings {
    pub url: String,
    pub token: Option<String>,
    /// How `sluice status` names this proxy.
    pub proxy_id: String,
}

/// Following a control service; dropping it stops following (the config stays).
pub struct ControlSubscription {
    task: tokio::task::JoinHandle<()>,
}

impl ControlSubscription {
    /// Starts following in the background. Must be called inside a tokio runtime.
    pub fn start(settings: SubscriberSettings, applier: ConfigApplier) -> Self {
        Self {
            task: tokio::spawn(follow(settings, applier)),
        }
    }
}

impl Drop for ControlSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(settings: SubscriberSettings, applier: ConfigApplier) {
    // The control version this proxy runs (0: none yet).
    let mut applied = 0;
    let mut retry = FIRST_RETRY;
    loop {
        match subscription(&settings, &applier, &mut applied, &mut retry).await {
            Ok(()) => {
                tracing::warn!(url = %settings.url, "the control service ended the subscription; keeping the last good config and reconnecting")
            }
            Err(error) => {
                tracing::warn!(url = %settings.url, %error, ?retry, "control service unreachable; keeping the last good config and retrying")
            }
        }
        // Jitter keeps a fleet of proxies from reconnecting in lockstep.
        let jitter = retry.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(retry + jitter).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// One subscription, until the stream ends or fails.
async fn subscription(
    settings: &SubscriberSettings,
    applier: &ConfigApplier,
    applied: &mut u64,
    retry: &mut Duration,
) -> Result<(), String> {
    let mut client = sluice_control::connect(&settings.url, settings.token.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let request = SubscribeRequest {
        proxy_id: settings.proxy_id.clone(),
        applied_version: *applied,
    };
    let mut updates = client
        .subscribe(request)
        .await
        .map_err(|status| status.message().to_owned())?
        .into_inner();
    *retry = FIRST_RETRY;
    tracing::info!(url = %settings.url, proxy_id = %settings.proxy_id, "subscribed to the control service");
    while let Some(update) = updates
        .message()
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?
    {
        let outcome = if update.version == *applied {
            Ok(())
        } else {
            apply_update(&mut client, applier, &update).await
        };
        if outcome.is_ok() {
            *applied = update.version;
        }
        let ack = AckRequest {
            proxy_id: settings.proxy_id.clone(),
            version: update.version,
            applied: outcome.is_ok(),
            error: outcome.err().unwrap_or_default(),
        };
        client
            .acknowledge(ack)
            .await
            .map_err(|status| status.message().to_owned())?;
    }
    Ok(())
}

/// Fetches the modules `update` names that this proxy does not hold, then applies it.
async fn apply_update(
    client: &mut Client,
    applier: &ConfigApplier,
    update: &ConfigUpdate,
) -> Result<(), String> {
    let overlay: Overlay = serde_json::from_str(&update.overlay_json)
        .map_err(|e| format!("version {}: the overlay is not valid: {e}", update.version))?;
    for digest in overlay.modules() {
        if is_held(digest) {
            continue;
        }
        let module = client
            .get_module(GetModuleRequest {
                sha256: digest.to_owned(),
            })
            .await
            .map_err(|status| format!("fetching module sha256:{digest}: {}", status.message()))?
            .into_inner()
            .module;
        // Verified on this end too: what runs is what was pushed.
        let actual = hold_module(module);
        if !actual.eq_ignore_ascii_case(digest) {
            return Err(format!(
                "module sha256:{digest} arrived with sha256 {actual}; refusing it"
            ));
        }
    }
    applier
        .apply_overlay(overlay.clone(), update.version)
        .await
        .map_err(|error| error.to_string())?;
    let keep: HashSet<&str> = overlay.modules().collect();
    release_modules_except(&keep);
    Ok(())
}
