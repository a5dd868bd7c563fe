//! Semantic checks that types alone cannot express: references between sections, uniqueness,
//! addresses, mutually exclusive fields. Every problem is collected (not just the first) so
//! one `sluice check` run shows everything to fix.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::error::ConfigProblem;
use super::{
    ClusterConfig, FilterConfig, HeaderMatch, ListenerConfig, ListenerProtocol, ProxyConfig,
    RouteConfig,
};

pub fn validate(config: &ProxyConfig) -> Result<(), Vec<ConfigProblem>> {
    let mut check = Checker::default();
    let cluster_names: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();

    if let Some(admin) = &config.admin {
        check.socket_addr("admin.address", &admin.address);
    }
    if config.workers == Some(0) {
        check.problem("workers", "must be at least 1");
    }
    if let Some(overload) = &config.overload
        && overload.max_memory.0 < 1 << 20
    {
        check.problem(
            "overload.max_memory",
            "must be at least 1MiB (the proxy itself takes several)",
        );
    }
    if config.listeners.is_empty() {
        check.problem("listeners", "at least one listener is needed");
    }

    let mut listener_names = HashSet::new();
    let mut listener_addresses = HashSet::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{index}]");
        if !listener_names.insert(listener.name.as_str()) {
            check.problem(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", listener.name),
            );
        }
        // Port 0 asks the OS for a free port, so two such listeners never collide.
        let ephemeral = listener
            .address
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.port() == 0);
        if !ephemeral && !listener_addresses.insert(listener.address.as_str()) {
            check.problem(
                format!("{path}.address"),
                format!("{} is already used by another listener", listener.address),
            );
        }
        check.listener(&path, listener, &cluster_names);
    }

    let mut seen_clusters = HashSet::new();
    for (index, cluster) in config.clusters.iter().enumerate() {
        let path = format!("clusters[{index}]");
        if !seen_clusters.insert(cluster.name.as_str()) {
            check.problem(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", cluster.name),
            );
        }
        check.cluster(&path, cluster);
    }
    check
        .problems
        .extend(super::discovery::check_registrations(&config.register));

    check.finish()
}

#[derive(Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
}

