//! Circuit breaking. Per upstream cluster: failures in a row or a failure rate over a window
//! open the breaker, and it then answers `503` at once (with `x-sluice-circuit-breaker` naming
//! the cluster and why) until, after `open_for`, one probe request finds out whether the
//! cluster is back. A cap on requests in flight refuses the excess. The state is shared by
//! every worker through the host's shared data (compare-and-swap).
//!
//! Per endpoint (with Sluice's `sluice_eject_endpoint` extension): an endpoint that fails
//! several times in a row is taken out of load balancing for a while. In Envoy that part does
//! nothing and the rest works.
//!
//! A failure is a 5xx response, the proxy's own included (connect failure, reset, timeout).

mod breaker;
mod config;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

use breaker::{Admission, Breaker, Outcome, Transition};
use config::Config;

const CAS_TRIES: usize = 16;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BreakerRoot::default()) });
}}

#[derive(Default)]
struct BreakerRoot {
    config: Option<Rc<Config>>,
    prefix: String,
    metrics: Metrics,
}

#[derive(Default, Clone, Copy)]
struct Metrics {
    refused: u32,
    opened: u32,
    ejections: u32,
}

impl Context for BreakerRoot {}

impl RootContext for BreakerRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.prefix = sluice_sdk::config::shared_data_prefix("sluice.circuit-breaker");
                self.metrics = Metrics {
                    refused: sluice_sdk::host::counter("circuit_breaker_refused"),
                    opened: sluice_sdk::host::counter("circuit_breaker_opened"),
                    ejections: sluice_sdk::host::counter("circuit_breaker_ejections"),
                };
                self.config = Some(Rc::new(config));
                true
            }
            Err(error) => {
                log::error!("circuit-breaker: invalid configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BreakerFilter {
            config: self.config.clone()?,
            prefix: self.prefix.clone(),
            metrics: self.metrics,
            admitted: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BreakerFilter {
    config: Rc<Config>,
    prefix: String,
    metrics: Metrics,
    /// The cluster and whether this request is a half-open probe, once admitted.
    admitted: Option<(String, bool)>,
}

impl Context for BreakerFilter {}

impl HttpContext for BreakerFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let cluster = self.cluster();
        let now = self.now_ms();
        let config = Rc::clone(&self.config);
        let admission = self.update(&cluster, |breaker| breaker.admit(&config, now));
        match admission {
            Some(Admission::Go { probe }) => {
                self.admitted = Some((cluster, probe));
                Action::Continue
            }
            Some(Admission::Refused(why)) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.refused, 1);
                let header = format!("{cluster}: {why}");
                self.send_http_response(
                    503,
                    vec![
                        ("x-sluice-circuit-breaker", header.as_str()),
                        ("content-type", "text/plain"),
                    ],
                    Some(format!("circuit breaker for cluster {cluster}: {why}\n").as_bytes()),
                );
                Action::Pause
            }
            // The state could not be read or written: let the request go uncounted.
            None => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        let Some((cluster, probe)) = self.admitted.take() else {
            return;
        };
        let outcome = self.outcome();
        let now = self.now_ms();
        let config = Rc::clone(&self.config);
        let transition = self.update(&cluster, |breaker| {
            breaker.finish(&config, probe, outcome, now)
        });
        match transition {
            Some(Transition::Opened(why)) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.opened, 1);
                log::warn!("circuit-breaker: cluster {cluster} opened: {why}");
            }
            Some(Transition::Closed) => {
                log::info!("circuit-breaker: cluster {cluster} closed again")
            }
            _ => {}
        }
        // The cluster as routed (a listener filter in Sluice counted under "any").
        if outcome != Outcome::Unknown {
            self.judge_endpoint(&self.cluster(), outcome == Outcome::Failure);
        }
    }
}

impl BreakerFilter {
    /// The upstream's verdict: a failure when the proxy could not get a response (Sluice says
    /// why) or the response is a 5xx; nothing when no response was sent (the client left).
    fn outcome(&self) -> Outcome {
        if sluice_sdk::ext::upstream_failure().is_some() {
            return Outcome::Failure;
        }
        let code = self
            .get_property(vec!["response", "code"])
            .and_then(|bytes| Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)));
        match code {
            Some(500..=599) => Outcome::Failure,
            Some(_) => Outcome::Success,
            None => Outcome::Unknown,
        }
    }

    fn cluster(&self) -> String {
        // Envoy 1.40 has only xds.cluster_name; in Sluice a listener filter runs before
        // routing, so it counts under "any" (put the filter on routes for per-cluster state).
        sluice_sdk::host::cluster_name().unwrap_or_else(|| "any".to_owned())
    }

    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Applies `change` to the cluster's breaker, atomically across workers. `None` if the
    /// shared data could not be used.
    fn update<T>(&self, cluster: &str, mut change: impl FnMut(&mut Breaker) -> T) -> Option<T> {
        let key = format!("{}cluster/{cluster}", self.prefix);
        let updated = sluice_sdk::shared::update(&key, CAS_TRIES, |stored| {
            let mut breaker: Breaker = stored
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .unwrap_or_default();
            let outcome = change(&mut breaker);
            (serde_json::to_vec(&breaker).unwrap_or_default(), outcome)
        });
        updated
            .map_err(|error| log::warn!("circuit-breaker: the state of {cluster}: {error}"))
            .ok()
    }

    /// Counts the endpoint's failures in a row and ejects it past the limit.
    fn judge_endpoint(&self, cluster: &str, failed: bool) {
        let Some(policy) = &self.config.endpoint else {
            return;
        };
        let Some(endpoint) = sluice_sdk::ext::upstream_address() else {
            return;
        };
        let Some(failures) = self.count_endpoint_failure(cluster, &endpoint, failed) else {
            return;
        };
        if failures < policy.consecutive_failures {
            return;
        }
        match sluice_sdk::ext::eject_endpoint(cluster, &endpoint, policy.eject_for) {
            Ok(true) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.ejections, 1);
                log::warn!(
                    "circuit-breaker: ejected {endpoint} of {cluster} after {failures} failures in a row"
                );
            }
            Ok(false) => log::info!(
                "circuit-breaker: {endpoint} of {cluster} failed {failures} times in a row, but it is the cluster's last available endpoint"
            ),
            Err(error) => log::debug!("circuit-breaker: cannot eject {endpoint}: {error:?}"),
        }
    }

    /// The endpoint's failures in a row after this request (the count restarts once it
    /// reaches the limit); `None` if the shared data could not be used.
    fn count_endpoint_failure(&self, cluster: &str, endpoint: &str, failed: bool) -> Option<u32> {
        let limit = self.config.endpoint.as_ref()?.consecutive_failures;
        let key = format!("{}endpoint/{cluster}|{endpoint}", self.prefix);
        let counted = sluice_sdk::shared::update(&key, CAS_TRIES, |stored| {
            let streak = stored
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes);
            let failures = if failed { streak + 1 } else { 0 };
            let stored_next = if failures >= limit { 0 } else { failures };
            (stored_next.to_le_bytes().to_vec(), failures)
        });
        counted.ok()
    }
}
