//! Route tables: the first route whose match fits the request wins; its target names one
//! cluster or a weighted split across clusters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use crate::admin::{Metrics, RouteStats};
use crate::config::{HeaderMatch, RouteConfig, RouteMatch};
use crate::upstream::Cluster;
use crate::wasm::ConfiguredFilter;

pub struct RouteTable {
    routes: Vec<Route>,
    /// Whether any route has filters of its own (asked on every request).
    any_filters: bool,
}

pub struct Route {
    /// The metric label: the configured name, or the match written out.
    pub name: String,
    /// The configured name, as filters see it (`route_name`; empty when unnamed, as in Envoy).
    pub configured_name: Option<String>,
    matcher: Matcher,
    target: RouteTarget,
    /// Whole-request deadline; `None` when disabled.
    pub timeout: Option<Duration>,
    /// Longest silence on the response stream; `None` when disabled.
    pub idle_timeout: Option<Duration>,
    /// Wasm filters that run after the listener's, for this route only.
    pub filters: Vec<ConfiguredFilter>,
}

/// A cluster as seen from one route, with that route's metric handles.
pub struct ClusterTarget {
    pub cluster: Arc<Cluster>,
    pub stats: RouteStats,
}

enum RouteTarget {
    Single(ClusterTarget),
    Weighted {
        entries: Vec<(ClusterTarget, u32)>,
        total: u64,
    },
}

struct Matcher {
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<HeaderCondition>,
}

enum PathMatch {
    Prefix(String),
    Exact(String),
}

struct HeaderCondition {
    name: HeaderName,
    test: HeaderTest,
}

enum HeaderTest {
    Exact(String),
    Prefix(String),
    Present(bool),
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles validated route configs. Cluster names were checked by validation; a missing one
    /// here would be a bug, reported as an error rather than a panic.
    pub fn build(
        listener: &str,
        routes: &[RouteConfig],
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
        mut route_filters: Vec<Vec<ConfiguredFilter>>,
    ) -> Result<Self, String> {
        route_filters.resize_with(routes.len(), Vec::new);
        let mut route_filters = route_filters.into_iter();
        let target = |name: &str, route: &str| -> Result<ClusterTarget, String> {
            let cluster = clusters
                .get(name)
                .ok_or_else(|| format!("route {route:?} names unknown cluster {name:?}"))?;
            Ok(ClusterTarget {
                cluster: Arc::clone(cluster),
                stats: metrics.route_stats(listener, route, name),
            })
        };
        let mut compiled = Vec::with_capacity(routes.len());
        for config in routes {
            let name = config
                .name
                .clone()
                .unwrap_or_else(|| describe_match(&config.matcher));
            let route_target = match (&config.cluster, &config.weighted_clusters) {
                (Some(cluster), _) => RouteTarget::Single(target(cluster, &name)?),
                (None, Some(weighted)) => {
                    let entries = weighted
                        .iter()
                        .map(|w| Ok((target(&w.cluster, &name)?, w.weight)))
                        .collect::<Result<Vec<_>, String>>()?;
                    let total = entries.iter().map(|(_, w)| u64::from(*w)).sum();
                    RouteTarget::Weighted { entries, total }
                }
                (None, None) => return Err(format!("route {name:?} has no cluster")),
            };
            compiled.push(Route {
                matcher: Matcher::build(&config.matcher)?,
                target: route_target,
                timeout: config
                    .timeout
                    .map_or(Some(Duration::from_secs(15)), |t| t.non_zero()),
                idle_timeout: config
                    .idle_timeout
                    .map_or(Some(Duration::from_secs(300)), |t| t.non_zero()),
                filters: route_filters.next().unwrap_or_default(),
                configured_name: config.name.clone(),
                name,
            });
        }
        let any_filters = compiled.iter().any(|r| !r.filters.is_empty());
        Ok(Self {
            routes: compiled,
            any_filters,
        })
    }

    /// Whether any route has filters of its own.
    pub fn has_filters(&self) -> bool {
        self.any_filters
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn find(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matcher.matches(method, path, headers))
    }
}

/// The default route label: the match written out, e.g. `prefix:/api`.
fn describe_match(matcher: &RouteMatch) -> String {
    match (&matcher.prefix, &matcher.path) {
        (_, Some(path)) => format!("path:{path}"),
        (Some(prefix), None) => format!("prefix:{prefix}"),
        (None, None) => "any".to_owned(),
    }
}

// === impl Route ===

impl Route {
    /// The cluster for one request; weighted routes draw by weight.
    pub fn pick_target(&self) -> &ClusterTarget {
        match &self.target {
            RouteTarget::Single(target) => target,
            RouteTarget::Weighted { entries, total } => {
                let mut draw = fastrand::u64(..*total);
                for (target, weight) in entries {
                    let weight = u64::from(*weight);
                    if draw < weight {
                        return target;
                    }
                    draw -= weight;
                }
                // Unreachable while weights add up to `total`; the last entry is a safe answer.
                &entries[entries.len() - 1].0
            }
        }
    }
}

// === impl Matcher ===

