//! Berth's own small models of the GitHub webhook events it acts on.
//!
//! Only the fields Berth reads are modelled; unknown fields are ignored and
//! actions are plain strings, so a payload GitHub extends tomorrow still
//! parses. octocrab's typed events are deliberately not used: they fail hard
//! on an action they do not know.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A user or bot account.
#[derive(Debug, Clone, Deserialize)]
pub struct Account<'a> {
    /// The login (`octocat`, `my-app[bot]`).
    #[serde(borrow)]
    pub login: Cow<'a, str>,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
}

impl Account<'_> {
    /// Whether this account is a bot (type `Bot` or a login ending in `[bot]`).
    pub fn is_bot(&self) -> bool {
        self.kind.as_deref() == Some("Bot") || self.login.ends_with("[bot]")
    }
}

/// The repository an event happened in.
#[derive(Debug, Clone, Deserialize)]
pub struct Repository<'a> {
    /// GitHub's numeric id: what a clone cache is keyed by (a name can be
    /// reused by another repository; an id cannot).
    #[serde(default)]
    pub id: Option<u64>,
    /// `owner/name`.
    #[serde(borrow)]
    pub full_name: Cow<'a, str>,
    /// HTTPS clone URL (GitHub Enterprise and test servers included).
    #[serde(default)]
    #[serde(borrow)]
    pub clone_url: Option<Cow<'a, str>>,
    /// The default branch.
    #[serde(default)]
    #[serde(borrow)]
    pub default_branch: Option<Cow<'a, str>>,
}

/// The App installation that received the event (InstallationLite).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Installation {
    /// Its id.
    pub id: u64,
}

/// An issue comment.
#[derive(Debug, Clone, Deserialize)]
pub struct Comment<'a> {
    /// Its id.
    pub id: u64,
    /// Its text (may use CRLF line endings).
    #[serde(default)]
    #[serde(borrow)]
    pub body: Option<Cow<'a, str>>,
    /// Its author.
    #[serde(borrow)]
    pub user: Account<'a>,
    /// The author's relation to the repository.
    #[serde(default)]
    #[serde(borrow)]
    pub author_association: Option<Cow<'a, str>>,
}

/// An issue (or a pull request seen as an issue).
#[derive(Debug, Clone, Deserialize)]
pub struct Issue<'a> {
    /// Its number.
    pub number: u64,
    /// Present only when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<IgnoredAny>,
    /// Its title.
    #[serde(default)]
    #[serde(borrow)]
    pub title: Option<Cow<'a, str>>,
    /// Its text.
    #[serde(default)]
    #[serde(borrow)]
    pub body: Option<Cow<'a, str>>,
    /// Its author.
    #[serde(default)]
    #[serde(borrow)]
    pub user: Option<Account<'a>>,
    /// The author's relation to the repository.
    #[serde(default)]
    #[serde(borrow)]
    pub author_association: Option<Cow<'a, str>>,
}

/// A label.
#[derive(Debug, Clone, Deserialize)]
pub struct Label<'a> {
    /// Its name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `issue_comment`.
#[derive(Debug, Clone, Deserialize)]
pub struct IssueCommentEvent<'a> {
    /// `created`, `edited`, `deleted`, ...
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The comment.
    #[serde(borrow)]
    pub comment: Comment<'a>,
    /// The issue or pull request commented on.
    #[serde(borrow)]
    pub issue: Issue<'a>,
    /// The repository.
    #[serde(borrow)]
    pub repository: Repository<'a>,
    /// Who acted.
    #[serde(borrow)]
    pub sender: Account<'a>,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// `issues`.
#[derive(Debug, Clone, Deserialize)]
pub struct IssuesEvent<'a> {
    /// `opened`, `labeled`, `closed`, ...
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The issue.
    #[serde(borrow)]
    pub issue: Issue<'a>,
    /// For `labeled`/`unlabeled`: the label.
    #[serde(default)]
    #[serde(borrow)]
    pub label: Option<Label<'a>>,
    /// The repository.
    #[serde(borrow)]
    pub repository: Repository<'a>,
    /// Who acted.
    #[serde(borrow)]
    pub sender: Account<'a>,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A repository as the head or base of a pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoRef<'a> {
    /// `owner/name`.
    #[serde(borrow)]
    pub full_name: Cow<'a, str>,
}

/// One side of a pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct Branch<'a> {
    /// Commit.
    #[serde(borrow)]
    pub sha: Cow<'a, str>,
    /// Branch name.
    #[serde(rename = "ref")]
    #[serde(borrow)]
    pub branch: Cow<'a, str>,
    /// The repository; null when a fork was deleted.
    #[serde(default)]
    #[serde(borrow)]
    pub repo: Option<RepoRef<'a>>,
}

