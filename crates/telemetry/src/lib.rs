//! Counters and gauges in the Prometheus text format, with no exporter
//! dependency: a handful of labelled series behind one mutex.
//!
//! Label values come from closed sets at every call site (an unknown
//! webhook event counts as `other`); as a last guard, no more than
//! [`MAX_SERIES`] series are ever kept, so nothing a client sends can grow
//! the daemon's memory or `/metrics` without bound.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::error;

/// Series kept at most; a new series past it is dropped (and said once in the log).
pub const MAX_SERIES: usize = 2000;

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), f64>>,
    help: Mutex<BTreeMap<String, (&'static str, &'static str)>>,
    full: AtomicBool,
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
        let key = (name.to_owned(), labels(pairs));
        if let Some(value) = series.get_mut(&key) {
            *value += by;
        } else if self.room(series.len(), name) {
            series.insert(key, by);
        }
    }

    /// Whether one more series fits; says once when it no longer does.
    fn room(&self, len: usize, name: &str) -> bool {
        if len < MAX_SERIES {
            return true;
        }
        if !self.full.swap(true, Ordering::Relaxed) {
            error!(
                metric = name,
                limit = MAX_SERIES,
                "too many metric series; new ones are dropped (a label from an open set?)"
            );
        }
        false
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &str, help: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, help, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.register(name, "gauge", help);
        let mut series = self.series.lock().expect("metrics lock is never poisoned");
        let key = (name.to_owned(), labels(pairs));
        if let Some(existing) = series.get_mut(&key) {
            *existing = value;
        } else if self.room(series.len(), name) {
            series.insert(key, value);
        }
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
