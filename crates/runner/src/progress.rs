//! What a task's check run says before it ends, and when it says it.
//!
//! The lifecycle on GitHub: a check run is opened `queued` as soon as a task
//! has to wait for a worker place (with how many tasks were ahead of it), or
//! at dispatch when it never waited; it turns `in_progress` when its worker
//! starts; while the worker runs, its output is replaced with the latest
//! lines of the worker's log, redacted, at most every
//! `BERTH_PROGRESS_INTERVAL` (30 s) and only when they changed; the report
//! completes it.
//!
//! None of this can break "one check run, one comment per task": the run is
//! created in one place only ([`Runner::open_check_run`]), which records
//! that it asked before it asks and finds an earlier run by its external id;
//! a task is never dispatched while its run is being opened early; progress
//! only ever edits the run, never completes it; and a task's progress stops,
//! its last edit answered or abandoned, before its ending is recorded, so no
//! progress edit comes after the completed report.

use std::sync::Arc;
use std::time::Duration;

use core_types::{TaskId, TaskKind};
use dispatcher::{ContainerEngine, ContainerId};
use domain::tasks::{TaskRecord, TaskState};
use github::{CheckRunOutput, CheckRunStatus, GitHubApi, NewCheckRun};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Ending, Runner};

/// How often a running task's check run shows its latest lines, unless set.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Lines of a worker's log shown in its check run, while it runs and at its end.
pub const SHOWN_LOG_LINES: usize = 40;

/// Bytes read of a running worker's output for a progress update.
pub(crate) const PROGRESS_READ_BYTES: usize = 64 * 1024;

/// How long one progress update (read and edit) may take before it is left.
const PROGRESS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a task's progress is shown: its installation and check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgressTarget {
    pub installation: u64,
    pub check_run: u64,
}

impl ProgressTarget {
    /// The target a task's record names, once it has a check run.
    pub(crate) fn of(task: &TaskRecord) -> Option<Self> {
        Some(Self { installation: task.installation?, check_run: task.check_run? })
    }
}

/// A queued task's check run: why it waits, and its place.
pub fn queued_output(kind: TaskKind, ahead: usize, task_url: Option<&str>) -> CheckRunOutput {
    let place = match ahead {
        0 => "It is next in line for a worker place.".to_owned(),
        1 => "When it was accepted, 1 task was ahead of it in the queue.".to_owned(),
        more => format!("When it was accepted, {more} tasks were ahead of it in the queue."),
    };
    CheckRunOutput {
        title: format!("{} queued", capitalized(kind)),
        summary: with_link(
            format!("Berth has accepted this {kind} and is waiting for a worker place. {place}"),
            task_url,
        ),
        text: None,
    }
}

/// A task's check run while its worker is being prepared.
pub fn starting_output(kind: TaskKind, task_url: Option<&str>) -> CheckRunOutput {
    CheckRunOutput {
        title: format!("{} starting", capitalized(kind)),
        summary: with_link(format!("Berth is preparing the worker for this {kind}."), task_url),
        text: None,
    }
}

/// A task's check run once its worker runs, with the log's latest lines if any.
pub fn running_output(
    kind: TaskKind,
    running_for: Option<Duration>,
    latest: Option<&str>,
    task_url: Option<&str>,
) -> CheckRunOutput {
    let mut summary = match running_for {
        Some(running_for) => format!("The agent has been working for {}.", short_duration(running_for)),
        None => "The agent is working.".to_owned(),
    };
    if latest.is_some() {
        summary.push_str(" The latest lines of its log are below; they are updated while it runs.");
    }
    CheckRunOutput {
        title: format!("{} running", capitalized(kind)),
        summary: with_link(summary, task_url),
        text: latest.map(|lines| fenced("Latest output", lines)),
    }
}

/// The last `count` lines of `text`.
pub fn last_lines(text: &str, count: usize) -> &str {
    let trimmed = text.trim_end_matches(['\n', '\r']);
    match trimmed.rmatch_indices('\n').nth(count.saturating_sub(1)) {
        Some((index, _)) if count > 0 => &trimmed[index + 1..],
        _ if count == 0 => "",
        _ => trimmed,
    }
}

/// `lines` under a heading, in a code block whose fence no line can close.
pub fn fenced(heading: &str, lines: &str) -> String {
    let longest_run = lines.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run.max(2) + 1);
    format!("### {heading}\n\n{fence}text\n{lines}\n{fence}\n")
}

