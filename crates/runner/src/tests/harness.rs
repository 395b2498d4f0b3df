//! One runner over the fakes, and the means to restart it.

use std::sync::Arc;
use std::time::Duration;

use core_types::{ResultRecord, ResultStatus, TaskId, TaskKind};
use dispatcher::{Dispatcher, DispatcherConfig, FakeEngine, HardenedProfile, Program};
use domain::request::TaskRequest;
use domain::tasks::TaskRecord;
use domain::triggers::Decision;
use journal::{Accepted, Journal};
use telemetry::Metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::github::MemoryGitHub;
use crate::{Runner, RunnerConfig};

pub(crate) type TestRunner = Runner<FakeEngine, MemoryGitHub>;

/// A runner, its fakes and its journal. Dropping it stops the runner's
/// loops (as a daemon that goes away); the engine's containers stay.
pub(crate) struct Rig {
    pub runner: Arc<TestRunner>,
    pub engine: FakeEngine,
    pub github: MemoryGitHub,
    pub journal: Journal,
    pub config: RunnerConfig,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _dir: Arc<tempfile::TempDir>,
    deliveries: u64,
}

pub(crate) fn config() -> RunnerConfig {
    RunnerConfig {
        max_workers: 4,
        max_workers_per_repo: None,
        task_timeout: Duration::from_secs(600),
        stop_grace: Duration::from_secs(10),
        agent_command: "agent".to_owned(),
        memory_bytes: 256 << 20,
        agent_env_files: crate::agent_env::AgentEnvFiles::default(),
        prompts: domain::prompt::Prompts::default(),
        log_keeper: None,
        public_url: Some("https://berth.example.com/".to_owned()),
        progress_interval: crate::progress::DEFAULT_PROGRESS_INTERVAL,
        clone_cache: None,
    }
}

/// The line a worker that succeeded prints last.
pub(crate) fn record_line(summary: &str) -> String {
    ResultRecord {
        berth_result: ResultRecord::VERSION,
        task: "any".into(),
        status: ResultStatus::Success,
        summary: summary.into(),
        branch: None,
        commit: None,
    }
    .to_line()
}

/// A worker that succeeds after `after`.
pub(crate) fn succeeds_after(after: Duration) -> Program {
    Program::exit_after(after, 0).with_stdout(format!("{}\n", record_line("All good.")))
}

impl Rig {
    /// The test settings with a global cap of `cap` workers.
    pub(crate) fn capped(cap: usize) -> RunnerConfig {
        RunnerConfig { max_workers: cap, ..config() }
    }

    pub(crate) async fn new(config: RunnerConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let journal = Journal::open(dir.path()).unwrap();
        let engine = FakeEngine::new();
        engine.set_default_program(succeeds_after(Duration::from_secs(5)));
        Self::over(journal, engine, MemoryGitHub::default(), config, dir).await
    }

    async fn over(
        journal: Journal,
        engine: FakeEngine,
        github: MemoryGitHub,
        config: RunnerConfig,
        dir: Arc<tempfile::TempDir>,
    ) -> Self {
        let dispatcher = Dispatcher::new(
            engine.clone(),
            DispatcherConfig {
                image: "worker:test".into(),
                network: "none".into(),
                profile: HardenedProfile::strict(),
                entrypoint: None,
                instance: "default".into(),
            },
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let runner = Runner::new(
            journal.clone(),
            dispatcher,
            github.clone(),
            config.clone(),
            Arc::new(Metrics::default()),
            Arc::new(Notify::new()),
            shutdown.clone(),
            tracker.clone(),
        );
        held(&journal, runner.reconcile()).await.unwrap();
        runner.mark_started();
        tracker.spawn(Arc::clone(&runner).run());
        Self { runner, engine, github, journal, config, shutdown, tracker, _dir: dir, deliveries: 0 }
    }

    /// The daemon goes away (its loops stop; workers and the journal stay)
    /// and a new one starts over the same engine, journal and GitHub.
    pub(crate) async fn restart(self) -> Self {
        self.stop().await;
        let Rig { journal, engine, github, config, _dir, deliveries, .. } = self;
        let mut rig = Self::over(journal, engine, github, config, _dir).await;
        rig.deliveries = deliveries;
        rig
    }

    /// Stops the runner's loops and waits for them, leaving the workers.
    pub(crate) async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.held(self.tracker.wait()).await;
    }

