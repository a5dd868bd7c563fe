//! The filter's configuration, with its defaults.

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::config::{ConfigError, duration_or, invalid, parse};

#[derive(Debug, Clone)]
pub struct Config {
    /// Failures in a row that open the breaker; 0: never for that reason.
    pub consecutive_failures: u32,
    pub failure_rate: Option<FailureRate>,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
    /// Requests in flight per cluster; 0: no limit.
    pub max_requests: u32,
    pub endpoint: Option<EndpointPolicy>,
}

#[derive(Debug, Clone)]
pub struct FailureRate {
    /// Percent of failed requests over the window that opens the breaker.
    pub threshold: u32,
    pub window: Duration,
    /// Fewer requests than this over the window never open it.
    pub min_requests: u32,
}

#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    failure_rate: Option<RawRate>,
    #[serde(default)]
    open_for: Option<String>,
    #[serde(default)]
    max_open_for: Option<String>,
    #[serde(default)]
    half_open_probes: Option<u32>,
    #[serde(default)]
    max_requests: Option<u32>,
    #[serde(default)]
    endpoint: Option<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    threshold: u32,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    min_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    eject_for: Option<String>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = parse(bytes)?;
        let failure_rate = match raw.failure_rate {
            Some(rate) => {
                if !(1..=100).contains(&rate.threshold) {
                    return Err(invalid(
                        "failure_rate.threshold",
                        "must be a percent from 1 to 100",
                    ));
                }
                Some(FailureRate {
                    threshold: rate.threshold,
                    window: duration_or(
                        rate.window.as_ref(),
                        "failure_rate.window",
                        Duration::from_secs(10),
                    )?,
                    min_requests: rate.min_requests.unwrap_or(20).max(1),
                })
            }
            None => None,
        };
        let open_for = duration_or(raw.open_for.as_ref(), "open_for", Duration::from_secs(5))?;
        let max_open_for = duration_or(
            raw.max_open_for.as_ref(),
            "max_open_for",
            Duration::from_secs(60),
        )?;
        if open_for.is_zero() {
            return Err(invalid("open_for", "must be more than 0"));
        }
        if max_open_for < open_for {
            return Err(invalid("max_open_for", "must be at least open_for"));
        }
        let endpoint = match raw.endpoint {
            Some(endpoint) => Some(EndpointPolicy {
                consecutive_failures: endpoint.consecutive_failures.unwrap_or(3).max(1),
                eject_for: duration_or(
                    endpoint.eject_for.as_ref(),
                    "endpoint.eject_for",
                    Duration::from_secs(30),
                )?,
            }),
            None => None,
        };
        Ok(Self {
            consecutive_failures: raw.consecutive_failures.unwrap_or(5),
            failure_rate,
            open_for,
            max_open_for,
            half_open_probes: raw.half_open_probes.unwrap_or(1).max(1),
            max_requests: raw.max_requests.unwrap_or(0),
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mistakes() {
        let config = Config::parse(b"").unwrap();
        assert_eq!(config.consecutive_failures, 5);
        assert_eq!(config.open_for, Duration::from_secs(5));
        assert!(config.failure_rate.is_none());
        let error = Config::parse(br#"{"failure_rate": {"threshold": 0}}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failure_rate.threshold: must be a percent from 1 to 100"
        );
        let error = Config::parse(br#"{"open_for": "10s", "max_open_for": "1s"}"#).unwrap_err();
        assert_eq!(error.path, "max_open_for");
    }
}
