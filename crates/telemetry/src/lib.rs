//! The catalog of Berth's metrics: every name, help text, type and label
//! set in one place, on prometheus-client. Call sites record events through
//! typed methods ([`Metrics::webhook_delivery`], [`Metrics::task_finished`]),
//! never by name.
//!
//! Every label takes its values from a closed set ([`labels`]): a value from
//! outside (a webhook's event name, a GitHub status) maps to `other`, so
//! nothing a client sends can add series or grow the daemon's memory. Every
//! series exists from construction, at zero, so `/metrics` shows it before
//! its first event. This crate does not serve HTTP; `api` puts [`render`]
//! behind `/metrics` with [`CONTENT_TYPE`].
//!
//! [`render`]: Metrics::render

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

pub mod labels;

pub use labels::{
    Conclusion, DeliveryLabels, DeliveryOutcome, DropLabels, DropReason, GitHubCallLabels, GitHubStatus,
    RefusedLabels, RefusedReason, TaskKind, TaskLabels, WebhookEvent,
};

/// The `Content-Type` of [`Metrics::render`]: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of `berth_task_duration_seconds`: one second to an hour
/// (the default deadline is 30 minutes).
const TASK_DURATION_BUCKETS: [f64; 14] =
    [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0];

fn task_duration_histogram() -> Histogram {
    Histogram::new(TASK_DURATION_BUCKETS)
}

/// A family of histograms, each made by a plain function.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The daemon's metrics, one field per metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    webhook_signature_failures: Counter,
    webhook_handling: Histogram,
    http_connections: Gauge,
    http_connections_dropped: Family<DropLabels, Counter>,
    http_requests_refused: Family<RefusedLabels, Counter>,
    queue_depth: Gauge,
    workers_running: Gauge,
    dispatch_wait: Histogram,
    tasks_finished: Family<TaskLabels, Counter>,
    task_duration: HistogramFamily<TaskLabels>,
    oom: Counter,
    timeouts: Counter,
    cancels: Counter,
    reattached: Counter,
    collected: Counter,
    progress_updates: Counter,
    github_calls: Family<GitHubCallLabels, Counter>,
}

/// Registers `metric` under `name` and hands it back. Counters are named
/// without `_total`: prometheus-client adds it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Creates every series of `family`, at zero.
fn touch_all<S, M, C>(family: &Family<S, M, C>, label_sets: impl IntoIterator<Item = S>)
where
    S: Clone + std::hash::Hash + Eq + EncodeLabelSet,
    C: MetricConstructor<M>,
{
    for label_set in label_sets {
        drop(family.get_or_create(&label_set));
    }
}