    /// Accepts a task as the webhook handler would; returns its id.
    pub(crate) async fn submit(&mut self, kind: TaskKind, repo: &str, number: u64) -> TaskId {
        let request = request(kind, repo, number);
        match self.accept(Decision::Queue(request)).await {
            Accepted::Queued { task } => task,
            other => panic!("not queued: {other:?}"),
        }
    }

    pub(crate) async fn accept(&mut self, decision: Decision) -> Accepted {
        self.deliveries += 1;
        let delivery = format!("d-{}", self.deliveries);
        let accepted =
            held(&self.journal, self.journal.accept(&delivery, "issue_comment", decision)).await.unwrap();
        self.runner.wake.notify_one();
        accepted
    }

    pub(crate) fn task(&self, task: &TaskId) -> TaskRecord {
        self.journal.task(task).unwrap().expect("task in the journal")
    }

    pub(crate) fn container_name(task: &TaskId) -> String {
        dispatcher::container_name(task)
    }

    /// Waits until `done` holds; panics with `what` after an hour of tokio time.
    pub(crate) async fn until(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !done(self) {
            assert!(tokio::time::Instant::now() < give_up, "gave up waiting: {what}");
            self.tick().await;
        }
    }

    /// Lets the runner work for at most `STEP` of tokio time. Paused time
    /// runs ahead whenever every task waits, and it does not wait for the
    /// journal's writer, a real thread: while a write is in flight the clock
    /// is held (this task stays ready), so no timer fires early because of a
    /// slow disk.
    pub(crate) async fn tick(&self) {
        tick(&self.journal).await;
    }

    /// Awaits `work` under the same discipline as [`Rig::tick`].
    pub(crate) async fn held<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        held(&self.journal, work).await
    }

    /// Lets `span` of tokio time pass, a step at a time.
    pub(crate) async fn pass(&self, span: Duration) {
        let until = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < until {
            self.tick().await;
        }
    }

    /// Waits until the task is finished and reported; returns its record.
    pub(crate) async fn reported(&self, task: &TaskId) -> TaskRecord {
        self.until("the task's report", |rig| {
            let record = rig.task(task);
            record.state.is_finished() && record.reported
        })
        .await;
        self.task(task)
    }

    /// The conclusions GitHub received for a task's check run.
    pub(crate) fn completions(&self, task: &TaskId) -> Vec<(String, String)> {
        let record = self.task(task);
        self.github.seen(|seen| {
            seen.completed
                .iter()
                .filter(|(id, ..)| Some(*id) == record.check_run)
                .map(|(_, conclusion, title)| (conclusion.clone(), title.clone()))
                .collect()
        })
    }
}

async fn tick(journal: &Journal) {
    const STEP: Duration = Duration::from_millis(50);
    while journal.writes_in_flight() > 0 {
        std::thread::sleep(Duration::from_micros(100));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(STEP).await;
}

async fn held<T>(journal: &Journal, work: impl std::future::Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tick(journal) => {}
        }
    }
}

pub(crate) fn request(kind: TaskKind, repo: &str, number: u64) -> TaskRequest {
    TaskRequest {
        kind,
        repo: repo.to_owned(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: format!("https://github.invalid/{repo}.git"),
        repo_id: None,
        prompt: String::new(),
        subject_title: format!("Subject {number}"),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".to_owned(),
        installation: Some(7),
        comment_id: Some(number),
        follow_up: false,
    }
}
