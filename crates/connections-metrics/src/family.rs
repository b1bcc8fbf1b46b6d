//! The three metric types, labelled: a family holds one series per
//! combination of label values, created on first use.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bucket bounds in seconds for latencies: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Something [`crate::render`] can write.
pub trait Family: Sync {
    /// Appends the family (HELP, TYPE, samples) to `out`.
    fn render(&self, out: &mut String);
}

type Series<T> = Mutex<BTreeMap<Vec<String>, Arc<T>>>;

fn series<T: Default>(map: &Series<T>, values: &[&str]) -> Arc<T> {
    series_or(map, values, T::default)
}

/// The series of `values`, made by `make` on first use. Families hold few
/// series, so a scan beats allocating a key per observation.
fn series_or<T>(map: &Series<T>, values: &[&str], make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, found)) = map.iter().find(|(key, _)| key.iter().map(String::as_str).eq(values.iter().copied())) {
        return found.clone();
    }
    map.entry(values.iter().map(|v| (*v).to_owned()).collect()).or_insert_with(|| Arc::new(make())).clone()
}

fn snapshot<T>(map: &Series<T>) -> Vec<(Vec<String>, Arc<T>)> {
    let map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A counter per label combination (monotonic; the name ends in `_total`).
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<AtomicU64>,
}

impl CounterVec {
    /// Declares a counter family.
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `by` to the series of `values` (one per label, in order).
    pub fn add(&self, values: &[&str], by: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        series(&self.series, values).fetch_add(by, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// The current value of one series (tests).
    pub fn get(&self, values: &[&str]) -> u64 {
        series(&self.series, values).load(Ordering::Relaxed)
    }
}

impl Family for CounterVec {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, value) in snapshot(&self.series) {
            sample(out, self.name, "", self.labels, &values, None, value.load(Ordering::Relaxed) as f64);
        }
    }
}

/// A gauge per label combination.
pub struct GaugeVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<AtomicU64>,
}

impl GaugeVec {
    /// Declares a gauge family.
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    /// Sets the series of `values`.
    pub fn set(&self, values: &[&str], value: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        series(&self.series, values).store(value.to_bits(), Ordering::Relaxed);
    }

    /// The current value of one series (tests).
    pub fn get(&self, values: &[&str]) -> f64 {
        f64::from_bits(series(&self.series, values).load(Ordering::Relaxed))
    }
}

impl Family for GaugeVec {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        for (values, value) in snapshot(&self.series) {
            sample(out, self.name, "", self.labels, &values, None, f64::from_bits(value.load(Ordering::Relaxed)));
        }
    }
}

/// A histogram per label combination, with fixed bucket bounds.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Series<Histogram>,
}

/// One histogram: a count per bucket (not cumulative; summed when
/// rendered), the total count and the sum.
#[derive(Default)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl HistogramVec {
    /// Declares a histogram family with `buckets` as upper bounds (ascending).
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self { name, help, labels, buckets, series: Mutex::new(BTreeMap::new()) }
    }

    /// Records one observation in the series of `values`.
    pub fn observe(&self, values: &[&str], value: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let histogram = series_or(&self.series, values, || Histogram {
            counts: self.buckets.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        });
        if let Some(bucket) = self.buckets.iter().position(|bound| value <= *bound) {
            histogram.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        let _ = histogram
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, values: &[&str], duration: std::time::Duration) {
        self.observe(values, duration.as_secs_f64());
    }

    /// How many observations one series holds (tests).
    pub fn count(&self, values: &[&str]) -> u64 {
        let map = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        map.get(&key).map_or(0, |h| h.count.load(Ordering::Relaxed))
    }
}

impl Family for HistogramVec {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (values, histogram) in snapshot(&self.series) {
            let mut cumulative = 0;
            for (bound, count) in self.buckets.iter().zip(&histogram.counts) {
                cumulative += count.load(Ordering::Relaxed);
                let le = format_value(*bound);
                sample(out, self.name, "_bucket", self.labels, &values, Some(&le), cumulative as f64);
            }
            let count = histogram.count.load(Ordering::Relaxed);
            sample(out, self.name, "_bucket", self.labels, &values, Some("+Inf"), count as f64);
            let sum = f64::from_bits(histogram.sum_bits.load(Ordering::Relaxed));
            sample(out, self.name, "_sum", self.labels, &values, None, sum);
            sample(out, self.name, "_count", self.labels, &values, None, count as f64);
        }
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{labels} value`.
pub fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[&str],
    values: &[String],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = labels.iter().copied().zip(values.iter().map(String::as_str)).chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (label, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{label}=\"{escaped}\"");
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

fn format_value(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        static H: HistogramVec = HistogramVec::new("test_seconds", "Test.", &["kind"], &[0.1, 1.0]);
        H.observe(&["a"], 0.05);
        H.observe(&["a"], 0.5);
        H.observe(&["a"], 5.0);
        let mut out = String::new();
        H.render(&mut out);
        assert_eq!(
            out,
            "# HELP test_seconds Test.\n# TYPE test_seconds histogram\n\
             test_seconds_bucket{kind=\"a\",le=\"0.1\"} 1\ntest_seconds_bucket{kind=\"a\",le=\"1\"} 2\n\
             test_seconds_bucket{kind=\"a\",le=\"+Inf\"} 3\ntest_seconds_sum{kind=\"a\"} 5.55\n\
             test_seconds_count{kind=\"a\"} 3\n"
        );
    }

    #[test]
    fn counters_and_gauges_render_one_line_per_series_with_escaped_labels() {
        static C: CounterVec = CounterVec::new("test_total", "Test.", &["class"]);
        static G: GaugeVec = GaugeVec::new("test_up", "Test.", &[]);
        C.inc(&["2xx"]);
        C.add(&["a\"b"], 2);
        G.set(&[], 1.0);
        let mut out = String::new();
        C.render(&mut out);
        G.render(&mut out);
        assert!(out.contains("test_total{class=\"2xx\"} 1\n"), "{out}");
        assert!(out.contains("test_total{class=\"a\\\"b\"} 2\n"), "{out}");
        assert!(out.contains("test_up 1\n"), "{out}");
        assert_eq!(C.get(&["2xx"]), 1);
    }
}
