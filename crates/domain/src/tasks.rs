//! The daemon's record of a task, as the journal keeps it.

use core_types::{TaskId, TaskKind};
use serde::{Deserialize, Serialize};

use crate::request::{CancelRequest, TaskRequest};

/// How a task ended, in the words of a GitHub check run's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// The agent did its work.
    Success,
    /// It could not start, failed, ran out of memory or was killed.
    Failure,
    /// Berth did not run it (a fork, a closed pull request).
    Neutral,
    /// Cancelled, superseded, or stopped from outside.
    Cancelled,
    /// Past its deadline.
    TimedOut,
}

impl Conclusion {
    /// Every conclusion, in a stable order.
    pub const ALL: [Conclusion; 5] = [
        Conclusion::Success,
        Conclusion::Failure,
        Conclusion::Neutral,
        Conclusion::Cancelled,
        Conclusion::TimedOut,
    ];

    /// The conclusion as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Neutral => "neutral",
            Conclusion::Cancelled => "cancelled",
            Conclusion::TimedOut => "timed_out",
        }
    }

    /// The conclusion GitHub calls `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|conclusion| conclusion.as_str() == text)
    }
}

impl std::fmt::Display for Conclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an implement task's work went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestRef {
    /// The worker pushed this branch; its pull request is not open yet.
    Branch(String),
    /// The pull request, by number, and its address when GitHub gave one.
    Opened {
        /// Its number.
        number: u64,
        /// Its page.
        url: Option<String>,
    },
}

impl PullRequestRef {
    /// The pushed branch, while no pull request is open.
    pub fn branch(&self) -> Option<&str> {
        match self {
            PullRequestRef::Branch(branch) => Some(branch),
            PullRequestRef::Opened { .. } => None,
        }
    }

    /// Schema 1's text: `branch:<name>`, `#<number>`, or the pull request's URL.
    pub fn from_v1(text: &str) -> Option<Self> {
        if let Some(branch) = text.strip_prefix("branch:") {
            return Some(PullRequestRef::Branch(branch.to_owned()));
        }
        if let Some(number) = text.strip_prefix('#') {
            return number.parse().ok().map(|number| PullRequestRef::Opened { number, url: None });
        }
        let number = text.trim_end_matches('/').rsplit('/').next()?.parse().ok()?;
        Some(PullRequestRef::Opened { number, url: Some(text.to_owned()) })
    }
}

/// The recorded end of a task: what its report says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The check run's conclusion.
    pub conclusion: Conclusion,
    /// The report's title.
    pub title: String,
    /// The report's summary.
    pub summary: String,
    /// When it ended.
    pub finished_unix: u64,
    /// The worker's exit code, when a worker ran.
    pub exit_code: Option<i64>,
    /// For an implement task: its pushed branch or the pull request opened from it.
    pub pull_request: Option<PullRequestRef>,
}

