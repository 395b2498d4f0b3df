//! Trigger rules and the trust policy: what an event asks Berth to do, and
//! whether the one asking may.
//!
//! Pure logic over parsed events; no I/O. Every refusal carries its reason,
//! which goes into the 202 body and the log.

use core_types::env_names::{BERTH_ALLOWED_REPOS, BERTH_AUTO_REVIEW, BERTH_TRUSTED_USERS};
use core_types::{Subject, TaskKind};

use crate::events::{
    Account, App, CheckRunEvent, CheckSuiteEvent, Event, IssueCommentEvent, IssuesEvent, PullRequestEvent,
};
use crate::request::{CancelCause, CancelRequest, Refusal, RetryRequest, RetryTarget, TaskRequest};

/// The label that asks for an implementation.
pub const IMPLEMENT_LABEL: &str = "berth:implement";

/// Associations trusted when no explicit list of users is configured.
const TRUSTED_ASSOCIATIONS: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

/// Who may trigger what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The command prefix, `/berth` by default (matched case-insensitively).
    pub command_prefix: String,
    /// Logins allowed to trigger; empty means by author association.
    pub trusted_users: Vec<String>,
    /// `owner/name` or `owner/*` patterns; empty means every repository.
    pub allowed_repos: Vec<String>,
    /// Review pull requests automatically when opened or pushed to.
    pub auto_review: bool,
    /// The GitHub App's id, which tells Berth's check runs and suites from
    /// other apps' when GitHub's Re-run is pressed; unknown (`None`) means a
    /// check run counts as Berth's by its name alone and no suite does.
    pub app_id: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            command_prefix: "/berth".to_owned(),
            trusted_users: Vec::new(),
            allowed_repos: Vec::new(),
            auto_review: false,
            app_id: None,
        }
    }
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Queue a task.
    Queue(TaskRequest),
    /// Cancel the queued and running tasks it names.
    Cancel(CancelRequest),
    /// A push: cancel the reviews of the old head and maybe queue one for the new.
    Supersede {
        /// The reviews to cancel.
        cancel: CancelRequest,
        /// The automatic review of the new head, if enabled and trusted.
        queue: Option<TaskRequest>,
    },
    /// Queue each of these tasks (a check suite re-run over several pull requests).
    QueueEach(Vec<TaskRequest>),
    /// Run an earlier task again; the journal finds it.
    Retry(RetryRequest),
    /// A trusted sender's command refused: no task, and an answer on GitHub
    /// that says why.
    Refuse(Refusal),
    /// Nothing to do, and why.
    Ignore(String),
}

/// A recognised command in a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A task of a kind in [`core_types::KINDS`] (`review [args]`, `implement [args]`).
    Run {
        /// Which.
        kind: TaskKind,
        /// The rest of the line.
        args: String,
    },
    /// `cancel`.
    Cancel,
    /// `retry`: run the issue's or pull request's last task again.
    Retry,
    /// The prefix with a word Berth does not know.
    Unknown(String),
}

/// Finds the command at the start of a comment: leading white space and CRLF
/// tolerated, the prefix and command matched case-insensitively, the rest of
/// the first line kept as arguments.
pub fn parse_command(prefix: &str, body: &str) -> Option<Command> {
    let body = body.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let first_line = body.lines().next().unwrap_or("").trim_end_matches('\r').trim_end();
    let head = first_line.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &first_line[prefix.len()..];
    // `/berthx` is not `/berth`.
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let rest = rest.trim_start();
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let args = args.trim().to_owned();
    Some(match word.to_ascii_lowercase().as_str() {
        "cancel" | "stop" => Command::Cancel,
        "retry" => Command::Retry,
        other => match TaskKind::from_command(other) {
            Some(kind) => Command::Run { kind, args },
            None => Command::Unknown(other.to_owned()),
        },
    })
}

impl Policy {
    fn repo_allowed(&self, repo: &str) -> bool {
        self.allowed_repos.is_empty()
            || self.allowed_repos.iter().any(|pattern| match pattern.strip_suffix("/*") {
                Some(owner) => {
                    repo.split_once('/').is_some_and(|(repo_owner, _)| repo_owner.eq_ignore_ascii_case(owner))
                }
                None => pattern.eq_ignore_ascii_case(repo),
            })
    }

