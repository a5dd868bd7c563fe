//! A proxy subscribed to a control service: it applies each version it receives (fetching
//! and verifying the modules it names) and acknowledges it as applied or rejected with the
//! reason. Losing the service changes nothing in the data path: the proxy keeps its last good
//! config and reconnects with backoff, and the service sends the current version again.
//!
//! The subscription also holds the proxy's registrations (`register:`) in the mesh registry,
//! and beside it runs the discovery stream for the services its clusters name. On shutdown
//! the proxy withdraws its instances before it drains.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_control::proto::{
    AckRequest, ConfigUpdate, DeregisterRequest, GetModuleRequest, Registration, SubscribeRequest,
};
use sluice_control::{Client, Overlay};
use tokio::sync::watch;
use tonic::Code;

use crate::config::{SentModules, ServiceRegistration};
use crate::discovery::DiscoveryFollower;
use crate::runtime::{ConfigApplier, ControlOverlay};
use crate::wasm::ModuleBytes;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A refused token will not start working by itself: retry rarely.
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct SubscriberSettings {
    pub url: String,
    pub token: Option<String>,
    /// How `sluice status` names this proxy.
    pub proxy_id: String,
    /// The workload's join token: registering services needs it.
    pub join_token: Option<String>,
    /// How an `https://` control service is checked (the CA the join token names).
    pub trust: sluice_control::ControlTrust,
}

/// Following a control service; dropping it stops following (the config stays).
pub struct ControlSubscription {
    task: tokio::task::JoinHandle<()>,
    /// Held: the discovery stream runs as long as the subscription.
    _discovery: DiscoveryFollower,
    settings: SubscriberSettings,
    registrations: watch::Receiver<Vec<ServiceRegistration>>,
}

/// How long a proxy that shuts down waits for the control service to take its instances
/// out of every caller's endpoints before it drains anyway.
const DEREGISTER_LIMIT: Duration = Duration::from_secs(3);
/// How long a deregistered proxy keeps accepting before it drains.
const ROUTED_BEFORE_REMOVAL: Duration = Duration::from_millis(200);

impl ControlSubscription {
    /// Starts following in the background. Must be called inside a tokio runtime.
    pub fn start(settings: SubscriberSettings, applier: ConfigApplier) -> Self {
        let discovery = DiscoveryFollower::start(
            applier.discovery(),
            settings.url.clone(),
            settings.token.clone(),
            settings.proxy_id.clone(),
            settings.trust.clone(),
        );
        Self {
            registrations: applier.follow_registrations(),
            task: tokio::spawn(follow(settings.clone(), applier)),
            _discovery: discovery,
            settings,
        }
    }

    /// Stops following and, if this proxy registered instances, withdraws them: returns
    /// once the control service has sent the removal to every caller (or after a bounded
    /// wait), so callers stop sending here before the proxy drains.
    pub async fn leave(self) {
        self.task.abort();
        let registered = !self.registrations.borrow().is_empty();
        let (Some(join_token), true) = (self.settings.join_token.clone(), registered) else {
            return;
        };
        let settings = &self.settings;
        let withdrawn = async {
            let mut client = sluice_control::connect_with(
                &settings.url,
                settings.token.as_deref(),
                &settings.trust,
            )
            .await?;
            let request = DeregisterRequest {
                proxy_id: settings.proxy_id.clone(),
                join_token,
                sequence: subscription_sequence(),
            };
            let removed = client
                .deregister(request)
                .await
                .map_err(|status| format!("{}: {}", status.code(), status.message()))?
                .into_inner()
                .removed;
            Ok::<u32, Box<dyn std::error::Error + Send + Sync>>(removed)
        };
        match tokio::time::timeout(DEREGISTER_LIMIT, withdrawn).await {
            Ok(Ok(removed)) => {
                tracing::info!(removed, "deregistered from the mesh registry; draining");
                // Callers have the removal; a request one of them routed here just before
                // it arrived still gets a listening proxy.
                tokio::time::sleep(ROUTED_BEFORE_REMOVAL).await;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not deregister; callers drop this proxy when its lease runs out");
            }
            Err(_) => tracing::warn!(
                "deregistering took longer than {DEREGISTER_LIMIT:?}; draining anyway"
            ),
        }
    }
}

