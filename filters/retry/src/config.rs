//! The filter's configuration, with its defaults.

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::config::{ConfigError, duration_or, invalid, parse};
use sluice_sdk::duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub retry_on: RetryOn,
    /// Methods whose requests may be sent twice (upper case). Connect failures are retried
    /// for every method: such a request never reached the upstream.
    pub methods: Vec<String>,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this: the response goes to the client, not retried.
    pub max_retry_after: Duration,
    pub max_body_bytes: usize,
    pub budget: Option<BudgetConfig>,
    /// A response header that tells the client how many attempts were made, when set.
    pub attempts_header: Option<String>,
}

/// Which answers are worth another attempt (Envoy's `retry_on` names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, and every failure to get one.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504 (the proxy's own too: per-try timeout, no endpoint).
    pub gateway_error: bool,
    /// `connect-failure`: the connection to the endpoint failed or timed out.
    pub connect_failure: bool,
    /// `reset`: the connection broke before the response headers.
    pub reset: bool,
    /// `retriable-status-codes`: the statuses in `retriable_status_codes`.
    pub status_codes: Vec<u16>,
    /// gRPC statuses (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`) of a trailers-only gRPC response.
    pub grpc_statuses: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request over the window.
    pub ratio: f64,
    /// Retries allowed per second over the window whatever the traffic, so a quiet service
    /// can still retry.
    pub min_per_second: f64,
    pub window: Duration,
}

const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
const DEFAULT_RETRY_ON: [&str; 4] = ["gateway-error", "connect-failure", "reset", "unavailable"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    retry_on: Option<Vec<String>>,
    #[serde(default)]
    retriable_status_codes: Vec<u16>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    per_try_timeout: Option<String>,
    #[serde(default)]
    backoff: Option<RawBackoff>,
    #[serde(default)]
    max_retry_after: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    budget: Option<RawBudget>,
    #[serde(default)]
    attempts_header: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    max: Option<String>,
}

/// `"budget": false` turns the budget off; an object tunes it.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBudget {
    Switch(bool),
    Settings(RawBudgetSettings),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudgetSettings {
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    min_per_second: Option<f64>,
    #[serde(default)]
    window: Option<String>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = parse(bytes)?;
        let max_retries = raw.max_retries.unwrap_or(2);
        // The host makes 16 attempts at most.
        if max_retries > 15 {
            return Err(invalid("max_retries", "at most 15"));
        }
        let retry_on = retry_on(
            raw.retry_on
                .unwrap_or_else(|| DEFAULT_RETRY_ON.map(String::from).to_vec()),
            raw.retriable_status_codes,
        )?;
        let methods = match raw.methods {
            Some(methods) => methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            None => IDEMPOTENT.map(String::from).to_vec(),
        };
        let backoff = raw.backoff.unwrap_or_default();
        let backoff_base = duration_or(
            backoff.base.as_ref(),
            "backoff.base",
            Duration::from_millis(25),
        )?;
        let backoff_max = duration_or(backoff.max.as_ref(), "backoff.max", backoff_base * 10)?;
        if backoff_max < backoff_base {
            return Err(invalid("backoff.max", "shorter than backoff.base"));
        }
        let per_try_timeout = match raw.per_try_timeout.as_ref() {
            Some(text) => Some(duration::parse(text).map_err(|e| invalid("per_try_timeout", e))?),
            None => None,
        };
        let max_body_bytes = raw.max_body_bytes.unwrap_or(64 * 1024);
        if max_body_bytes > 16 * 1024 * 1024 {
            return Err(invalid("max_body_bytes", "at most 16 MiB (16777216)"));
        }
        Ok(Self {
            max_retries,
            retry_on,
            methods,
            per_try_timeout,
            backoff_base,
            backoff_max,
            max_retry_after: duration_or(
                raw.max_retry_after.as_ref(),
                "max_retry_after",
                Duration::from_secs(5),
            )?,
            max_body_bytes,
            budget: budget(raw.budget)?,
            attempts_header: raw.attempts_header.map(|name| name.to_ascii_lowercase()),
        })
    }

    pub fn method_may_repeat(&self, method: &str) -> bool {
        self.methods.iter().any(|allowed| allowed == method)
    }
}

