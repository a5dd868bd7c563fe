//! Checks of the discovery settings: `register:` entries, and clusters that name a `service`
//! instead of `endpoints`. The names follow the control service's own rules, so what passes
//! here is not refused when the proxy registers.

use std::net::SocketAddr;

use sluice_control::registry::{check_label_key, check_service_name};

use super::cluster_model::ClusterConfig;
use super::discovery_model::ServiceRegistration;
use super::error::ConfigProblem;

pub fn check_registrations(register: &[ServiceRegistration]) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, registration) in register.iter().enumerate() {
        let path = format!("register[{index}]");
        let mut problem = |field: &str, reason: String| {
            problems.push(ConfigProblem {
                path: format!("{path}{field}"),
                reason,
            });
        };
        if let Err(reason) = check_service_name(&registration.service) {
            problem(".service", reason);
        }
        match registration.address.parse::<SocketAddr>() {
            Err(_) => problem(
                ".address",
                format!(
                    "{:?} is not an IP address with a port: callers reach the workload there",
                    registration.address
                ),
            ),
            Ok(address) if address.ip().is_unspecified() || address.port() == 0 => problem(
                ".address",
                format!("{address}: callers need a concrete IP and port (not 0.0.0.0 or port 0)"),
            ),
            Ok(_) => {}
        }
        for key in registration.labels.keys() {
            if let Err(reason) = check_label_key(key) {
                problem(&format!(".labels.{key}"), reason);
            }
        }
        if !seen.insert((&registration.service, &registration.address)) {
            problem(
                "",
                format!(
                    "{} at {} is registered twice",
                    registration.service, registration.address
                ),
            );
        }
    }
    problems
}

/// A cluster takes its endpoints from exactly one place: `endpoints` or `service`.
pub fn check_cluster_source(path: &str, cluster: &ClusterConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, reason: &str| {
        problems.push(ConfigProblem {
            path: format!("{path}.{field}"),
            reason: reason.to_owned(),
        });
    };
    match (&cluster.service, cluster.endpoints.is_empty()) {
        (Some(_), false) => problem(
            "service",
            "a cluster takes `endpoints` or `service`, not both",
        ),
        (None, true) => problem(
            "endpoints",
            "at least one endpoint is needed (or name a `service` to discover them)",
        ),
        (Some(service), true) => {
            if let Err(reason) = check_service_name(service) {
                problem("service", &reason);
            }
        }
        (None, false) => {}
    }
    if cluster.hash_on.is_some() && cluster.lb_policy != super::cluster_model::LbPolicy::RingHash {
        problem("hash_on", "is for `lb_policy: ring_hash`");
    }
    if let Some(
        super::discovery_model::HashOn::Header(name) | super::discovery_model::HashOn::Cookie(name),
    ) = &cluster.hash_on
        && http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        problem(
            "hash_on",
            &format!("{name:?} is not a valid header or cookie name"),
        );
    }
    if cluster.subset.is_some() && cluster.service.is_none() {
        problem(
            "subset",
            "selects instances of a discovered `service`; set one",
        );
    }
    for key in cluster.subset.iter().flat_map(|s| s.keys()) {
        if let Err(reason) = check_label_key(key) {
            problem(&format!("subset.{key}"), &reason);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> ClusterConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn reasons(problems: Vec<ConfigProblem>) -> Vec<String> {
        problems
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.reason))
            .collect()
    }

    #[test]
    fn a_cluster_has_endpoints_or_a_service() {
        assert!(check_cluster_source("c", &cluster("{ name: a, service: hello }")).is_empty());
        assert!(
            check_cluster_source(
                "c",
                &cluster("{ name: a, service: hello, subset: { version: v2 } }")
            )
            .is_empty()
        );
        assert_eq!(
            reasons(check_cluster_source(
                "c",
                &cluster(r#"{ name: a, service: hello, endpoints: ["127.0.0.1:1"] }"#)
            )),
            ["c.service: a cluster takes `endpoints` or `service`, not both"]
        );
        assert_eq!(
            reasons(check_cluster_source("c", &cluster("{ name: a }"))),
            ["c.endpoints: at least one endpoint is needed (or name a `service` to discover them)"]
        );
        assert_eq!(
            reasons(check_cluster_source(
                "c",
                &cluster(r#"{ name: a, endpoints: ["127.0.0.1:1"], subset: { v: "2" } }"#)
            )),
            ["c.subset: selects instances of a discovered `service`; set one"]
        );
    }

    #[test]
    fn hash_on_is_a_word_or_a_map_with_one_key() {
        use crate::config::HashOn;
        let parse = |text: &str| serde_yaml::from_str::<HashOn>(text).map_err(|e| e.to_string());
        assert_eq!(parse("source_ip"), Ok(HashOn::SourceIp));
        assert_eq!(
            parse("{ header: x-user }"),
            Ok(HashOn::Header("x-user".into()))
        );
        assert_eq!(
            parse("{ cookie: session }"),
            Ok(HashOn::Cookie("session".into()))
        );
        assert!(
            parse("{ header: a, cookie: b }")
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(parse("client").unwrap_err().contains("expected source_ip"));
        assert_eq!(
            reasons(check_cluster_source(
                "c",
                &cluster(r#"{ name: a, endpoints: ["127.0.0.1:1"], hash_on: source_ip }"#)
            )),
            ["c.hash_on: is for `lb_policy: ring_hash`"]
        );
    }

    #[test]
    fn registrations_need_a_name_and_a_reachable_address() {
        let register: Vec<ServiceRegistration> = serde_yaml::from_str(
            r#"
            - { service: hello, address: "127.0.0.1:15006", labels: { version: v1 } }
            - { service: "hello world", address: "0.0.0.0:15006" }
            - { service: hello, address: "127.0.0.1:15006" }
            "#,
        )
        .unwrap();
        let found = reasons(check_registrations(&register));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("register[1].service:"), "{found:?}");
        assert!(
            found[1].starts_with("register[1].address: 0.0.0.0:15006"),
            "{found:?}"
        );
        assert_eq!(
            found[2],
            "register[2]: hello at 127.0.0.1:15006 is registered twice"
        );
    }
}