/// `summary`, then the task page's address when Berth has one.
fn with_link(mut summary: String, task_url: Option<&str>) -> String {
    if let Some(url) = task_url {
        summary.push_str(&format!("\n\nFollow it on Berth: {url}"));
    }
    summary
}

fn capitalized(kind: TaskKind) -> String {
    crate::capitalize(&kind.to_string())
}

fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        _ => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
    }
}

impl<E: ContainerEngine, G: GitHubApi> Runner<E, G> {
    /// The task's page on Berth, when `BERTH_PUBLIC_URL` is set.
    pub(crate) fn task_url(&self, task_id: &TaskId) -> Option<String> {
        let base = self.config.public_url.as_deref()?;
        Some(format!("{}/tasks/{task_id}", base.trim_end_matches('/')))
    }

    /// Opens the check run of a task that must wait, in the background; the
    /// scheduler does not dispatch it until this is done.
    pub(crate) fn announce_later(self: &Arc<Self>, task: TaskRecord, ahead: usize) {
        {
            let mut announcing = self.announcing.lock().expect("announcing lock is never poisoned");
            if !announcing.insert(task.task_id.clone()) {
                return;
            }
        }
        let runner = Arc::clone(self);
        self.tracker.spawn(async move {
            let task_id = task.task_id.clone();
            tokio::select! {
                () = runner.shutdown.cancelled() => {}
                () = runner.announce(task, ahead) => {}
            }
            runner.announcing.lock().expect("announcing lock is never poisoned").remove(&task_id);
            runner.wake.notify_one();
        });
    }

    /// Opens a waiting task's check run as queued. Best effort: when GitHub
    /// is away or the pull request cannot be run, the dispatch does it (or
    /// refuses the task) later, as it always has.
    async fn announce(&self, task: TaskRecord, ahead: usize) {
        let output = queued_output(task.kind, ahead, self.task_url(&task.task_id).as_deref());
        match self.open_check_run(&task, None, CheckRunStatus::Queued, output).await {
            Ok(opened) => {
                info!(task_id = %task.task_id, check_run = opened.check_run, ahead, "check run opened as queued")
            }
            Err(Ending::Refused(reason)) => {
                info!(task_id = %task.task_id, reason, "not announced; the dispatch will refuse it");
            }
            Err(ending) => {
                warn!(task_id = %task.task_id, ending = ?ending, "could not open the check run yet; the dispatch will")
            }
        }
    }