impl Outcome {
    /// An outcome with no worker exit and no pull request.
    pub fn new(
        conclusion: Conclusion,
        title: impl Into<String>,
        summary: impl Into<String>,
        finished_unix: u64,
    ) -> Self {
        Self {
            conclusion,
            title: title.into(),
            summary: summary.into(),
            finished_unix,
            exit_code: None,
            pull_request: None,
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for a worker slot.
    Queued,
    /// Its container was created (and maybe started).
    Dispatched,
    /// Ended; `reported` on the record says whether GitHub has heard.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

impl TaskState {
    /// The state as text.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Dispatched => "dispatched",
            TaskState::Finished { .. } => "finished",
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        matches!(self, TaskState::Finished { .. })
    }
}

/// A second ending for a task that already has one: the first stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} already ended ({conclusion}); its outcome stands")]
pub struct AlreadyFinished {
    /// The task.
    pub task: TaskId,
    /// Its recorded conclusion.
    pub conclusion: Conclusion,
}

impl CancelRequest {
    /// Whether this request covers `task`. (Here, beside the record it
    /// reads, so that `request` knows nothing of records.)
    pub fn applies_to(&self, task: &TaskRecord) -> bool {
        task.repo == self.repo
            && task.number == self.number
            && self.kind.is_none_or(|kind| kind == task.kind)
            && (self.except_head.is_none() || task.head_sha != self.except_head)
    }
}

/// A task as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub task_id: TaskId,
    /// Order of acceptance.
    pub seq: u64,
    /// Review or implement.
    pub kind: TaskKind,
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// Commit to work on, when known (fetched at dispatch for comment-triggered reviews).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    /// Branch to work on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_ref: Option<String>,
    /// The repository's clone URL, from the payload.
    pub clone_url: String,
    /// GitHub's numeric id of the repository, from the payload; records
    /// from before the clone cache have none (and clone plainly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_id: Option<u64>,
    /// The requester's words (the rest of the command's line and the lines
    /// after it); records from before 0.2 hold the whole comment.
    pub prompt: String,
    /// The or pull request's title, from the delivery.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject_title: String,
    /// The or pull request's body, from the delivery.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject_body: String,
    /// A review's base branch, from the delivery or read at dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ref: Option<String>,
    /// Who triggered it.
    pub sender: String,
    /// The delivery that created it.
    pub delivery: String,
    /// The App installation, when the payload named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<u64>,
    /// The triggering comment, for the reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<u64>,
    /// When it was accepted.
    pub accepted_unix: u64,
    /// Where it is.
    pub state: TaskState,
    /// A cancellation asked for and not yet carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<CancelRequest>,
    /// The key under which it is active (dedupe of queued and running tasks).
    pub dedupe_key: String,
    /// The check run reporting it, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_run: Option<u64>,
    /// When its worker started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<u64>,
    /// Whether the final report reached GitHub.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reported: bool,
    /// Set before the check run is asked for: a later attempt (after a kill
    /// between GitHub's answer and `check_run` being recorded) looks for the
    /// run that attempt made instead of making a second one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_run_requested: bool,
    /// An implement task that follows up on Berth's own pull request
    /// `number`: it continues the pull request's branch and pushes without force.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_up: bool,
}

impl TaskRecord {
    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            TaskState::Finished { outcome } => Some(outcome),
            _ => None,
        }
    }

    /// Its conclusion, once it has ended.
    pub fn conclusion(&self) -> Option<Conclusion> {
        self.outcome().map(|outcome| outcome.conclusion)
    }

    /// Ends the task, once: a second ending (a sweep racing the monitor that
    /// already ended it) leaves the first outcome as it is.
    ///
    /// # Errors
    /// When the task has already ended.
    pub fn finish(&mut self, outcome: Outcome) -> Result<(), AlreadyFinished> {
        if let Some(conclusion) = self.conclusion() {
            return Err(AlreadyFinished { task: self.task_id.clone(), conclusion });
        }
        self.state = TaskState::Finished { outcome };
        Ok(())
    }

    /// A freshly accepted task.
    pub fn queued(request: TaskRequest, delivery: &str, seq: u64, now_unix: u64) -> Self {
        let dedupe_key = request.dedupe_key();
        Self {
            task_id: request.task_id(delivery),
            seq,
            kind: request.kind,
            repo: request.repo,
            number: request.number,
            head_sha: request.head_sha,
            head_ref: request.head_ref,
            clone_url: request.clone_url,
            repo_id: request.repo_id,
            prompt: request.prompt,
            subject_title: request.subject_title,
            subject_body: request.subject_body,
            base_ref: request.base_ref,
            sender: request.sender,
            delivery: delivery.to_owned(),
            installation: request.installation,
            comment_id: request.comment_id,
            accepted_unix: now_unix,
            state: TaskState::Queued,
            cancel: None,
            dedupe_key,
            check_run: None,
            started_unix: None,
            reported: false,
            check_run_requested: false,
            follow_up: request.follow_up,
        }
    }
}
