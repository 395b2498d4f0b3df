//! GitHub, through octocrab, against `BERTH_GITHUB_API_URL`.
//!
//! The App authenticates with its JWT; each installation gets an octocrab
//! client that caches its installation token until shortly before it
//! expires; each worker gets its own token scoped to one repository and to
//! the permissions its kind needs. octocrab's own retry is off (it repeats
//! POSTs on 5xx, which posted a comment four times); Berth retries 5xx, 429
//! and transport errors itself with backoff, and makes every write
//! idempotent: check runs are found by their external id, comments by a
//! hidden marker, pull requests by their head branch.

mod api;
mod app;
mod check_run;

pub use api::GitHubApi;
pub use app::{
    Account, AccountKind, AppClient, AppInfo, CreatedApp, HookConfig, Installation, ManifestFlow,
    RepositorySelection, check_private_key,
};
use check_run::truncate;
pub use check_run::{CheckRunOutput, CheckRunStatus, NewCheckRun, OUTPUT_FIELD_LIMIT};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core_types::backoff::Backoff;
use core_types::env_names as names;
use core_types::follow_up::ReviewComment;
use core_types::{Secret, TaskId, TaskKind};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use serde_json::{Value, json};
use tracing::{debug, warn};

use telemetry::{GitHubStatus, Metrics};

/// How Berth retries GitHub calls that failed with 5xx, 429 or a transport error.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time, capped at `max_delay`.
    pub first_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 10, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) }
    }
}

/// A GitHub call that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// GitHub refused the App's credentials.
    #[error(
        "GitHub refused the App's credentials ({status}: {message}) while trying to {what}; check {} and {}",
        names::BERTH_GITHUB_APP_ID,
        names::BERTH_GITHUB_PRIVATE_KEY_FILE
    )]
    Credentials {
        /// What was being done.
        what: String,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// GitHub answered with a final 4xx (or, for a call made once, any error status).
    #[error("GitHub answered {status} ({message}) while trying to {what}")]
    Rejected {
        /// What was being done.
        what: String,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// 5xx, 429 or transport errors past the retry budget (for a call made
    /// once: no answer, or one that was not JSON).
    #[error("GitHub kept failing while trying to {what} ({attempts} attempts; last: {last})")]
    Unavailable {
        /// What was being done.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer from GitHub while trying to {what}: {detail}")]
    Unexpected {
        /// What was being done.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The client could not be set up.
    #[error("cannot set up the GitHub client: {0}")]
    Setup(String),
    /// The App's private key cannot sign its JWT.
    #[error("not a usable RSA private key ({reason})")]
    PrivateKey {
        /// Why the key was refused.
        reason: String,
    },
}

/// How one attempt failed.
enum Attempt {
    Retry { status: Option<u16>, text: String },
    Final { status: u16, message: String },
    Other(String),
}

fn classify(err: octocrab::Error) -> Attempt {
    match err {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            if status >= 500
                || status == 429
                || (status == 403 && source.message.to_lowercase().contains("rate limit"))
            {
                Attempt::Retry { status: Some(status), text: format!("{status} {}", source.message) }
            } else {
                Attempt::Final { status, message: source.message }
            }
        }
        octocrab::Error::Json { source, .. } => Attempt::Other(source.to_string()),
        octocrab::Error::Serde { source, .. } => Attempt::Other(source.to_string()),
        // Transport errors (connection refused, reset, timeout) are worth another try.
        other => Attempt::Retry { status: None, text: format!("{other}") },
    }
}

/// The permissions a worker's token gets, by kind.
pub fn worker_permissions(kind: TaskKind) -> Value {
    Value::Object(
        kind.spec()
            .permissions
            .iter()
            .map(|(name, access)| ((*name).to_owned(), Value::from(*access)))
            .collect(),
    )
}

/// A pull request's head, as dispatch needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullHead {
    /// Head commit.
    pub sha: String,
    /// Head branch.
    pub branch: String,
    /// `owner/name` of the head repository (`None` for a deleted fork).
    pub repo: Option<String>,
    /// `open` or `closed`.
    pub state: String,
    /// The base branch.
    pub base: Option<String>,
}

/// One webhook delivery as GitHub's delivery log lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The attempt's id (what a redelivery is asked by).
    pub id: u64,
    /// The delivery's GUID (`X-GitHub-Delivery`), shared by its attempts.
    pub guid: String,
    /// The HTTP status Berth answered this attempt with (`None`: no answer).
    pub status_code: Option<u64>,
    /// When GitHub sent it, as seconds since the epoch.
    pub delivered_unix: Option<u64>,
    /// When GitHub sent it, as GitHub wrote it (`2026-11-30T10:00:00Z`).
    pub delivered_at: Option<String>,
    /// The event (`issue_comment`), when GitHub said.
    pub event: Option<String>,
    /// The event's action (`created`), when it has one.
    pub action: Option<String>,
    /// GitHub's account of the attempt (`OK`, `Invalid HTTP Response: 503`).
    pub status: Option<String>,
}

