//! Following the control service's discovery stream for the services this proxy's clusters
//! name. When that set grows the stream starts over with the new set; when the control
//! service is away the proxy keeps every instance it knows and reconnects with backoff.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_control::proto::DiscoverRequest;

use super::Discovery;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Follows in the background until dropped.
pub struct DiscoveryFollower {
    task: tokio::task::JoinHandle<()>,
}

/// Why one stream ended.
enum Ended {
    /// The set of services grew: ask again at once.
    Wanted,
    Failed(String),
}

// === impl DiscoveryFollower ===

impl DiscoveryFollower {
    /// Must be called inside a tokio runtime.
    pub fn start(
        discovery: Arc<Discovery>,
        url: String,
        token: Option<String>,
        proxy_id: String,
        trust: sluice_control::ControlTrust,
    ) -> Self {
        Self {
            task: tokio::spawn(follow(discovery, url, token, proxy_id, trust)),
        }
    }
}

impl Drop for DiscoveryFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    discovery: Arc<Discovery>,
    url: String,
    token: Option<String>,
    proxy_id: String,
    trust: sluice_control::ControlTrust,
) {
    let mut wanted = discovery.wanted();
    let mut retry = FIRST_RETRY;
    loop {
        let services = wanted.borrow_and_update().clone();
        if services.is_empty() {
            // No cluster names a service: nothing to follow until one does.
            if wanted.changed().await.is_err() {
                return;
            }
            continue;
        }
        let ended = match sluice_control::connect_with(&url, token.as_deref(), &trust).await {
            Ok(client) => {
                stream(
                    client,
                    &discovery,
                    &url,
                    &proxy_id,
                    &services,
                    &mut wanted,
                    &mut retry,
                )
                .await
            }
            Err(error) => Ended::Failed(error.to_string()),
        };
        discovery.set_connected(false);
        match ended {
            Ended::Wanted => continue,
            Ended::Failed(error) => {
                tracing::warn!(%url, %error, ?retry, "discovery stream lost; keeping the endpoints known and retrying");
                let jitter = retry.mul_f64(fastrand::f64() * 0.2);
                tokio::time::sleep(retry + jitter).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

async fn stream(
    mut client: sluice_control::Client,
    discovery: &Discovery,
    url: &str,
    proxy_id: &str,
    services: &BTreeSet<String>,
    wanted: &mut tokio::sync::watch::Receiver<BTreeSet<String>>,
    retry: &mut Duration,
) -> Ended {
    let request = DiscoverRequest {
        proxy_id: proxy_id.to_owned(),
        services: services.iter().cloned().collect(),
    };
    let mut updates = match client.discover(request).await {
        Ok(updates) => updates.into_inner(),
        Err(status) => return Ended::Failed(format!("{}: {}", status.code(), status.message())),
    };
    discovery.set_connected(true);
    tracing::info!(%url, ?services, "following the registry");
    loop {
        tokio::select! {
            message = updates.message() => match message {
                Ok(Some(update)) => {
                    *retry = FIRST_RETRY;
                    discovery.apply(&update);
                }
                Ok(None) => return Ended::Failed("the control service ended the stream".into()),
                Err(status) => {
                    return Ended::Failed(format!("{}: {}", status.code(), status.message()));
                }
            },
            changed = wanted.changed() => {
                if changed.is_err() {
                    return Ended::Failed("the proxy stopped".into());
                }
                return Ended::Wanted;
            }
        }
    }
}
