//! Running tasks: the scheduler (a global cap, queue order, cancels and
//! supersedes), GitHub preparation before a worker starts, one monitor per
//! started worker (exit, deadline or cancel), and the final report.
//!
//! State lives where DESIGN.md puts it: what a restarted daemon needs about a
//! live worker is on its container's labels; accepted tasks, outcomes and
//! whether they were reported are in the journal; what users see is on
//! GitHub, written idempotently. The order of the last steps makes a crash
//! at any point recoverable: the outcome goes into the journal before the
//! container is removed, and the report is retried until it lands.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core_types::worker_env::WorkerOptions;
use core_types::{ResultRecord, Secret, TaskId, TaskKind, TaskLabels, WorkerExit, WorkerTask};
use dispatcher::{ContainerEngine, ContainerId, ContainerStatus, Dispatcher, DockerEngine, ExitInfo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, instrument, warn};

use crate::agent_env::{AgentEnv, AgentEnvFiles};
use domain::prompt::{PromptFacts, Prompts};
use domain::request::{CancelCause, CancelRequest};
use domain::tasks::{Conclusion, Outcome, PullRequestRef, TaskRecord, TaskState};
use github::{GitHub, GitHubApi, GitHubError};
use journal::{Finished, Journal, now_unix};
use telemetry::Metrics;

pub mod agent_env;
pub mod cache;
pub mod decide;
mod follow_up;
pub mod logs;
mod notices;
pub mod progress;
mod recovery;

#[cfg(test)]
mod tests;

pub use logs::LogKeeper;
pub use recovery::Reconciled;

/// How often the scheduler looks at the journal when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);

/// How long after the worker's own deadline and grace Berth stops it itself.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(5);

/// Log lines of a worker's output read back for its result record. The
/// engine stores a line longer than 16 KiB in pieces that count one each; a
/// record is at most about 360 KB (60,000 summary characters, each at worst
/// six bytes escaped), so 256 cover it with room to spare.
const RESULT_TAIL_LINES: u64 = 256;

/// Bytes of a worker's stdout kept while reading it back: more than the
/// largest record, and all the daemon ever holds of a worker's output.
const RESULT_TAIL_BYTES: usize = 512 * 1024;

/// How long reading a finished worker's output for its kept log may take,
/// and so may writing it: past either, the log is dropped and the task's
/// report goes on.
const KEEP_LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read beyond a kept log's limit, so that a secret cut by the
/// engine-side tail is still whole when redaction looks for it (in all but
/// the longest secrets); the log is cut to its limit after redaction.
const KEEP_LOG_MARGIN: usize = 4096;

/// What the runner needs beyond its parts.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Running workers at once.
    pub max_workers: usize,
    /// Running workers at once for any one repository (none: only the global cap).
    pub max_workers_per_repo: Option<usize>,
    /// Hard deadline per task.
    pub task_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when a worker is stopped.
    pub stop_grace: Duration,
    /// The agent command handed to workers.
    pub agent_command: String,
    /// Worker memory limit, for the out-of-memory report.
    pub memory_bytes: i64,
    /// The agent's settings and secrets files, read again for every dispatch.
    pub agent_env_files: AgentEnvFiles,
    /// The prompt templates.
    pub prompts: Prompts,
    /// Where the end of a finished worker's output is kept; `None` keeps none.
    pub log_keeper: Option<LogKeeper>,
    /// Where people reach Berth (`BERTH_PUBLIC_URL`): check runs and comments
    /// link to `<url>/tasks/<id>`; `None`: no link.
    pub public_url: Option<String>,
    /// How often a running task's check run shows its latest log lines.
    pub progress_interval: Duration,
    /// The clone cache (ADR 23); `None` keeps it off and workers clone plainly.
    pub clone_cache: Option<cache::CacheSettings>,
}

/// Why Berth itself stopped a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// The task's deadline passed.
    Deadline,
    /// A cancel was requested.
    Cancel(CancelRequest),
}

/// How a task ended, before it is put into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The worker ran and exited.
    Exited {
        /// Exit code, OOM flag and times.
        exit: ExitInfo,
        /// The worker's result record, if it printed one.
        result: Option<ResultRecord>,
        /// Set when Berth stopped it.
        stopped: Option<StopCause>,
    },
    /// Cancelled before a worker started.
    CancelledBeforeStart(CancelRequest),
    /// Refused at dispatch (a fork, a closed pull request).
    Refused(String),
    /// Could not be prepared or started.
    Failed(String),
}

/// The words of a report: a GitHub check run conclusion, a title and a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The check run's conclusion.
    pub conclusion: Conclusion,
    /// One line.
    pub title: String,
    /// Markdown.
    pub summary: String,
    /// The branch an implement task pushed.
    pub branch: Option<String>,
}