    /// Whether `login`, with `association` for what it wrote, may trigger.
    fn trusts(&self, login: &str, association: Option<&str>) -> Result<(), String> {
        if !self.trusted_users.is_empty() {
            return if self.trusted_users.iter().any(|user| user.eq_ignore_ascii_case(login)) {
                Ok(())
            } else {
                Err(format!("sender @{login} is not in {BERTH_TRUSTED_USERS}"))
            };
        }
        match association {
            Some(association) if TRUSTED_ASSOCIATIONS.contains(&association) => Ok(()),
            Some(association) => Err(format!(
                "sender @{login} is not trusted (author association {association}; OWNER, MEMBER or COLLABORATOR needed)"
            )),
            None => Err(format!("sender @{login} is not trusted (no author association in the payload)")),
        }
    }

    /// Decides what an event asks for.
    pub fn decide(&self, event: &Event<'_>) -> Decision {
        match event {
            Event::Ping => Decision::Ignore("ping: the App's webhook is set up".to_owned()),
            Event::Installation { event, action } => Decision::Ignore(format!(
                "{event} {}: acknowledged, no task",
                action.as_deref().unwrap_or("event")
            )),
            Event::Other { event } => Decision::Ignore(format!("event {event} is not one berth acts on")),
            Event::IssueComment(comment) => self.decide_comment(comment),
            Event::Issues(issues) => self.decide_issues(issues),
            Event::PullRequest(pull) => self.decide_pull_request(pull),
            Event::CheckRun(check_run) => self.decide_check_run(check_run),
            Event::CheckSuite(check_suite) => self.decide_check_suite(check_suite),
        }
    }

    fn gate(&self, repo: &str, sender: &Account<'_>) -> Result<(), String> {
        if !self.repo_allowed(repo) {
            return Err(format!("repository {repo} is not in {BERTH_ALLOWED_REPOS}"));
        }
        if sender.is_bot() {
            return Err(format!("sender @{} is a bot; bots never trigger", sender.login));
        }
        Ok(())
    }

    fn decide_comment(&self, event: &IssueCommentEvent<'_>) -> Decision {
        if event.action != "created" {
            return Decision::Ignore(format!("issue_comment {}: only new comments trigger", event.action));
        }
        let repo = &event.repository.full_name;
        if let Err(reason) = self.gate(repo, &event.sender) {
            return Decision::Ignore(reason);
        }
        if event.comment.user.is_bot() {
            return Decision::Ignore(format!(
                "comment author @{} is a bot; bots never trigger",
                event.comment.user.login
            ));
        }
        let body = event.comment.body.as_deref().unwrap_or("");
        let Some(command) = parse_command(&self.command_prefix, body) else {
            return Decision::Ignore(format!("no {} command in the comment", self.command_prefix));
        };
        let login = &event.sender.login;
        if let Err(reason) = self.trusts(login, event.comment.author_association.as_deref()) {
            return Decision::Ignore(reason);
        }
        if let Some(ignore) = missing_clone_url(&event.repository) {
            return ignore;
        }
        let is_pull = event.issue.pull_request.is_some();
        let number = event.issue.number;
        let request = |kind, args: &str, follow_up: bool| TaskRequest {
            kind,
            repo: repo.to_string(),
            number,
            head_sha: None,
            head_ref: match kind {
                TaskKind::Review => None,
                // A follow-up starts from the pull request's branch, read at dispatch.
                TaskKind::Implement if follow_up => None,
                TaskKind::Implement => event.repository.default_branch.as_deref().map(str::to_owned),
            },
            clone_url: clone_url(&event.repository),
            repo_id: event.repository.id,
            prompt: crate::prompt::request_words(args, body),
            subject_title: normalize_text(event.issue.title.as_deref().unwrap_or("")),
            subject_body: normalize_text(event.issue.body.as_deref().unwrap_or("")),
            base_ref: None,
            sender: login.to_string(),
            installation: event.installation.map(|installation| installation.id),
            comment_id: Some(event.comment.id),
            follow_up,
        };
        let refuse = |reason: String| {
            Decision::Refuse(Refusal {
                repo: repo.to_string(),
                number,
                sender: login.to_string(),
                installation: event.installation.map(|installation| installation.id),
                comment_id: event.comment.id,
                reason,
            })
        };
        match command {
            Command::Run { kind, args } if (kind.spec().subject == Subject::PullRequest) == is_pull => {
                Decision::Queue(request(kind, &args, false))
            }
            // On a pull request, a kind that follows up continues Berth's own
            // branch; whether the head is Berth's is known only at dispatch.
            Command::Run { kind, args } if is_pull && kind.spec().follows_up_on_pull_request => {
                Decision::Queue(request(kind, &args, true))
            }
            Command::Run { kind, .. } => refuse(format!(
                "`{} {}` needs {}; #{number} is {}",
                self.command_prefix,
                kind.spec().command,
                kind.spec().subject.with_article(),
                if is_pull { "a pull request" } else { "an issue" },
            )),
            Command::Cancel => Decision::Cancel(CancelRequest {
                repo: repo.to_string(),
                number,
                cause: CancelCause::Command,
                by: login.to_string(),
                kind: None,
                except_head: None,
                reason: format!("cancelled by @{login}"),
            }),
            Command::Retry => Decision::Retry(RetryRequest {
                repo: repo.to_string(),
                repo_id: event.repository.id,
                target: RetryTarget::Latest { number },
                sender: login.to_string(),
                installation: event.installation.map(|installation| installation.id),
                comment_id: Some(event.comment.id),
            }),
            Command::Unknown(word) => refuse(format!(
                "unknown command `{} {}` (known: {}, cancel, retry)",
                self.command_prefix,
                // Shown inside a code span on GitHub: no backtick may end it.
                word.chars().filter(|c| *c != '`').take(40).collect::<String>(),
                core_types::KINDS.map(|spec| spec.command).join(", ")
            )),
        }
    }

