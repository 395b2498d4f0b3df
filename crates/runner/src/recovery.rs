//! Recovery: finding workers again after a restart of the daemon (or of the
//! engine), the periodic sweep, and backfilling deliveries GitHub could not
//! hand over while Berth was down.
//!
//! Docker is the truth about live workers (their labels say everything a
//! monitor needs); the journal is the truth about accepted work and outcomes.
//! Reconcile brings the two together and is idempotent: a task that already
//! has a monitor, a report in flight, or a finished record is left alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_types::backoff::Backoff;
use core_types::{LabelError, TaskLabels};
use dispatcher::{ContainerEngine, ContainerId, ContainerStatus, DispatchError, ExitInfo, ManagedContainer};
use github::{GitHubApi, GitHubError};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{Ending, Runner};
use crate::decide::{Context, Step, Worker, next_step};
use domain::tasks::{TaskRecord, TaskState};
use journal::now_unix;

/// Deliveries older than this are not backfilled (GitHub keeps three days).
const BACKFILL_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// Whether GitHub sent `delivery` before the backfill's window (`now` in
/// seconds since the epoch).
fn before_window(delivery: &github::Delivery, now: u64) -> bool {
    delivery.delivered_unix.is_some_and(|at| now.saturating_sub(at) > BACKFILL_WINDOW.as_secs())
}

/// At most this many pages of a hundred deliveries are read in one backfill.
/// A busier log than that is read back only this far, and the rest is named
/// in a warning.
const BACKFILL_MAX_PAGES: usize = 100;

/// Waits between tries while the engine is away (a broken wait, an engine
/// call, reading a worker's output): 250 ms, doubling, at most 5 s.
pub(super) const ENGINE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// What one reconcile pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Running workers a monitor was attached to.
    pub reattached: usize,
    /// Exited workers collected.
    pub collected: usize,
    /// Workers past their deadline, stopped.
    pub overdue: usize,
    /// Created workers handed back to the queue.
    pub requeued: usize,
    /// Journal tasks whose container had vanished.
    pub vanished: usize,
    /// Containers left alone (labels of an unknown schema, or damaged).
    pub skipped: usize,
}

fn age(container: &ManagedContainer) -> Duration {
    container
        .created_at
        .and_then(|created| SystemTime::now().duration_since(created).ok())
        .unwrap_or(Duration::MAX)
}

