//! Plugin-defined metrics (`proxy_define_metric` and friends), exported on `/metrics` as
//! `sluice_wasm_counter` / `_gauge` / `_histogram` with the plugin and metric name as labels,
//! or, for names with Envoy's tags (`name;key=value`), as families of their own
//! (`tagged_metrics.rs`).
//! Ids encode the type in their low two bits, as cpp-host does: counters 4, 8, …; gauges
//! 5, 9, …; histograms 6, 10, ….

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::status::Status;
use super::tagged_metrics::{TaggedMetrics, TaggedName, TaggedSeries};

/// The metric families every plugin's metrics live in.
#[derive(Clone)]
pub struct WasmMetricFamilies {
    pub counters: IntCounterVec,
    pub gauges: IntGaugeVec,
    pub histograms: HistogramVec,
    pub tagged: Arc<TaggedMetrics>,
}

enum Defined {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

/// One VM's metric id table.
pub struct VmMetrics {
    plugin: String,
    families: Option<WasmMetricFamilies>,
    defined: HashMap<u32, Defined>,
    next_index: u32,
}

impl VmMetrics {
    pub fn new(plugin: &str, families: Option<WasmMetricFamilies>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            families,
            defined: HashMap::new(),
            next_index: 0,
        }
    }

    pub fn define(&mut self, kind: u32, name: &str) -> Result<u32, Status> {
        let labels = [self.plugin.as_str(), name];
        let tagged = self
            .families
            .as_ref()
            .zip(TaggedName::parse(name))
            .map(|(families, tagged)| families.tagged.define(&self.plugin, kind, &tagged));
        let defined = match (kind, &self.families) {
            (0..=2, Some(_)) if tagged.is_some() => match tagged.flatten() {
                Some(TaggedSeries::Counter(counter)) => Defined::Counter(counter),
                Some(TaggedSeries::Gauge(gauge)) => Defined::Gauge(gauge),
                Some(TaggedSeries::Histogram(histogram)) => Defined::Histogram(histogram),
                // Refused (counted): the guest keeps a metric of its own, not exported.
                None => local(kind)?,
            },
            (0, Some(f)) => Defined::Counter(f.counters.with_label_values(&labels)),
            (1, Some(f)) => Defined::Gauge(f.gauges.with_label_values(&labels)),
            (2, Some(f)) => Defined::Histogram(f.histograms.with_label_values(&labels)),
            // No registry (a canary VM): keep the metric local so the guest behaves the same.
            (0..=2, None) => local(kind)?,
            _ => return Err(Status::BadArgument),
        };
        self.next_index += 1;
        let id = (self.next_index << 2) | kind;
        self.defined.insert(id, defined);
        Ok(id)
    }

    pub fn increment(&mut self, id: u32, offset: i64) -> Result<(), Status> {
        match self.defined.get(&id).ok_or(Status::NotFound)? {
            Defined::Counter(counter) if offset > 0 => counter.inc_by(offset as u64),
            Defined::Counter(_) | Defined::Histogram(_) => return Err(Status::BadArgument),
            Defined::Gauge(gauge) => gauge.add(offset),
        }
        Ok(())
    }

    pub fn record(&mut self, id: u32, value: i64) -> Result<(), Status> {
        match self.defined.get(&id).ok_or(Status::NotFound)? {
            Defined::Counter(counter) => counter.inc_by(value.max(0) as u64),
            Defined::Gauge(gauge) => gauge.set(value),
            Defined::Histogram(histogram) => histogram.observe(value as f64),
        }
        Ok(())
    }

    pub fn get(&self, id: u32) -> Result<u64, Status> {
        match self.defined.get(&id).ok_or(Status::NotFound)? {
            Defined::Counter(counter) => Ok(counter.get()),
            Defined::Gauge(gauge) => Ok(gauge.get() as u64),
            Defined::Histogram(_) => Err(Status::BadArgument),
        }
    }
}

/// A metric nobody exports, for a guest whose metric cannot be.
fn local(kind: u32) -> Result<Defined, Status> {
    let failed = |_| Status::InternalFailure;
    Ok(match kind {
        0 => Defined::Counter(IntCounter::new("c", "c").map_err(failed)?),
        1 => Defined::Gauge(IntGauge::new("g", "g").map_err(failed)?),
        _ => Defined::Histogram(
            Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).map_err(failed)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_types_and_counters_refuse_non_positive_increments() {
        let mut metrics = VmMetrics::new("p", None);
        let counter = metrics.define(0, "requests").unwrap();
        let gauge = metrics.define(1, "in_flight").unwrap();
        let histogram = metrics.define(2, "latency").unwrap();
        assert_eq!((counter & 3, gauge & 3, histogram & 3), (0, 1, 2));
        assert_eq!(metrics.define(3, "nope"), Err(Status::BadArgument));

        metrics.increment(counter, 2).unwrap();
        assert_eq!(metrics.increment(counter, 0), Err(Status::BadArgument));
        assert_eq!(metrics.increment(counter, -1), Err(Status::BadArgument));
        metrics.record(counter, 3).unwrap();
        assert_eq!(metrics.get(counter), Ok(5));

        metrics.increment(gauge, -4).unwrap();
        metrics.increment(gauge, 1).unwrap();
        assert_eq!(metrics.get(gauge), Ok((-3i64) as u64));
        metrics.record(gauge, 7).unwrap();
        assert_eq!(metrics.get(gauge), Ok(7));

        metrics.record(histogram, 12).unwrap();
        assert_eq!(metrics.increment(histogram, 1), Err(Status::BadArgument));
        assert_eq!(metrics.get(histogram), Err(Status::BadArgument));
        assert_eq!(metrics.get(999), Err(Status::NotFound));
    }
}
