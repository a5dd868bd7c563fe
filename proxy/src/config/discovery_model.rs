//! The config fields of service discovery, field for field: what a proxy registers, where it
//! runs, and what a `ring_hash` cluster hashes. Names are a contract, as in `model.rs`.

use serde::{Deserialize, Serialize};

use super::model::ProxyConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// Discovered endpoints with this `zone` label are preferred while one is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl ProxyConfig {
    /// This proxy's zone: `locality.zone`, else the `zone` label of its registrations.
    pub fn zone(&self) -> Option<&str> {
        self.locality
            .as_ref()
            .and_then(|l| l.zone.as_deref())
            .or_else(|| {
                self.register
                    .iter()
                    .find_map(|r| r.labels.get("zone").map(String::as_str))
            })
    }
}

/// One service instance this proxy registers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRegistration {
    pub service: String,
    /// IP:port where callers reach the workload: normally this proxy's inbound listener.
    pub address: String,
    /// Such as `version` and `zone`: clusters select subsets by them, and zone-aware
    /// balancing reads `zone`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What a `ring_hash` cluster hashes to choose an endpoint: `{ header: NAME }`,
/// `{ cookie: NAME }` or `source_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "HashOnForm", into = "HashOnForm")]
pub enum HashOn {
    /// A request header's value (requests without it are spread at random).
    Header(String),
    /// A cookie's value (requests without it are spread at random).
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// How `hash_on` is written: a word, or a map with one key.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum HashOnForm {
    Word(String),
    Map(HashOnMap),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct HashOnMap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
}

impl TryFrom<HashOnForm> for HashOn {
    type Error = String;

    fn try_from(form: HashOnForm) -> Result<Self, String> {
        match form {
            HashOnForm::Word(word) if word == "source_ip" => Ok(Self::SourceIp),
            HashOnForm::Word(word) => Err(format!(
                "{word:?}: expected source_ip, {{ header: NAME }} or {{ cookie: NAME }}"
            )),
            HashOnForm::Map(HashOnMap {
                header: Some(name),
                cookie: None,
            }) => Ok(Self::Header(name)),
            HashOnForm::Map(HashOnMap {
                header: None,
                cookie: Some(name),
            }) => Ok(Self::Cookie(name)),
            HashOnForm::Map(_) => Err("give exactly one of header or cookie".to_owned()),
        }
    }
}

impl From<HashOn> for HashOnForm {
    fn from(hash_on: HashOn) -> Self {
        match hash_on {
            HashOn::SourceIp => Self::Word("source_ip".to_owned()),
            HashOn::Header(name) => Self::Map(HashOnMap {
                header: Some(name),
                cookie: None,
            }),
            HashOn::Cookie(name) => Self::Map(HashOnMap {
                header: None,
                cookie: Some(name),
            }),
        }
    }
}
