//! Berth's own small models of the GitHub webhook events it acts on.
//!
//! Only the fields Berth reads are modelled; unknown fields are ignored and
//! actions are plain strings, so a payload GitHub extends tomorrow still
//! parses. octocrab's typed events are deliberately not used: they fail hard
//! on an action they do not know.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A user or bot account.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// The login (`octocat`, `my-app[bot]`).
    pub login: String,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

impl Account {
    /// Whether this account is a bot (type `Bot` or a login ending in `[bot]`).
    pub fn is_bot(&self) -> bool {
        self.kind.as_deref() == Some("Bot") || self.login.ends_with("[bot]")
    }
}

/// The repository an event happened in.
#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    /// GitHub's numeric id: what a clone cache is keyed by (a name can be
    /// reused by another repository; an id cannot).
    #[serde(default)]
    pub id: Option<u64>,
    /// `owner/name`.
    pub full_name: String,
    /// HTTPS clone URL (GitHub Enterprise and test servers included).
    #[serde(default)]
    pub clone_url: Option<String>,
    /// The default branch.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// The App installation that received the event (InstallationLite).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Installation {
    /// Its id.
    pub id: u64,
}

/// An issue comment.
#[derive(Debug, Clone, Deserialize)]
pub struct Comment {
    /// Its id.
    pub id: u64,
    /// Its text (may use CRLF line endings).
    #[serde(default)]
    pub body: Option<String>,
    /// Its author.
    pub user: Account,
    /// The author's relation to the repository.
    #[serde(default)]
    pub author_association: Option<String>,
}

/// An issue (or a pull request seen as an issue).
#[derive(Debug, Clone, Deserialize)]
pub struct Issue {
    /// Its number.
    pub number: u64,
    /// Present only when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<IgnoredAny>,
    /// Its title.
    #[serde(default)]
    pub title: Option<String>,
    /// Its text.
    #[serde(default)]
    pub body: Option<String>,
    /// Its author.
    #[serde(default)]
    pub user: Option<Account>,
    /// The author's relation to the repository.
    #[serde(default)]
    pub author_association: Option<String>,
}

/// A label.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// Its name.
    pub name: String,
}

/// `issue_comment`.
#[derive(Debug, Clone, Deserialize)]
pub struct IssueCommentEvent {
    /// `created`, `edited`, `deleted`, ...
    pub action: String,
    /// The comment.
    pub comment: Comment,
    /// The issue or pull request commented on.
    pub issue: Issue,
    /// The repository.
    pub repository: Repository,
    /// Who acted.
    pub sender: Account,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// `issues`.
#[derive(Debug, Clone, Deserialize)]
pub struct IssuesEvent {
    /// `opened`, `labeled`, `closed`, ...
    pub action: String,
    /// The issue.
    pub issue: Issue,
    /// For `labeled`/`unlabeled`: the label.
    #[serde(default)]
    pub label: Option<Label>,
    /// The repository.
    pub repository: Repository,
    /// Who acted.
    pub sender: Account,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A repository as the head or base of a pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoRef {
    /// `owner/name`.
    pub full_name: String,
}

/// One side of a pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct Branch {
    /// Commit.
    pub sha: String,
    /// Branch name.
    #[serde(rename = "ref")]
    pub branch: String,
    /// The repository; null when a fork was deleted.
    #[serde(default)]
    pub repo: Option<RepoRef>,
}

/// A pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    /// Its number.
    pub number: u64,
    /// Its head.
    pub head: Branch,
    /// Its base.
    pub base: Branch,
    /// Whether it is a draft.
    #[serde(default)]
    pub draft: Option<bool>,
    /// Its title.
    #[serde(default)]
    pub title: Option<String>,
    /// Its description.
    #[serde(default)]
    pub body: Option<String>,
    /// Its author.
    #[serde(default)]
    pub user: Option<Account>,
    /// The author's relation to the repository.
    #[serde(default)]
    pub author_association: Option<String>,
}

