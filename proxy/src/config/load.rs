//! Reading a config file: YAML → [`ProxyConfig`] with the failing field's path, then the
//! semantic checks of [`super::validate`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ConfigError;
use super::model::ProxyConfig;
use super::validate::validate;

/// A config that parsed and passed validation, with the file it came from (relative module
/// paths resolve against that file's folder) and the modules a control service sent for it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ProxyConfig,
    pub file: PathBuf,
    /// What `module: sha256:<hex>` entries name, verified against their digest.
    pub sent_modules: Arc<SentModules>,
    /// This proxy's workload identity, for `tls: { mesh: ... }`; set by the runtime.
    pub mesh: Option<Arc<crate::tls::MeshIdentity>>,
}

/// Module bytes a control service sent, by sha256 (lowercase hex).
pub type SentModules = HashMap<String, Arc<[u8]>>;

impl LoadedConfig {
    /// The folder relative paths in the config are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or_else(|| Path::new("."))
    }
}

pub fn load_file(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    load_str(&text, file)
}

/// Parses and validates `text` as if it were the contents of `file`.
pub fn load_str(text: &str, file: &Path) -> Result<LoadedConfig, ConfigError> {
    let config = parse(text, file)?;
    validate(&config).map_err(|problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    })?;
    Ok(LoadedConfig {
        config,
        file: file.to_owned(),
        sent_modules: Arc::default(),
        mesh: None,
    })
}

fn parse(text: &str, file: &Path) -> Result<ProxyConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::invalid(
            file,
            "(document)",
            "the config file is empty",
        ));
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = match error.path().to_string() {
            dot if dot == "." => "(document)".to_owned(),
            path => path,
        };
        // serde_yaml starts its message with the same path and ends it with "at line L column
        // C"; keep the location, drop the repeated path.
        let message = error.into_inner().to_string();
        let reason = message
            .strip_prefix(&format!("{path}: "))
            .map_or(message.clone(), str::to_owned);
        ConfigError::invalid(file, path, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<(String, String)> {
        match load_str(yaml, Path::new("test.yaml")) {
            Ok(_) => Vec::new(),
            Err(error) => error
                .problems()
                .iter()
                .map(|p| (p.path.clone(), p.reason.clone()))
                .collect(),
        }
    }

    const MINIMAL: &str = r#"
listeners:
  - name: main
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        cluster: upstream
clusters:
  - name: upstream
    endpoints: ["127.0.0.1:8080"]
"#;

    #[test]
    fn the_contract_minimum_loads() {
        let loaded = load_str(MINIMAL, Path::new("/etc/sluice/test.yaml")).expect("valid");
        assert_eq!(loaded.config.listeners.len(), 1);
        assert_eq!(loaded.base_dir(), Path::new("/etc/sluice"));
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let yaml = MINIMAL.replace("cluster: upstream", "cluster: upstream\n        retries: 3");
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "listeners[0].routes[0].retries");
        assert!(
            found[0].1.contains("unknown field `retries`"),
            "{}",
            found[0].1
        );
    }

    #[test]
    fn bad_values_name_the_field_and_line() {
        let yaml = MINIMAL.replace(
            "cluster: upstream",
            "cluster: upstream\n        timeout: 15",
        );
        let found = problems(&yaml);
        assert_eq!(found[0].0, "listeners[0].routes[0].timeout");
        assert!(found[0].1.contains("no unit"), "{}", found[0].1);
        assert!(found[0].1.contains("line"), "{}", found[0].1);
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert_eq!(problems("  \n")[0].1, "the config file is empty");
    }

    #[test]
    fn error_display_names_file_path_and_reason() {
        let yaml = MINIMAL.replace("cluster: upstream\n", "cluster: nowhere\n");
        let error = load_str(&yaml, Path::new("conf/proxy.yaml")).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("conf/proxy.yaml: listeners[0].routes[0].cluster: "),
            "{text}"
        );
        assert!(text.contains("nowhere"), "{text}");
    }
}