impl Delivery {
    /// A delivery from GitHub's JSON; `None` without an id or GUID.
    pub fn from_json(value: &Value) -> Option<Self> {
        let text = |name: &str| value[name].as_str().map(str::to_owned);
        Some(Self {
            id: value["id"].as_u64()?,
            guid: value["guid"].as_str()?.to_owned(),
            status_code: value["status_code"].as_u64(),
            delivered_unix: value["delivered_at"].as_str().and_then(parse_github_time),
            delivered_at: text("delivered_at"),
            event: text("event"),
            action: text("action"),
            status: text("status"),
        })
    }

    /// Whether Berth answered this attempt with a 2xx.
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|code| (200..300).contains(&code))
    }
}

/// One page of the App's delivery log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryPage {
    /// The page's deliveries, newest first.
    pub deliveries: Vec<Delivery>,
    /// The cursor of the next, older page (from the `Link` header's
    /// `rel="next"`); `None` on the last page.
    pub next: Option<String>,
}

/// The `cursor` a page link carries. Only the cursor is taken from a link,
/// so every request stays on the configured API address.
fn cursor_of(link: &str) -> Option<String> {
    let (_, query) = link.split_once('?')?;
    form_urlencoded::parse(query.split('#').next().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "cursor")
        .map(|(_, cursor)| cursor.into_owned())
        .filter(|cursor| !cursor.is_empty())
}

/// Seconds since the epoch of GitHub's `2026-11-29T03:19:31Z`.
pub fn parse_github_time(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date_parts.next()??, date_parts.next()??, date_parts.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '.']).next()?;
    let mut clock = time.splitn(3, ':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// The GitHub App, as Berth uses it.
#[derive(Clone)]
pub struct GitHub {
    app: Octocrab,
    installations: Arc<Mutex<HashMap<u64, Octocrab>>>,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    /// The App's bot user (`<slug>[bot]`), the author of Berth's comments.
    bot_login: Arc<tokio::sync::OnceCell<String>>,
    /// The REST base URL, for clients that act as a worker token.
    api_url: String,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").finish_non_exhaustive()
    }
}

/// Whether `comment` was written by the bot user `bot` (logins compare
/// without case; the user must be of type `Bot`, which no person can be).
fn is_author(comment: &Value, bot: &str) -> bool {
    comment["user"]["type"] == "Bot"
        && comment["user"]["login"].as_str().is_some_and(|login| login.eq_ignore_ascii_case(bot))
}

/// The hidden marker that names a task in its result comment.
pub fn comment_marker(task_id: &TaskId) -> String {
    format!("<!-- berth:task={task_id} -->")
}

/// The hidden marker of the answer to a refused command (`key`: `comment-<id>`).
pub fn notice_marker(key: &str) -> String {
    format!("<!-- berth:notice={key} -->")
}

/// Most review comments a follow-up reads of its pull request.
pub const MAX_REVIEW_COMMENTS: usize = 300;

