//! The process's metrics (`GET /metrics`), encoded by `prometheus-client` in the OpenMetrics
//! text format ([`CONTENT_TYPE`]), which Prometheus reads with each family's type.
//!
//! Components register what they count once — a [`Counter`], [`Gauge`] or [`Histogram`] is a
//! handle to atomics, cheap to update on a hot path: keep the handle, since looking a series
//! up by its labels builds the label set — or a value read when scraped ([`Registry::read_at_scrape`],
//! for what a component already counts). Names are prefixed `gaveurs_`; a counter's name ends
//! in `_total`. One name has one help text and type, and one series per label set.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

pub use prometheus_client::metrics::counter::Counter;

/// A value that goes up and down.
pub type Gauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs, e.g. `&[("stream", "gavage"), ("transport", "mqtt")]`.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

type LabelSet = Vec<(String, String)>;

/// Observations counted into fixed buckets (upper bounds, seconds for latencies). Lock-free;
/// the count a scrape shows is the sum of the buckets it shows, so no bucket is ever ahead of
/// the count.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds: Vec<f64>,
    /// One cell per bound, then one for observations above every bound.
    buckets: Vec<AtomicU64>,
    /// Sum in microunits, so it stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram(Arc::new(HistogramCells {
            bounds: bounds.to_vec(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, value: f64) {
        let cells = &self.0;
        let i = cells
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(cells.bounds.len());
        cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        cells
            .sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let cells = &self.0;
        let counts: Vec<u64> = cells
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(counts.iter().copied())
            .collect();
        let sum = cells.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }
}

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

type Read = Box<dyn Fn() -> f64 + Send + Sync>;

enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    /// A counter or gauge a component keeps itself, read when scraped.
    Read(Read),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric name: its type and its series by label set.
struct Family {
    kind: Kind,
    series: RwLock<BTreeMap<LabelSet, Series>>,
}

/// What the encoder holds of a family.
#[derive(Debug, Clone)]
struct Registered(Arc<Family>);

impl fmt::Debug for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("kind", &self.kind)
            .field("series", &self.series.read().len())
            .finish()
    }
}

impl EncodeMetric for Registered {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let series = self.0.series.read();
        // A series without labels is written `name value`, not `name{} value`.
        if let Some(unlabelled) = series.get(&LabelSet::new()) {
            return encode_series(unlabelled, self.0.kind, encoder);
        }
        for (labels, series) in series.iter() {
            encode_series(series, self.0.kind, encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        match self.0.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

fn encode_series(series: &Series, kind: Kind, mut encoder: MetricEncoder) -> fmt::Result {
    match series {
        Series::Counter(counter) => {
            encoder.encode_counter::<NoLabelSet, _, u64>(&counter.get(), None)
        }
        Series::Gauge(gauge) => encoder.encode_gauge(&gauge.get()),
        Series::Histogram(histogram) => histogram.encode(encoder),
        Series::Read(read) if kind == Kind::Counter => {
            encoder.encode_counter::<NoLabelSet, _, u64>(&(read().max(0.0) as u64), None)
        }
        Series::Read(read) => encoder.encode_gauge(&read()),
    }
}

pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Arc<Family>>>,
    encoding: Mutex<prometheus_client::registry::Registry>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            families: Mutex::new(BTreeMap::new()),
            encoding: Mutex::new(prometheus_client::registry::Registry::default()),
        }
    }
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn label_set(labels: Labels) -> LabelSet {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    /// The family `name`, registered with the encoder the first time.
    fn family(&self, name: &'static str, help: &'static str, kind: Kind) -> Arc<Family> {
        let mut families = self.families.lock();
        if let Some(family) = families.get(name) {
            assert!(
                family.kind == kind,
                "metric {name} registered as {:?} and {kind:?}",
                family.kind
            );
            return family.clone();
        }
        let family = Arc::new(Family {
            kind,
            series: RwLock::new(BTreeMap::new()),
        });
        // The encoder adds `_total` to a counter's name.
        let encoded = match kind {
            Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        self.encoding.lock().register(
            encoded,
            help.trim_end_matches('.'),
            Registered(family.clone()),
        );
        families.insert(name, family.clone());
        family
    }

    fn series<T>(
        &self,
        (name, help, kind): (&'static str, &'static str, Kind),
        labels: Labels,
        existing: impl Fn(&Series) -> Option<T>,
        create: impl FnOnce() -> (T, Series),
    ) -> T {
        let family = self.family(name, help, kind);
        let key = label_set(labels);
        if let Some(found) = family.series.read().get(&key).and_then(&existing) {
            return found;
        }
        let mut series = family.series.write();
        if let Some(found) = series.get(&key).and_then(&existing) {
            return found;
        }
        let (handle, created) = create();
        series.insert(key, created);
        handle
    }

    /// The counter `name{labels}` (`name` ends in `_total`), created at zero the first time.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Labels) -> Counter {
        self.series(
            (name, help, Kind::Counter),
            labels,
            |s| match s {
                Series::Counter(c) => Some(c.clone()),
                _ => None,
            },
            || {
                let c = Counter::default();
                (c.clone(), Series::Counter(c))
            },
        )
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Labels) -> Gauge {
        self.series(
            (name, help, Kind::Gauge),
            labels,
            |s| match s {
                Series::Gauge(g) => Some(g.clone()),
                _ => None,
            },
            || {
                let g = Gauge::default();
                (g.clone(), Series::Gauge(g))
            },
        )
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        bounds: &[f64],
    ) -> Histogram {
        self.series(
            (name, help, Kind::Histogram),
            labels,
            |s| match s {
                Series::Histogram(h) => Some(h.clone()),
                _ => None,
            },
            || {
                let h = Histogram::new(bounds);
                (h.clone(), Series::Histogram(h))
            },
        )
    }

    /// A value a component keeps itself (clients connected, texts sent…), read when scraped:
    /// a counter if `name` ends in `_total`, else a gauge. Registering the same name and
    /// labels again replaces the function.
    pub fn read_at_scrape(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        let family = self.family(name, help, kind);
        family
            .series
            .write()
            .insert(label_set(labels), Series::Read(Box::new(read)));
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.encoding.lock())
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests;