fn task_label_sets() -> impl Iterator<Item = TaskLabels> {
    TaskKind::ALL
        .iter()
        .flat_map(|&kind| Conclusion::ALL.iter().map(move |&conclusion| TaskLabels { kind, conclusion }))
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The catalog, every series at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let metrics = Self {
            webhook_deliveries: register(
                r,
                "berth_webhook_deliveries",
                "Webhook deliveries by event (those Berth parses, else other) and outcome",
                Family::default(),
            ),
            webhook_signature_failures: register(
                r,
                "berth_webhook_signature_failures",
                "Deliveries refused for their signature",
                Counter::default(),
            ),
            webhook_handling: register(
                r,
                "berth_webhook_handling_seconds",
                "Seconds from a webhook request received to its answer",
                // 5 ms to about 10 s.
                Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            ),
            http_connections: register(
                r,
                "berth_http_connections",
                "Open HTTP connections",
                Gauge::default(),
            ),
            http_connections_dropped: register(
                r,
                "berth_http_connections_dropped",
                "HTTP connections the daemon closed before their client did, by reason",
                Family::default(),
            ),
            http_requests_refused: register(
                r,
                "berth_http_requests_refused",
                "HTTP requests refused while their body was read (body budget full, body too slow)",
                Family::default(),
            ),
            queue_depth: register(
                r,
                "berth_queue_depth",
                "Tasks waiting for a worker slot",
                Gauge::default(),
            ),
            workers_running: register(
                r,
                "berth_workers_running",
                "Tasks with a live worker or preparation",
                Gauge::default(),
            ),
            dispatch_wait: register(
                r,
                "berth_dispatch_wait_seconds",
                "Seconds from a task accepted to its worker started (whole seconds: the journal keeps seconds)",
                // 0.1 s to about 55 minutes.
                Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            ),
            tasks_finished: register(
                r,
                "berth_tasks_finished",
                "Finished tasks by kind and conclusion",
                Family::default(),
            ),
            task_duration: register(
                r,
                "berth_task_duration_seconds",
                "Seconds tasks ran, from dispatch to their end, by kind and conclusion",
                Family::new_with_constructor(task_duration_histogram as fn() -> Histogram),
            ),
            oom: register(r, "berth_oom", "Workers killed for memory", Counter::default()),
            timeouts: register(r, "berth_timeouts", "Workers stopped at their deadline", Counter::default()),
            cancels: register(r, "berth_cancels", "Tasks cancelled", Counter::default()),
            reattached: register(
                r,
                "berth_reattached",
                "Running workers re-attached by reconcile",
                Counter::default(),
            ),
            collected: register(
                r,
                "berth_collected",
                "Exited workers collected by reconcile",
                Counter::default(),
            ),
            progress_updates: register(
                r,
                "berth_progress_updates",
                "Check run edits showing a running task's latest log lines",
                Counter::default(),
            ),
            github_calls: register(
                r,
                "berth_github_calls",
                "GitHub API calls by status class",
                Family::default(),
            ),
            registry,
        };
        touch_all(
            &metrics.webhook_deliveries,
            WebhookEvent::ALL.iter().flat_map(|&event| {
                DeliveryOutcome::ALL.iter().map(move |&outcome| DeliveryLabels { event, outcome })
            }),
        );
        touch_all(
            &metrics.http_connections_dropped,
            DropReason::ALL.iter().map(|&reason| DropLabels { reason }),
        );
        touch_all(
            &metrics.http_requests_refused,
            RefusedReason::ALL.iter().map(|&reason| RefusedLabels { reason }),
        );
        touch_all(&metrics.tasks_finished, task_label_sets());
        touch_all(&metrics.task_duration, task_label_sets());
        touch_all(&metrics.github_calls, GitHubStatus::ALL.iter().map(|&status| GitHubCallLabels { status }));
        metrics
    }

    /// One webhook delivery and what became of it.
    pub fn webhook_delivery(&self, event: WebhookEvent, outcome: DeliveryOutcome) {
        self.webhook_deliveries.get_or_create(&DeliveryLabels { event, outcome }).inc();
    }

    /// One delivery refused for its signature.
    pub fn webhook_signature_failure(&self) {
        self.webhook_signature_failures.inc();
    }

    /// How long the webhook handler took, from request to answer.
    pub fn webhook_handled(&self, took: Duration) {
        self.webhook_handling.observe(took.as_secs_f64());
    }

    /// The number of open HTTP connections.
    pub fn http_connections_open(&self, open: usize) {
        self.http_connections.set(gauge_value(open));
    }

    /// One HTTP connection the daemon closed.
    pub fn http_connection_dropped(&self, reason: DropReason) {
        self.http_connections_dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// One HTTP request refused while its body was read.
    pub fn http_request_refused(&self, reason: RefusedReason) {
        self.http_requests_refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// The number of tasks waiting for a worker slot.
    pub fn queue_depth(&self, queued: usize) {
        self.queue_depth.set(gauge_value(queued));
    }

    /// The number of tasks with a live worker or preparation.
    pub fn workers_running(&self, running: usize) {
        self.workers_running.set(gauge_value(running));
    }

    /// A worker started `waited` after its task was accepted.
    pub fn dispatch_wait(&self, waited: Duration) {
        self.dispatch_wait.observe(waited.as_secs_f64());
    }

    /// One task finished.
    pub fn task_finished(&self, kind: TaskKind, conclusion: Conclusion) {
        self.tasks_finished.get_or_create(&TaskLabels { kind, conclusion }).inc();
    }

    /// How long a finished task ran, from dispatch to its end.
    pub fn task_duration(&self, kind: TaskKind, conclusion: Conclusion, ran: Duration) {
        self.task_duration.get_or_create(&TaskLabels { kind, conclusion }).observe(ran.as_secs_f64());
    }

    /// One worker killed for memory.
    pub fn worker_oom(&self) {
        self.oom.inc();
    }

    /// One worker stopped at its deadline.
    pub fn worker_timeout(&self) {
        self.timeouts.inc();
    }

    /// One task cancelled.
    pub fn task_cancelled(&self) {
        self.cancels.inc();
    }

    /// Workers a reconcile re-attached to and collected.
    pub fn reconciled(&self, reattached: usize, collected: usize) {
        self.reattached.inc_by(u64::try_from(reattached).unwrap_or(u64::MAX));
        self.collected.inc_by(u64::try_from(collected).unwrap_or(u64::MAX));
    }

    /// One progress edit of a running task's check run.
    pub fn progress_update(&self) {
        self.progress_updates.inc();
    }

    /// One GitHub API call and its status class.
    pub fn github_call(&self, status: GitHubStatus) {
        self.github_calls.get_or_create(&GitHubCallLabels { status }).inc();
    }

    /// The Prometheus text exposition (version 0.0.4, see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            .expect("encoding into a String fails only on a broken label encoder");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