impl Matcher {
    fn build(config: &RouteMatch) -> Result<Self, String> {
        let path = match (&config.prefix, &config.path) {
            (_, Some(path)) => PathMatch::Exact(path.clone()),
            (Some(prefix), None) => PathMatch::Prefix(prefix.clone()),
            (None, None) => return Err("a route match needs prefix or path".to_owned()),
        };
        let method = config
            .method
            .as_deref()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| format!("method {m:?}: {e}")))
            .transpose()?;
        let headers = config
            .headers
            .iter()
            .map(HeaderCondition::build)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            method,
            headers,
        })
    }

    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let path_fits = match &self.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        };
        path_fits
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|condition| condition.matches(headers))
    }
}

impl HeaderCondition {
    fn build(config: &HeaderMatch) -> Result<Self, String> {
        let name = HeaderName::from_bytes(config.name.as_bytes())
            .map_err(|e| format!("header {:?}: {e}", config.name))?;
        let test = match (&config.exact, &config.prefix, config.present) {
            (Some(exact), None, None) => HeaderTest::Exact(exact.clone()),
            (None, Some(prefix), None) => HeaderTest::Prefix(prefix.clone()),
            (None, None, Some(present)) => HeaderTest::Present(present),
            _ => {
                return Err(format!(
                    "header {:?}: set exactly one of exact, prefix, present",
                    config.name
                ));
            }
        };
        Ok(Self { name, test })
    }

    /// Repeated headers match when any of their values does.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers
            .get_all(&self.name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match &self.test {
            HeaderTest::Present(present) => headers.contains_key(&self.name) == *present,
            HeaderTest::Exact(exact) => values.any(|v| v == exact),
            HeaderTest::Prefix(prefix) => values.any(|v| v.starts_with(prefix.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_str;

    fn table(routes_yaml: &str) -> RouteTable {
        let yaml = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    routes:\n{routes_yaml}\nclusters:\n  - {{ name: a, endpoints: [\"127.0.0.1:1\"] }}\n  - {{ name: b, endpoints: [\"127.0.0.1:2\"] }}\n"
        );
        let loaded = load_str(&yaml, Path::new("t.yaml")).expect("valid config");
        let metrics = Metrics::new();
        let clusters = loaded
            .config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Cluster::new(c, Arc::clone(&metrics), None)))
            .collect();
        RouteTable::build(
            "l",
            &loaded.config.listeners[0].routes,
            &clusters,
            &metrics,
            Vec::new(),
        )
        .expect("builds")
    }

    fn route_name(
        table: &RouteTable,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        table.find(&method, path, &map).map(|r| r.name.clone())
    }

    #[test]
    fn first_matching_route_wins() {
        let table = table(
            r#"
      - { name: exact, match: { path: /health }, cluster: a }
      - { name: post-api, match: { prefix: /api, method: POST }, cluster: b }
      - { name: canary, match: { prefix: /api, headers: [{ name: x-canary, exact: "1" }] }, cluster: b }
      - { name: beta, match: { prefix: /api, headers: [{ name: x-user, prefix: beta- }] }, cluster: b }
      - { name: no-debug, match: { prefix: /api, headers: [{ name: x-debug, present: false }] }, cluster: a }
      - { match: { prefix: / }, cluster: a }"#,
        );
        let find = |m, p, h| route_name(&table, m, p, h);
        assert_eq!(find(Method::GET, "/health", &[]).as_deref(), Some("exact"));
        assert_eq!(
            find(Method::GET, "/healthz", &[]).as_deref(),
            Some("prefix:/")
        );
        assert_eq!(
            find(Method::POST, "/api/x", &[]).as_deref(),
            Some("post-api")
        );
        assert_eq!(
            find(Method::GET, "/api/x", &[("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            find(Method::GET, "/api/x", &[("x-canary", "2")]).as_deref(),
            Some("no-debug")
        );
        assert_eq!(
            find(Method::GET, "/api/x", &[("x-user", "beta-7")]).as_deref(),
            Some("beta")
        );
        assert_eq!(
            find(Method::GET, "/api/x", &[("x-debug", "1")]).as_deref(),
            Some("prefix:/")
        );
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let table = table("      - { match: { prefix: /api }, cluster: a }");
        assert!(route_name(&table, Method::GET, "/other", &[]).is_none());
    }

    #[test]
    fn weighted_routes_split_by_weight() {
        let table = table(
            "      - match: { prefix: / }\n        weighted_clusters: [{ cluster: a, weight: 90 }, { cluster: b, weight: 10 }]",
        );
        let route = table.find(&Method::GET, "/", &HeaderMap::new()).unwrap();
        let to_b = (0..10_000)
            .filter(|_| route.pick_target().cluster.name == "b")
            .count();
        assert!(
            (800..1200).contains(&to_b),
            "{to_b} of 10000 went to the 10% cluster"
        );
    }

    #[test]
    fn timeouts_default_and_zero_disables() {
        let table = table(
            "      - { match: { path: /a }, cluster: a }\n      - { match: { path: /b }, cluster: a, timeout: 0, idle_timeout: 2s }",
        );
        let a = table.find(&Method::GET, "/a", &HeaderMap::new()).unwrap();
        assert_eq!(a.timeout, Some(Duration::from_secs(15)));
        let b = table.find(&Method::GET, "/b", &HeaderMap::new()).unwrap();
        assert_eq!(b.timeout, None);
        assert_eq!(b.idle_timeout, Some(Duration::from_secs(2)));
    }
}
