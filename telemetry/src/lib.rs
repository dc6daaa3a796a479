//! The process's metrics, in the Prometheus text format (`GET /metrics`).
//!
//! Components register what they count once (a [`Counter`], [`Gauge`] or [`Histogram`] is a
//! handle to atomics, cheap to update on a hot path) or a gauge read at scrape time
//! ([`Registry::gauge_fn`]); [`Registry::render`] writes everything. Names are prefixed
//! `gaveurs_`; one name has one help text and type, and one series per label set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

/// Label pairs, e.g. `&[("stream", "gavage"), ("transport", "mqtt")]`.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets (upper bounds, seconds for latencies).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in microunits, so it stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

enum Series {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    GaugeFn(Box<dyn Fn() -> f64 + Send + Sync>),
    Histogram(Arc<Histogram>),
}

struct Family {
    help: &'static str,
    kind: &'static str,
    /// Rendered label set (`{a="b",c="d"}` or empty) → series.
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
pub struct Registry {
    families: RwLock<BTreeMap<&'static str, Family>>,
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn label_text(labels: Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut text = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(text, "{name}=\"{value}\"");
    }
    text.push('}');
    text
}

impl Registry {
    fn series<T>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: Labels,
        existing: impl Fn(&Series) -> Option<Arc<T>>,
        create: impl FnOnce() -> (Arc<T>, Series),
    ) -> Arc<T> {
        let key = label_text(labels);
        if let Some(found) = self
            .families
            .read()
            .get(name)
            .and_then(|f| f.series.get(&key))
            .and_then(&existing)
        {
            return found;
        }
        let mut families = self.families.write();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        if let Some(found) = family.series.get(&key).and_then(&existing) {
            return found;
        }
        let (handle, series) = create();
        family.series.insert(key, series);
        handle
    }

    /// The counter `name{labels}`, created at zero the first time.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Labels) -> Arc<Counter> {
        self.series(
            name,
            help,
            "counter",
            labels,
            |s| match s {
                Series::Counter(c) => Some(c.clone()),
                _ => None,
            },
            || {
                let c = Arc::new(Counter::default());
                (c.clone(), Series::Counter(c))
            },
        )
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Labels) -> Arc<Gauge> {
        self.series(
            name,
            help,
            "gauge",
            labels,
            |s| match s {
                Series::Gauge(g) => Some(g.clone()),
                _ => None,
            },
            || {
                let g = Arc::new(Gauge::default());
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
    ) -> Arc<Histogram> {
        self.series(
            name,
            help,
            "histogram",
            labels,
            |s| match s {
                Series::Histogram(h) => Some(h.clone()),
                _ => None,
            },
            || {
                let h = Arc::new(Histogram::new(bounds));
                (h.clone(), Series::Histogram(h))
            },
        )
    }

    /// A gauge read when scraped (clients connected, pending messages…); registering the same
    /// name and labels again replaces the function.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let mut families = self.families.write();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind: "gauge",
            series: BTreeMap::new(),
        });
        family
            .series
            .insert(label_text(labels), Series::GaugeFn(Box::new(read)));
    }

    /// Everything, in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, family) in self.families.read().iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, series) in &family.series {
                match series {
                    Series::Counter(c) => {
                        let _ = writeln!(out, "{name}{labels} {}", c.get());
                    }
                    Series::Gauge(g) => {
                        let _ = writeln!(out, "{name}{labels} {}", g.get());
                    }
                    Series::GaugeFn(read) => {
                        let _ = writeln!(out, "{name}{labels} {}", read());
                    }
                    Series::Histogram(h) => render_histogram(&mut out, name, labels, h),
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    // `le` joins the series' own labels.
    let with_le = |le: &str| {
        if labels.is_empty() {
            format!("{{le=\"{le}\"}}")
        } else {
            format!("{},le=\"{le}\"}}", &labels[..labels.len() - 1])
        }
    };
    let mut cumulative = 0;
    for (bound, bucket) in h.bounds.iter().zip(&h.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            with_le(&bound.to_string())
        );
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{} {count}", with_le("+Inf"));
    let _ = writeln!(
        out,
        "{name}_sum{labels} {}",
        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{labels} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let registry = Registry::default();
        let mqtt = registry.counter(
            "gaveurs_records_in_total",
            "Accepted records.",
            &[("stream", "gavage"), ("transport", "mqtt")],
        );
        mqtt.add(3);
        registry
            .counter(
                "gaveurs_records_in_total",
                "Accepted records.",
                &[("stream", "gavage"), ("transport", "mqtt")],
            )
            .inc();
        registry.gauge_fn("gaveurs_ws_clients", "Clients.", &[], || 2.0);
        let latency = registry.histogram(
            "gaveurs_latency_seconds",
            "Latency.",
            &[("path", "ws")],
            &[0.01, 0.1],
        );
        latency.observe(0.005);
        latency.observe(0.05);
        latency.observe(3.0);
        let text = registry.render();
        assert!(
            text.contains("# TYPE gaveurs_records_in_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("gaveurs_records_in_total{stream=\"gavage\",transport=\"mqtt\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("gaveurs_ws_clients 2\n"), "{text}");
        assert!(
            text.contains("gaveurs_latency_seconds_bucket{path=\"ws\",le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gaveurs_latency_seconds_bucket{path=\"ws\",le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gaveurs_latency_seconds_bucket{path=\"ws\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("gaveurs_latency_seconds_count{path=\"ws\"} 3\n"),
            "{text}"
        );
    }
}
