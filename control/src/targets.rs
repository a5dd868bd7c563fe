//! Changes for some proxies only: `--to service=NAME`, `--to label=KEY=VALUE` or
//! `--to proxy=ID`. A version keeps, beside the overlay every proxy gets, one overlay per
//! target; each proxy receives the common overlay with the targeted ones that match it laid
//! over it, in the order they were first made.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::overlay::{Overlay, cluster_name};

/// Which proxies a change is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The proxies that registered the service.
    Service(String),
    /// The proxies that registered an instance with this label.
    Label { key: String, value: String },
    /// One proxy, by its id.
    Proxy(String),
}

/// What a subscription knows of its proxy, to match targets against.
#[derive(Debug, Clone, Default)]
pub struct ProxyFacts {
    pub proxy_id: String,
    pub services: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// The edits made for one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetedOverlay {
    pub to: Target,
    pub overlay: Overlay,
}

// === impl Target ===

impl Target {
    /// `service=NAME`, `label=KEY=VALUE` or `proxy=ID`; empty is `None` (every proxy).
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || format!("--to {text:?}: expected service=NAME, label=KEY=VALUE or proxy=ID");
        let (kind, rest) = text.split_once('=').ok_or_else(bad)?;
        let target = match kind {
            "service" => {
                crate::registry::check_service_name(rest).map_err(|e| format!("--to: {e}"))?;
                Self::Service(rest.to_owned())
            }
            "label" => {
                let (key, value) = rest.split_once('=').ok_or_else(bad)?;
                crate::registry::check_label_key(key).map_err(|e| format!("--to: {e}"))?;
                Self::Label {
                    key: key.to_owned(),
                    value: value.to_owned(),
                }
            }
            "proxy" if !rest.is_empty() => Self::Proxy(rest.to_owned()),
            _ => return Err(bad()),
        };
        Ok(Some(target))
    }

    pub fn matches(&self, proxy: &ProxyFacts) -> bool {
        match self {
            Self::Service(service) => proxy.services.iter().any(|s| s == service),
            Self::Label { key, value } => proxy.labels.iter().any(|(k, v)| k == key && v == value),
            Self::Proxy(id) => proxy.proxy_id == *id,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(service) => write!(f, "service={service}"),
            Self::Label { key, value } => write!(f, "label={key}={value}"),
            Self::Proxy(id) => write!(f, "proxy={id}"),
        }
    }
}

// === impl Overlay (targets) ===

impl Overlay {
    /// The overlay of `target`'s edits (empty if none were made).
    pub fn for_target(&self, target: &Target) -> Overlay {
        self.targeted
            .iter()
            .find(|t| t.to == *target)
            .map(|t| t.overlay.clone())
            .unwrap_or_default()
    }

    /// This overlay with `target`'s edits replaced by `overlay`.
    pub fn with_target(&self, target: &Target, overlay: Overlay) -> Overlay {
        let mut next = self.clone();
        match next.targeted.iter_mut().find(|t| t.to == *target) {
            Some(existing) => existing.overlay = overlay,
            None => next.targeted.push(TargetedOverlay {
                to: target.clone(),
                overlay,
            }),
        }
        next.targeted.retain(|t| t.overlay != Overlay::default());
        next
    }

    /// What `proxy` runs: the common edits, then those of every target it matches.
    pub fn for_proxy(&self, proxy: &ProxyFacts) -> Overlay {
        let mut effective = Overlay {
            targeted: Vec::new(),
            ..self.clone()
        };
        for targeted in self.targeted.iter().filter(|t| t.to.matches(proxy)) {
            effective.lay_over(&targeted.overlay);
        }
        effective
    }

    /// Lays `later`'s edits over these, as if they were made after them.
    fn lay_over(&mut self, later: &Overlay) {
        // Filter attachments apply in order, and a later one replaces an earlier one of the
        // same filter and chain in place; so appending them keeps that meaning.
        self.filters.extend(later.filters.iter().cloned());
        for cluster in &later.clusters {
            let name = cluster_name(cluster);
            self.clusters.retain(|c| cluster_name(c) != name);
            self.removed_clusters.retain(|n| Some(n.as_str()) != name);
            self.clusters.push(cluster.clone());
        }
        for removed in &later.removed_clusters {
            self.clusters
                .retain(|c| cluster_name(c) != Some(removed.as_str()));
            if !self.removed_clusters.contains(removed) {
                self.removed_clusters.push(removed.clone());
            }
        }
        for routes in &later.routes {
            self.routes.retain(|r| r.listener != routes.listener);
            self.routes.push(routes.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::FilterAttachment;

    fn facts(id: &str, services: &[&str], labels: &[(&str, &str)]) -> ProxyFacts {
        ProxyFacts {
            proxy_id: id.into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn targets_parse_and_match() {
        let hello = facts("a", &["hello"], &[("zone", "eu")]);
        let other = facts("b", &["world"], &[("zone", "us")]);
        let service = Target::parse("service=hello").unwrap().unwrap();
        assert!(service.matches(&hello) && !service.matches(&other));
        let label = Target::parse("label=zone=us").unwrap().unwrap();
        assert!(!label.matches(&hello) && label.matches(&other));
        let proxy = Target::parse("proxy=b").unwrap().unwrap();
        assert!(proxy.matches(&other) && !proxy.matches(&hello));
        assert_eq!(Target::parse("").unwrap(), None);
        for bad in ["hello", "service=", "label=zone", "zone=eu", "proxy="] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(label.to_string(), "label=zone=us");
    }

    #[test]
    fn a_proxy_gets_the_common_edits_and_those_of_its_targets() {
        let filter = |name: &str, config: &str| FilterAttachment {
            name: name.into(),
            module_sha256: "ab".repeat(32),
            config: config.into(),
            ..FilterAttachment::default()
        };
        let hello = Target::Service("hello".into());
        let base = Overlay {
            filters: vec![filter("metrics", "common")],
            ..Overlay::default()
        };
        let targeted = Overlay {
            filters: vec![filter("authz", "hello only")],
            ..Overlay::default()
        };
        let overlay = base.with_target(&hello, targeted.clone());
        assert_eq!(overlay.for_target(&hello), targeted);

        let names = |o: Overlay| -> Vec<String> { o.filters.into_iter().map(|f| f.name).collect() };
        assert_eq!(
            names(overlay.for_proxy(&facts("a", &["hello"], &[]))),
            ["metrics", "authz"]
        );
        assert_eq!(
            names(overlay.for_proxy(&facts("b", &["world"], &[]))),
            ["metrics"]
        );
        assert!(
            overlay
                .for_proxy(&facts("a", &["hello"], &[]))
                .targeted
                .is_empty()
        );
        // Emptying a target's edits forgets the target.
        assert!(
            overlay
                .with_target(&hello, Overlay::default())
                .targeted
                .is_empty()
        );
    }
}
