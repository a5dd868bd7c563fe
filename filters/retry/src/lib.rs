//! Retries. When an attempt fails in a way worth retrying (a gateway error, a connect failure,
//! a reset, a gRPC `unavailable`, …), the filter asks the host to send the request again
//! (Sluice's `sluice_replay` extension), to another endpoint when the cluster has one, after
//! a fully jittered exponential backoff or the `Retry-After` the upstream asked for. Only
//! methods that may repeat are retried, except after a connect failure. A retry budget
//! shared by every worker keeps retries a small fraction of the traffic, so retries cannot
//! turn an outage into an overload.
//!
//! Retries happen before any response byte reaches the client: the host refuses a replay
//! afterwards. In a host without the extension (Envoy) the filter does nothing.

mod budget;
mod config;
mod policy;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use sluice_sdk::ext::{self, ExtError};
use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

use budget::Window;
use config::Config;
use policy::Answer;

const CAS_TRIES: usize = 16;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RetryRoot::default()) });
}}

#[derive(Default)]
struct RetryRoot {
    config: Option<Rc<Config>>,
    prefix: String,
    metrics: Metrics,
    unflushed: Rc<RefCell<UnflushedRequests>>,
    /// Seeds each request's jitter with its context id: read from the clock once, at
    /// configuration, rather than with a host call per request.
    jitter_seed: u64,
}

/// Requests this worker counted toward a budget (by shared-data key) but has not written
/// yet. A compare-and-swap on every request would cost more than the rest of the filter;
/// writing every `FLUSH_EVERY` requests, and before every retry decision, keeps the shared
/// count within a few dozen requests per worker of the truth.
#[derive(Default)]
struct UnflushedRequests(HashMap<String, u64>);

const FLUSH_EVERY: u64 = 32;

#[derive(Default, Clone, Copy)]
struct Metrics {
    retries: u32,
    budget_exhausted: u32,
    exhausted: u32,
}

impl Context for RetryRoot {}

impl RootContext for RetryRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.prefix = sluice_sdk::config::shared_data_prefix("sluice.retry");
                self.metrics = Metrics {
                    retries: sluice_sdk::host::counter("retry_attempts"),
                    budget_exhausted: sluice_sdk::host::counter("retry_budget_exhausted"),
                    exhausted: sluice_sdk::host::counter("retry_attempts_exhausted"),
                };
                self.jitter_seed = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()));
                self.config = Some(Rc::new(config));
                true
            }
            Err(error) => {
                log::error!("retry: invalid configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(RetryFilter {
            config,
            prefix: self.prefix.clone(),
            metrics: self.metrics,
            jitter: Jitter::new(self.jitter_seed ^ (u64::from(context_id) << 32)),
            unflushed: Rc::clone(&self.unflushed),
            budget_key: None,
            armed: false,
            method_may_repeat: false,
            retries: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RetryFilter {
    config: Rc<Config>,
    prefix: String,
    metrics: Metrics,
    jitter: Jitter,
    unflushed: Rc<RefCell<UnflushedRequests>>,
    /// The shared-data key of the budget this request counts in, once counted.
    budget_key: Option<String>,
    /// The host keeps the request for replay.
    armed: bool,
    method_may_repeat: bool,
    retries: u32,
}

impl Context for RetryFilter {}

impl HttpContext for RetryFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        self.method_may_repeat = self.config.method_may_repeat(&method);
        match ext::prepare_replay(self.config.max_body_bytes, self.config.per_try_timeout) {
            Ok(()) => self.armed = true,
            // Envoy, or an older Sluice: no retries from this filter.
            Err(ExtError::NotFound) => {}
            Err(error) => log::warn!("retry: the host would not keep the request: {error}"),
        }
        if self.armed && self.config.budget.is_some() {
            let key = format!("{}budget/{}", self.prefix, self.cluster());
            let due = {
                let mut unflushed = self.unflushed.borrow_mut();
                // The key is new once per cluster and worker: no copy of it per request.
                let count = match unflushed.0.get_mut(&key) {
                    Some(count) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        unflushed.0.insert(key.clone(), 1);
                        1
                    }
                };
                count >= FLUSH_EVERY
            };
            if due {
                self.update_budget(&key, |_, _| ());
            }
            self.budget_key = Some(key);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.armed && self.retry() {
            return Action::Continue;
        }
        if self.retries > 0
            && let Some(header) = &self.config.attempts_header
        {
            let attempts = (self.retries + 1).to_string();
            self.set_http_response_header(header, Some(&attempts));
        }
        Action::Continue
    }
}

