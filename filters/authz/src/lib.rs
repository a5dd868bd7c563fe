//! Authorization at the edge of a service: rules on method, path, headers and client address,
//! checked in order (the first that matches decides), which may require a valid JWT (HS256,
//! RS256 or ES256, keys inline as a JWKS; `exp`, `nbf`, `iss`, `aud` checked; claims usable in
//! rules) or an API key. Refusals are `401` (who are you?) or `403` (not you) with a body
//! that says why. On any doubt it denies: fail closed. Uses only the standard Proxy-Wasm
//! ABI, so the same module runs in Envoy.
//!
//! An allowed request reaches the upstream with `x-authz-principal` set to the token's `sub`
//! or the API key's client name; a client-sent `x-authz-principal` is always removed.

mod config;
mod jwt;
mod path;

use std::net::IpAddr;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use serde_json::Value;
use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action as Next, ContextType, LogLevel};

use config::{Action, Config, Require, Rule};

/// The header the upstream reads the authenticated principal from.
const PRINCIPAL_HEADER: &str = "x-authz-principal";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthzRoot::default()) });
}}

#[derive(Default)]
struct AuthzRoot {
    config: Option<Rc<Config>>,
    allowed: u32,
    denied: u32,
}

impl Context for AuthzRoot {}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.allowed = sluice_sdk::host::counter("authz_allowed");
                self.denied = sluice_sdk::host::counter("authz_denied");
                true
            }
            Err(error) => {
                log::error!("authz: invalid configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzFilter {
            config: self.config.clone()?,
            allowed: self.allowed,
            denied: self.denied,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthzFilter {
    config: Rc<Config>,
    allowed: u32,
    denied: u32,
}

/// The outcome for one request.
enum Verdict {
    Allow {
        principal: Option<String>,
    },
    /// 401: no or bad credentials. The reason goes to the client.
    Unauthenticated(String),
    /// 403: known, or not asked, but not allowed.
    Forbidden(String),
}

impl Context for AuthzFilter {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u32>().ok());
        match status {
            Some(200..=299) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.allowed, 1);
                self.resume_http_request();
            }
            Some(status @ 400..=499) => {
                // The service's refusal, as it gave it.
                let _ = proxy_wasm::hostcalls::increment_metric(self.denied, 1);
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_else(|| b"forbidden: the authorization service refused\n".to_vec());
                self.send_http_response(status, vec![("content-type", "text/plain")], Some(&body));
            }
            // No answer, an error (5xx, including a timeout), or nonsense: fail closed.
            _ => self.refuse_unchecked(),
        }
    }
}

impl HttpContext for AuthzFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Next {
        // Only this filter may say who the client is.
        self.set_http_request_header(PRINCIPAL_HEADER, None);
        match self.decide() {
            Verdict::Allow { principal } => {
                if let Some(principal) = principal {
                    self.set_http_request_header(PRINCIPAL_HEADER, Some(&principal));
                }
                if self.config.external.is_some() {
                    return self.ask_external();
                }
                let _ = proxy_wasm::hostcalls::increment_metric(self.allowed, 1);
                Next::Continue
            }
            Verdict::Unauthenticated(reason) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.denied, 1);
                let challenge = format!(
                    "Bearer realm=\"sluice\", error=\"invalid_token\", error_description=\"{}\"",
                    reason.replace('"', "'")
                );
                self.send_http_response(
                    401,
                    vec![
                        ("www-authenticate", challenge.as_str()),
                        ("content-type", "text/plain"),
                    ],
                    Some(format!("unauthorized: {reason}\n").as_bytes()),
                );
                Next::Pause
            }
            Verdict::Forbidden(reason) => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.denied, 1);
                self.send_http_response(
                    403,
                    vec![("content-type", "text/plain")],
                    Some(format!("forbidden: {reason}\n").as_bytes()),
                );
                Next::Pause
            }
        }
    }
}

