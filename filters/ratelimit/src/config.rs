//! The filter's configuration, with its defaults.

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::config::{ConfigError, invalid, parse};

#[derive(Debug)]
pub struct Config {
    pub key: Key,
    /// Tokens added every `per`.
    pub rate: u32,
    pub per: Duration,
    /// Most tokens a bucket holds: the largest burst let through at once.
    pub burst: u32,
    pub slots: u32,
    pub status: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// The client's address, without the port.
    Source,
    /// The request path, without the query.
    Path,
    /// The value of a request header; requests without it are not limited.
    Header(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// `source` | `path` | `header:<name>` [source]
    #[serde(default)]
    key: Option<String>,
    rate: u32,
    /// [1s]
    #[serde(default, deserialize_with = "optional_duration")]
    per: Option<Duration>,
    /// [rate]
    #[serde(default)]
    burst: Option<u32>,
    /// [4096]
    #[serde(default)]
    slots: Option<u32>,
    /// [429]
    #[serde(default)]
    status: Option<u32>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    sluice_sdk::duration::deserialize(d).map(Some)
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = parse(bytes)?;
        let key = match raw.key.as_deref().unwrap_or("source") {
            "source" => Key::Source,
            "path" => Key::Path,
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Key::Header(name.to_ascii_lowercase()),
                _ => {
                    return Err(invalid(
                        "key",
                        format!("{other:?}: use source, path or header:<name>"),
                    ));
                }
            },
        };
        if raw.rate == 0 {
            return Err(invalid("rate", "must be at least 1"));
        }
        let per = raw.per.unwrap_or(Duration::from_secs(1));
        if per.is_zero() {
            return Err(invalid("per", "must be more than 0"));
        }
        let status = raw.status.unwrap_or(429);
        if !(200..=599).contains(&status) {
            return Err(invalid("status", format!("{status} is not an HTTP status")));
        }
        Ok(Self {
            key,
            rate: raw.rate,
            per,
            burst: raw.burst.unwrap_or(raw.rate).max(1),
            slots: raw.slots.unwrap_or(4096).max(1),
            status,
        })
    }

    /// The bucket a key counts against (FNV-1a, stable across workers and restarts).
    pub fn slot_of(&self, key: &str) -> u32 {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (hash % u64::from(self.slots)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = Config::parse(br#"{"rate": 5}"#).unwrap();
        assert_eq!(config.key, Key::Source);
        assert_eq!(
            (config.burst, config.per, config.status),
            (5, Duration::from_secs(1), 429)
        );
        let config =
            Config::parse(br#"{"rate": 5, "key": "header:X-User", "per": "1m", "burst": 9}"#)
                .unwrap();
        assert_eq!(config.key, Key::Header("x-user".into()));
        assert_eq!((config.burst, config.per), (9, Duration::from_secs(60)));

        let error = Config::parse(br#"{"rate": 5, "key": "cookie"}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"key: "cookie": use source, path or header:<name>"#
        );
        assert_eq!(Config::parse(br#"{}"#).unwrap_err().path, "(document)");
        assert_eq!(
            Config::parse(br#"{"rate": 1, "per": "soon"}"#)
                .unwrap_err()
                .path,
            "per"
        );
    }

    #[test]
    fn keys_spread_over_slots() {
        let config = Config::parse(br#"{"rate": 1, "slots": 64}"#).unwrap();
        let used: std::collections::HashSet<u32> = (0..1000)
            .map(|i| config.slot_of(&format!("10.0.0.{i}")))
            .collect();
        assert!(used.len() > 50, "{}", used.len());
        assert!(used.iter().all(|slot| *slot < 64));
    }
}