    /// Edits the check run of a started task to in progress.
    pub(crate) async fn mark_in_progress(&self, task: &TaskRecord, target: ProgressTarget) {
        let output = running_output(task.kind, None, None, self.task_url(&task.task_id).as_deref());
        let update = self.github.update_check_run(
            target.installation,
            &task.repo,
            target.check_run,
            Some(CheckRunStatus::InProgress),
            &output,
        );
        match tokio::time::timeout(PROGRESS_CALL_TIMEOUT, update).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "could not mark the check run in progress; the next update will")
            }
            Err(_) => warn!("marking the check run in progress timed out; the next update will"),
        }
    }

    /// Until `stop`: every progress interval, the worker's latest lines,
    /// redacted, into the check run when they changed. Each edit is waited
    /// for (bounded), so none is in flight once this returns.
    pub(crate) async fn show_progress(
        &self,
        task: &TaskRecord,
        target: ProgressTarget,
        container: &ContainerId,
        stop: CancellationToken,
    ) {
        let started = tokio::time::Instant::now();
        let mut shown: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config.progress_interval) => {}
            }
            let read = self.dispatcher.logs_tail(container, SHOWN_LOG_LINES as u64, PROGRESS_READ_BYTES);
            let lines = match tokio::time::timeout(PROGRESS_CALL_TIMEOUT, read).await {
                Ok(Ok(text)) => self.redact(last_lines(&text, SHOWN_LOG_LINES)),
                Ok(Err(err)) => {
                    warn!(error = %err, "could not read the worker's log for a progress update");
                    continue;
                }
                Err(_) => continue,
            };
            if lines.trim().is_empty() || shown.as_deref() == Some(lines.as_str()) {
                continue;
            }
            let output = running_output(
                task.kind,
                Some(started.elapsed()),
                Some(&lines),
                self.task_url(&task.task_id).as_deref(),
            );
            // No status: only the marking above sets one, so an edit that
            // lands late can change the text but never the run's state.
            let update = self.github.update_check_run(
                target.installation,
                &task.repo,
                target.check_run,
                None,
                &output,
            );
            match tokio::time::timeout(PROGRESS_CALL_TIMEOUT, update).await {
                Ok(Ok(())) => {
                    self.metrics.progress_update();
                    shown = Some(lines);
                }
                Ok(Err(err)) => warn!(error = %err, "progress update failed; the next one tries again"),
                Err(_) => warn!("progress update timed out; the next one tries again"),
            }
        }
    }

    /// The one place a task's check run is created: the task is read again
    /// from the journal (an early opening may have recorded one since),
    /// "asked" is recorded before asking, and an earlier run is found by
    /// its external id; the run, the installation and the head are recorded.
    pub(crate) async fn open_check_run(
        &self,
        task: &TaskRecord,
        installation: Option<u64>,
        status: CheckRunStatus,
        output: CheckRunOutput,
    ) -> Result<Opened, Ending> {
        let failed = |err: github::GitHubError| Ending::Failed(err.to_string());
        let recorded = self.journal.task(&task.task_id).map_err(|err| Ending::Failed(err.to_string()))?;
        let task = match recorded {
            Some(recorded) if !matches!(recorded.state, TaskState::Finished { .. }) => recorded,
            Some(_) | None => return Err(Ending::Failed("the task is no longer waiting".to_owned())),
        };
        let installation = match installation.or(task.installation) {
            Some(installation) => installation,
            None => self.github.repo_installation(&task.repo).await.map_err(failed)?,
        };
        // Free when recorded: an opened run's head was recorded with it.
        let head = self.head_of(&task, installation).await?;
        if let Some(check_run) = task.check_run {
            return Ok(Opened { installation, head, check_run });
        }
        if !task.check_run_requested {
            let marked =
                self.journal.update_task(&task.task_id, Box::new(|record| record.check_run_requested = true));
            if let Err(err) = marked.await {
                return Err(Ending::Failed(format!("could not record the check run request: {err}")));
            }
        }
        let check_run = match task.check_run {
            Some(check_run) => check_run,
            None => {
                let run = NewCheckRun {
                    head_sha: &head.sha,
                    task_id: &task.task_id,
                    kind: task.kind,
                    status,
                    output,
                    details_url: self.task_url(&task.task_id),
                };
                self.github
                    .start_check_run(installation, &task.repo, &run, task.check_run_requested)
                    .await
                    .map_err(failed)?
            }
        };
        let (sha, branch, base) = (head.sha.clone(), head.head_ref.clone(), head.base_ref.clone());
        let recorded = self
            .journal
            .update_task(
                &task.task_id,
                Box::new(move |record| {
                    record.installation = Some(installation);
                    record.head_sha = Some(sha);
                    record.head_ref = branch;
                    record.base_ref = base;
                    record.check_run = Some(check_run);
                }),
            )
            .await;
        if let Err(err) = recorded {
            return Err(Ending::Failed(format!("could not record the check run: {err}")));
        }
        Ok(Opened { installation, head, check_run })
    }
}

/// What opening a task's check run found and made.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub installation: u64,
    pub head: Head,
    pub check_run: u64,
}

/// The commit a task runs on, with its branch and (for a review) its base.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub sha: String,
    pub head_ref: Option<String>,
    pub base_ref: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("a\nb\nc\n\n", 1), "c");
        assert_eq!(last_lines("a\nb", 0), "");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_in_the_log() {
        let block = fenced("Latest output", "before\n```\nafter ````` end");
        assert!(block.contains("``````text\n"), "{block}");
        assert!(block.ends_with("\n``````\n"), "{block}");
        assert!(fenced("x", "plain").contains("```text\nplain\n```"));
    }

    #[test]
    fn the_queue_place_and_the_link_are_said() {
        let output = queued_output(TaskKind::Review, 3, Some("https://berth.example.com/tasks/t"));
        assert_eq!(output.title, "Review queued");
        assert!(output.summary.contains("3 tasks were ahead of it"), "{}", output.summary);
        assert!(output.summary.ends_with("Follow it on Berth: https://berth.example.com/tasks/t"));
        assert!(queued_output(TaskKind::Implement, 0, None).summary.contains("next in line"));
        let running = running_output(TaskKind::Review, Some(Duration::from_secs(95)), Some("line"), None);
        assert!(running.summary.contains("1m 35s"), "{}", running.summary);
        assert!(running.text.unwrap().contains("line"));
    }
}
