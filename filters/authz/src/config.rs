//! The filter's configuration: rules checked in order, the first that matches decides; with
//! the JWT and API key settings they may require. Every mistake is refused at configure time
//! with its field path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Deserialize;
use sluice_sdk::config::{ConfigError, invalid, parse};

use crate::jwt::{Checks, Key, parse_jwks};

pub struct Config {
    pub rules: Vec<Rule>,
    /// When no rule matches.
    pub default: Action,
    pub jwt: Option<JwtSettings>,
    pub api_keys: Option<ApiKeys>,
    /// Asked about every request the rules allow.
    pub external: Option<External>,
}

/// An external authorization service, reached with an HTTP call to a cluster: it gets the
/// request's method and path (under `path_prefix`) and the headers named, and answers 2xx to
/// allow; anything else is a refusal, passed on to the client with its status and body.
pub struct External {
    pub cluster: String,
    pub authority: String,
    pub path_prefix: String,
    pub headers: Vec<String>,
    pub timeout: std::time::Duration,
}

pub struct JwtSettings {
    /// Lowercase; the value is `Bearer <token>`.
    pub header: String,
    pub keys: Vec<Key>,
    pub checks: Checks,
}

pub struct ApiKeys {
    pub header: String,
    /// Key → the client's name (the principal).
    pub keys: HashMap<String, String>,
}

pub struct Rule {
    pub action: Action,
    pub methods: Vec<String>,
    pub paths: Vec<PathMatch>,
    /// Lowercase name → exact value.
    pub headers: Vec<(String, String)>,
    pub sources: Vec<Cidr>,
    /// Workload identities of the mTLS peer (its URI SAN, such as a SPIFFE ID): exact, or a
    /// prefix ending in `*`.
    pub peers: Vec<IdentityMatch>,
    pub require: Require,
    /// Claim → the value it must have (or contain, for an array claim).
    pub claims: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// Anyone.
    #[default]
    None,
    Jwt,
    ApiKey,
    /// A valid JWT or a valid API key.
    Any,
}

pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    rules: Vec<RawRule>,
    /// [deny]
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    jwt: Option<RawJwt>,
    #[serde(default)]
    api_keys: Option<RawApiKeys>,
    #[serde(default)]
    external: Option<RawExternal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    cluster: String,
    /// [the cluster name] the `:authority` of the check.
    #[serde(default)]
    authority: Option<String>,
    /// [""] put before the request's path.
    #[serde(default)]
    path_prefix: String,
    /// [authorization] request headers passed on.
    #[serde(default)]
    headers: Option<Vec<String>>,
    /// [200ms]
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: Action,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    require: Require,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    jwks: serde_json::Value,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    /// [authorization]
    #[serde(default)]
    header: Option<String>,
    /// [60s]
    #[serde(default)]
    leeway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    /// [x-api-key]
    #[serde(default)]
    header: Option<String>,
    keys: HashMap<String, String>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = parse(bytes)?;
        let jwt = match raw.jwt {
            Some(jwt) => {
                let keys = parse_jwks(&jwt.jwks).map_err(|e| invalid("jwt.jwks", e))?;
                if keys.is_empty() {
                    return Err(invalid("jwt.jwks", "has no keys"));
                }
                let leeway = sluice_sdk::config::duration_or(
                    jwt.leeway.as_ref(),
                    "jwt.leeway",
                    std::time::Duration::from_secs(60),
                )?
                .as_secs();
                Some(JwtSettings {
                    header: jwt
                        .header
                        .unwrap_or_else(|| "authorization".into())
                        .to_ascii_lowercase(),
                    keys,
                    checks: Checks {
                        issuer: jwt.issuer,
                        audiences: jwt.audiences,
                        leeway_seconds: leeway,
                    },
                })
            }
            None => None,
        };
        let api_keys = raw.api_keys.map(|keys| ApiKeys {
            header: keys
                .header
                .unwrap_or_else(|| "x-api-key".into())
                .to_ascii_lowercase(),
            keys: keys.keys,
        });
        let external = match raw.external {
            Some(external) => {
                if external.cluster.is_empty() {
                    return Err(invalid("external.cluster", "must name a cluster"));
                }
                let timeout = sluice_sdk::config::duration_or(
                    external.timeout.as_ref(),
                    "external.timeout",
                    std::time::Duration::from_millis(200),
                )?;
                Some(External {
                    authority: external
                        .authority
                        .unwrap_or_else(|| external.cluster.clone()),
                    cluster: external.cluster,
                    path_prefix: external.path_prefix,
                    headers: external
                        .headers
                        .unwrap_or_else(|| vec!["authorization".into()])
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    timeout,
                })
            }
            None => None,
        };
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, rule) in raw.rules.into_iter().enumerate() {
            let path = |field: &str| format!("rules[{index}].{field}");
            let needs_jwt = matches!(rule.require, Require::Jwt | Require::Any);
            let needs_keys = matches!(rule.require, Require::ApiKey | Require::Any);
            if needs_jwt && rule.require == Require::Jwt && jwt.is_none() {
                return Err(invalid(
                    path("require"),
                    "jwt is required but there is no `jwt` section",
                ));
            }
            if needs_keys && rule.require == Require::ApiKey && api_keys.is_none() {
                return Err(invalid(
                    path("require"),
                    "api_key is required but there is no `api_keys` section",
                ));
            }
            if rule.require == Require::Any && jwt.is_none() && api_keys.is_none() {
                return Err(invalid(
                    path("require"),
                    "any needs a `jwt` or an `api_keys` section",
                ));
            }
            if !rule.claims.is_empty() && rule.require != Require::Jwt {
                return Err(invalid(path("claims"), "claims need `require: jwt`"));
            }
            let sources = rule
                .sources
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    Cidr::parse(text).map_err(|e| invalid(path(&format!("sources[{i}]")), e))
                })
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                action: rule.action,
                methods: rule
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
                paths: rule.paths.iter().map(|p| PathMatch::parse(p)).collect(),
                headers: rule
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value))
                    .collect(),
                sources,
                peers: rule.peers.iter().map(|p| IdentityMatch::parse(p)).collect(),
                require: rule.require,
                claims: rule.claims.into_iter().collect(),
            });
        }
        Ok(Self {
            rules,
            default: raw.default.unwrap_or(Action::Deny),
            jwt,
            api_keys,
            external,
        })
    }
}

