//! The golden metrics of HTTP traffic, per route and upstream cluster: requests by status
//! class, latency, and requests in flight, defined with `proxy_define_metric` so they show in
//! Sluice's `/metrics` (and Envoy's stats). Uses only the standard Proxy-Wasm ABI.
//!
//! Metric names carry their labels after the name, `;`-separated:
//! `requests_total;route=api;cluster=backend;status_class=2xx`. Label values come from the
//! config (route and cluster names) or a fixed set (status class), and the number of
//! route-and-cluster pairs is capped (`max_series`), so the number of series stays bounded.

mod names;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::hostcalls;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use names::{series_name, status_class};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MetricsRoot { state: Rc::default() })
    });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Route-and-cluster pairs with series of their own; later pairs count as `other`. [200]
    #[serde(default = "default_max_series")]
    max_series: usize,
}

fn default_max_series() -> usize {
    200
}

/// What every stream of the VM shares: the metric ids defined so far.
#[derive(Default)]
struct State {
    max_series: usize,
    in_flight: u32,
    /// Metric ids by full name.
    defined: HashMap<String, u32>,
    /// Route-and-cluster pairs seen, up to `max_series`.
    pairs: HashMap<(String, String), ()>,
}

struct MetricsRoot {
    state: Rc<RefCell<State>>,
}

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = match sluice_sdk::config::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log::error!("metrics: invalid configuration: {error}");
                return false;
            }
        };
        let mut state = self.state.borrow_mut();
        state.max_series = config.max_series;
        match hostcalls::define_metric(MetricType::Gauge, "requests_active") {
            Ok(id) => state.in_flight = id,
            Err(status) => {
                log::error!("metrics: cannot define requests_active: {status:?}");
                return false;
            }
        }
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MetricsFilter {
            state: Rc::clone(&self.state),
            started: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MetricsFilter {
    state: Rc<RefCell<State>>,
    /// Set once the request is counted in flight.
    started: Option<SystemTime>,
}

impl Context for MetricsFilter {}

impl HttpContext for MetricsFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.started = Some(self.get_current_time());
        let _ = hostcalls::increment_metric(self.state.borrow().in_flight, 1);
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(started) = self.started else {
            return;
        };
        let elapsed = self
            .get_current_time()
            .duration_since(started)
            .unwrap_or(Duration::ZERO);
        let code = self
            .get_property(vec!["response", "code"])
            .and_then(|bytes| Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)))
            .unwrap_or(0);
        let route = self.string_property("route_name");
        let cluster = self.string_property("cluster_name");

        let mut state = self.state.borrow_mut();
        let _ = hostcalls::increment_metric(state.in_flight, -1);
        let (route, cluster) = state.series_for(route, cluster);
        let labels = [("route", route.as_str()), ("cluster", cluster.as_str())];
        let class = status_class(code);
        let requests = series_name(
            "requests_total",
            &[labels[0], labels[1], ("status_class", class)],
        );
        if let Some(id) = state.metric(MetricType::Counter, &requests) {
            let _ = hostcalls::increment_metric(id, 1);
        }
        let duration = series_name("request_duration_ms", &labels);
        if let Some(id) = state.metric(MetricType::Histogram, &duration) {
            let _ = hostcalls::record_metric(id, elapsed.as_millis() as u64);
        }
    }
}

impl MetricsFilter {
    /// `xds.<name>` (Envoy 1.40 has only this one), else `<name>` (older hosts); `none` when
    /// the request had no route (or no upstream).
    fn string_property(&self, name: &str) -> String {
        self.get_property(vec!["xds", name])
            .or_else(|| self.get_property(vec![name]))
            .filter(|bytes| !bytes.is_empty())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|| "none".to_owned())
    }
}

impl State {
    /// The label values to use: the pair itself while under `max_series`, else `other`.
    fn series_for(&mut self, route: String, cluster: String) -> (String, String) {
        let pair = (route, cluster);
        if self.pairs.contains_key(&pair) {
            return pair;
        }
        if self.pairs.len() < self.max_series {
            self.pairs.insert(pair.clone(), ());
            return pair;
        }
        ("other".to_owned(), "other".to_owned())
    }

    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.defined.get(name) {
            return Some(*id);
        }
        match hostcalls::define_metric(kind, name) {
            Ok(id) => {
                self.defined.insert(name.to_owned(), id);
                Some(id)
            }
            Err(status) => {
                log::warn!("metrics: cannot define {name}: {status:?}");
                None
            }
        }
    }
}