    fn decide_issues(&self, event: &IssuesEvent<'_>) -> Decision {
        let repo = &event.repository.full_name;
        let number = event.issue.number;
        match event.action.as_ref() {
            "closed" => {
                if !self.repo_allowed(repo) {
                    return Decision::Ignore(format!("repository {repo} is not in {BERTH_ALLOWED_REPOS}"));
                }
                Decision::Cancel(closed(repo, number, &event.sender.login, "issue"))
            }
            "labeled" => {
                let label = event.label.as_ref().map_or("", |label| label.name.as_ref());
                if !label.eq_ignore_ascii_case(IMPLEMENT_LABEL) {
                    return Decision::Ignore(format!("label {label:?} is not {IMPLEMENT_LABEL}"));
                }
                if event.issue.pull_request.is_some() {
                    return Decision::Ignore(format!(
                        "{IMPLEMENT_LABEL} on a pull request; it applies to issues"
                    ));
                }
                if let Err(reason) = self.gate(repo, &event.sender) {
                    return Decision::Ignore(reason);
                }
                // Adding a label needs triage access to the repository, so the
                // one who labelled is trusted by GitHub itself unless an explicit
                // list says otherwise.
                let login = &event.sender.login;
                if !self.trusted_users.is_empty()
                    && let Err(reason) = self.trusts(login, None)
                {
                    return Decision::Ignore(reason);
                }
                if let Some(ignore) = missing_clone_url(&event.repository) {
                    return ignore;
                }
                let title = event.issue.title.as_deref().unwrap_or("");
                let body = event.issue.body.as_deref().unwrap_or("");
                Decision::Queue(TaskRequest {
                    kind: TaskKind::Implement,
                    repo: repo.to_string(),
                    number,
                    head_sha: None,
                    head_ref: event.repository.default_branch.as_deref().map(str::to_owned),
                    clone_url: clone_url(&event.repository),
                    repo_id: event.repository.id,
                    prompt: String::new(),
                    subject_title: normalize_text(title),
                    subject_body: normalize_text(body),
                    base_ref: None,
                    sender: login.to_string(),
                    installation: event.installation.map(|installation| installation.id),
                    comment_id: None,
                    follow_up: false,
                })
            }
            other => Decision::Ignore(format!("issues {other}: no task")),
        }
    }

    fn decide_pull_request(&self, event: &PullRequestEvent<'_>) -> Decision {
        let repo = &event.repository.full_name;
        let pull = &event.pull_request;
        let number = pull.number;
        match event.action.as_ref() {
            "closed" => {
                if !self.repo_allowed(repo) {
                    return Decision::Ignore(format!("repository {repo} is not in {BERTH_ALLOWED_REPOS}"));
                }
                Decision::Cancel(closed(repo, number, &event.sender.login, "pull request"))
            }
            "synchronize" => {
                let cancel = CancelRequest {
                    repo: repo.to_string(),
                    number,
                    cause: CancelCause::Superseded,
                    by: event.sender.login.to_string(),
                    kind: Some(TaskKind::Review),
                    except_head: Some(pull.head.sha.to_string()),
                    reason: format!("superseded by a push of {}", short_sha(&pull.head.sha)),
                };
                let queue = match self.auto_review_request(event) {
                    Ok(request) => Some(request),
                    Err(_) if !self.auto_review => None,
                    Err(reason) => {
                        tracing::info!(repo = %repo, number, reason = %reason, "automatic review skipped");
                        None
                    }
                };
                Decision::Supersede { cancel, queue }
            }
            "opened" | "reopened" | "ready_for_review" => match self.auto_review_request(event) {
                Ok(request) => Decision::Queue(request),
                Err(reason) => Decision::Ignore(reason),
            },
            other => Decision::Ignore(format!("pull_request {other}: no task")),
        }
    }

