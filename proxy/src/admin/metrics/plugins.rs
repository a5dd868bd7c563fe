//! The families plugins' metrics go into: the flat ones every plugin shares, by `plugin` and
//! `name`, and the tagged ones (`name;key=value`) registered as they first appear.

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, Registry};

use super::{counter_vec, gauge_vec, register};
use crate::wasm::{TaggedMetrics, WasmMetricFamilies};

const FLAT_COUNTERS: &str = "sluice_wasm_counter";
const FLAT_GAUGES: &str = "sluice_wasm_gauge";
const FLAT_HISTOGRAMS: &str = "sluice_wasm_histogram";

pub(super) fn plugin_families(registry: &Registry) -> WasmMetricFamilies {
    // `proxy_record_metric` values are often milliseconds.
    let buckets = prometheus::exponential_buckets(1.0, 4.0, 12).unwrap_or_default();
    let labels = ["plugin", "name"];
    let opts = HistogramOpts::new(FLAT_HISTOGRAMS, "Histograms defined by Wasm plugins")
        .buckets(buckets.clone());
    let refused = counter_vec(
        registry,
        "sluice_wasm_metrics_refused_total",
        "Tagged plugin metrics not exported, by reason (series_limit, conflict)",
        &["plugin", "reason"],
    );
    WasmMetricFamilies {
        counters: counter_vec(
            registry,
            FLAT_COUNTERS,
            "Counters defined by Wasm plugins",
            &labels,
        ),
        gauges: gauge_vec(
            registry,
            FLAT_GAUGES,
            "Gauges defined by Wasm plugins",
            &labels,
        ),
        histograms: register(registry, HistogramVec::new(opts, &labels)),
        tagged: Arc::new(TaggedMetrics::new(
            registry.clone(),
            buckets,
            refused,
            // A tagged family must not clash with the flat ones.
            &[(0, FLAT_COUNTERS), (1, FLAT_GAUGES), (2, FLAT_HISTOGRAMS)],
        )),
    }
}