impl AuthzFilter {
    /// Sends the request's method, path and the configured headers to the external service
    /// and holds the request until it answers.
    fn ask_external(&self) -> Next {
        let Some(external) = &self.config.external else {
            return Next::Continue;
        };
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = format!(
            "{}{}",
            external.path_prefix,
            self.get_http_request_header(":path").unwrap_or_default()
        );
        let passed: Vec<(String, String)> = external
            .headers
            .iter()
            .filter_map(|name| Some((name.clone(), self.get_http_request_header(name)?)))
            .collect();
        let mut headers = vec![
            (":method", method.as_str()),
            (":path", path.as_str()),
            (":authority", external.authority.as_str()),
        ];
        headers.extend(passed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        match self.dispatch_http_call(&external.cluster, headers, None, vec![], external.timeout) {
            Ok(_) => Next::Pause,
            Err(status) => {
                log::warn!(
                    "authz: cannot call the authorization service {}: {status:?}",
                    external.cluster
                );
                self.refuse_unchecked();
                Next::Pause
            }
        }
    }

    /// Fail closed: the request could not be checked.
    fn refuse_unchecked(&self) {
        let _ = proxy_wasm::hostcalls::increment_metric(self.denied, 1);
        self.send_http_response(
            403,
            vec![("content-type", "text/plain")],
            Some(b"forbidden: the authorization service could not be asked\n"),
        );
    }

    fn decide(&self) -> Verdict {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let raw_path = self.get_http_request_header(":path").unwrap_or_default();
        let normalized = path::normalize(&raw_path);
        let path = normalized.as_str();
        let source = self.source_ip();
        // A host call and a copy, made only when some rule is about peers.
        let peer = if self.config.rules.iter().any(|rule| !rule.peers.is_empty()) {
            self.peer_identity()
        } else {
            None
        };
        for (index, rule) in self.config.rules.iter().enumerate() {
            if !self.matches(rule, &method, path, source, peer.as_deref()) {
                continue;
            }
            return match rule.action {
                Action::Deny => Verdict::Forbidden(format!("rule {index} denies this request")),
                Action::Allow => match self.authenticate(rule) {
                    // A rule on the peer's identity: that identity is who is calling.
                    Verdict::Allow { principal: None } if !rule.peers.is_empty() => {
                        Verdict::Allow { principal: peer }
                    }
                    verdict => verdict,
                },
            };
        }
        match self.config.default {
            Action::Allow => Verdict::Allow { principal: None },
            Action::Deny => Verdict::Forbidden("no rule allows this request".into()),
        }
    }

    fn matches(
        &self,
        rule: &Rule,
        method: &str,
        path: &str,
        source: Option<IpAddr>,
        peer: Option<&str>,
    ) -> bool {
        (rule.methods.is_empty() || rule.methods.iter().any(|m| m == method))
            && (rule.paths.is_empty() || rule.paths.iter().any(|p| p.matches(path)))
            && rule
                .headers
                .iter()
                .all(|(name, value)| self.get_http_request_header(name).as_deref() == Some(value))
            // Fail closed: with the source unknown, an allow rule about sources does not match
            // and a deny rule does.
            && (rule.sources.is_empty()
                || source.map_or(rule.action == Action::Deny, |ip| {
                    rule.sources.iter().any(|c| c.contains(ip))
                }))
            // The same for the peer's identity: none (no TLS, no client certificate) never
            // satisfies an allow rule about peers.
            && (rule.peers.is_empty()
                || peer.map_or(rule.action == Action::Deny, |identity| {
                    rule.peers.iter().any(|p| p.matches(identity))
                }))
    }

    /// The mTLS client's identity: Envoy's `connection.uri_san_peer_certificate`, which Sluice
    /// has too. Without a client certificate the property is null (SERIALIZATION_FAILURE), on
    /// plaintext NOT_FOUND; both mean no identity.
    fn peer_identity(&self) -> Option<String> {
        sluice_sdk::host::text_property(vec!["connection", "uri_san_peer_certificate"])
    }

    fn authenticate(&self, rule: &Rule) -> Verdict {
        match rule.require {
            Require::None => Verdict::Allow { principal: None },
            Require::Jwt => match self.jwt_claims() {
                Ok(claims) => match failed_claim(rule, &claims) {
                    Some(claim) => Verdict::Forbidden(format!(
                        "the token's {claim:?} claim does not allow this request"
                    )),
                    None => Verdict::Allow {
                        principal: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
                    },
                },
                Err(reason) => Verdict::Unauthenticated(reason),
            },
            Require::ApiKey => match self.api_key_client() {
                Ok(client) => Verdict::Allow {
                    principal: Some(client),
                },
                Err(reason) => Verdict::Unauthenticated(reason),
            },
            Require::Any => {
                if let Ok(client) = self.api_key_client() {
                    return Verdict::Allow {
                        principal: Some(client),
                    };
                }
                match self.jwt_claims() {
                    Ok(claims) => Verdict::Allow {
                        principal: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
                    },
                    Err(_) => Verdict::Unauthenticated(
                        "a valid bearer token or API key is required".into(),
                    ),
                }
            }
        }
    }

    fn jwt_claims(&self) -> Result<serde_json::Map<String, Value>, String> {
        let settings = self.config.jwt.as_ref().ok_or("no JWT settings")?;
        let value = self
            .get_http_request_header(&settings.header)
            .ok_or("a bearer token is required")?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or("the credentials are not a bearer token")?
            .trim();
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        jwt::verify(token, &settings.keys, &settings.checks, now)
    }

    fn api_key_client(&self) -> Result<String, String> {
        let keys = self
            .config
            .api_keys
            .as_ref()
            .ok_or("no API keys configured")?;
        let given = self
            .get_http_request_header(&keys.header)
            .ok_or_else(|| format!("an API key is required ({} header)", keys.header))?;
        keys.keys
            .get(&given)
            .cloned()
            .ok_or_else(|| "the API key is not valid".to_owned())
    }

    fn source_ip(&self) -> Option<IpAddr> {
        let address = self.get_property(vec!["source", "address"])?;
        let address = String::from_utf8_lossy(&address).into_owned();
        // `10.0.0.1:5000`, `[::1]:5000`, or a bare address.
        let host = match address.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest).to_owned(),
            None => match address.rsplit_once(':') {
                Some((host, port))
                    if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') =>
                {
                    host.to_owned()
                }
                _ => address.clone(),
            },
        };
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
        host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }
}

/// The first claim of `rule` the token does not satisfy: a string equal to the value, or an
/// array holding it.
fn failed_claim<'a>(rule: &'a Rule, claims: &serde_json::Map<String, Value>) -> Option<&'a str> {
    rule.claims.iter().find_map(|(name, wanted)| {
        let holds = match claims.get(name) {
            Some(Value::String(value)) => value == wanted,
            Some(Value::Array(values)) => {
                values.iter().any(|v| v.as_str() == Some(wanted.as_str()))
            }
            Some(Value::Bool(value)) => value.to_string() == *wanted,
            Some(Value::Number(value)) => value.to_string() == *wanted,
            _ => false,
        };
        (!holds).then_some(name.as_str())
    })
}
