//! Where the etcd cluster is and how to reach it: `--store etcd://HOST:PORT[,...]`,
//! `--store-prefix`, and TLS (`--store-ca`, `--store-cert`, `--store-key`).

/// Where the etcd cluster is, from `--store etcd://HOST:PORT[,HOST:PORT...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// TLS to the members (`--store-ca`, `--store-cert`, `--store-key`).
    pub tls: Option<EtcdTls>,
}

/// The CA the members' certificates chain to, and this replica's client certificate and key
/// (PEM), which etcd with `--client-cert-auth` requires and takes the user name from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub client: Option<(String, String)>,
}

impl EtcdSettings {
    /// Parses `--store` and `--store-prefix`.
    pub fn parse(store: &str, prefix: &str) -> Result<Self, String> {
        let Some(members) = store.strip_prefix("etcd://") else {
            return Err(format!(
                "--store {store:?}: expected etcd://HOST:PORT[,HOST:PORT...] (without --store, the data dir is used)"
            ));
        };
        let mut endpoints = Vec::new();
        for member in members.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let (host, port) = member.rsplit_once(':').ok_or_else(|| {
                format!("--store: {member:?} has no port (etcd listens for clients on 2379)")
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("--store: {member:?} is not HOST:PORT"));
            }
            endpoints.push(format!("http://{member}"));
        }
        if endpoints.is_empty() {
            return Err("--store etcd://: name at least one member, as etcd://HOST:PORT".into());
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(format!(
                "--store-prefix {prefix:?}: a key path such as /sluice (it keeps this mesh's keys apart from others')"
            ));
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
            tls: None,
        })
    }

    /// Talks TLS to the members: `ca` (a PEM file) checks them; `client` (certificate and
    /// key files) identifies this replica to them.
    pub fn with_tls(
        mut self,
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, String> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let client = match client {
            Some((cert, key)) => Some((read("--store-cert", cert)?, read("--store-key", key)?)),
            None => None,
        };
        self.tls = Some(EtcdTls {
            ca_pem: read("--store-ca", ca)?,
            client,
        });
        for endpoint in &mut self.endpoints {
            *endpoint = endpoint.replacen("http://", "https://", 1);
        }
        Ok(self)
    }
}

impl std::fmt::Display for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
            })
            .collect();
        let tls = if self.tls.is_some() { ", TLS" } else { "" };
        write!(
            f,
            "etcd {} (prefix {}{tls})",
            members.join(","),
            self.prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_members_and_a_prefix() {
        let settings =
            EtcdSettings::parse("etcd://10.0.0.1:2379, 10.0.0.2:2379", "/mesh/").unwrap();
        assert_eq!(
            settings.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(settings.prefix, "/mesh");
        assert_eq!(
            settings.to_string(),
            "etcd 10.0.0.1:2379,10.0.0.2:2379 (prefix /mesh)"
        );
        for bad in [
            "10.0.0.1:2379",
            "etcd://",
            "etcd://host",
            "etcd://host:port",
        ] {
            assert!(EtcdSettings::parse(bad, "/sluice").is_err(), "{bad}");
        }
        assert!(EtcdSettings::parse("etcd://h:2379", "sluice").is_err());
        assert!(EtcdSettings::parse("etcd://h:2379", "/").is_err());
    }
}