impl GitHub {
    /// The App at `api_url` with id `app_id` and its PEM private key.
    ///
    /// # Errors
    /// An unusable key or URL.
    pub fn new(
        api_url: &str,
        app_id: u64,
        private_key: &Secret,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GitHubError> {
        let key = octocrab::EncodingKey::from_rsa_pem(private_key.expose().as_bytes()).map_err(|err| {
            GitHubError::Setup(format!(
                "{} is not a usable RSA key: {err}",
                names::BERTH_GITHUB_PRIVATE_KEY_FILE
            ))
        })?;
        let app = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|err| GitHubError::Setup(format!("{} {api_url:?}: {err}", names::BERTH_GITHUB_API_URL)))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .app(AppId(app_id), key)
            .build()
            .map_err(|err| {
                GitHubError::Setup(format!(
                    "the HTTPS client for {} {api_url:?} did not start ({err:?}); \
                     the host needs CA certificates (Debian's ca-certificates, or SSL_CERT_FILE)",
                    names::BERTH_GITHUB_API_URL
                ))
            })?;
        Ok(Self {
            app,
            installations: Arc::default(),
            retry,
            metrics,
            bot_login: Arc::default(),
            api_url: api_url.to_owned(),
        })
    }

    fn installation(&self, installation: u64) -> Result<Octocrab, GitHubError> {
        let mut clients = self.installations.lock().expect("installation cache lock is never poisoned");
        if let Some(client) = clients.get(&installation) {
            return Ok(client.clone());
        }
        let client = self
            .app
            .installation(InstallationId(installation))
            .map_err(|err| GitHubError::Setup(err.to_string()))?;
        clients.insert(installation, client.clone());
        Ok(client)
    }

    /// Runs `call` with Berth's retry policy, counting calls by status.
    async fn with_retry<T, F, Fut>(&self, what: &str, app_level: bool, call: F) -> Result<T, GitHubError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, octocrab::Error>>,
    {
        self.with_attempts(what, app_level, self.retry.attempts, call).await
    }