impl Checker {
    fn problem(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn finish(self) -> Result<(), Vec<ConfigProblem>> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems)
        }
    }

    fn socket_addr(&mut self, path: &str, address: &str) {
        if address.parse::<SocketAddr>().is_err() {
            self.problem(
                path,
                format!("{address:?} is not an IP address with a port, such as 127.0.0.1:10000"),
            );
        }
    }

    fn cluster_ref(&mut self, path: String, name: &str, clusters: &HashSet<&str>) {
        if !clusters.contains(name) {
            let mut known: Vec<&str> = clusters.iter().copied().collect();
            known.sort_unstable();
            self.problem(
                path,
                format!(
                    "unknown cluster {name:?} (defined clusters: {})",
                    known.join(", ")
                ),
            );
        }
    }

    fn listener(&mut self, path: &str, listener: &ListenerConfig, clusters: &HashSet<&str>) {
        if listener.name.is_empty() {
            self.problem(format!("{path}.name"), "must not be empty");
        }
        self.socket_addr(&format!("{path}.address"), &listener.address);
        if let Some(size) = listener.max_request_headers_size
            && size.0 < crate::http::MIN_HEADER_BUFFER as u64
        {
            self.problem(
                format!("{path}.max_request_headers_size"),
                "must be at least 8KiB",
            );
        }
        if listener.max_requests_per_connection == Some(0) {
            self.problem(
                format!("{path}.max_requests_per_connection"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if listener.max_concurrent_streams == Some(0) {
            self.problem(
                format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        if listener.max_connections == Some(0) {
            self.problem(
                format!("{path}.max_connections"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        match listener.protocol {
            ListenerProtocol::Http => {
                if listener.routes.is_empty() {
                    self.problem(
                        format!("{path}.routes"),
                        "an http listener needs at least one route",
                    );
                }
                if !listener.sni_routes.is_empty() {
                    self.problem(
                        format!("{path}.sni_routes"),
                        "TLS passthrough by server name is for tcp listeners; an http listener terminates TLS with `tls`",
                    );
                }
                if listener.cluster.is_some() {
                    self.problem(
                        format!("{path}.cluster"),
                        "only tcp listeners name a cluster directly; http listeners use routes",
                    );
                }
                self.filters(&format!("{path}.filters"), &listener.filters);
                for (index, route) in listener.routes.iter().enumerate() {
                    self.route(&format!("{path}.routes[{index}]"), route, clusters);
                }
            }
            ListenerProtocol::Tcp => {
                match &listener.cluster {
                    Some(cluster) => self.cluster_ref(format!("{path}.cluster"), cluster, clusters),
                    None if listener.sni_routes.is_empty() => self.problem(
                        format!("{path}.cluster"),
                        "a tcp listener needs a cluster (or sni_routes)",
                    ),
                    None => {}
                }
                for (index, route) in listener.sni_routes.iter().enumerate() {
                    let route_path = format!("{path}.sni_routes[{index}]");
                    self.cluster_ref(format!("{route_path}.cluster"), &route.cluster, clusters);
                    if route.server_names.is_empty() {
                        self.problem(
                            format!("{route_path}.server_names"),
                            "list at least one name (api.example.com or *.example.com)",
                        );
                    }
                }
                if !listener.routes.is_empty() {
                    self.problem(format!("{path}.routes"), "tcp listeners have no routes");
                }
                // On a tcp listener the filters are network filters (on_downstream_data, …).
                self.filters(&format!("{path}.filters"), &listener.filters);
            }
        }
    }

    fn route(&mut self, path: &str, route: &RouteConfig, clusters: &HashSet<&str>) {
        let matcher = &route.matcher;
        match (&matcher.prefix, &matcher.path) {
            (None, None) => self.problem(format!("{path}.match"), "needs `prefix` or `path`"),
            (Some(_), Some(_)) => self.problem(
                format!("{path}.match"),
                "`prefix` and `path` exclude each other",
            ),
            (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => self.problem(
                format!("{path}.match"),
                format!("{p:?} must start with '/'"),
            ),
            _ => {}
        }
        if let Some(method) = &matcher.method
            && http::Method::from_bytes(method.as_bytes()).is_err()
        {
            self.problem(
                format!("{path}.match.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
        for (index, header) in matcher.headers.iter().enumerate() {
            self.header_match(&format!("{path}.match.headers[{index}]"), header);
        }

        match (&route.cluster, &route.weighted_clusters) {
            (Some(cluster), None) => self.cluster_ref(format!("{path}.cluster"), cluster, clusters),
            (None, Some(weighted)) => {
                if weighted.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                    self.problem(
                        format!("{path}.weighted_clusters"),
                        "weights must add up to more than 0",
                    );
                }
                for (index, entry) in weighted.iter().enumerate() {
                    let entry_path = format!("{path}.weighted_clusters[{index}].cluster");
                    self.cluster_ref(entry_path, &entry.cluster, clusters);
                }
            }
            (None, None) => self.problem(path, "needs `cluster` or `weighted_clusters`"),
            (Some(_), Some(_)) => {
                self.problem(path, "`cluster` and `weighted_clusters` exclude each other")
            }
        }
        self.filters(&format!("{path}.filters"), &route.filters);
    }

    fn header_match(&mut self, path: &str, header: &HeaderMatch) {
        if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            self.problem(
                format!("{path}.name"),
                format!("{:?} is not a valid header name", header.name),
            );
        }
        let set = [
            header.exact.is_some(),
            header.prefix.is_some(),
            header.present.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            self.problem(path, "set exactly one of `exact`, `prefix`, `present`");
        }
    }

    fn filters(&mut self, path: &str, filters: &[FilterConfig]) {
        let mut names = HashSet::new();
        for (index, filter) in filters.iter().enumerate() {
            let filter_path = format!("{path}[{index}]");
            if !names.insert(filter.name.as_str()) {
                self.problem(
                    format!("{filter_path}.name"),
                    format!("duplicate filter name {:?} in this chain", filter.name),
                );
            }
            if filter.module.is_empty() {
                self.problem(
                    format!("{filter_path}.module"),
                    "must name a .wasm file or sha256:<digest>",
                );
            }
            if let Some(canary) = &filter.canary {
                if canary.module.is_empty() {
                    self.problem(
                        format!("{filter_path}.canary.module"),
                        "must name a .wasm file or sha256:<digest>",
                    );
                }
                if !(0.0..=100.0).contains(&canary.percent) {
                    self.problem(
                        format!("{filter_path}.canary.percent"),
                        format!("must be from 0 to 100, not {}", canary.percent),
                    );
                }
            }
            if let Some(memory) = filter.limits.as_ref().and_then(|l| l.memory)
                && memory.0 > crate::wasm::MAX_MEMORY_LIMIT
            {
                self.problem(
                    format!("{filter_path}.limits.memory"),
                    "must be at most 1GiB",
                );
            }
            if filter
                .limits
                .as_ref()
                .and_then(|l| l.callback_time)
                .is_some_and(|t| t.0.is_zero())
            {
                self.problem(
                    format!("{filter_path}.limits.callback_time"),
                    "must be more than 0",
                );
            }
        }
    }

    fn cluster(&mut self, path: &str, cluster: &ClusterConfig) {
        if cluster.name.is_empty() {
            self.problem(format!("{path}.name"), "must not be empty");
        }
        self.problems
            .extend(super::discovery::check_cluster_source(path, cluster));
        for (field, limit) in [
            ("max_connections", cluster.max_connections),
            ("max_requests", cluster.max_requests),
        ] {
            if limit == Some(0) {
                self.problem(
                    format!("{path}.{field}"),
                    "must be at least 1: with 0 no request could ever be sent",
                );
            }
        }
        for (index, endpoint) in cluster.endpoints.iter().enumerate() {
            if let Err(reason) = crate::upstream::EndpointTarget::parse(endpoint) {
                self.problem(format!("{path}.endpoints[{index}]"), reason);
            }
        }
        if let Some(health) = &cluster.health_check {
            let hc = format!("{path}.health_check");
            if health.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                self.problem(format!("{hc}.path"), "must start with '/'");
            }
            if health.interval.is_some_and(|i| i.0.is_zero()) {
                self.problem(format!("{hc}.interval"), "must be more than 0");
            }
            if health.timeout.is_some_and(|t| t.0.is_zero()) {
                self.problem(format!("{hc}.timeout"), "must be more than 0");
            }
            if health.healthy_threshold == Some(0) {
                self.problem(format!("{hc}.healthy_threshold"), "must be at least 1");
            }
            if health.unhealthy_threshold == Some(0) {
                self.problem(format!("{hc}.unhealthy_threshold"), "must be at least 1");
            }
        }
        if cluster.connect_timeout.is_some_and(|t| t.0.is_zero()) {
            self.problem(format!("{path}.connect_timeout"), "must be more than 0");
        }
        if cluster.dns_refresh.is_some_and(|t| t.0.is_zero()) {
            self.problem(format!("{path}.dns_refresh"), "must be more than 0");
        }
    }
}

#[cfg(test)]
mod tests;
