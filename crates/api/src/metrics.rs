//! Counters and gauges in the Prometheus text format, with no exporter
//! dependency: a handful of labelled series behind one mutex.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), f64>>,
    help: Mutex<BTreeMap<String, (&'static str, &'static str)>>,
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> =
        pairs.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    fn register(&self, name: &str, kind: &'static str, help: &'static str) {
        let mut registry = self.help.lock().expect("metrics lock is never poisoned");
        registry.entry(name.to_owned()).or_insert((kind, help));
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], by: f64) {
        self.register(name, "counter", help);
        let mut series = self.series.lock().expect("metrics lock is never poisoned");
        *series.entry((name.to_owned(), labels(pairs))).or_insert(0.0) += by;
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &str, help: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, help, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.register(name, "gauge", help);
        let mut series = self.series.lock().expect("metrics lock is never poisoned");
        series.insert((name.to_owned(), labels(pairs)), value);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let registry = self.help.lock().expect("metrics lock is never poisoned").clone();
        let series = self.series.lock().expect("metrics lock is never poisoned").clone();
        let mut out = String::new();
        let mut current = None;
        for ((name, labels), value) in &series {
            if current != Some(name) {
                if let Some((kind, help)) = registry.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
                current = Some(name);
            }
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out
    }
}