impl Drop for ControlSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a subscription ended.
enum Ended {
    /// The service closed the stream (it is shutting down).
    Closed,
    /// Reaching or talking to the service failed; retry.
    Failed(String),
    /// The service refused our token.
    Refused(String),
    /// The service's certificate is not one to trust (another mesh's CA, a name it lacks).
    Untrusted(String),
    /// The file's `register:` changed: subscribe again with the new set.
    Reregister,
}

/// What the subscriber keeps across subscriptions.
#[derive(Default)]
struct Subscriber {
    /// The version running and its overlay text: a version is skipped only if both match (a
    /// control service with a fresh data dir numbers its versions from 1 again).
    running: Option<(u64, String)>,
    /// The last version refused, and its text, for the ack when it applies later.
    refused: Option<(u64, String)>,
    /// Modules fetched so far, by sha256; those no running version names are let go.
    modules: HashMap<String, Arc<[u8]>>,
    /// Which of `--control`'s replicas to try first.
    first_replica: usize,
}

async fn follow(settings: SubscriberSettings, applier: ConfigApplier) {
    let mut subscriber = Subscriber::default();
    let mut retry = FIRST_RETRY;
    loop {
        let wait = match subscriber
            .subscription(&settings, &applier, &mut retry)
            .await
        {
            Ended::Closed => {
                tracing::warn!(url = %settings.url, "the control service ended the subscription; keeping the last good config and reconnecting");
                retry
            }
            Ended::Failed(error) => {
                tracing::warn!(url = %settings.url, %error, ?retry, "control service unreachable; keeping the last good config and retrying");
                retry
            }
            Ended::Refused(error) => {
                tracing::error!(url = %settings.url, %error, "the control service refused this proxy; check SLUICE_CONTROL_TOKEN. Keeping the last good config");
                RETRY_AFTER_REFUSAL
            }
            Ended::Untrusted(error) => {
                tracing::error!(%error, "not subscribing: the control service's certificate is not one this proxy trusts (check --control and the join token's CA). Keeping the last good config");
                RETRY_AFTER_REFUSAL
            }
            Ended::Reregister => continue,
        };
        // Jitter keeps a fleet of proxies from reconnecting in lockstep.
        let jitter = wait.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(wait + jitter).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

impl Subscriber {
    /// One subscription, until the stream ends or fails.
    async fn subscription(
        &mut self,
        settings: &SubscriberSettings,
        applier: &ConfigApplier,
        retry: &mut Duration,
    ) -> Ended {
        let (mut client, replica) = match sluice_control::connect_from(
            &settings.url,
            settings.token.as_deref(),
            self.first_replica,
            &settings.trust,
        )
        .await
        {
            Ok(connected) => connected,
            Err(error @ sluice_control::ConnectError::Untrusted { .. }) => {
                return Ended::Untrusted(error.to_string());
            }
            Err(error) => return Ended::Failed(error.to_string()),
        };
        // The next subscription starts with the next replica: one that failed or shut down
        // is skipped at once, and the same replica serves again only if no other answers.
        self.first_replica = replica + 1;
        let mut registrations = applier.follow_registrations();
        let register: Vec<Registration> = registrations
            .borrow_and_update()
            .iter()
            .map(|r| Registration {
                service: r.service.clone(),
                address: r.address.clone(),
                labels: r.labels.clone().into_iter().collect(),
            })
            .collect();
        let request = SubscribeRequest {
            proxy_id: settings.proxy_id.clone(),
            applied_version: self.running.as_ref().map_or(0, |(v, _)| *v),
            registrations: register,
            join_token: settings.join_token.clone().unwrap_or_default(),
            sequence: subscription_sequence(),
        };
        let mut updates = match client.subscribe(request).await {
            Ok(updates) => updates.into_inner(),
            Err(status) => return ended(&status),
        };
        *retry = FIRST_RETRY;
        tracing::info!(url = %settings.url, proxy_id = %settings.proxy_id, "subscribed to the control service");
        let mut overlay_applied = applier.follow_overlay();
        let mut told_refusal = false;
        loop {
            let update = tokio::select! {
                message = updates.message() => match message {
                    Ok(Some(update)) => update,
                    Ok(None) => return Ended::Closed,
                    Err(status) => return ended(&status),
                },
                changed = registrations.changed() => {
                    if changed.is_err() {
                        return Ended::Closed;
                    }
                    tracing::info!("the services this proxy registers changed; registering again");
                    return Ended::Reregister;
                }
                // A refused version that a later file edit let apply.
                changed = overlay_applied.changed() => {
                    if changed.is_err() {
                        return Ended::Closed;
                    }
                    let version = *overlay_applied.borrow_and_update();
                    if let Some(refused) = self.refused.take_if(|(v, _)| *v == version) {
                        self.running = Some(refused);
                        if let Err(status) = ack(&mut client, settings, version, Ok(())).await {
                            return ended(&status);
                        }
                    }
                    continue;
                }
            };
            if !update.registration_error.is_empty() && !told_refusal {
                told_refusal = true;
                tracing::error!(url = %settings.url, reason = %update.registration_error, "the control service refused this proxy's registrations (check the join token and `register:`); it follows the config without registering");
            }
            let already = self
                .running
                .as_ref()
                .is_some_and(|(v, text)| *v == update.version && *text == update.overlay_json);
            let outcome = if already {
                Ok(())
            } else {
                match self.apply(&mut client, applier, &update).await {
                    Ok(outcome) => outcome,
                    // Fetching failed: not the version's fault. Reconnect, and try again.
                    Err(status) => return ended(&status),
                }
            };
            let text = update.overlay_json.clone();
            match &outcome {
                Ok(()) => self.running = Some((update.version, text)),
                Err(_) => self.refused = Some((update.version, text)),
            }
            if let Err(status) = ack(&mut client, settings, update.version, outcome).await {
                return ended(&status);
            }
        }
    }

    /// Fetches the modules `update` names that this proxy lacks (checking each digest), then
    /// applies it. The inner result is the version's fate; `Err` is a failed fetch.
    async fn apply(
        &mut self,
        client: &mut Client,
        applier: &ConfigApplier,
        update: &ConfigUpdate,
    ) -> Result<Result<(), String>, tonic::Status> {
        let overlay: Overlay = match serde_json::from_str(&update.overlay_json) {
            Ok(overlay) => overlay,
            Err(error) => {
                return Ok(Err(format!(
                    "version {}: the overlay is not valid: {error}",
                    update.version
                )));
            }
        };
        let mut named = SentModules::new();
        for digest in overlay.modules() {
            let digest = digest.to_ascii_lowercase();
            if !self.modules.contains_key(&digest) {
                let module = client
                    .get_module(GetModuleRequest {
                        sha256: digest.clone(),
                    })
                    .await?
                    .into_inner()
                    .module;
                // Verified on this end too: what runs is what was pushed.
                let actual = ModuleBytes::new(module);
                if actual.digest != digest {
                    return Ok(Err(format!(
                        "module sha256:{digest} arrived with sha256 {}; refusing it",
                        actual.digest
                    )));
                }
                self.modules.insert(digest.clone(), actual.bytes.into());
            }
            if let Some(bytes) = self.modules.get(&digest) {
                named.insert(digest, Arc::clone(bytes));
            }
        }
        let control = ControlOverlay {
            version: update.version,
            overlay,
            modules: Arc::new(named),
        };
        let applied = applier.apply_overlay(control.clone()).await;
        // Keep what this version names; the applier keeps the running version's modules.
        self.modules
            .retain(|digest, _| control.modules.contains_key(digest));
        Ok(applied.map(drop).map_err(|error| error.to_string()))
    }
}

async fn ack(
    client: &mut Client,
    settings: &SubscriberSettings,
    version: u64,
    outcome: Result<(), String>,
) -> Result<(), tonic::Status> {
    let ack = AckRequest {
        proxy_id: settings.proxy_id.clone(),
        version,
        applied: outcome.is_ok(),
        error: outcome.err().unwrap_or_default(),
    };
    client.acknowledge(ack).await.map(drop)
}

/// The number of a new subscription (or deregistration): this machine's clock in
/// microseconds, and always more than the last, so it grows across restarts of the proxy too.
/// With control replicas, the newest subscription's registrations win.
fn subscription_sequence() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or(0);
    now.max(previous + 1)
}

fn ended(status: &tonic::Status) -> Ended {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Ended::Refused(text),
        _ => Ended::Failed(text),
    }
}