    /// Whether a check run or suite made by `app` is Berth's: with the App's
    /// id known, the ids must match; without it, `by_name` decides.
    fn owns(&self, app: Option<App>, by_name: bool) -> bool {
        match (self.app_id, app) {
            (Some(ours), Some(theirs)) => ours == theirs.id,
            _ => by_name,
        }
    }

    /// The trust check for GitHub's Re-run buttons. The payload carries no
    /// author association, and repository permissions are not knowable
    /// offline; GitHub shows Re-run only to users with write access to the
    /// repository, so whoever pressed it is trusted, unless an explicit
    /// BERTH_TRUSTED_USERS list says otherwise.
    fn trusts_rerun(&self, repo: &str, sender: &Account<'_>) -> Result<(), String> {
        self.gate(repo, sender)?;
        if !self.trusted_users.is_empty() {
            self.trusts(&sender.login, None)?;
        }
        Ok(())
    }

    /// `check_run` `rerequested` on one of Berth's check runs: a review is
    /// queued again for each pull request at its current head (read at
    /// dispatch, as for a comment); any other kind repeats the task the
    /// check run reported (its `external_id`).
    fn decide_check_run(&self, event: &CheckRunEvent<'_>) -> Decision {
        if event.action != "rerequested" {
            return Decision::Ignore(format!("check_run {}: only a re-run triggers", event.action));
        }
        let check_run = &event.check_run;
        let kind = core_types::KINDS.iter().find(|spec| spec.check_run_name == check_run.name);
        let Some(spec) = kind.filter(|_| self.owns(check_run.app, true)) else {
            return Decision::Ignore(format!("check run {:?} is not one of berth's", check_run.name));
        };
        let repo = &event.repository.full_name;
        if let Err(reason) = self.trusts_rerun(repo, &event.sender) {
            return Decision::Ignore(reason);
        }
        if let Some(ignore) = missing_clone_url(&event.repository) {
            return ignore;
        }
        let installation = event.installation.map(|installation| installation.id);
        if spec.subject == Subject::PullRequest {
            let requests: Vec<_> = check_run
                .pull_requests
                .iter()
                .map(|pull| {
                    rerun_request(spec.kind, &event.repository, &event.sender, pull.number, installation)
                })
                .collect();
            return queue_each(requests, || {
                format!(
                    "check run {} on {} has no pull request",
                    check_run.name,
                    short_sha(&check_run.head_sha)
                )
            });
        }
        match check_run.external_id.as_deref().filter(|id| !id.is_empty()) {
            Some(task) => Decision::Retry(RetryRequest {
                repo: repo.to_string(),
                repo_id: event.repository.id,
                target: RetryTarget::Task(task.to_owned()),
                sender: event.sender.login.to_string(),
                installation,
                comment_id: None,
            }),
            None => {
                Decision::Ignore(format!("check run {} has no external_id naming its task", check_run.name))
            }
        }
    }

    /// `check_suite` `rerequested` on Berth's suite: a review of each of its
    /// pull requests. Only the App's id tells Berth's suite from another's.
    fn decide_check_suite(&self, event: &CheckSuiteEvent<'_>) -> Decision {
        if event.action != "rerequested" {
            return Decision::Ignore(format!("check_suite {}: only a re-run triggers", event.action));
        }
        let suite = &event.check_suite;
        if !self.owns(suite.app, false) {
            let app = suite.app.map_or_else(|| "no app".to_owned(), |app| format!("app {}", app.id));
            return Decision::Ignore(format!("check suite of {app} is not berth's"));
        }
        let repo = &event.repository.full_name;
        if let Err(reason) = self.trusts_rerun(repo, &event.sender) {
            return Decision::Ignore(reason);
        }
        if let Some(ignore) = missing_clone_url(&event.repository) {
            return ignore;
        }
        let installation = event.installation.map(|installation| installation.id);
        let requests: Vec<_> = suite
            .pull_requests
            .iter()
            .map(|pull| {
                rerun_request(TaskKind::Review, &event.repository, &event.sender, pull.number, installation)
            })
            .collect();
        queue_each(requests, || format!("check suite on {} has no pull request", short_sha(&suite.head_sha)))
    }