/// `pull_request`.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequestEvent {
    /// `opened`, `synchronize`, `closed`, ...
    pub action: String,
    /// The pull request.
    pub pull_request: PullRequest,
    /// The repository (the base).
    pub repository: Repository,
    /// Who acted (for `synchronize`, who pushed).
    pub sender: Account,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// The GitHub App that owns a check run or check suite.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct App {
    /// Its id.
    pub id: u64,
}

/// A pull request as a check run or suite lists it.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PullRequestRef {
    /// Its number.
    pub number: u64,
}

/// A check run.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRun {
    /// Its name (`berth/review` for Berth's reviews).
    pub name: String,
    /// The commit it ran on.
    pub head_sha: String,
    /// The id its maker gave it; Berth sets it to the task id.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The App that made it.
    #[serde(default)]
    pub app: Option<App>,
    /// The open pull requests whose head it ran on.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
}

/// `check_run`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRunEvent {
    /// `created`, `completed`, `rerequested`, `requested_action`.
    pub action: String,
    /// The check run.
    pub check_run: CheckRun,
    /// The repository.
    pub repository: Repository,
    /// Who acted (for `rerequested`, who pressed Re-run).
    pub sender: Account,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A check suite.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSuite {
    /// The commit it ran on.
    pub head_sha: String,
    /// The App that owns it.
    #[serde(default)]
    pub app: Option<App>,
    /// The open pull requests whose head it ran on.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
}

/// `check_suite`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSuiteEvent {
    /// `requested`, `rerequested`, `completed`.
    pub action: String,
    /// The check suite.
    pub check_suite: CheckSuite,
    /// The repository.
    pub repository: Repository,
    /// Who acted (for `rerequested`, who pressed Re-run all).
    pub sender: Account,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// The events Berth reads, parsed from the raw body after the signature check.
#[derive(Debug, Clone)]
pub enum Event {
    /// `ping`.
    Ping,
    /// `issue_comment`.
    IssueComment(Box<IssueCommentEvent>),
    /// `issues`.
    Issues(Box<IssuesEvent>),
    /// `pull_request`.
    PullRequest(Box<PullRequestEvent>),
    /// `check_run`.
    CheckRun(Box<CheckRunEvent>),
    /// `check_suite`.
    CheckSuite(Box<CheckSuiteEvent>),
    /// `installation` or `installation_repositories` with its action.
    Installation {
        /// The event name.
        event: String,
        /// Its action.
        action: Option<String>,
    },
    /// Anything else: acknowledged and ignored.
    Other {
        /// The event name.
        event: String,
    },
}

/// Why a body could not be read as its event.
#[derive(Debug, thiserror::Error)]
#[error("invalid {event} payload: {source}")]
pub struct PayloadError {
    /// The event.
    pub event: String,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

#[derive(Deserialize)]
struct ActionOnly {
    #[serde(default)]
    action: Option<String>,
}

impl Event {
    /// Parses `body` as the event `name` (the `X-GitHub-Event` header).
    ///
    /// # Errors
    /// The body is not JSON, or not of the shape of its event.
    pub fn parse(name: &str, body: &[u8]) -> Result<Self, PayloadError> {
        let error = |source| PayloadError { event: name.to_owned(), source };
        Ok(match name {
            "ping" => {
                serde_json::from_slice::<IgnoredAny>(body).map_err(error)?;
                Event::Ping
            }
            "issue_comment" => Event::IssueComment(serde_json::from_slice(body).map_err(error)?),
            "issues" => Event::Issues(serde_json::from_slice(body).map_err(error)?),
            "pull_request" => Event::PullRequest(serde_json::from_slice(body).map_err(error)?),
            "check_run" => Event::CheckRun(serde_json::from_slice(body).map_err(error)?),
            "check_suite" => Event::CheckSuite(serde_json::from_slice(body).map_err(error)?),
            "installation" | "installation_repositories" => {
                let ActionOnly { action } = serde_json::from_slice(body).map_err(error)?;
                Event::Installation { event: name.to_owned(), action }
            }
            other => {
                // Still JSON, or it is malformed.
                serde_json::from_slice::<IgnoredAny>(body).map_err(error)?;
                Event::Other { event: other.to_owned() }
            }
        })
    }
}