    /// Runs `call` up to `attempts` times, with backoff between them.
    async fn with_attempts<T, F, Fut>(
        &self,
        what: &str,
        app_level: bool,
        attempts: u32,
        mut call: F,
    ) -> Result<T, GitHubError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, octocrab::Error>>,
    {
        let mut delays = Backoff::new(self.retry.first_delay, self.retry.max_delay).max_attempts(attempts);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match call(attempt).await {
                Ok(value) => {
                    self.metrics.github_call(GitHubStatus::Success);
                    return Ok(value);
                }
                Err(err) => match classify(err) {
                    Attempt::Final { status, message } => {
                        self.metrics.github_call(GitHubStatus::from_code(status));
                        return Err(
                            if status == 401 || (app_level && status == 403 && message.contains("JWT")) {
                                GitHubError::Credentials { what: what.to_owned(), status, message }
                            } else {
                                GitHubError::Rejected { what: what.to_owned(), status, message }
                            },
                        );
                    }
                    Attempt::Other(detail) => {
                        return Err(GitHubError::Unexpected { what: what.to_owned(), detail });
                    }
                    Attempt::Retry { status, text } => {
                        self.metrics
                            .github_call(status.map_or(GitHubStatus::Transport, GitHubStatus::from_code));
                        warn!(what, attempt, error = %text, "GitHub call failed; retrying");
                        last = text;
                    }
                },
            }
            if let Some(delay) = delays.next() {
                tokio::time::sleep(delay).await;
            }
        }
        Err(GitHubError::Unavailable { what: what.to_owned(), attempts, last })
    }

    /// The installation that owns `repo` (when the payload did not say).
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn repo_installation(&self, repo: &str) -> Result<u64, GitHubError> {
        let what = format!("find the App's installation on {repo}");
        let route = format!("/repos/{repo}/installation");
        let value = self.with_retry(&what, true, |_| self.app.get::<Value, _, ()>(&route, None)).await?;
        value["id"].as_u64().ok_or_else(|| GitHubError::Unexpected { what, detail: "no id".to_owned() })
    }

    /// A token for one worker: this repository only, and the permissions of its kind.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn worker_token(
        &self,
        installation: u64,
        repo: &str,
        kind: TaskKind,
    ) -> Result<Secret, GitHubError> {
        let what = format!("create a worker token for {repo}");
        let name = repo.rsplit('/').next().unwrap_or(repo);
        let body = json!({"repositories": [name], "permissions": worker_permissions(kind)});
        let route = format!("/app/installations/{installation}/access_tokens");
        let value = self.with_retry(&what, true, |_| self.app.post::<_, Value>(&route, Some(&body))).await?;
        value["token"]
            .as_str()
            .map(Secret::new)
            .ok_or_else(|| GitHubError::Unexpected { what, detail: "no token in the answer".to_owned() })
    }

    /// A pull request's head.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn pull_head(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> Result<PullHead, GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("read pull request {repo}#{number}");
        let route = format!("/repos/{repo}/pulls/{number}");
        let value = self.with_retry(&what, false, |_| client.get::<Value, _, ()>(&route, None)).await?;
        let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        Ok(PullHead {
            sha: text("/head/sha").ok_or_else(|| GitHubError::Unexpected {
                what: what.clone(),
                detail: "no head.sha".to_owned(),
            })?,
            branch: text("/head/ref").unwrap_or_default(),
            repo: text("/head/repo/full_name"),
            state: text("/state").unwrap_or_else(|| "open".to_owned()),
            base: text("/base/ref"),
        })
    }

    /// The commit a branch points at.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn branch_head(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
    ) -> Result<String, GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("read branch {branch} of {repo}");
        let route = format!("/repos/{repo}/commits/{branch}");
        let value = self.with_retry(&what, false, |_| client.get::<Value, _, ()>(&route, None)).await?;
        value["sha"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GitHubError::Unexpected { what, detail: "no sha".to_owned() })
    }

    /// Opens the task's check run `berth/<kind>` (queued or in progress),
    /// or finds the one an earlier attempt created (by its external id, the
    /// task id).
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn start_check_run(
        &self,
        installation: u64,
        repo: &str,
        run: &NewCheckRun<'_>,
        asked_before: bool,
    ) -> Result<u64, GitHubError> {
        let client = self.installation(installation)?;
        let name = run.kind.spec().check_run_name;
        let (head_sha, task_id) = (run.head_sha, run.task_id);
        let what = format!("create check run {name} on {repo}@{head_sha}");
        let body = run.to_json();
        let create = format!("/repos/{repo}/check-runs");
        let find = format!("/repos/{repo}/commits/{head_sha}/check-runs");
        let value = self
            .with_retry(&what, false, |attempt| {
                let (client, body, create, find, name) = (&client, &body, &create, &find, &name);
                async move {
                    if attempt > 1 || asked_before {
                        // An earlier attempt (in this process or before a restart)
                        // may have been applied before its answer was lost.
                        let query = [("check_name", *name), ("filter", "all")];
                        let found: Value = client.get(find, Some(&query)).await?;
                        if let Some(run) = found["check_runs"]
                            .as_array()
                            .and_then(|runs| runs.iter().find(|run| run["external_id"] == task_id.as_str()))
                        {
                            return Ok(run.clone());
                        }
                    }
                    client.post::<_, Value>(create, Some(body)).await
                }
            })
            .await?;
        value["id"]
            .as_u64()
            .ok_or_else(|| GitHubError::Unexpected { what, detail: "no check run id".to_owned() })
    }

    /// Changes an open check run's output, and its status when `status` is
    /// given (queued to in progress). Never completes it, so a late update
    /// cannot reopen a finished run. One attempt: progress is best effort,
    /// and the next update or the final report says more.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn update_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        status: Option<CheckRunStatus>,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("update check run {check_run} on {repo}");
        let mut body = json!({"output": output.to_json()});
        if let Some(status) = status {
            body["status"] = json!(status.as_str());
        }
        let route = format!("/repos/{repo}/check-runs/{check_run}");
        self.with_attempts(&what, false, 1, |_| client.patch::<Value, _, _>(&route, Some(&body))).await?;
        Ok(())
    }

    /// Completes a check run. Completing it again with the same result changes nothing.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn complete_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        conclusion: &str,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("complete check run {check_run} on {repo}");
        let body = json!({
            "status": "completed",
            "conclusion": conclusion,
            "output": output.to_json(),
        });
        let route = format!("/repos/{repo}/check-runs/{check_run}");
        self.with_retry(&what, false, |_| client.patch::<Value, _, _>(&route, Some(&body))).await?;
        Ok(())
    }

    /// Reacts to the triggering comment (idempotent on GitHub's side).
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn react(
        &self,
        installation: u64,
        repo: &str,
        comment_id: u64,
        content: &str,
    ) -> Result<(), GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("react to comment {comment_id} on {repo}");
        let body = json!({"content": content});
        let route = format!("/repos/{repo}/issues/comments/{comment_id}/reactions");
        self.with_retry(&what, false, |_| client.post::<_, Value>(&route, Some(&body))).await?;
        Ok(())
    }

    /// Revokes a worker's installation token once its task has ended, so a
    /// copy left anywhere is useless at once rather than within the hour.
    ///
    /// # Errors
    /// GitHub failures (the token still expires by itself).
    pub async fn revoke_token(&self, token: &Secret) -> Result<(), GitHubError> {
        let what = "revoke a worker token";
        let client = Octocrab::builder()
            .base_uri(self.api_url.as_str())
            .map_err(|err| GitHubError::Setup(err.to_string()))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .personal_token(token.expose().to_owned())
            .build()
            .map_err(|err| GitHubError::Setup(err.to_string()))?;
        let result = client._delete("/installation/token", None::<&()>).await;
        match result {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(GitHubError::Rejected {
                what: what.to_owned(),
                status: response.status().as_u16(),
                message: "not revoked".to_owned(),
            }),
            Err(err) => Err(GitHubError::Unexpected { what: what.to_owned(), detail: err.to_string() }),
        }
    }

    /// The login of the App's bot user, `<slug>[bot]`, asked once of `GET /app`.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn bot_login(&self) -> Result<String, GitHubError> {
        let login = self
            .bot_login
            .get_or_try_init(|| async {
                let what = "read the App's own description";
                let app = self.with_retry(what, true, |_| self.app.get::<Value, _, ()>("/app", None)).await?;
                match app["slug"].as_str().filter(|slug| !slug.is_empty()) {
                    Some(slug) => Ok(format!("{slug}[bot]")),
                    None => {
                        Err(GitHubError::Unexpected { what: what.to_owned(), detail: "no slug".to_owned() })
                    }
                }
            })
            .await?;
        Ok(login.clone())
    }

    /// Posts the task's result comment, or edits the one that carries its
    /// marker and was written by the App's bot user: anyone can copy the
    /// marker (the task id is public in the check run), and such a comment is
    /// left alone. Returns the comment's id.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn upsert_comment(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        task_id: &TaskId,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let id = self.upsert_marked(installation, repo, number, &comment_marker(task_id), body).await?;
        debug!(repo, number, %task_id, "result comment written");
        Ok(id)
    }

    /// Posts the answer to a refused command, keyed by `key` as a task's
    /// result comment is by its id (the hidden marker [`notice_marker`]), so
    /// that posting it again edits the one comment in place. Returns its id.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn upsert_notice(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        key: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let id = self.upsert_marked(installation, repo, number, &notice_marker(key), body).await?;
        debug!(repo, number, key, "refusal answered");
        Ok(id)
    }

    /// Posts `body` under `marker`, or edits the bot's comment that carries it.
    async fn upsert_marked(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let client = self.installation(installation)?;
        let bot = self.bot_login().await?;
        let text = format!("{marker}\n{}", truncate(body, 60_000));
        let what = format!("comment on {repo}#{number}");
        let list = format!("/repos/{repo}/issues/{number}/comments");
        let value = self
            .with_retry(&what, false, |_| {
                let (client, list, text, bot) = (&client, &list, &text, &bot);
                async move {
                    // Look for our marker on every attempt: an earlier attempt may have posted.
                    let mut page = 1_u32;
                    loop {
                        let query = [("per_page", "100".to_owned()), ("page", page.to_string())];
                        let comments: Value = client.get(list, Some(&query)).await?;
                        let comments = comments.as_array().cloned().unwrap_or_default();
                        if let Some(existing) = comments.iter().find(|comment| {
                            comment["body"].as_str().is_some_and(|body| body.contains(marker))
                                && is_author(comment, bot)
                        }) {
                            if existing["body"].as_str() == Some(text.as_str()) {
                                return Ok(existing.clone());
                            }
                            let id = existing["id"].as_u64().unwrap_or_default();
                            let edit = format!("/repos/{repo}/issues/comments/{id}");
                            return client.patch::<Value, _, _>(&edit, Some(&json!({"body": text}))).await;
                        }
                        if comments.len() < 100 {
                            break;
                        }
                        page += 1;
                    }
                    client.post::<_, Value>(list, Some(&json!({"body": text}))).await
                }
            })
            .await?;
        value["id"]
            .as_u64()
            .ok_or_else(|| GitHubError::Unexpected { what, detail: "no comment id".to_owned() })
    }

    /// The review comments on a pull request's lines, oldest first, at most
    /// [`MAX_REVIEW_COMMENTS`] of them.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn review_comments(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> Result<Vec<ReviewComment>, GitHubError> {
        let client = self.installation(installation)?;
        let what = format!("read the review comments of {repo}#{number}");
        let route = format!("/repos/{repo}/pulls/{number}/comments");
        let mut comments = Vec::new();
        for page in 1..=MAX_REVIEW_COMMENTS.div_ceil(100) {
            let query = [("per_page", "100".to_owned()), ("page", page.to_string())];
            let value =
                self.with_retry(&what, false, |_| client.get::<Value, _, _>(&route, Some(&query))).await?;
            let listed = value.as_array().cloned().unwrap_or_default();
            comments.extend(listed.iter().map(|comment| {
                let text = |name: &str| comment[name].as_str().unwrap_or_default().to_owned();
                ReviewComment {
                    author: comment["user"]["login"].as_str().unwrap_or("ghost").to_owned(),
                    path: text("path"),
                    line: comment["line"].as_u64().or_else(|| comment["original_line"].as_u64()),
                    body: text("body"),
                }
            }));
            if listed.len() < 100 {
                break;
            }
        }
        comments.truncate(MAX_REVIEW_COMMENTS);
        Ok(comments)
    }

    /// Opens a pull request from `branch` to `base`, or returns the open one
    /// that already exists for that branch. Returns its number and URL.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn ensure_pull_request(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<(u64, String), GitHubError> {
        let client = self.installation(installation)?;
        let owner = repo.split('/').next().unwrap_or(repo);
        let what = format!("open a pull request from {branch} on {repo}");
        let route = format!("/repos/{repo}/pulls");
        let value = self
            .with_retry(&what, false, |_| {
                let (client, route) = (&client, &route);
                async move {
                    let query = [("head", format!("{owner}:{branch}")), ("state", "open".to_owned())];
                    let existing: Value = client.get(route, Some(&query)).await?;
                    if let Some(pull) = existing.as_array().and_then(|pulls| pulls.first()) {
                        return Ok(pull.clone());
                    }
                    let create = json!({"title": title, "head": branch, "base": base, "body": body});
                    client.post::<_, Value>(route, Some(&create)).await
                }
            })
            .await?;
        let number = value["number"]
            .as_u64()
            .ok_or_else(|| GitHubError::Unexpected { what, detail: "no number".to_owned() })?;
        Ok((number, value["html_url"].as_str().unwrap_or_default().to_owned()))
    }

    /// One page of the App's webhook deliveries, newest first: the newest
    /// hundred with no `cursor`, else the hundred from `cursor` on.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn deliveries_page(&self, cursor: Option<&str>) -> Result<DeliveryPage, GitHubError> {
        let mut query = vec![("per_page", "100".to_owned())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        let page: octocrab::Page<Value> = self
            .with_retry("list the App's webhook deliveries", true, |_| {
                self.app.get::<octocrab::Page<Value>, _, _>("/app/hook/deliveries", Some(&query))
            })
            .await?;
        Ok(DeliveryPage {
            deliveries: page.items.iter().filter_map(Delivery::from_json).collect(),
            next: page.next.as_ref().and_then(|link| cursor_of(&link.to_string())),
        })
    }

    /// Asks GitHub to deliver one delivery again.
    ///
    /// # Errors
    /// GitHub failures.
    pub async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        let what = format!("ask for redelivery of delivery {delivery_id}");
        let route = format!("/app/hook/deliveries/{delivery_id}/attempts");
        self.with_retry(&what, true, |_| self.app.post::<_, Value>(&route, None::<&()>)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
