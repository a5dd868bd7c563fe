//! Plugin metrics named with Envoy's tag convention, `name;key=value;key=value` (what the
//! standard `metrics` filter and Istio's stats plugin define), become Prometheus families of
//! their own: `requests_total;route=api;status_class=2xx` defined by plugin `metrics` is
//! `sluice_wasm_requests_total{plugin="metrics",route="api",status_class="2xx"}`, which
//! ordinary PromQL can sum and slice. Names and label keys are made valid for Prometheus;
//! a key `plugin` becomes `tag_plugin`.
//!
//! Guards, each counted in `sluice_wasm_metrics_refused_total{plugin,reason}`: at most
//! [`MAX_SERIES_PER_PLUGIN`] tagged series per plugin (`series_limit`); a family is fixed by
//! its first definition, and a later one with another type or other keys is refused
//! (`conflict`). A refused metric still works for the guest; it is only not exported.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Most tagged series one plugin may export.
pub const MAX_SERIES_PER_PLUGIN: usize = 10_000;

/// A metric name split into its family and labels, valid for Prometheus.
#[derive(Debug, PartialEq, Eq)]
pub struct TaggedName {
    pub family: String,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
}

impl TaggedName {
    /// `None` for a name without tags (it stays in the flat `sluice_wasm_counter` form).
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split(';');
        let base = parts.next()?;
        let mut labels = Vec::new();
        for part in parts {
            let (key, value) = part.split_once('=')?;
            // `plugin` is the proxy's own label; `__` starts Prometheus's reserved names.
            let key = match sanitize(key, false) {
                key if key == "plugin" || key.starts_with("__") => format!("tag_{key}"),
                key => key,
            };
            labels.push((key, value.to_owned()));
        }
        if labels.is_empty() || base.is_empty() {
            return None;
        }
        labels.sort();
        // One key twice cannot be two labels.
        if labels.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return None;
        }
        Some(Self {
            family: format!("sluice_wasm_{}", sanitize(base, true)),
            labels,
        })
    }

    fn keys(&self) -> Vec<String> {
        self.labels.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Letters, digits and `_` (and `:` in metric names); anything else becomes `_`, and a
/// leading digit gets a `_` before it.
/// The names a family of `kind` puts in the exposition: a histogram's three, else its own.
fn exposition_names(kind: u32, family: &str) -> Vec<String> {
    match kind {
        2 => ["_count", "_sum", "_bucket"]
            .iter()
            .map(|suffix| format!("{family}{suffix}"))
            .chain([family.to_owned()])
            .collect(),
        _ => vec![family.to_owned()],
    }
}

fn sanitize(text: &str, metric_name: bool) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (metric_name && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

enum Family {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

#[derive(Default)]
struct Families {
    /// By family name: fixed by its first definition.
    defined: HashMap<String, Registered>,
    /// Every name the exposition holds for plugins' metrics (a histogram's `_count`, `_sum`
    /// and `_bucket` too), so a new family cannot clash with one of them.
    taken: HashSet<String>,
    /// Families that could not be registered: refused again at once.
    refused: HashSet<String>,
}

/// A family as first defined: its type (0 counter, 1 gauge, 2 histogram), label keys, and
/// collector.
struct Registered {
    kind: u32,
    keys: Vec<String>,
    family: Family,
}

/// One tagged series, handed to a VM.
pub enum TaggedSeries {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

/// The tagged families every plugin's metrics go into, registered as they first appear.
pub struct TaggedMetrics {
    registry: Registry,
    buckets: Vec<f64>,
    families: Mutex<Families>,
    /// Each plugin's series, to cap them (several VMs define the same ones).
    series: Mutex<HashMap<String, HashSet<String>>>,
    refused: IntCounterVec,
}

impl TaggedMetrics {
    /// Tagged families in `registry`; `taken` are families of a kind (0 counter, 1 gauge,
    /// 2 histogram) already there that none may clash with.
    pub fn new(
        registry: Registry,
        buckets: Vec<f64>,
        refused: IntCounterVec,
        taken: &[(u32, &str)],
    ) -> Self {
        let mut families = Families::default();
        for (kind, name) in taken {
            families.taken.extend(exposition_names(*kind, name));
        }
        Self {
            registry,
            buckets,
            families: Mutex::new(families),
            series: Mutex::default(),
            refused,
        }
    }

    /// The series of `name` for `plugin`, of `kind` (0 counter, 1 gauge, 2 histogram);
    /// `None` when refused (counted and logged).
    pub fn define(&self, plugin: &str, kind: u32, name: &TaggedName) -> Option<TaggedSeries> {
        let mut values: Vec<&str> = vec![plugin];
        values.extend(name.labels.iter().map(|(_, v)| v.as_str()));
        let keys = name.keys();
        let mut families = self
            .families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !families.defined.contains_key(&name.family) {
            let names = exposition_names(kind, &name.family);
            let clashes = families.refused.contains(&name.family)
                || names.iter().any(|n| families.taken.contains(n));
            let Some(family) = (!clashes)
                .then(|| self.register(kind, &name.family, &keys))
                .flatten()
            else {
                families.refused.insert(name.family.clone());
                self.refuse(plugin, "conflict", &name.family);
                return None;
            };
            families.taken.extend(names);
            let registered = Registered {
                kind,
                keys: keys.clone(),
                family,
            };
            families.defined.insert(name.family.clone(), registered);
        }
        let registered = families.defined.get(&name.family)?;
        if registered.kind != kind || registered.keys != keys {
            self.refuse(plugin, "conflict", &name.family);
            return None;
        }
        let series_key = format!("{}{{{}}}", name.family, values.join("\u{1f}"));
        {
            let mut series = self
                .series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mine = series.entry(plugin.to_owned()).or_default();
            if !mine.contains(&series_key) && mine.len() >= MAX_SERIES_PER_PLUGIN {
                self.refuse(plugin, "series_limit", &name.family);
                return None;
            }
            mine.insert(series_key);
        }
        Some(match &registered.family {
            Family::Counter(vec) => TaggedSeries::Counter(vec.with_label_values(&values)),
            Family::Gauge(vec) => TaggedSeries::Gauge(vec.with_label_values(&values)),
            Family::Histogram(vec) => TaggedSeries::Histogram(vec.with_label_values(&values)),
        })
    }

    fn register(&self, kind: u32, name: &str, keys: &[String]) -> Option<Family> {
        let mut labels: Vec<&str> = vec!["plugin"];
        labels.extend(keys.iter().map(String::as_str));
        let help = "Defined by Wasm plugins with tagged names (name;key=value)";
        let (collector, family): (Box<dyn prometheus::core::Collector>, Family) = match kind {
            0 => {
                let vec = IntCounterVec::new(Opts::new(name, help), &labels).ok()?;
                (Box::new(vec.clone()), Family::Counter(vec))
            }
            1 => {
                let vec = IntGaugeVec::new(Opts::new(name, help), &labels).ok()?;
                (Box::new(vec.clone()), Family::Gauge(vec))
            }
            2 => {
                let opts = HistogramOpts::new(name, help).buckets(self.buckets.clone());
                let vec = HistogramVec::new(opts, &labels).ok()?;
                (Box::new(vec.clone()), Family::Histogram(vec))
            }
            _ => return None,
        };
        // A name the proxy's own families use, or a reserved label such as a histogram's
        // `le`, is refused by the registry.
        match self.registry.register(collector) {
            Ok(()) => Some(family),
            Err(error) => {
                tracing::debug!(family = name, %error, "the registry refused a tagged plugin metric");
                None
            }
        }
    }

    fn refuse(&self, plugin: &str, reason: &str, family: &str) {
        let counter = self.refused.with_label_values(&[plugin, reason]);
        if counter.get() == 0 {
            tracing::warn!(
                plugin,
                reason,
                family,
                "a tagged plugin metric is not exported (the guest still sees it)"
            );
        }
        counter.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_names_become_families_with_valid_labels() {
        let name =
            TaggedName::parse("requests_total;route=api;status_class=2xx;cluster=a-b").unwrap();
        assert_eq!(name.family, "sluice_wasm_requests_total");
        assert_eq!(
            name.labels,
            [
                ("cluster".to_owned(), "a-b".to_owned()),
                ("route".to_owned(), "api".to_owned()),
                ("status_class".to_owned(), "2xx".to_owned()),
            ]
        );
        let odd = TaggedName::parse("9.lives;plugin=x;bad-key=1").unwrap();
        assert_eq!(odd.family, "sluice_wasm__9_lives");
        assert_eq!(odd.labels[0].0, "bad_key");
        assert_eq!(odd.labels[1].0, "tag_plugin");
        for flat in ["requests", "a;b", "a;k=1;k=2", ";k=v"] {
            assert_eq!(TaggedName::parse(flat), None, "{flat}");
        }
    }

    #[test]
    fn series_are_capped_per_plugin_and_conflicts_refused() {
        let registry = Registry::new();
        let refused = IntCounterVec::new(Opts::new("refused", "r"), &["plugin", "reason"]).unwrap();
        let flat = [(0, "sluice_wasm_counter"), (2, "sluice_wasm_histogram")];
        let metrics = TaggedMetrics::new(registry.clone(), vec![1.0], refused.clone(), &flat);
        let name = |i: usize| TaggedName::parse(&format!("hits;n={i}")).unwrap();
        for i in 0..MAX_SERIES_PER_PLUGIN {
            assert!(metrics.define("p", 0, &name(i)).is_some());
        }
        // The same series again (another VM) is not a new one.
        assert!(metrics.define("p", 0, &name(0)).is_some());
        assert!(
            metrics
                .define("p", 0, &name(MAX_SERIES_PER_PLUGIN))
                .is_none()
        );
        assert_eq!(refused.with_label_values(&["p", "series_limit"]).get(), 1);
        // Another plugin has its own allowance; another type or key set conflicts.
        assert!(metrics.define("q", 0, &name(0)).is_some());
        assert!(metrics.define("q", 1, &name(1)).is_none());
        assert!(
            metrics
                .define("q", 0, &TaggedName::parse("hits;m=1").unwrap())
                .is_none()
        );
        assert_eq!(refused.with_label_values(&["q", "conflict"]).get(), 2);
        let exported = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            exported.contains(r#"sluice_wasm_hits{n="0",plugin="q"} 0"#),
            "{exported}"
        );
    }
}