/// A pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest<'a> {
    /// Its number.
    pub number: u64,
    /// Its head.
    #[serde(borrow)]
    pub head: Branch<'a>,
    /// Its base.
    #[serde(borrow)]
    pub base: Branch<'a>,
    /// Whether it is a draft.
    #[serde(default)]
    pub draft: Option<bool>,
    /// Its title.
    #[serde(default)]
    #[serde(borrow)]
    pub title: Option<Cow<'a, str>>,
    /// Its description.
    #[serde(default)]
    #[serde(borrow)]
    pub body: Option<Cow<'a, str>>,
    /// Its author.
    #[serde(default)]
    #[serde(borrow)]
    pub user: Option<Account<'a>>,
    /// The author's relation to the repository.
    #[serde(default)]
    #[serde(borrow)]
    pub author_association: Option<Cow<'a, str>>,
}

/// `pull_request`.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequestEvent<'a> {
    /// `opened`, `synchronize`, `closed`, ...
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The pull request.
    #[serde(borrow)]
    pub pull_request: PullRequest<'a>,
    /// The repository (the base).
    #[serde(borrow)]
    pub repository: Repository<'a>,
    /// Who acted (for `synchronize`, who pushed).
    #[serde(borrow)]
    pub sender: Account<'a>,
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
pub struct CheckRun<'a> {
    /// Its name (`berth/review` for Berth's reviews).
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The commit it ran on.
    #[serde(borrow)]
    pub head_sha: Cow<'a, str>,
    /// The id its maker gave it; Berth sets it to the task id.
    #[serde(default)]
    #[serde(borrow)]
    pub external_id: Option<Cow<'a, str>>,
    /// The App that made it.
    #[serde(default)]
    pub app: Option<App>,
    /// The open pull requests whose head it ran on.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
}

/// `check_run`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRunEvent<'a> {
    /// `created`, `completed`, `rerequested`, `requested_action`.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The check run.
    #[serde(borrow)]
    pub check_run: CheckRun<'a>,
    /// The repository.
    #[serde(borrow)]
    pub repository: Repository<'a>,
    /// Who acted (for `rerequested`, who pressed Re-run).
    #[serde(borrow)]
    pub sender: Account<'a>,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A check suite.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSuite<'a> {
    /// The commit it ran on.
    #[serde(borrow)]
    pub head_sha: Cow<'a, str>,
    /// The App that owns it.
    #[serde(default)]
    pub app: Option<App>,
    /// The open pull requests whose head it ran on.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
}

/// `check_suite`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSuiteEvent<'a> {
    /// `requested`, `rerequested`, `completed`.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The check suite.
    #[serde(borrow)]
    pub check_suite: CheckSuite<'a>,
    /// The repository.
    #[serde(borrow)]
    pub repository: Repository<'a>,
    /// Who acted (for `rerequested`, who pressed Re-run all).
    #[serde(borrow)]
    pub sender: Account<'a>,
    /// The App installation.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// The events Berth reads, parsed from the raw body after the signature check.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// `ping`.
    Ping,
    /// `issue_comment`.
    IssueComment(Box<IssueCommentEvent<'a>>),
    /// `issues`.
    Issues(Box<IssuesEvent<'a>>),
    /// `pull_request`.
    PullRequest(Box<PullRequestEvent<'a>>),
    /// `check_run`.
    CheckRun(Box<CheckRunEvent<'a>>),
    /// `check_suite`.
    CheckSuite(Box<CheckSuiteEvent<'a>>),
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

impl<'a> Event<'a> {
    /// Parses `body` as the event `name` (the `X-GitHub-Event` header).
    ///
    /// # Errors
    /// The body is not JSON, or not of the shape of its event.
    pub fn parse(name: &str, body: &'a [u8]) -> Result<Self, PayloadError> {
        let error = |source| PayloadError { event: name.to_owned(), source };
        Ok(match name {
            "ping" => {
                serde_json::from_slice::<IgnoredAny>(body).map_err(error)?;
                Event::Ping
            }
            "issue_comment" => Event::IssueComment(from_json(body).map_err(error)?),
            "issues" => Event::Issues(from_json(body).map_err(error)?),
            "pull_request" => Event::PullRequest(from_json(body).map_err(error)?),
            "check_run" => Event::CheckRun(from_json(body).map_err(error)?),
            "check_suite" => Event::CheckSuite(from_json(body).map_err(error)?),
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

/// `body` as a `T` borrowing from it. A body that is UTF-8 as a whole is
/// parsed as text, so the parser need not check again each key and string
/// it reads (Berth models a few fields, but walks the many keys of every
/// object around them). One that is not is parsed as bytes: serde_json's
/// own error where a string it reads is broken, its answer as before where
/// only skipped strings are.
fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}