    /// The automatic review of a pull request's head, when enabled and allowed.
    fn auto_review_request(&self, event: &PullRequestEvent<'_>) -> Result<TaskRequest, String> {
        let pull = &event.pull_request;
        if !self.auto_review {
            return Err(format!(
                "pull_request {}: automatic review is off ({BERTH_AUTO_REVIEW})",
                event.action
            ));
        }
        let repo = &event.repository.full_name;
        self.gate(repo, &event.sender)?;
        if pull.draft == Some(true) {
            return Err(format!("pull request #{} is a draft", pull.number));
        }
        match &pull.head.repo {
            None => return Err(format!("pull request #{} comes from a deleted fork", pull.number)),
            Some(head) if !head.full_name.eq_ignore_ascii_case(repo) => {
                return Err(format!(
                    "pull request #{} comes from the fork {}; forks get no task",
                    pull.number, head.full_name
                ));
            }
            Some(_) => {}
        }
        if missing_clone_url(&event.repository).is_some() {
            return Err(format!("payload for {repo} has no repository.clone_url"));
        }
        // Trust is evaluated for whoever acted now (the pusher on synchronize),
        // not for the pull request's original author.
        let login = &event.sender.login;
        let association = match &pull.user {
            Some(author) if author.login.eq_ignore_ascii_case(login) => pull.author_association.as_deref(),
            _ => None,
        };
        self.trusts(login, association)?;
        Ok(TaskRequest {
            kind: TaskKind::Review,
            repo: repo.to_string(),
            number: pull.number,
            head_sha: Some(pull.head.sha.to_string()),
            head_ref: Some(pull.head.branch.to_string()),
            clone_url: clone_url(&event.repository),
            repo_id: event.repository.id,
            prompt: String::new(),
            subject_title: normalize_text(pull.title.as_deref().unwrap_or("")),
            subject_body: normalize_text(pull.body.as_deref().unwrap_or("")),
            base_ref: Some(pull.base.branch.to_string()),
            sender: login.to_string(),
            installation: event.installation.map(|installation| installation.id),
            comment_id: None,
            follow_up: false,
        })
    }
}

fn closed(repo: &str, number: u64, login: &str, what: &str) -> CancelRequest {
    CancelRequest {
        repo: repo.to_owned(),
        number,
        cause: CancelCause::Closed,
        by: login.to_owned(),
        kind: None,
        except_head: None,
        reason: format!("{what} closed by @{login}"),
    }
}

/// A task asked for again by GitHub's Re-run. The head it ran on may be
/// stale: the pull request's current head is read at dispatch, as for a
/// review asked for in a comment.
fn rerun_request(
    kind: TaskKind,
    repository: &crate::events::Repository<'_>,
    sender: &Account<'_>,
    number: u64,
    installation: Option<u64>,
) -> TaskRequest {
    TaskRequest {
        kind,
        repo: repository.full_name.to_string(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: clone_url(repository),
        repo_id: repository.id,
        prompt: String::new(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: sender.login.to_string(),
        installation,
        comment_id: None,
        follow_up: false,
    }
}

/// One request queued as itself, several as a batch, none ignored with `why`.
fn queue_each(mut requests: Vec<TaskRequest>, why: impl FnOnce() -> String) -> Decision {
    match requests.len() {
        0 => Decision::Ignore(why()),
        1 => Decision::Queue(requests.remove(0)),
        _ => Decision::QueueEach(requests),
    }
}

fn clone_url(repository: &crate::events::Repository<'_>) -> String {
    // Checked by `missing_clone_url` before any request is built.
    repository.clone_url.as_deref().unwrap_or_default().to_owned()
}

/// GitHub always sends `repository.clone_url`; without it a worker could not clone.
fn missing_clone_url(repository: &crate::events::Repository<'_>) -> Option<Decision> {
    repository.clone_url.as_deref().is_none_or(str::is_empty).then(|| {
        Decision::Ignore(format!("payload for {} has no repository.clone_url", repository.full_name))
    })
}

fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// CRLF to LF, so agents and commands see one kind of line ending.
fn normalize_text(text: &str) -> String {
    text.replace("\r\n", "\n")
}