fn retry_on(names: Vec<String>, status_codes: Vec<u16>) -> Result<RetryOn, ConfigError> {
    let mut on = RetryOn::default();
    for (index, name) in names.iter().enumerate() {
        let path = || format!("retry_on[{index}]");
        match name.as_str() {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "retriable-status-codes" => on.status_codes.clone_from(&status_codes),
            other => match grpc_status(other) {
                Some(code) => on.grpc_statuses.push(code),
                None => {
                    return Err(invalid(
                        path(),
                        format!(
                            "unknown condition {other:?} (5xx, gateway-error, connect-failure, reset, \
                             retriable-status-codes, cancelled, deadline-exceeded, internal, \
                             resource-exhausted, unavailable)"
                        ),
                    ));
                }
            },
        }
    }
    if !status_codes.is_empty() && on.status_codes.is_empty() {
        return Err(invalid(
            "retriable_status_codes",
            "set, but retry_on lacks \"retriable-status-codes\"",
        ));
    }
    if let Some(bad) = status_codes
        .iter()
        .find(|code| !(100..=599).contains(*code))
    {
        return Err(invalid(
            "retriable_status_codes",
            format!("{bad} is not an HTTP status"),
        ));
    }
    Ok(on)
}

fn grpc_status(name: &str) -> Option<u32> {
    Some(match name {
        "cancelled" => 1,
        "deadline-exceeded" => 4,
        "resource-exhausted" => 8,
        "internal" => 13,
        "unavailable" => 14,
        _ => return None,
    })
}

fn budget(raw: Option<RawBudget>) -> Result<Option<BudgetConfig>, ConfigError> {
    let settings = match raw {
        Some(RawBudget::Switch(false)) => return Ok(None),
        Some(RawBudget::Switch(true)) | None => RawBudgetSettings::default(),
        Some(RawBudget::Settings(settings)) => settings,
    };
    let ratio = settings.ratio.unwrap_or(0.2);
    if !(0.0..=1000.0).contains(&ratio) {
        return Err(invalid("budget.ratio", "between 0 and 1000"));
    }
    let min_per_second = settings.min_per_second.unwrap_or(10.0);
    if !(0.0..=1_000_000.0).contains(&min_per_second) {
        return Err(invalid("budget.min_per_second", "between 0 and 1000000"));
    }
    let window = duration_or(
        settings.window.as_ref(),
        "budget.window",
        Duration::from_secs(10),
    )?;
    if !(1..=60).contains(&window.as_secs()) {
        return Err(invalid("budget.window", "between 1s and 60s"));
    }
    Ok(Some(BudgetConfig {
        ratio,
        min_per_second,
        window,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = Config::parse(b"").expect("defaults");
        assert_eq!(config.max_retries, 2);
        assert!(config.retry_on.gateway_error && config.retry_on.connect_failure);
        assert!(config.retry_on.reset && !config.retry_on.server_error);
        assert_eq!(config.retry_on.grpc_statuses, [14]);
        assert!(config.method_may_repeat("GET") && !config.method_may_repeat("POST"));
        assert_eq!(config.backoff_max, Duration::from_millis(250));
        assert_eq!(
            config.budget,
            Some(BudgetConfig {
                ratio: 0.2,
                min_per_second: 10.0,
                window: Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let error = |text: &str| Config::parse(text.as_bytes()).expect_err(text).to_string();
        assert!(error(r#"{"retry_on": ["5xx", "sometimes"]}"#).starts_with("retry_on[1]: unknown"));
        assert!(
            error(r#"{"retriable_status_codes": [409]}"#).starts_with("retriable_status_codes:")
        );
        assert!(error(r#"{"backoff": {"base": "1s", "max": "10ms"}}"#).starts_with("backoff.max"));
        assert!(error(r#"{"budget": {"window": "2m"}}"#).starts_with("budget.window"));
        assert!(error(r#"{"max_retries": 99}"#).starts_with("max_retries"));
    }

    #[test]
    fn the_budget_can_be_turned_off_and_status_codes_on() {
        let config = Config::parse(
            br#"{"budget": false, "retry_on": ["retriable-status-codes"], "retriable_status_codes": [409]}"#,
        )
        .expect("valid");
        assert_eq!(config.budget, None);
        assert_eq!(config.retry_on.status_codes, [409]);
    }
}
