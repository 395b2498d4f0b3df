//! What a delivery asks for: a task to queue, or the cancellation of the
//! tasks of one issue or pull request. Triggers make these; the journal and
//! the task records consume them.

use core_types::{TaskId, TaskKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tasks::TaskRecord;

/// A task to queue, as far as the delivery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// Review or implement.
    pub kind: TaskKind,
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// Head commit, when the payload carries it.
    pub head_sha: Option<String>,
    /// Head branch (review) or base branch (implement), when known.
    pub head_ref: Option<String>,
    /// The repository's clone URL.
    pub clone_url: String,
    /// GitHub's numeric id of the repository, when the payload carries it
    /// (the key of its clone cache; without it the task clones plainly).
    pub repo_id: Option<u64>,
    /// The requester's words: the rest of the command's line and the lines
    /// after it (empty for a label or an automatic review).
    pub prompt: String,
    /// The or pull request's title, as the delivery gave it.
    pub subject_title: String,
    /// The or pull request's body, as the delivery gave it.
    pub subject_body: String,
    /// A review's base branch, when the delivery names it (else read at dispatch).
    pub base_ref: Option<String>,
    /// Who asked.
    pub sender: String,
    /// The App installation.
    pub installation: Option<u64>,
    /// The triggering comment.
    pub comment_id: Option<u64>,
    /// An implement asked for on a pull request: it follows up on Berth's
    /// own pull request, continuing its branch (checked at dispatch).
    pub follow_up: bool,
}

impl TaskRequest {
    /// The key that makes a second trigger for the same work a duplicate while
    /// the first is queued or running: repository, number, kind and, for
    /// reviews, the head when known.
    pub fn dedupe_key(&self) -> String {
        match (&self.kind, &self.head_sha) {
            (TaskKind::Review, Some(sha)) => format!("{}#{}:{}@{sha}", self.repo, self.number, self.kind),
            _ => format!("{}#{}:{}", self.repo, self.number, self.kind),
        }
    }

    /// The task id for this request made by `delivery`: readable, unique per
    /// delivery, and at most 63 characters.
    pub fn task_id(&self, delivery: &str) -> TaskId {
        let digest = Sha256::digest(format!("{delivery}\n{}", self.dedupe_key()).as_bytes());
        let suffix = hex::encode(&digest[..4]);
        let name = self.repo.rsplit('/').next().unwrap_or(&self.repo);
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let slug = slug.trim_matches('-');
        let tail = format!("-{}-{suffix}", self.number);
        let head = self.kind.as_str();
        let room = 63 - head.len() - tail.len() - 1;
        let slug: String = slug.chars().take(room).collect();
        let slug = slug.trim_end_matches('-');
        let id = if slug.is_empty() { format!("{head}{tail}") } else { format!("{head}-{slug}{tail}") };
        TaskId::new(id).expect("built only from [a-z0-9-] and within the length limit")
    }
}

/// A trusted sender's command that Berth refused, to be answered on GitHub
/// with the reason: an unknown subcommand, a command on the wrong kind of
/// subject, a duplicate of a task already queued or running, a retry with
/// nothing to retry. Only commands of trusted senders in allowed
/// repositories get one, so nobody can make Berth write comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `owner/name`.
    pub repo: String,
    /// The issue or pull request commented on.
    pub number: u64,
    /// Who asked.
    pub sender: String,
    /// The App installation, when the payload named it.
    pub installation: Option<u64>,
    /// The comment refused; its id keys the answer, so a comment gets one.
    pub comment_id: u64,
    /// Why, in a sentence without a final period.
    pub reason: String,
}

impl Refusal {
    /// The refusal of the command that asked for `task`, when a comment
    /// asked (`None` for labels, pushes and re-runs: nobody's command to answer).
    pub fn of_task(task: &TaskRecord, reason: impl Into<String>) -> Option<Self> {
        Some(Self {
            repo: task.repo.clone(),
            number: task.number,
            sender: task.sender.clone(),
            installation: task.installation,
            comment_id: task.comment_id?,
            reason: reason.into(),
        })
    }

    /// The comment that answers it on GitHub (Markdown).
    pub fn message(&self) -> String {
        format!("@{}, Berth did not act on your command: {}.", self.sender, self.reason)
    }
}

/// Why tasks are to be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelCause {
    /// `/berth cancel` in a comment.
    Command,
    /// The issue or pull request was closed.
    Closed,
    /// A new push superseded a review.
    Superseded,
    /// An operator asked through the API or CLI.
    Operator,
}

/// A request to cancel the queued and running tasks of one issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// Why.
    pub cause: CancelCause,
    /// Who asked (a login, or `operator`).
    pub by: String,
    /// Only tasks of this kind, if set.
    pub kind: Option<TaskKind>,
    /// Spare the task working on this head (the push that superseded the others).
    pub except_head: Option<String>,
    /// A sentence for the report, e.g. "cancelled by @octocat".
    pub reason: String,
}

/// Which earlier task a retry repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryTarget {
    /// The newest task of this issue or pull request (`/berth retry`).
    Latest {
        /// Issue or pull request number.
        number: u64,
    },
    /// The task with this id (a check run's `external_id`, when GitHub's
    /// Re-run button is pressed on a check run that is not a review's).
    Task(String),
}

/// A request to run an earlier task again, resolved by the journal, which
/// knows the tasks: the new task copies the old one's kind and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRequest {
    /// `owner/name`.
    pub repo: String,
    /// GitHub's numeric id of the repository, from the payload: the retry's
    /// clone cache key (never the earlier task's, whose repository of the
    /// same name may since have been deleted and made again).
    pub repo_id: Option<u64>,
    /// Which task to repeat.
    pub target: RetryTarget,
    /// Who asked.
    pub sender: String,
    /// The App installation, when the payload named it.
    pub installation: Option<u64>,
    /// The triggering comment, for the reaction.
    pub comment_id: Option<u64>,
}