/// A task record rebuilt from a container's labels, for a task the journal does not know.
fn record_from_labels(labels: &TaskLabels) -> TaskRecord {
    let request = domain::request::TaskRequest {
        kind: labels.kind,
        repo: labels.repo.clone(),
        number: labels.number,
        head_sha: labels.head_sha.clone(),
        head_ref: None,
        clone_url: String::new(),
        repo_id: None,
        prompt: String::new(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: String::new(),
        installation: labels.installation,
        comment_id: None,
        follow_up: false,
    };
    let delivery = labels.delivery.clone().unwrap_or_default();
    let mut record = TaskRecord::queued(request, &delivery, 0, now_unix());
    record.task_id = labels.task_id.clone();
    record.state = TaskState::Dispatched;
    record.check_run = labels.check_run;
    record
}

impl<E: ContainerEngine, G: GitHubApi> Runner<E, G> {
    /// Waits for the container's exit, riding out engine restarts: a broken
    /// wait is retried until the engine answers again.
    pub(super) async fn wait_exit(&self, container: &ContainerId) -> Result<ExitInfo, DispatchError> {
        let mut backoff = ENGINE_BACKOFF;
        loop {
            match self.dispatcher.wait(container).await {
                Ok(exit) => return Ok(exit),
                Err(err @ DispatchError::ContainerNotFound { .. }) => return Err(err),
                Err(err) => {
                    warn!(container_id = %container, error = %err, "lost the wait on a worker; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Brings the journal and the engine together. Run at start before
    /// `/readyz` turns 200, and periodically as the sweep.
    ///
    /// # Errors
    /// When the engine cannot be listed or the journal read.
    #[instrument(skip_all)]
    pub async fn reconcile(self: &Arc<Self>) -> Result<Reconciled, anyhow::Error> {
        let mut done = Reconciled::default();
        let containers = self.dispatcher.list().await?;
        let mut seen = std::collections::HashSet::new();
        let mut collections = tokio::task::JoinSet::new();
        for container in containers {
            // The clone cache's refresh containers carry no task; its sweep handles them below.
            if container.labels.get(core_types::label::KIND).map(String::as_str)
                == Some(core_types::KIND_CACHE_REFRESH)
            {
                continue;
            }
            let labels = match &container.task {
                Ok(labels) => labels.clone(),
                Err(err @ LabelError::UnknownSchema { .. }) => {
                    warn!(container = %container.name, error = %err, "left alone: written by another berth version");
                    done.skipped += 1;
                    continue;
                }
                Err(err) => {
                    warn!(container = %container.name, error = %err, "left alone: damaged berth labels");
                    done.skipped += 1;
                    continue;
                }
            };
            seen.insert(labels.task_id.clone());
            let busy = self.active().contains_key(&labels.task_id)
                || self.reporting.lock().expect("reporting lock is never poisoned").contains(&labels.task_id);
            if busy {
                continue;
            }
            let record = match self.journal.task(&labels.task_id)? {
                Some(record) => record,
                None => {
                    warn!(task_id = %labels.task_id, "the journal does not know this worker; adopting it from its labels");
                    self.journal.adopt(record_from_labels(&labels)).await?
                }
            };
            let worker = Worker {
                status: container.status.clone(),
                age: age(&container),
                deadline_unix: labels.deadline_unix,
            };
            match next_step(&record, Some(&worker), &self.decision_context()) {
                Step::Leave | Step::Vanished => {}
                Step::RemoveLeftover => {
                    if !matches!(container.status, ContainerStatus::Exited(_)) {
                        warn!(task_id = %record.task_id, container_id = %container.id, "removing a worker of a task that already ended");
                    }
                    let _ = self.dispatcher.remove(&container.id).await;
                }
                Step::Watch { overdue } => {
                    if overdue {
                        done.overdue += 1;
                    } else {
                        done.reattached += 1;
                    }
                    self.reattach(record, container.id.clone(), labels.deadline_unix);
                }
                Step::Collect(exit) => {
                    done.collected += 1;
                    let runner = Arc::clone(self);
                    let id = container.id.clone();
                    self.active().insert(
                        record.task_id.clone(),
                        (CancellationToken::new(), Arc::new(Mutex::new(None))),
                    );
                    collections.spawn(async move {
                        let task_id = record.task_id.clone();
                        let ending = runner.collect(&id, Ok(exit), None).await;
                        runner.finish(record, ending, Some(id)).await;
                        runner.active().remove(&task_id);
                    });
                }
                // A queued worker: the scheduler starts it in turn, adopting the container.
                Step::Requeue => {
                    done.requeued += 1;
                    self.journal
                        .update_task(&record.task_id, Box::new(|task| task.state = TaskState::Queued))
                        .await?;
                }
            }
        }
        while collections.join_next().await.is_some() {}
        // Journal tasks that were dispatched but whose container is gone.
        for task in self.journal.active_tasks()? {
            if seen.contains(&task.task_id) || self.active().contains_key(&task.task_id) {
                continue;
            }
            if next_step(&task, None, &self.decision_context()) != Step::Vanished {
                continue;
            }
            // Re-read before concluding: the container may have been created since the listing.
            if self.dispatcher.find(&task.task_id).await?.is_some() {
                continue;
            }
            done.vanished += 1;
            let runner = Arc::clone(self);
            self.tracker.spawn(async move {
                let reason =
                    "the worker's container disappeared while the task was running (removed from outside)"
                        .to_owned();
                runner.finish(task, Ending::Failed(reason), None).await;
            });
        }
        if self.cache.enabled() {
            self.cache.sweep(&self.dispatcher, self.startup_done(), crate::decide::SWEEP_GRACE).await;
        }
        if done != Reconciled::default() {
            info!(?done, "reconciled workers with the journal");
        }
        self.metrics.reconciled(done.reattached, done.collected);
        self.wake.notify_one();
        Ok(done)
    }

    fn startup_done(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    fn decision_context(&self) -> Context {
        Context {
            now_unix: now_unix(),
            started: self.startup_done(),
            stop_grace: self.config.stop_grace,
            backstop_margin: super::BACKSTOP_MARGIN,
        }
    }

    /// Attaches a monitor to a running worker found by its labels, with the
    /// deadline its labels carry.
    fn reattach(self: &Arc<Self>, record: TaskRecord, container: ContainerId, deadline_unix: u64) {
        let token = self.shutdown.child_token();
        let reason = Arc::new(Mutex::new(None));
        self.active().insert(record.task_id.clone(), (token.clone(), reason.clone()));
        let backstop = Duration::from_secs(deadline_unix.saturating_sub(now_unix()))
            + self.config.stop_grace
            + super::BACKSTOP_MARGIN;
        let deadline = tokio::time::Instant::now() + backstop;
        let runner = Arc::clone(self);
        info!(task_id = %record.task_id, container_id = %container, "re-attached to a running worker");
        self.tracker.spawn(async move {
            let task_id = record.task_id.clone();
            let target = super::progress::ProgressTarget::of(&record);
            if let Some(ending) = runner.watch(&record, target, &container, deadline, &token, &reason).await {
                runner.finish(record, ending, Some(container)).await;
            }
            runner.active().remove(&task_id);
            runner.wake.notify_one();
        });
    }

    /// The sweep: reconcile every `every`, and whenever the engine's event
    /// stream says a managed container changed or the stream broke.
    pub async fn sweep(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                () = self.dispatcher.next_change() => {}
            }
            // A stop does not wait for a pass: every step of one is safe to
            // cut short, and the next start reconciles anyway.
            let reconciled = tokio::select! {
                () = self.shutdown.cancelled() => return,
                reconciled = self.reconcile() => reconciled,
            };
            if let Err(err) = reconciled {
                warn!(error = %format!("{err:#}"), "sweep could not reconcile; will retry");
            }
        }
    }

    /// The backfill at start, every `every`, and as soon as the journal can
    /// write again after it could not (a full disk): the deliveries refused
    /// with 503 meanwhile are not retried by GitHub, only redelivered when asked.
    pub async fn backfill_every(&self, every: Duration, shutdown: CancellationToken) {
        loop {
            // A GitHub that does not answer (retried for minutes) must not hold a stop.
            let backfilled = tokio::select! {
                () = shutdown.cancelled() => return,
                backfilled = self.backfill() => backfilled,
            };
            match backfilled {
                Ok(0) => tracing::debug!("no missed deliveries"),
                Ok(asked) => info!(asked, "asked GitHub to redeliver missed deliveries"),
                Err(err) => warn!(error = %format!("{err:#}"), "could not check for missed deliveries"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                () = self.journal.recovered() => {
                    info!("the journal can write again; looking for deliveries refused meanwhile");
                }
            }
        }
    }

    /// Asks GitHub to redeliver the App's failed deliveries of the last
    /// three days that the journal never saw: once each, or twice when a
    /// stop falls between an ask and its note.
    ///
    /// # Errors
    /// When GitHub cannot be asked.
    pub async fn backfill(&self) -> Result<usize, anyhow::Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        let (deliveries, whole) = self.deliveries_to_check(now).await?;
        let mut asked = 0;
        for delivery in &deliveries {
            let (id, guid) = (delivery.id, delivery.guid.as_str());
            if delivery.succeeded() {
                continue;
            }
            // Another attempt of the same delivery may have succeeded since.
            if deliveries.iter().any(|other| other.guid == guid && other.succeeded()) {
                continue;
            }
            if before_window(delivery, now) {
                continue;
            }
            if self.journal.delivery(guid)?.is_some() || self.journal.redelivery_asked(guid)? {
                continue;
            }
            // Asked first, then noted: a stop between the two asks again next
            // time, and the second redelivery is a duplicate the journal
            // answers as one. Noted first, an ask cut off would be lost.
            match self.github.redeliver(id).await {
                Ok(()) => {
                    info!(delivery = guid, "asked GitHub to redeliver a delivery Berth never received");
                    asked += 1;
                }
                // GitHub will not redeliver this one (gone, or refused): noted,
                // so that it does not stop every later pass here.
                Err(GitHubError::Rejected { status, message, .. }) => {
                    warn!(delivery = guid, status, %message, "GitHub refused to redeliver a missed delivery");
                }
                // Unavailable, or the App's credentials: the next pass asks again.
                Err(err) => return Err(err.into()),
            }
            self.journal.mark_redelivery(guid).await?;
        }
        // Only a pass that read back as far as it meant to moves the mark:
        // one cut short is read again.
        if whole && let Some(newest) = deliveries.iter().map(|delivery| delivery.id).max() {
            let mut mark = self.backfilled_through.lock().expect("backfill mark lock is never poisoned");
            *mark = Some(mark.map_or(newest, |mark| mark.max(newest)));
        }
        Ok(asked)
    }

    /// The deliveries one backfill checks, newest first, page by page: back
    /// to the window's start, or, once a backfill has got there, back to the
    /// newest delivery that backfill read. GitHub numbers attempts in the
    /// order it makes them, so anything newer has a larger id.
    ///
    /// Also says whether the walk got as far back as it meant to (the
    /// window, the mark, or the log's end), rather than stopping at the page
    /// cap or on a cursor that did not move.
    async fn deliveries_to_check(&self, now: u64) -> Result<(Vec<github::Delivery>, bool), anyhow::Error> {
        let through = *self.backfilled_through.lock().expect("backfill mark lock is never poisoned");
        let mut deliveries: Vec<github::Delivery> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..BACKFILL_MAX_PAGES {
            let page = self.github.deliveries_page(cursor.as_deref()).await?;
            let older_than_window = page.deliveries.iter().any(|delivery| before_window(delivery, now));
            let read_before =
                through.is_some_and(|mark| page.deliveries.iter().any(|delivery| delivery.id <= mark));
            deliveries.extend(page.deliveries);
            if older_than_window || read_before {
                return Ok((deliveries, true));
            }
            match page.next {
                None => return Ok((deliveries, true)),
                // A cursor that does not move would loop for ever.
                Some(next) if cursor.as_ref() == Some(&next) => {
                    warn!(
                        cursor = next,
                        "GitHub's delivery log gave the same page again; the backfill stops there"
                    );
                    return Ok((deliveries, false));
                }
                Some(next) => cursor = Some(next),
            }
        }
        warn!(
            read = deliveries.len(),
            pages = BACKFILL_MAX_PAGES,
            "GitHub's delivery log holds more than one backfill reads; older failed deliveries were not checked"
        );
        Ok((deliveries, false))
    }
}