fn human_bytes(bytes: i64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 3600 && seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds >= 60 && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// Puts an ending into words. Every way a task can end reads differently.
pub fn conclude(ending: &Ending, kind: TaskKind, timeout: Duration, memory_bytes: i64) -> Report {
    use Conclusion::{Cancelled, Failure, Neutral, Success, TimedOut};
    let report = |conclusion, title: &str, summary: String| Report {
        conclusion,
        title: title.to_owned(),
        summary,
        branch: None,
    };
    match ending {
        Ending::CancelledBeforeStart(cancel) => report(
            Cancelled,
            "Cancelled before it started",
            format!("{} before a worker started.", capitalize(&cancel.reason)),
        ),
        Ending::Refused(reason) => {
            report(Neutral, "Not run", format!("Berth did not run this task: {reason}."))
        }
        Ending::Failed(reason) => {
            report(Failure, "Could not start", format!("Berth could not start this task: {reason}."))
        }
        Ending::Exited { exit, result, stopped } => {
            let agent_summary = result.as_ref().map(|record| record.summary.clone()).unwrap_or_default();
            let with_summary = |text: String| {
                if agent_summary.trim().is_empty() { text } else { format!("{text}\n\n{agent_summary}") }
            };
            match stopped {
                Some(StopCause::Deadline) => report(
                    TimedOut,
                    "Timed out",
                    with_summary(format!("Ran past its deadline of {} and was stopped.", human_duration(timeout))),
                ),
                Some(StopCause::Cancel(cancel)) => match cancel.cause {
                    CancelCause::Superseded => report(Cancelled, "Superseded", format!("{}.", capitalize(&cancel.reason))),
                    _ => report(Cancelled, "Cancelled", format!("{}.", capitalize(&cancel.reason))),
                },
                None if exit.oom_killed => report(
                    Failure,
                    "Out of memory",
                    format!("The worker ran out of memory (limit {}) and was killed by the kernel.", human_bytes(memory_bytes)),
                ),
                None => match (WorkerExit::from_code(exit.code), result) {
                    // The worker's own codes always come with its record as the
                    // last line; without one, nothing of the result can be trusted.
                    (Some(_), None) => report(
                        Failure,
                        "Result record missing or damaged",
                        format!(
                            "The worker exited with code {}, but its result record was missing or damaged: the last line of its output is not a well-formed record (an agent may have written into the worker's own output). Berth does not act on this result.",
                            exit.code
                        ),
                    ),
                    (Some(WorkerExit::Success), Some(record)) => {
                        let summary = if agent_summary.is_empty() { "Done.".to_owned() } else { agent_summary.clone() };
                        let mut done = report(Success, kind.spec().done_title, summary);
                        done.branch = record.branch.clone();
                        done
                    }
                    (Some(WorkerExit::AgentFailed), _) => {
                        report(Failure, "The agent failed", with_summary("The agent exited with an error.".to_owned()))
                    }
                    (Some(WorkerExit::SetupFailed), _) => report(
                        Failure,
                        "Setup failed",
                        with_summary("The worker could not set up the task (clone, token or input).".to_owned()),
                    ),
                    (Some(WorkerExit::DeadlineExceeded), _) => report(
                        TimedOut,
                        "Timed out",
                        with_summary(format!("The agent ran past its deadline of {}; the worker stopped it.", human_duration(timeout))),
                    ),
                    (Some(WorkerExit::Cancelled), _) | (None, _) if matches!(exit.code, 4 | SIGTERM_EXIT) => report(
                        Cancelled,
                        "Stopped from outside",
                        with_summary(format!("The worker was stopped from outside Berth (SIGTERM, exit {}).", exit.code)),
                    ),
                    (None, _) if exit.code == SIGKILL_EXIT => report(
                        Failure,
                        "Killed from outside",
                        "The worker was killed from outside Berth (SIGKILL, exit 137) without running out of memory.".to_owned(),
                    ),
                    (_, _) => report(Failure, "Worker failed", with_summary(format!("The worker exited with code {}.", exit.code))),
                },
            }
        }
    }
}

/// The exit code of a process ended by SIGTERM (forwarded by an init).
const SIGTERM_EXIT: i64 = 143;

/// The exit code of a process ended by SIGKILL.
const SIGKILL_EXIT: i64 = 137;

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

/// The queued tasks in the order they get a worker slot: round-robin across
/// repositories, so one busy repository cannot starve the others. A task's
/// turn is its place in its repository's queue plus the workers that
/// repository already runs; ties go to the task accepted first.
pub fn fair_order(mut queued: Vec<TaskRecord>, running: &HashMap<String, usize>) -> Vec<TaskRecord> {
    queued.sort_by_key(|task| task.seq);
    let mut places: HashMap<String, usize> = HashMap::new();
    let mut turns: Vec<(usize, u64, TaskRecord)> = queued
        .into_iter()
        .map(|task| {
            let place = places.entry(task.repo.clone()).or_default();
            let turn = *place + running.get(&task.repo).copied().unwrap_or(0);
            *place += 1;
            (turn, task.seq, task)
        })
        .collect();
    turns.sort_by_key(|(turn, seq, _)| (*turn, *seq));
    turns.into_iter().map(|(_, _, task)| task).collect()
}

/// How long an installation token lives from when GitHub makes it.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// What a token must have left when the worker's deadline comes: the worker's
/// grace, the push itself, and clocks that disagree.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long the engine may be away before waiting tasks are logged as errors.
const ENGINE_AWAY_WARNING: Duration = Duration::from_secs(60);

/// Why an engine call gave up before succeeding.
enum Interrupted {
    /// The task was cancelled, or the daemon is stopping.
    Cancelled,
    /// The engine answered with a refusal.
    Failed(dispatcher::DispatchError),
    /// The engine stayed away past the call's time budget.
    OutOfTime,
}

/// A task with a live preparation or monitor: its cancel switch, and why it was pulled.
type ActiveTask = (CancellationToken, Arc<Mutex<Option<CancelRequest>>>);

/// Runs tasks from the journal on the engine and reports them to GitHub.
///
/// Generic over the engine and GitHub so that its unit tests drive it with
/// in-memory fakes of both; the daemon uses the defaults.
pub struct Runner<E: ContainerEngine = DockerEngine, G: GitHubApi = GitHub> {
    journal: Journal,
    dispatcher: Dispatcher<E>,
    github: G,
    config: RunnerConfig,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// Tasks with a live preparation or monitor, and their cancel switches.
    active: Mutex<HashMap<TaskId, ActiveTask>>,
    /// Finished tasks whose report is being written now.
    reporting: Mutex<HashSet<TaskId>>,
    /// Queued tasks whose check run is being opened early; not dispatched until it is.
    announcing: Mutex<HashSet<TaskId>>,
    /// Queued tasks whose early opening was tried by this process (once each).
    announced: Mutex<HashSet<TaskId>>,
    /// Refused comments whose answer is being posted now.
    notifying: Mutex<HashSet<u64>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Set once the start-up reconcile is done.
    started: std::sync::atomic::AtomicBool,
    /// Every secret value read from the secrets file since start, rotated
    /// ones included: the daemon redacts all of them from what it reports.
    secrets_seen: Mutex<Vec<Secret>>,
    /// The worker token of each task being run here, revoked when it ends.
    tokens: Mutex<HashMap<TaskId, Secret>>,
    /// The clone cache's locks, refreshes under way and book.
    cache: cache::CloneCache,
    /// The newest delivery id of the last backfill that read back to its
    /// window: later backfills read only back to it.
    backfilled_through: Mutex<Option<u64>>,
}

impl<E: ContainerEngine, G: GitHubApi> std::fmt::Debug for Runner<E, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What dispatch learned before the container was created.
struct Prepared {
    installation: u64,
    head_sha: String,
    head_ref: Option<String>,
    base_ref: Option<String>,
    check_run: Option<u64>,
    token: Secret,
    /// When the token was made: it lives one hour from then.
    token_made: std::time::Instant,
}

impl<E: ContainerEngine, G: GitHubApi> Runner<E, G> {
    /// A runner over these parts. Spawned work is tracked by `tracker` and
    /// stops at `shutdown` without touching the workers.
    #[expect(clippy::too_many_arguments, reason = "the runner's parts, wired once in the daemon")]
    pub fn new(
        journal: Journal,
        dispatcher: Dispatcher<E>,
        github: G,
        config: RunnerConfig,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let clone_cache = config.clone_cache.clone();
        Arc::new(Self {
            journal,
            dispatcher,
            github,
            config,
            metrics,
            wake,
            active: Mutex::default(),
            reporting: Mutex::default(),
            announcing: Mutex::default(),
            announced: Mutex::default(),
            notifying: Mutex::default(),
            backfilled_through: Mutex::default(),
            shutdown,
            tracker,
            started: std::sync::atomic::AtomicBool::new(false),
            secrets_seen: Mutex::default(),
            tokens: Mutex::default(),
            cache: cache::CloneCache::new(clone_cache),
        })
    }

    /// Marks the start-up reconcile as done; from then on the sweep leaves
    /// young containers alone.
    pub fn mark_started(&self) {
        self.started.store(true, std::sync::atomic::Ordering::Release);
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, ActiveTask>> {
        self.active.lock().expect("active map lock is never poisoned")
    }

    /// This instance's clone cache mirrors, with their size and last use
    /// (empty when the cache is off).
    ///
    /// # Errors
    /// When the engine cannot list volumes.
    pub async fn caches(&self) -> Result<Vec<cache::CacheRow>, dispatcher::DispatchError> {
        if !self.cache.enabled() {
            return Ok(Vec::new());
        }
        self.cache.rows(&self.dispatcher).await
    }

    /// Number of tasks with a live preparation or monitor.
    pub fn running(&self) -> usize {
        self.active().len()
    }

    /// The scheduler loop: until shutdown, on every wake-up and every second,
    /// carry out cancels, start queued tasks up to the cap, and retry reports.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(err) = self.tick() {
                error!(error = %err, "scheduler could not read the journal");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One pass of the scheduler.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn tick(self: &Arc<Self>) -> Result<(), journal::JournalError> {
        let tasks = self.journal.active_tasks()?;
        let mut queued = 0_usize;
        for task in &tasks {
            let Some(cancel) = &task.cancel else { continue };
            let active = self.active().get(&task.task_id).cloned();
            match active {
                Some((token, reason)) if !token.is_cancelled() => {
                    *reason.lock().expect("cancel reason lock is never poisoned") = Some(cancel.clone());
                    token.cancel();
                }
                Some(_) => {}
                // Not while its check run is being opened: the ending's report
                // must see the run, or the run would stay queued on GitHub.
                None if task.state == TaskState::Queued
                    && !self
                        .announcing
                        .lock()
                        .expect("announcing lock is never poisoned")
                        .contains(&task.task_id) =>
                {
                    self.finish_later(task.clone(), Ending::CancelledBeforeStart(cancel.clone()));
                }
                None => {}
            }
        }
        let mut running: HashMap<String, usize> = HashMap::new();
        {
            let active = self.active();
            for task in tasks.iter().filter(|task| active.contains_key(&task.task_id)) {
                *running.entry(task.repo.clone()).or_default() += 1;
            }
        }
        let waiting = tasks
            .into_iter()
            .filter(|task| task.state == TaskState::Queued && task.cancel.is_none())
            .collect();
        // Places held for tasks whose check run is being opened: they are
        // theirs as soon as it is, so no task behind them takes one.
        let mut held = 0_usize;
        for task in fair_order(waiting, &running) {
            let mut active = self.active();
            if active.contains_key(&task.task_id) {
                continue;
            }
            let of_repo = running.entry(task.repo.clone()).or_default();
            let full = active.len() + held >= self.config.max_workers
                || self.config.max_workers_per_repo.is_some_and(|cap| *of_repo >= cap);
            let announcing =
                self.announcing.lock().expect("announcing lock is never poisoned").contains(&task.task_id);
            if announcing && !full {
                held += 1;
                *of_repo += 1;
                queued += 1;
                continue;
            }
            if full {
                drop(active);
                // It waits: GitHub shows it queued, with its place, from now.
                if task.check_run.is_none()
                    && !task.check_run_requested
                    && self
                        .announced
                        .lock()
                        .expect("announced lock is never poisoned")
                        .insert(task.task_id.clone())
                {
                    self.announce_later(task, queued);
                }
                queued += 1;
                continue;
            }
            *of_repo += 1;
            let token = self.shutdown.child_token();
            let reason = Arc::new(Mutex::new(None));
            active.insert(task.task_id.clone(), (token.clone(), reason.clone()));
            drop(active);
            let runner = Arc::clone(self);
            self.tracker.spawn(async move { runner.run_task(task, token, reason).await });
        }
        self.metrics.queue_depth(queued);
        self.metrics.workers_running(self.running());
        for task in self.journal.unreported_tasks()? {
            self.report_later(task);
        }
        self.answer_refusals()?;
        Ok(())
    }

    fn finish_later(self: &Arc<Self>, task: TaskRecord, ending: Ending) {
        let runner = Arc::clone(self);
        self.tracker.spawn(async move { runner.finish(task, ending, None).await });
    }

    fn report_later(self: &Arc<Self>, task: TaskRecord) {
        if !self.reporting.lock().expect("reporting lock is never poisoned").insert(task.task_id.clone()) {
            return;
        }
        let runner = Arc::clone(self);
        self.tracker.spawn(async move {
            let task_id = task.task_id.clone();
            runner.report(task).await;
            runner.reporting.lock().expect("reporting lock is never poisoned").remove(&task_id);
        });
    }

    #[instrument(skip_all, fields(task_id = %task.task_id))]
    async fn run_task(
        self: Arc<Self>,
        task: TaskRecord,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<CancelRequest>>>,
    ) {
        let outcome = self.dispatch_and_watch(&task, &cancel, &reason).await;
        let token = self.tokens.lock().expect("tokens lock is never poisoned").remove(&task.task_id);
        match outcome {
            // Shutdown: the worker (if any) keeps running, with its token; the next start finds it.
            None => {}
            Some((ending, container)) => {
                self.finish(task.clone(), ending, container).await;
                // Off the task's slot: a slow GitHub must not hold a worker place.
                if let Some(token) = token {
                    let github = self.github.clone();
                    self.tracker.spawn(async move {
                        let revoked = tokio::time::timeout(Duration::from_secs(30), github.revoke_token(&token));
                        match revoked.await {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => {
                                warn!(error = %err, "could not revoke the worker token; it expires within the hour");
                            }
                            Err(_) => warn!("revoking the worker token timed out; it expires within the hour"),
                        }
                    });
                }
            }
        }
        self.active().remove(&task.task_id);
        self.wake.notify_one();
    }

    /// Prepares, creates, starts and watches one task's worker. `None` on shutdown.
    async fn dispatch_and_watch(
        &self,
        task: &TaskRecord,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<CancelRequest>>>,
    ) -> Option<(Ending, Option<ContainerId>)> {
        // The mirror's refresh starts once prepare has the token and runs beside the rest of it.
        let (token_sent, token_for_cache) = tokio::sync::oneshot::channel();
        let (prepared, cache) = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            both = async {
                tokio::join!(self.prepare(task, token_sent), self.cache.prepare_for(&self.dispatcher, task, token_for_cache))
            } => both,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(ending) => return Some((ending, None)),
        };
        self.keep_token(&task.task_id, &prepared.token);
        if cancel.is_cancelled() {
            let request = reason.lock().expect("cancel reason lock is never poisoned").clone();
            if let Some(request) = request {
                return Some((Ending::CancelledBeforeStart(request), None));
            }
            return None;
        }
        // Read for every dispatch, so a rotated key reaches the next task.
        let agent_env = match self.agent_env() {
            Ok(agent_env) => agent_env,
            Err(reason) => return Some((Ending::Failed(reason), None)),
        };
        let review_comments =
            match follow_up::review_comments(&self.github, prepared.installation, task).await {
                Ok(comments) => comments,
                Err(ending) => return Some((ending, None)),
            };
        let prompt = self.config.prompts.render(&PromptFacts {
            task_id: task.task_id.to_string(),
            kind: task.kind,
            repo: task.repo.clone(),
            number: task.number,
            title: task.subject_title.clone(),
            body: task.subject_body.clone(),
            requester: task.sender.clone(),
            request: task.prompt.clone(),
            base_ref: prepared.base_ref.clone(),
            head_ref: prepared.head_ref.clone(),
            head_sha: Some(prepared.head_sha.clone()),
            follow_up: task.follow_up,
            review_comments,
        });
        let mut token = (prepared.token.clone(), prepared.token_made);
        // Labels and environment are made per attempt, so the deadline they
        // carry counts from the create that succeeds, not from before an
        // engine outage.
        let spec = |token: &Secret| {
            let deadline_unix = now_unix() + self.config.task_timeout.as_secs();
            let labels = TaskLabels {
                task_id: task.task_id.clone(),
                kind: task.kind,
                repo: task.repo.clone(),
                number: task.number,
                head_sha: Some(prepared.head_sha.clone()),
                delivery: Some(task.delivery.clone()),
                deadline_unix,
                check_run: prepared.check_run,
                installation: Some(prepared.installation),
            };
            let worker = WorkerTask {
                task_id: task.task_id.clone(),
                kind: task.kind,
                repo: task.repo.clone(),
                number: task.number,
                clone_url: task.clone_url.clone(),
                head_ref: prepared.head_ref.clone(),
                head_sha: Some(prepared.head_sha.clone()),
                prompt: prompt.clone(),
                agent_command: self.config.agent_command.clone(),
                deadline_unix,
                token: Some(token.clone()),
            };
            // The worker's own grace for its agent fits inside ours for the container.
            let options = WorkerOptions {
                base_ref: prepared.base_ref.clone().filter(|_| task.kind == TaskKind::Review),
                grace_secs: Some(self.config.stop_grace.as_secs().saturating_sub(2).max(1)),
                secret_vars: agent_env.secret_names(),
                follow_up: task.follow_up,
                ..WorkerOptions::default()
            };
            // The operator's settings first: nothing in them can be a name the
            // task sets (refused when the files are read).
            let mut env: Vec<(String, String)> = agent_env.to_env();
            env.extend(worker.to_env().into_iter().map(|(name, value)| (name.to_owned(), value)));
            env.extend(options.to_env().into_iter().map(|(name, value)| (name.to_owned(), value)));
            env.extend(cache.env());
            (labels, env)
        };
        // The token must outlive the task: when an engine outage has aged it
        // past what the task's timeout leaves, a fresh one is made first.
        let created = loop {
            let budget = TOKEN_LIFETIME
                .saturating_sub(TOKEN_MARGIN + self.config.task_timeout)
                .saturating_sub(token.1.elapsed());
            let attempt = self.while_engine_away("create the worker", cancel, Some(budget), || {
                let (labels, env) = spec(&token.0);
                let mirror = cache.volume();
                async move {
                    let env: Vec<(&str, String)> =
                        env.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
                    self.dispatcher.create_with_cache(&labels, &env, None, mirror).await
                }
            });
            match attempt.await {
                Err(Interrupted::OutOfTime) => {
                    info!("the engine was away long enough to age the worker token; making a fresh one");
                    let made = std::time::Instant::now();
                    match self.github.worker_token(prepared.installation, &task.repo, task.kind).await {
                        Ok(fresh) => {
                            // The old one is no longer needed by anyone.
                            let _ = self.github.revoke_token(&token.0).await;
                            self.keep_token(&task.task_id, &fresh);
                            token = (fresh, made);
                        }
                        Err(err) => return Some((Ending::Failed(err.to_string()), None)),
                    }
                }
                other => break other,
            }
        };
        let launched = match created {
            Ok(launched) => launched,
            Err(Interrupted::Cancelled) => return self.cancelled_before_start(reason, None),
            Err(Interrupted::Failed(err)) => return Some((Ending::Failed(format!("{err:#}")), None)),
            Err(Interrupted::OutOfTime) => {
                return Some((Ending::Failed("the engine stayed away too long".to_owned()), None));
            }
        };
        let container = launched.id.clone();
        let now = now_unix();
        let update = self
            .journal
            .update_task(
                &task.task_id,
                Box::new(move |record| {
                    record.state = TaskState::Dispatched;
                    record.started_unix = Some(now);
                }),
            )
            .await;
        if let Err(err) = update {
            warn!(error = %err, "could not record the dispatch; the container's labels still name the task");
        }
        // The reaction overlaps with the start; it is not a serial tax on it.
        let react = async {
            if let Some(comment) = task.comment_id
                && let Err(err) = self.github.react(prepared.installation, &task.repo, comment, "eyes").await
            {
                warn!(error = %err, "could not react to the triggering comment");
            }
        };
        // A start whose answer was lost may have run the worker, which may even
        // have exited since; starting that again would run the task twice.
        let mut attempts = 0_u32;
        let start = self.while_engine_away("start the worker", cancel, None, || {
            attempts += 1;
            let retry = attempts > 1;
            let container = &container;
            async move {
                if retry && !matches!(self.dispatcher.status(container).await?, ContainerStatus::Created) {
                    return Ok(());
                }
                self.dispatcher.start(container).await
            }
        });
        let (started, ()) = tokio::join!(start, react);
        match started {
            Ok(()) => {}
            Err(Interrupted::Cancelled) => return self.cancelled_before_start(reason, Some(container)),
            Err(Interrupted::Failed(err)) => {
                return Some((Ending::Failed(format!("{err:#}")), Some(container)));
            }
            Err(Interrupted::OutOfTime) => {
                let reason = "the engine stayed away too long".to_owned();
                return Some((Ending::Failed(reason), Some(container)));
            }
        }
        info!(container_id = %container, "worker started");
        self.metrics.dispatch_wait(Duration::from_secs(now_unix().saturating_sub(task.accepted_unix)));
        // The worker enforces the deadline itself and reports it; Berth's own
        // stop comes after the worker's grace, as a backstop.
        let deadline =
            tokio::time::Instant::now() + self.config.task_timeout + self.config.stop_grace + BACKSTOP_MARGIN;
        let target = prepared
            .check_run
            .map(|check_run| progress::ProgressTarget { installation: prepared.installation, check_run });
        self.watch(task, target, &container, deadline, cancel, reason)
            .await
            .map(|ending| (ending, Some(container)))
    }

    /// Runs an engine call, and while the engine is away (dockerd restarting,
    /// socket gone) runs it again with backoff instead of failing the task:
    /// the task stays queued until the engine answers. Other errors are final.
    async fn while_engine_away<T, F, Fut>(
        &self,
        what: &str,
        cancel: &CancellationToken,
        budget: Option<Duration>,
        mut call: F,
    ) -> Result<T, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, dispatcher::DispatchError>>,
    {
        let mut backoff = recovery::ENGINE_BACKOFF;
        let since = std::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Err(Interrupted::Cancelled);
            }
            match call().await {
                Ok(value) => return Ok(value),
                Err(_) if budget.is_some_and(|budget| since.elapsed() >= budget) => {
                    return Err(Interrupted::OutOfTime);
                }
                Err(err) if err.is_transient() => {
                    let delay = backoff.next_delay();
                    if since.elapsed() < ENGINE_AWAY_WARNING {
                        warn!(error = %err, retry_in = ?delay, "cannot {what}: the engine is away; the task waits for it");
                    } else {
                        error!(error = %err, away = ?since.elapsed(), "cannot {what}: the engine is away; the task waits for it");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return Err(Interrupted::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => return Err(Interrupted::Failed(err)),
            }
        }
    }

    /// The ending of a task pulled before its worker ran; `None` on shutdown.
    fn cancelled_before_start(
        &self,
        reason: &Arc<Mutex<Option<CancelRequest>>>,
        container: Option<ContainerId>,
    ) -> Option<(Ending, Option<ContainerId>)> {
        let request = reason.lock().expect("cancel reason lock is never poisoned").clone()?;
        Some((Ending::CancelledBeforeStart(request), container))
    }

    /// Waits for the worker's exit, its deadline or a cancel; `None` on shutdown.
    /// Watches a started worker to its end (see [`Runner::watch_worker`]),
    /// showing its progress in the check run `target` meanwhile. The
    /// progress is stopped, its last edit done, before this returns, so the
    /// report that follows is the check run's last word.
    async fn watch(
        &self,
        task: &TaskRecord,
        target: Option<progress::ProgressTarget>,
        container: &ContainerId,
        deadline: tokio::time::Instant,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<CancelRequest>>>,
    ) -> Option<Ending> {
        let stop = CancellationToken::new();
        let shown = async {
            if let Some(target) = target {
                self.mark_in_progress(task, target).await;
                self.show_progress(task, target, container, stop.clone()).await;
            }
        };
        let watched = async {
            let ending = self.watch_worker(container, deadline, cancel, reason).await;
            stop.cancel();
            ending
        };
        let (ending, ()) = tokio::join!(watched, shown);
        ending
    }

    /// Waits for the worker's exit, its deadline or a cancel, stops it for
    /// the latter two, and collects how it ended. `None` on shutdown.
    async fn watch_worker(
        &self,
        container: &ContainerId,
        deadline: tokio::time::Instant,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<CancelRequest>>>,
    ) -> Option<Ending> {
        let stopped = tokio::select! {
            exit = self.wait_exit(container) => {
                return Some(self.collect(container, exit, None).await);
            }
            () = tokio::time::sleep_until(deadline) => StopCause::Deadline,
            () = cancel.cancelled() => {
                match reason.lock().expect("cancel reason lock is never poisoned").clone() {
                    Some(request) => StopCause::Cancel(request),
                    // The parent token was cancelled: daemon shutdown. Leave the worker alone.
                    None => return None,
                }
            }
        };
        info!(container_id = %container, cause = ?stopped, "stopping worker");
        if let Err(err) = self.dispatcher.stop(container, self.config.stop_grace).await {
            warn!(error = %err, "stop failed; killing");
            let _ = self.dispatcher.kill(container).await;
        }
        let exit = self.wait_exit(container).await;
        Some(self.collect(container, exit, Some(stopped)).await)
    }

    async fn collect(
        &self,
        container: &ContainerId,
        exit: Result<ExitInfo, dispatcher::DispatchError>,
        stopped: Option<StopCause>,
    ) -> Ending {
        match exit {
            Ok(exit) => {
                let result = self.result_record(container).await;
                Ending::Exited { exit, result, stopped }
            }
            Err(err) => Ending::Failed(format!("lost track of the worker: {err:#}")),
        }
    }

    /// The record on the last line of the worker's stdout, read from a
    /// bounded tail of its output (a worker may have printed gigabytes),
    /// riding out a short engine outage.
    async fn result_record(&self, container: &ContainerId) -> Option<ResultRecord> {
        let mut backoff = recovery::ENGINE_BACKOFF;
        let since = std::time::Instant::now();
        loop {
            match self.dispatcher.stdout_tail(container, RESULT_TAIL_LINES, RESULT_TAIL_BYTES).await {
                Ok(stdout) => return ResultRecord::find_last(&stdout),
                Err(err) if err.is_transient() && since.elapsed() < ENGINE_AWAY_WARNING => {
                    let delay = backoff.next_delay();
                    warn!(error = %err, retry_in = ?delay, "cannot read the worker's output: the engine is away");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    error!(error = %err, "could not read the worker's output; its result record counts as missing");
                    return None;
                }
            }
        }
    }

    /// GitHub work that must precede the container: installation, head,
    /// worker token and check run. Independent calls run concurrently.
    async fn prepare(
        &self,
        task: &TaskRecord,
        token_sent: tokio::sync::oneshot::Sender<Secret>,
    ) -> Result<Prepared, Ending> {
        let failed = |err: GitHubError| Ending::Failed(err.to_string());
        let installation = match task.installation {
            Some(installation) => installation,
            None => self.github.repo_installation(&task.repo).await.map_err(failed)?,
        };
        // The token beside the check run: both must come before the worker.
        // The clone cache's refresh starts as soon as the token is here.
        let token = async {
            let token = self.github.worker_token(installation, &task.repo, task.kind).await;
            if let Ok(token) = &token {
                let _ = token_sent.send(token.clone());
            }
            token
        };
        let starting = progress::starting_output(task.kind, self.task_url(&task.task_id).as_deref());
        let opened = self.open_check_run(task, Some(installation), github::CheckRunStatus::Queued, starting);
        let token_made = std::time::Instant::now();
        let (token, opened) = tokio::join!(token, opened);
        let opened = opened?;
        let token = token.map_err(failed)?;
        Ok(Prepared {
            installation: opened.installation,
            head_sha: opened.head.sha,
            head_ref: opened.head.head_ref,
            base_ref: opened.head.base_ref,
            check_run: Some(opened.check_run),
            token,
            token_made,
        })
    }

    /// The commit a task runs on: the one recorded, else the pull request's
    /// head (refused for forks and closed pull requests) or the branch's.
    pub(crate) async fn head_of(
        &self,
        task: &TaskRecord,
        installation: u64,
    ) -> Result<progress::Head, Ending> {
        let failed = |err: GitHubError| Ending::Failed(err.to_string());
        if let Some(sha) = &task.head_sha {
            return Ok(progress::Head {
                sha: sha.clone(),
                head_ref: task.head_ref.clone(),
                base_ref: task.base_ref.clone(),
            });
        }
        match task.kind {
            TaskKind::Implement if task.follow_up => {
                let (sha, head_ref, base_ref) = follow_up::head(&self.github, installation, task).await?;
                Ok(progress::Head { sha, head_ref, base_ref })
            }
            TaskKind::Review => {
                let pull =
                    self.github.pull_head(installation, &task.repo, task.number).await.map_err(failed)?;
                match &pull.repo {
                    None => {
                        return Err(Ending::Refused("the pull request comes from a deleted fork".to_owned()));
                    }
                    Some(head) if !head.eq_ignore_ascii_case(&task.repo) => {
                        return Err(Ending::Refused(format!(
                            "the pull request comes from the fork {head}; forks get no task"
                        )));
                    }
                    Some(_) => {}
                }
                if pull.state != "open" {
                    return Err(Ending::Refused("the pull request is closed".to_owned()));
                }
                Ok(progress::Head { sha: pull.sha, head_ref: Some(pull.branch), base_ref: pull.base })
            }
            TaskKind::Implement => {
                let base = task.head_ref.clone().unwrap_or_else(|| "main".to_owned());
                let sha = self.github.branch_head(installation, &task.repo, &base).await.map_err(failed)?;
                Ok(progress::Head { sha, head_ref: Some(base), base_ref: None })
            }
        }
    }

    fn keep_token(&self, task: &TaskId, token: &Secret) {
        self.tokens.lock().expect("tokens lock is never poisoned").insert(task.clone(), token.clone());
    }

    /// The agent's settings and secrets as the files say now; every secret
    /// is remembered for redaction. The error names the setting, the file and
    /// the line, never a value.
    fn agent_env(&self) -> Result<AgentEnv, String> {
        let agent_env = self.config.agent_env_files.load().map_err(|(setting, err)| {
            error!(setting, error = %err, "cannot read the agent's settings; the task fails");
            format!("{setting}: {err}; fix the file and trigger the task again")
        })?;
        self.remember_secrets(&agent_env);
        Ok(agent_env)
    }

    fn remember_secrets(&self, agent_env: &AgentEnv) {
        let mut seen = self.secrets_seen.lock().expect("secrets lock is never poisoned");
        for (_, value) in &agent_env.secrets {
            if !seen.contains(value) {
                seen.push(value.clone());
            }
        }
    }

    /// `text` without any secret value the daemon has read since start.
    fn redact(&self, text: &str) -> String {
        self.redact_owned(text.to_owned())
    }

    /// [`Runner::redact`] of a `text` already owned, copied only where a secret is.
    fn redact_owned(&self, text: String) -> String {
        // A fresh read first, so a key added since the last dispatch is known too.
        if let Ok(agent_env) = self.config.agent_env_files.load() {
            self.remember_secrets(&agent_env);
        }
        let seen = self.secrets_seen.lock().expect("secrets lock is never poisoned");
        let secrets = AgentEnv {
            plain: Vec::new(),
            secrets: seen.iter().map(|value| (String::new(), value.clone())).collect(),
        };
        secrets.redact_owned(text)
    }

    /// Records the outcome, removes the container, and reports.
    async fn finish(self: &Arc<Self>, task: TaskRecord, ending: Ending, container: Option<ContainerId>) {
        let report = conclude(&ending, task.kind, self.config.task_timeout, self.config.memory_bytes);
        let outcome = Outcome {
            conclusion: report.conclusion,
            title: self.redact(&report.title),
            summary: self.redact(&report.summary),
            finished_unix: now_unix(),
            exit_code: match &ending {
                Ending::Exited { exit, .. } => Some(exit.code),
                _ => None,
            },
            pull_request: report.branch.map(PullRequestRef::Branch),
        };
        self.announced.lock().expect("announced lock is never poisoned").remove(&task.task_id);
        // One way to end a task: the journal applies the domain's rule that a
        // task ends once, so a second path ending the same task (a sweep
        // racing a monitor) learns that it lost and leaves the first outcome.
        match self.journal.finish_task(&task.task_id, outcome).await {
            Ok(Finished::Already(record)) => {
                warn!(
                    task_id = %task.task_id,
                    ending = %report.title,
                    recorded = ?record.conclusion(),
                    "the task had already ended; its recorded outcome stands"
                );
            }
            Ok(Finished::Recorded(record)) => {
                info!(task_id = %task.task_id, conclusion = %report.conclusion, title = %report.title, "task ended");
                self.count_ending(&record, report.conclusion, &ending);
                if let Some(container) = container {
                    // Before the container goes, and its output with it.
                    self.keep_log(&task.task_id, &container).await;
                    if let Err(err) = self.dispatcher.remove(&container).await {
                        warn!(error = %err, "could not remove the worker container");
                    }
                }
                self.report_later(record);
            }
            Ok(Finished::Unknown) => warn!(task_id = %task.task_id, "task vanished from the journal"),
            // The container stays; the next start collects it again.
            Err(err) => error!(error = %err, "could not record the outcome"),
        }
    }

    /// Keeps the end of the worker's output as the task's log, redacted.
    /// Never fails the task: a log that cannot be read or written in time (a
    /// full disk, an engine away) is dropped with a warning.
    async fn keep_log(&self, task_id: &TaskId, container: &ContainerId) {
        let Some(keeper) = self.config.log_keeper.clone().filter(|keeper| keeper.max_bytes > 0) else {
            return;
        };
        let read = self.dispatcher.output_tail(container, keeper.max_bytes.saturating_add(KEEP_LOG_MARGIN));
        let (bytes, dropped) = match tokio::time::timeout(KEEP_LOG_TIMEOUT, read).await {
            Ok(Ok(tail)) => tail,
            Ok(Err(err)) => {
                warn!(task_id = %task_id, error = %err, "could not read the worker's output; its log is not kept");
                return;
            }
            Err(_) => {
                warn!(task_id = %task_id, "reading the worker's output took too long; its log is not kept");
                return;
            }
        };
        // The tail read is the text: not copied unless it is not UTF-8 (its
        // first character cut in two) or holds a secret, and cut in place.
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        };
        let mut text = self.redact_owned(text);
        let (_, cut) = logs::cut_front(&text, keeper.max_bytes);
        text.drain(..usize::try_from(cut).unwrap_or(text.len()));
        let (cut, task) = (dropped.saturating_add(cut), task_id.clone());
        let write = tokio::task::spawn_blocking(move || keeper.write(&task, &text, cut));
        match tokio::time::timeout(KEEP_LOG_TIMEOUT, write).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => {
                warn!(task_id = %task_id, error = %err, "could not write the task's log; it is not kept")
            }
            Ok(Err(err)) => {
                warn!(task_id = %task_id, error = %err, "writing the task's log failed; it is not kept")
            }
            Err(_) => warn!(task_id = %task_id, "writing the task's log took too long; it is not kept"),
        }
    }

    /// The metrics of a task that just ended.
    fn count_ending(&self, record: &TaskRecord, conclusion: Conclusion, ending: &Ending) {
        let (kind, conclusion) = (
            telemetry::TaskKind::from_name(record.kind.as_str()),
            telemetry::Conclusion::from_github(conclusion.as_str()),
        );
        self.metrics.task_finished(kind, conclusion);
        match ending {
            Ending::Exited { exit, stopped: None, .. } if exit.oom_killed => {
                self.metrics.worker_oom();
            }
            Ending::Exited { stopped: Some(StopCause::Deadline), .. } => {
                self.metrics.worker_timeout();
            }
            Ending::Exited { stopped: Some(StopCause::Cancel(_)), .. } | Ending::CancelledBeforeStart(_) => {
                self.metrics.task_cancelled();
            }
            _ => {}
        }
        // From the journal's dispatch time, so a worker re-attached after a restart counts whole.
        if let (Some(started), Some(outcome)) = (record.started_unix, record.outcome()) {
            self.metrics.task_duration(
                kind,
                conclusion,
                Duration::from_secs(outcome.finished_unix.saturating_sub(started)),
            );
        }
    }

    /// Writes the final report to GitHub: the pull request for an implement
    /// task that pushed, the result comment, and the completed check run.
    /// Each write is idempotent, so a retried report changes nothing twice.
    #[instrument(skip_all, fields(task_id = %task.task_id))]
    async fn report(&self, task: TaskRecord) {
        let Some(outcome) = task.outcome().cloned() else { return };
        match self.write_report(&task, &outcome).await {
            Ok(pull_request) => {
                let marked = self
                    .journal
                    .update_task(
                        &task.task_id,
                        Box::new(move |record| {
                            record.reported = true;
                            if let (TaskState::Finished { outcome }, Some(opened)) =
                                (&mut record.state, pull_request)
                            {
                                outcome.pull_request = Some(opened);
                            }
                        }),
                    )
                    .await;
                if let Err(err) = marked {
                    warn!(error = %err, "report sent but not recorded; it will be sent again (idempotently)");
                }
                info!(conclusion = %outcome.conclusion, "reported to GitHub");
            }
            Err(err) => {
                error!(error = %err, repo = %task.repo, number = task.number, "report to GitHub failed; will retry");
                tokio::select! {
                    () = self.shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }

    /// Returns the pull request opened, when this report opened (or found) one.
    async fn write_report(
        &self,
        task: &TaskRecord,
        outcome: &Outcome,
    ) -> Result<Option<PullRequestRef>, GitHubError> {
        let installation = match task.installation {
            Some(installation) => installation,
            None => self.github.repo_installation(&task.repo).await?,
        };
        let (conclusion, summary) = (outcome.conclusion, outcome.summary.as_str());
        let title =
            if outcome.title.is_empty() { report_title(task, conclusion) } else { outcome.title.clone() };
        let mut opened = None;
        let pull_request = match &outcome.pull_request {
            Some(PullRequestRef::Branch(branch)) if task.kind.spec().opens_pull_request => {
                // A follow-up's head_ref is the pull request's branch; it finds that pull request open.
                let base = if task.follow_up { &task.base_ref } else { &task.head_ref };
                let base = base.clone().unwrap_or_else(|| "main".to_owned());
                let body = format!("Closes #{}.\n\n{summary}", task.number);
                let pr_title = format!("Berth: {} #{}", task.kind.spec().command, task.number);
                let (number, url) = self
                    .github
                    .ensure_pull_request(installation, &task.repo, branch, &base, &pr_title, &body)
                    .await?;
                let made = PullRequestRef::Opened { number, url: Some(url).filter(|url| !url.is_empty()) };
                opened = Some(made.clone());
                Some(made)
            }
            other => other.clone(),
        };
        let mut comment = format!("**Berth {}: {title}**\n\n{summary}", task.kind);
        if let Some(PullRequestRef::Opened { number, url }) = &pull_request {
            let link = url.clone().unwrap_or_else(|| format!("#{number}"));
            comment.push_str(&format!("\n\nPull request: {link}"));
        }
        let task_url = self.task_url(&task.task_id);
        if let Some(url) = &task_url {
            comment.push_str(&format!("\n\nDetails and log: {url}"));
        }
        comment.push_str(&format!("\n\n<sub>task `{}` · conclusion `{conclusion}`</sub>", task.task_id));
        self.github.upsert_comment(installation, &task.repo, task.number, &task.task_id, &comment).await?;
        if let Some(check_run) = task.check_run {
            let mut summary = summary.to_owned();
            if let Some(url) = &task_url {
                summary.push_str(&format!("\n\nDetails and the whole kept log: {url}"));
            }
            let output = github::CheckRunOutput { title, summary, text: self.kept_log_lines(&task.task_id) };
            self.github
                .complete_check_run(installation, &task.repo, check_run, conclusion.as_str(), &output)
                .await?;
        }
        Ok(opened)
    }

    /// The last lines of the task's kept log, for its completed check run.
    fn kept_log_lines(&self, task_id: &TaskId) -> Option<String> {
        let keeper = self.config.log_keeper.as_ref()?;
        let kept = match logs::read_kept_end(&keeper.dir, task_id, progress::PROGRESS_READ_BYTES) {
            Ok(kept) => kept?,
            Err(err) => {
                warn!(error = %err, "could not read the kept log for the check run");
                return None;
            }
        };
        let lines = progress::last_lines(&kept, progress::SHOWN_LOG_LINES);
        (!lines.trim().is_empty()).then(|| progress::fenced("Last lines of the log", lines))
    }

    /// Asks the task's worker (or its queue entry) to be cancelled.
    ///
    /// # Errors
    /// When the journal cannot record the request.
    pub async fn request_cancel(
        &self,
        task_id: &TaskId,
        by: &str,
    ) -> Result<Option<TaskRecord>, journal::JournalError> {
        let by = by.to_owned();
        let record = self
            .journal
            .update_task(
                task_id,
                Box::new(move |record| {
                    if !record.state.is_finished() && record.cancel.is_none() {
                        record.cancel = Some(CancelRequest {
                            repo: record.repo.clone(),
                            number: record.number,
                            cause: CancelCause::Operator,
                            by: by.clone(),
                            kind: None,
                            except_head: None,
                            reason: format!("cancelled by {by}"),
                        });
                    }
                }),
            )
            .await?;
        self.wake.notify_one();
        Ok(record)
    }
}

fn report_title(task: &TaskRecord, conclusion: Conclusion) -> String {
    match conclusion {
        Conclusion::Success => task.kind.spec().done_title,
        Conclusion::TimedOut => "Timed out",
        Conclusion::Cancelled => "Cancelled",
        Conclusion::Neutral => "Not run",
        Conclusion::Failure => "Failed",
    }
    .to_owned()
}
