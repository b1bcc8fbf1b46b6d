//! The process's metrics and their [Prometheus text exposition].
//!
//! Every metric the server exports is declared here, once, as a `static`
//! ([`catalog`]); the components that observe them (the API, the relay, the
//! projector) name the static, and `GET /metrics` renders them with
//! [`render`]. Labels carry kinds and outcomes only, never an owner or an
//! agent id: their number of values is small and fixed.
//!
//! A small hand-written registry rather than a crate: three metric types,
//! atomics, and a text format that `promtool check metrics` checks in the
//! tests.
//!
//! [Prometheus text exposition]: https://prometheus.io/docs/instrumenting/exposition_formats/

mod catalog;
mod family;

pub use catalog::*;
pub use family::{CounterVec, GaugeVec, HistogramVec, LATENCY_BUCKETS};

/// Appends every declared metric to `out` in the text format.
pub fn render(out: &mut String) {
    for family in catalog::ALL {
        family.render(out);
    }
}

/// Appends one gauge family whose values are read at scrape time (pool
/// sizes, roles held) rather than kept.
pub fn render_gauge(out: &mut String, name: &str, help: &str, labels: &[&str], series: &[(Vec<String>, f64)]) {
    family::header(out, name, help, "gauge");
    for (values, value) in series {
        family::sample(out, name, "", labels, values, None, *value);
    }
}
