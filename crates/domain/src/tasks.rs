//! The daemon's record of a task, as the journal keeps it.

use core_types::{TaskId, TaskKind};
use serde::{Deserialize, Serialize};

use crate::request::{CancelRequest, TaskRequest};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for a worker slot.
    Queued,
    /// Its container was created (and maybe started).
    Dispatched,
    /// Ended and reported.
    Finished,
}

impl TaskState {
    /// The state as text.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Dispatched => "dispatched",
            TaskState::Finished => "finished",
        }
    }
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
    pub head_sha: Option<String>,
    /// Branch to work on, when known.
    pub head_ref: Option<String>,
    /// The repository's clone URL, from the payload.
    pub clone_url: String,
    /// The requester's words (the rest of the command's line and the lines
    /// after it); records from before 0.2 hold the whole comment.
    pub prompt: String,
    /// The or pull request's title, from the delivery.
    #[serde(default)]
    pub subject_title: String,
    /// The or pull request's body, from the delivery.
    #[serde(default)]
    pub subject_body: String,
    /// A review's base branch, from the delivery or read at dispatch.
    #[serde(default)]
    pub base_ref: Option<String>,
    /// Who triggered it.
    pub sender: String,
    /// The delivery that created it.
    pub delivery: String,
    /// The App installation, when the payload named it.
    pub installation: Option<u64>,
    /// The triggering comment, for the reaction.
    pub comment_id: Option<u64>,
    /// When it was accepted.
    pub accepted_unix: u64,
    /// Where it is.
    pub state: TaskState,
    /// A cancellation asked for and not yet carried out.
    pub cancel: Option<CancelRequest>,
    /// The key under which it is active (dedupe of queued and running tasks).
    pub dedupe_key: String,
    /// How it ended, in a word (`success`, `failure`, `timed_out`, ...), once finished.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// The report's title, once finished.
    #[serde(default)]
    pub title: Option<String>,
    /// The report's summary, once finished.
    #[serde(default)]
    pub summary: Option<String>,
    /// When it finished.
    #[serde(default)]
    pub finished_unix: Option<u64>,
    /// The check run reporting it, once created.
    #[serde(default)]
    pub check_run: Option<u64>,
    /// When its worker started.
    #[serde(default)]
    pub started_unix: Option<u64>,
    /// The worker's exit code, once it ended.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// For an implement task: the pull request opened from its branch.
    #[serde(default)]
    pub pull_request: Option<String>,
    /// Whether the final report reached GitHub.
    #[serde(default)]
    pub reported: bool,
    /// Set before the check run is asked for: a later attempt (after a kill
    /// between GitHub's answer and `check_run` being recorded) looks for the
    /// run that attempt made instead of making a second one.
    #[serde(default)]
    pub check_run_requested: bool,
}

impl TaskRecord {
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
            conclusion: None,
            title: None,
            summary: None,
            finished_unix: None,
            check_run: None,
            started_unix: None,
            exit_code: None,
            pull_request: None,
            reported: false,
            check_run_requested: false,
        }
    }
}