impl RetryFilter {
    /// Asks for another attempt if this answer deserves one and the limits allow it.
    fn retry(&mut self) -> bool {
        let answer = self.answer();
        let Some(cause) = policy::retriable(&self.config.retry_on, &answer, self.method_may_repeat)
        else {
            return false;
        };
        if self.retries >= self.config.max_retries {
            let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.exhausted, 1);
            return false;
        }
        let asked = self
            .get_http_response_header("retry-after")
            .and_then(|value| policy::retry_after(&value, self.get_current_time()));
        if asked.is_some_and(|wait| wait > self.config.max_retry_after) {
            log::debug!("retry: Retry-After {asked:?} is past max_retry_after; not retrying");
            return false;
        }
        let Some(taken_at) = self.take_from_budget() else {
            let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.budget_exhausted, 1);
            log::debug!("retry: the retry budget is spent; not retrying");
            return false;
        };
        let backoff = policy::backoff(&self.config, self.retries + 1, self.jitter.next());
        let delay = asked.map_or(backoff, |wait| wait.max(backoff));
        match ext::replay(delay) {
            Ok(()) => {
                self.retries += 1;
                let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.retries, 1);
                log::debug!(
                    "retry: {cause:?} (status {}); retry {} in {delay:?}",
                    answer.status,
                    self.retries
                );
                true
            }
            Err(error) => {
                log::debug!("retry: the host will not replay the request: {error}");
                self.refund(taken_at);
                false
            }
        }
    }

    /// What this attempt's response headers say, asking the host only what the status
    /// leaves open: most answers are a plain 2xx.
    fn answer(&self) -> Answer {
        let status = self
            .get_http_response_header(":status")
            .and_then(|status| status.parse().ok())
            .unwrap_or(0);
        // The proxy's own replies for a failed attempt are all 5xx.
        let failure = (status >= 500).then(ext::upstream_failure).flatten();
        // A gRPC error comes as a 200 with `grpc-status` (trailers-only).
        let grpc_status = (status == 200 && !self.config.retry_on.grpc_statuses.is_empty())
            .then(|| {
                let kind = self.get_http_response_header("content-type")?;
                if !kind.starts_with("application/grpc") {
                    return None;
                }
                self.get_http_response_header("grpc-status")?
                    .trim()
                    .parse()
                    .ok()
            })
            .flatten();
        Answer {
            status,
            failure,
            grpc_status,
        }
    }

    /// Takes a retry from the budget: the second it was taken at (for a refund), or `None`
    /// when none is left. Without a budget, `Some(0)`.
    fn take_from_budget(&self) -> Option<u64> {
        let (Some(budget), Some(key)) = (self.config.budget, &self.budget_key) else {
            return Some(0);
        };
        // A budget that cannot be read allows nothing: retries must stay bounded.
        self.update_budget(key, |window, second| {
            window.try_retry(&budget, second).then_some(second)
        })
        .flatten()
    }

    /// Returns a retry the host did not make to the budget.
    fn refund(&self, taken_at: u64) {
        // A request counts in a budget (`budget_key`) only when there is one.
        if let Some(key) = &self.budget_key {
            self.update_budget(key, |window, _| window.refund_retry(taken_at));
        }
    }

    /// Writes this worker's unflushed requests for `key` into the shared window and applies
    /// `change` to it, in one compare-and-swap.
    fn update_budget<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut Window, u64) -> T,
    ) -> Option<T> {
        let seconds = self.config.budget?.window.as_secs() as usize;
        let second = self.now_seconds();
        let unflushed = self.unflushed.borrow_mut().0.remove(key).unwrap_or(0);
        let updated = sluice_sdk::shared::update(key, CAS_TRIES, |stored| {
            let mut window = Window::decode(stored, seconds);
            window.record_requests(second, unflushed);
            let outcome = change(&mut window, second);
            (window.encode(), outcome)
        });
        match updated {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                // Not written: the requests stay counted here for the next write.
                *self
                    .unflushed
                    .borrow_mut()
                    .0
                    .entry(key.to_owned())
                    .or_default() += unflushed;
                log::warn!("retry: the budget at {key}: {error}");
                None
            }
        }
    }

    fn cluster(&self) -> String {
        sluice_sdk::host::cluster_name().unwrap_or_else(|| "any".to_owned())
    }

    fn now_seconds(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A small xorshift generator for backoff jitter: the ABI has no randomness of its own, and
/// jitter needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let mut jitter = Jitter::new(42);
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
    }
}