/// A workload identity pattern: `spiffe://mesh/ns/shop/*` (a prefix) or an exact identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    Exact(String),
    Prefix(String),
}

impl IdentityMatch {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Exact(exact) => identity == exact,
            Self::Prefix(prefix) => identity.starts_with(prefix.as_str()),
        }
    }
}

impl PathMatch {
    /// `*` any path, `/api/*` a prefix, anything else the exact path.
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            // `/admin/*` covers `/admin` itself too.
            Self::Prefix(prefix) => {
                path.starts_with(prefix.as_str())
                    || prefix.strip_suffix('/').is_some_and(|bare| path == bare)
            }
            Self::Exact(exact) => path == exact,
        }
    }
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or one address.
    fn parse(text: &str) -> Result<Self, String> {
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { network, bits })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network.to_canonical(), address.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_patterns_match_exactly_or_by_prefix() {
        let shop = IdentityMatch::parse("spiffe://mesh.local/ns/shop/*");
        assert!(shop.matches("spiffe://mesh.local/ns/shop/sa/checkout"));
        assert!(!shop.matches("spiffe://mesh.local/ns/shopping/sa/x"));
        let exact = IdentityMatch::parse("spiffe://mesh.local/ns/shop/sa/web");
        assert!(exact.matches("spiffe://mesh.local/ns/shop/sa/web"));
        assert!(!exact.matches("spiffe://mesh.local/ns/shop/sa/web2"));
    }

    use super::*;

    #[test]
    fn mistakes_name_their_field() {
        let error = |text: &str| Config::parse(text.as_bytes()).err().unwrap().to_string();
        assert_eq!(
            error(r#"{"rules": [{"action": "allow", "require": "jwt"}]}"#),
            "rules[0].require: jwt is required but there is no `jwt` section"
        );
        assert_eq!(
            error(r#"{"rules": [{"action": "allow", "sources": ["10.0.0.0/33"]}]}"#),
            r#"rules[0].sources[0]: "10.0.0.0/33": the prefix length must be 0 to 32"#
        );
        assert!(error(r#"{"rules": [{"action": "maybe"}]}"#).starts_with("rules[0].action"));
        assert!(error(r#"{"jwt": {"jwks": {"keys": []}}}"#).starts_with("jwt.jwks: has no keys"));
    }

    #[test]
    fn cidrs_and_paths() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(PathMatch::parse("/api/*").matches("/api/users"));
        assert!(PathMatch::parse("/api/*").matches("/api"));
        assert!(!PathMatch::parse("/api/*").matches("/apix"));
        assert!(PathMatch::parse("*").matches("/anything"));
        assert!(PathMatch::parse("/exact").matches("/exact"));
    }
}
