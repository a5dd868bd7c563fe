//! A filter's configuration, as the JSON text Sluice and Envoy hand to `on_configure`.
//!
//! ```
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Limits { rate: u32 }
//!
//! let error = sluice_sdk::config::parse::<Limits>(br#"{"rate": "fast"}"#).unwrap_err();
//! assert_eq!(error.to_string(), "rate: invalid type: string \"fast\", expected u32 at line 1 column 15");
//! ```

use serde::de::DeserializeOwned;

/// Why a configuration was refused: the field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `rules[2].rate`, or `(document)` for the whole text.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Parses the configuration bytes as JSON into `T`. Empty bytes parse as `{}`, so a filter
/// whose fields all have defaults needs no configuration.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = match error.path().to_string() {
            dot if dot == "." => "(document)".to_owned(),
            path => path,
        };
        ConfigError {
            path,
            reason: error.into_inner().to_string(),
        }
    })
}

/// A key prefix for a filter's shared data: `<kind>/<plugin name>/`. Shared data is
/// process-wide per `vm_id`, so two instances of one filter (two rate limits on a chain) keep
/// their state apart by their names. Call from `on_configure`.
pub fn shared_data_prefix(kind: &str) -> String {
    let plugin = proxy_wasm::hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .map(|name| String::from_utf8_lossy(&name).into_owned())
        .unwrap_or_default();
    format!("{kind}/{plugin}/")
}

/// An optional duration field (`250ms`, `1s`, …; see [`crate::duration::parse`]) at `path`,
/// or `default` when it is absent.
pub fn duration_or(
    text: Option<&String>,
    path: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    match text {
        Some(text) => crate::duration::parse(text).map_err(|e| invalid(path, e)),
        None => Ok(default),
    }
}

/// A configuration rule that does not hold, found after parsing.
pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[serde(default)]
        key: String,
        rate: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse::<Config>(br#"{"rules": [{"rate": 1}, {"rate": -1}]}"#).unwrap_err();
        assert_eq!(error.path, "rules[1].rate");
        let error = parse::<Config>(br#"{"rulez": []}"#).unwrap_err();
        assert_eq!(error.path, "rulez");
        let error = parse::<Config>(b"not json").unwrap_err();
        assert_eq!(error.path, "(document)");
    }

    #[test]
    fn nothing_is_an_empty_object() {
        let config = parse::<Config>(b"").unwrap();
        assert!(config.rules.is_empty());
        let config = parse::<Config>(br#"{"rules": [{"rate": 3}]}"#).unwrap();
        assert_eq!(
            (config.rules[0].key.as_str(), config.rules[0].rate),
            ("", 3)
        );
    }
}
