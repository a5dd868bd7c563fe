//! Rate limiting with a token bucket per key, shared by every worker (through the host's
//! shared data, with compare-and-swap), answering `429` with `Retry-After` when a bucket is
//! empty. Uses only the standard Proxy-Wasm ABI, so the same module runs in Envoy.
//!
//! Keys hash into a fixed number of buckets (`slots`), so memory stays bounded whatever the
//! clients send; two keys that share a bucket share its tokens.

mod bucket;
mod config;

use std::time::UNIX_EPOCH;

use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

use bucket::{Bucket, Decision};
use config::{Config, Key};

/// Tries of a compare-and-swap before the request is let through (another worker kept
/// winning; failing open beats stalling the request).
const CAS_TRIES: usize = 8;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot::default()) });
}}

#[derive(Default)]
struct RateLimitRoot {
    config: Option<std::rc::Rc<Config>>,
    /// Shared-data keys are `<prefix><slot>`; the prefix carries the plugin's name so two
    /// rate limit filters keep their buckets apart.
    prefix: String,
    allowed: u32,
    limited: u32,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.prefix = sluice_sdk::config::shared_data_prefix("sluice.ratelimit");
                self.allowed = sluice_sdk::host::counter("ratelimit_allowed");
                self.limited = sluice_sdk::host::counter("ratelimit_limited");
                self.config = Some(std::rc::Rc::new(config));
                true
            }
            Err(error) => {
                log::error!("ratelimit: invalid configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(RateLimitFilter {
            config,
            prefix: self.prefix.clone(),
            allowed: self.allowed,
            limited: self.limited,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimitFilter {
    config: std::rc::Rc<Config>,
    prefix: String,
    allowed: u32,
    limited: u32,
}

impl Context for RateLimitFilter {}

impl HttpContext for RateLimitFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(key) = self.key() else {
            // No key (the header is absent): nothing to count it against.
            return Action::Continue;
        };
        let slot = self.config.slot_of(&key);
        match self.take_token(slot) {
            Decision::Allowed => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.allowed, 1);
                Action::Continue
            }
            Decision::Limited { retry_after } => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.limited, 1);
                let seconds = retry_after.as_secs_f64().ceil().max(1.0).to_string();
                self.send_http_response(
                    self.config.status,
                    vec![("retry-after", seconds.as_str())],
                    Some(b"rate limited\n"),
                );
                Action::Pause
            }
        }
    }
}

impl RateLimitFilter {
    fn key(&self) -> Option<String> {
        match &self.config.key {
            Key::Source => {
                let address = self.get_property(vec!["source", "address"])?;
                Some(host_of(&String::from_utf8_lossy(&address)).to_owned())
            }
            Key::Path => self.get_http_request_header(":path").map(|path| {
                // Per path, not per query: /search?q=a and /search?q=b share a bucket.
                path.split('?').next().unwrap_or_default().to_owned()
            }),
            Key::Header(name) => self.get_http_request_header(name),
        }
    }

    /// Takes one token from bucket `slot`, atomically across workers.
    fn take_token(&self, slot: u32) -> Decision {
        let key = format!("{}{slot}", self.prefix);
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let config = &self.config;
        let taken = sluice_sdk::shared::update(&key, CAS_TRIES, |stored| {
            let bucket = stored
                .and_then(Bucket::decode)
                .unwrap_or_else(|| Bucket::full(config, now));
            let (next, decision) = bucket.take(config, now);
            (next.encode().to_vec(), decision)
        });
        taken.unwrap_or_else(|error| {
            log::warn!("ratelimit: bucket {key}: {error}; letting the request through");
            Decision::Allowed
        })
    }
}

/// `10.0.0.1:5000` → `10.0.0.1`, `[::1]:5000` → `::1`.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_of("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
