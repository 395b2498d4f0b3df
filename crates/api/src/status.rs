//! The status API: `GET /api/tasks`, `GET /api/tasks/{id}`,
//! `GET /api/tasks/{id}/logs` (server-sent events with `?follow=true`) and
//! `POST /api/tasks/{id}/cancel`, all behind the admin token.
//!
//! Tasks and their history come from the journal; labels and logs come from
//! the task's container through a dispatcher of the status API's own, once
//! the engine is reachable, and a finished task's log from the file the
//! runner kept of it (`runner::logs`); a cancel is recorded through the
//! runner, which carries it out.
//! This module decides nothing about a task itself. [`Admin`], the token
//! check, also guards the dashboard (its sessions and sign-in limit) and,
//! when `BERTH_METRICS_TOKEN` is set, `/metrics`. Every `/api/*` answer
//! says `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use core_types::{Secret, TaskId, TaskKind};
use dispatcher::{ContainerStatus, Dispatcher, LogChunk, LogStream, ManagedContainer};

use crate::engine::Engine;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::error::ApiError;
use domain::request::CancelCause;
use domain::tasks::{PullRequestRef, TaskRecord, TaskState};
use journal::Journal;
use runner::Runner;

/// How many of a worker's last log lines the plain logs route returns.
const LOG_TAIL_LINES: u64 = 10_000;
/// At most this many bytes of them (the follow stream is not bounded: it streams).
const LOG_TAIL_BYTES: usize = 4 << 20;

/// The dashboard's session cookie: a random session id, never the token.
pub const SESSION_COOKIE: &str = "berth_token";

/// How long a dashboard session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Dashboard sessions kept at once; past it the one closest to expiry goes.
const MAX_SESSIONS: usize = 256;

/// Failed sign-ins a client address may make within [`SIGN_IN_WINDOW`];
/// the next attempt, right or wrong, is answered 429.
pub const SIGN_IN_FAILURES: usize = 5;

/// The window of [`SIGN_IN_FAILURES`].
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses whose failed sign-ins are remembered at most.
const MAX_SIGN_IN_CLIENTS: usize = 10_000;

/// Tasks `GET /api/tasks` returns when the query names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// The largest `limit` `GET /api/tasks` accepts.
pub const MAX_LIMIT: usize = 1000;

/// Longest log line sent as one event; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// Who may use `/api/*` and the dashboard, and what their handlers reach:
/// the admin token (kept only as digests), the dispatcher (containers'
/// labels and logs) and the runner (cancels) once the engine answers, and
/// where links to GitHub point. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    token: Option<Arc<TokenDigest>>,
    metrics_token: Option<Arc<TokenDigest>>,
    sessions: Arc<Sessions>,
    sign_ins: Arc<SignInLimit>,
    dispatcher: Arc<OnceLock<Dispatcher<Engine>>>,
    runner: Arc<OnceLock<Arc<Runner<Engine>>>>,
    links: Arc<Links>,
    /// Where finished tasks' logs are kept (`<state>/logs`), if anywhere.
    kept_logs: Option<Arc<std::path::PathBuf>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<redacted>"))
            .field("dispatcher", &self.dispatcher.get().is_some())
            .field("runner", &self.runner.get().is_some())
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

/// What is kept of a token: presented tokens are hashed and the digests
/// compared in constant time, so neither their content nor their length
/// leaks through timing, and the token itself is not kept at all.
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn new(token: &Secret) -> Self {
        Self(digest(token.expose()))
    }

    fn matches(&self, presented: &str) -> bool {
        bool::from(digest(presented).ct_eq(&self.0))
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The dashboard's sessions, kept in memory only (a restart signs everyone
/// out): the digest of each random id and when it expires.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Sessions {
    /// A new session valid until `now` + [`SESSION_TTL`]; its id.
    pub(crate) fn create(&self, now: Instant) -> Result<String, ApiError> {
        let id = random_id()?;
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|_, expires| *expires > now);
        while live.len() >= MAX_SESSIONS {
            let Some(soonest) = live.iter().min_by_key(|(_, expires)| **expires).map(|(key, _)| *key) else {
                break;
            };
            live.remove(&soonest);
        }
        live.insert(digest(&id), now + SESSION_TTL);
        Ok(id)
    }

    /// Whether `presented` is a live session at `now`.
    pub(crate) fn valid(&self, presented: &str, now: Instant) -> bool {
        let key = digest(presented);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(&key) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                live.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Ends the session `presented`, if it is one.
    pub(crate) fn revoke(&self, presented: &str) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&digest(presented));
    }
}

/// 32 random bytes from the kernel, in hex (sessions; `berth setup`'s key and states).
pub(crate) fn random_id() -> Result<String, ApiError> {
    let mut bytes = [0_u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut urandom| urandom.read_exact(&mut bytes)).map_err(
        |err| {
            warn!(error = %err, "cannot read /dev/urandom for a session id");
            ApiError::Unavailable("no session can be made now".to_owned())
        },
    )?;
    Ok(hex::encode(bytes))
}

/// Failed sign-ins per client address (IPv6 by its /64, which one client
/// usually has whole), over the last [`SIGN_IN_WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct SignInLimit {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SignInLimit {
    fn key(client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let segments = v6.segments();
                IpAddr::from([segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0])
            }
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            IpAddr::V4(_) => client,
        }
    }

    /// Whether `client` may try now.
    ///
    /// # Errors
    /// [`ApiError::TooManyAttempts`] after [`SIGN_IN_FAILURES`] failures within the window.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), ApiError> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(recent) = failures.get(&Self::key(client)) else { return Ok(()) };
        let window: Vec<&Instant> =
            recent.iter().filter(|at| now.saturating_duration_since(**at) < SIGN_IN_WINDOW).collect();
        if window.len() < SIGN_IN_FAILURES {
            return Ok(());
        }
        let oldest = window.first().map_or(now, |at| **at);
        let wait = SIGN_IN_WINDOW.saturating_sub(now.saturating_duration_since(oldest));
        Err(ApiError::TooManyAttempts { retry_after: wait.as_secs().max(1) })
    }

    /// Counts a failed sign-in of `client`.
    pub(crate) fn failed(&self, client: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_SIGN_IN_CLIENTS {
            failures.retain(|_, recent| {
                recent.back().is_some_and(|at| now.saturating_duration_since(*at) < SIGN_IN_WINDOW)
            });
            if failures.len() >= MAX_SIGN_IN_CLIENTS {
                // More addresses failing within a minute than can be kept:
                // forget them rather than grow without bound.
                failures.clear();
            }
        }
        let recent = failures.entry(Self::key(client)).or_default();
        recent.push_back(now);
        while recent.len() > SIGN_IN_FAILURES {
            recent.pop_front();
        }
    }
}

/// Which credentials a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// Only `Authorization: Bearer <token>`: routes that change things, so
    /// that no cross-site request can ride on the dashboard's cookie.
    Bearer,
    /// The bearer header or the dashboard's session cookie: reading routes,
    /// including the log stream `EventSource` opens without headers.
    BearerOrCookie,
}

impl Admin {
    /// The admin side of a daemon: `token` unset turns `/api/*` and the
    /// dashboard off; `github_api_url` decides where links point.
    pub fn new(token: Option<&Secret>, github_api_url: &str) -> Self {
        Self {
            token: token.map(|token| Arc::new(TokenDigest::new(token))),
            metrics_token: None,
            sessions: Arc::default(),
            sign_ins: Arc::default(),
            dispatcher: Arc::default(),
            runner: Arc::default(),
            links: Arc::new(Links::new(github_api_url)),
            kept_logs: None,
        }
    }

    /// Serves finished tasks' logs from the files kept under `dir`.
    #[must_use]
    pub fn with_kept_logs(mut self, dir: std::path::PathBuf) -> Self {
        self.kept_logs = Some(Arc::new(dir));
        self
    }

    /// The log kept of a finished task, if one was. A file that cannot be
    /// read reads as none (and is logged).
    pub fn kept_log(&self, task_id: &TaskId) -> Option<runner::logs::KeptLog> {
        let dir = self.kept_logs.as_deref()?;
        runner::logs::read_kept(dir, task_id).unwrap_or_else(|err| {
            warn!(task_id = %task_id, error = %err, "could not read the task's kept log");
            None
        })
    }

    /// Puts `/metrics` behind `token` (a bearer token); `None` leaves it open.
    #[must_use]
    pub fn with_metrics_token(mut self, token: Option<&Secret>) -> Self {
        self.metrics_token = token.map(|token| Arc::new(TokenDigest::new(token)));
        self
    }

    /// Whether the request may read `/metrics`.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when a metrics token is set and the
    /// request does not carry it as a bearer token.
    pub fn authorize_metrics(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.metrics_token {
            None => Ok(()),
            Some(token) if bearer(headers).is_some_and(|presented| token.matches(presented)) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized),
        }
    }

    /// No admin token: `/api/*` and the dashboard answer 403.
    pub fn disabled() -> Self {
        Self::new(None, "https://api.github.com")
    }

    /// Hands over the dispatcher once the engine answers; until then the
    /// routes that read containers (labels, logs) answer without them or 503.
    pub fn set_dispatcher(&self, dispatcher: Dispatcher<Engine>) {
        if self.dispatcher.set(dispatcher).is_err() {
            warn!("a dispatcher was handed to the status API twice; keeping the first");
        }
    }

    /// Hands over the runner once the engine answers; until then a cancel
    /// answers 503.
    pub fn set_runner(&self, runner: Arc<Runner<Engine>>) {
        if self.runner.set(runner).is_err() {
            warn!("the runner was handed to the status API twice; keeping the first");
        }
    }

    fn dispatcher(&self) -> Result<&Dispatcher<Engine>, ApiError> {
        self.dispatcher.get().ok_or_else(engine_unavailable)
    }

    fn runner(&self) -> Result<&Arc<Runner<Engine>>, ApiError> {
        self.runner.get().ok_or_else(engine_unavailable)
    }

    /// Where links to GitHub point.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Whether the request carries the admin token in a form `accepted`.
    ///
    /// # Errors
    /// [`ApiError::ApiDisabled`] when no token is configured, else
    /// [`ApiError::Unauthorized`] when the credentials are missing or wrong.
    pub fn authorize(&self, headers: &HeaderMap, accepted: Credentials) -> Result<(), ApiError> {
        let Some(token) = &self.token else { return Err(ApiError::ApiDisabled) };
        if let Some(presented) = bearer(headers) {
            // A wrong bearer token is refused even with a good cookie beside it.
            return if token.matches(presented) { Ok(()) } else { Err(ApiError::Unauthorized) };
        }
        let now = Instant::now();
        if accepted == Credentials::BearerOrCookie
            && cookies(headers, SESSION_COOKIE).any(|value| self.sessions.valid(value, now))
        {
            return Ok(());
        }
        Err(ApiError::Unauthorized)
    }

    /// Signs in with a token typed into the dashboard's login form: a new
    /// session id (random, valid for [`SESSION_TTL`]) when it is the admin
    /// token. A client address with [`SIGN_IN_FAILURES`] failures in the
    /// last [`SIGN_IN_WINDOW`] is refused without the token being looked at.
    ///
    /// # Errors
    /// As [`Admin::authorize`], and [`ApiError::TooManyAttempts`].
    pub fn sign_in(&self, presented: &str, client: IpAddr) -> Result<String, ApiError> {
        let Some(token) = &self.token else { return Err(ApiError::ApiDisabled) };
        let now = Instant::now();
        self.sign_ins.check(client, now)?;
        if token.matches(presented) {
            self.sessions.create(now)
        } else {
            self.sign_ins.failed(client, now);
            Err(ApiError::Unauthorized)
        }
    }

    /// Ends the sessions whose cookies the request carries.
    pub fn sign_out(&self, headers: &HeaderMap) {
        for value in cookies(headers, SESSION_COOKIE) {
            self.sessions.revoke(value);
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn engine_unavailable() -> ApiError {
    ApiError::Unavailable("the container engine is not reachable yet; see /readyz".to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The values of every cookie called `name`.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Where a task's links point: github.com and GitHub Enterprise get web
/// links; any other API (a local fake) gets links into the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    web: Option<String>,
    api: String,
}

impl Links {
    /// Links for the GitHub whose REST base is `github_api_url`.
    pub fn new(github_api_url: &str) -> Self {
        let api = github_api_url.trim_end_matches('/').to_owned();
        let web = if api.eq_ignore_ascii_case("https://api.github.com") {
            Some("https://github.com".to_owned())
        } else {
            api.strip_suffix("/api/v3").map(str::to_owned)
        };
        Self { web, api }
    }

    /// GitHub's web address: github.com, the Enterprise host, or, for any
    /// other API (a local fake, which serves GitHub's pages too), the API's base.
    pub fn web_base(&self) -> &str {
        self.web.as_deref().unwrap_or(&self.api)
    }

    /// The issue (implement) or pull request (review) a task works on.
    pub fn subject(&self, task: &TaskRecord) -> String {
        let subject = task.kind.spec().subject;
        match &self.web {
            Some(web) => format!("{web}/{}/{}/{}", task.repo, subject.web_segment(), task.number),
            None => format!("{}/repos/{}/{}/{}", self.api, task.repo, subject.api_segment(), task.number),
        }
    }

    /// The check run that reports a task.
    pub fn check_run(&self, repo: &str, check_run: u64) -> String {
        match &self.web {
            Some(web) => format!("{web}/{repo}/runs/{check_run}"),
            None => format!("{}/repos/{repo}/check-runs/{check_run}", self.api),
        }
    }

    /// The pull request a review works on, or the one an implement task opened.
    pub fn pull_request(&self, task: &TaskRecord) -> Option<String> {
        match task.kind {
            TaskKind::Review => Some(self.subject(task)),
            TaskKind::Implement => match task.outcome()?.pull_request.as_ref()? {
                PullRequestRef::Opened { url: Some(url), .. } => Some(url.clone()),
                // GitHub gave no URL: made from the number.
                PullRequestRef::Opened { number, url: None } => Some(match &self.web {
                    Some(web) => format!("{web}/{}/pull/{number}", task.repo),
                    None => format!("{}/repos/{}/pulls/{number}", self.api, task.repo),
                }),
                // Pushed, and no pull request yet.
                PullRequestRef::Branch(_) => None,
            },
        }
    }
}

/// A task's state as the status API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateWord {
    /// Waiting for a worker slot.
    Queued,
    /// Its worker was created.
    Dispatched,
    /// Ended.
    Finished,
}

impl StateWord {
    /// The word for `state`.
    pub fn of(state: &TaskState) -> Self {
        match state {
            TaskState::Queued => StateWord::Queued,
            TaskState::Dispatched => StateWord::Dispatched,
            TaskState::Finished { .. } => StateWord::Finished,
        }
    }
}

/// A task as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// The task id.
    pub task_id: String,
    /// `review` or `implement`.
    pub kind: TaskKind,
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// `queued`, `dispatched` or `finished`.
    pub state: StateWord,
    /// Who triggered it.
    pub sender: String,
    /// The delivery that created it.
    pub delivery: String,
    /// The commit it works on, once known.
    pub head_sha: Option<String>,
    /// The branch it works on, once known.
    pub head_ref: Option<String>,
    /// When it was accepted (Unix seconds).
    pub accepted_unix: u64,
    /// When its worker started.
    pub started_unix: Option<u64>,
    /// When it finished.
    pub finished_unix: Option<u64>,
    /// A cancel asked for and not yet carried out (or carried out, once finished).
    pub cancel: Option<CancelView>,
    /// How it ended, once finished.
    pub outcome: Option<OutcomeView>,
    /// The check run reporting it, once created.
    pub check_run: Option<u64>,
    /// Where to look on GitHub.
    pub links: LinkView,
}

/// A cancel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelView {
    /// Why: `command`, `closed`, `superseded` or `operator`.
    pub cause: CancelCause,
    /// Who asked.
    pub by: String,
    /// The sentence for the report.
    pub reason: String,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeView {
    /// The check run's conclusion (`success`, `failure`, `cancelled`, `timed_out`, `neutral`).
    pub conclusion: String,
    /// The report's title.
    pub title: Option<String>,
    /// The report's summary (Markdown).
    pub summary: Option<String>,
    /// The worker's exit code, when a worker ran.
    pub exit_code: Option<i64>,
    /// Whether the report reached GitHub.
    pub reported: bool,
}

/// Links to GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkView {
    /// The issue or pull request the task works on.
    pub issue: String,
    /// The pull request reviewed, or opened by an implement task.
    pub pull_request: Option<String>,
    /// The check run reporting the task.
    pub check_run: Option<String>,
}

impl TaskView {
    /// The view of a journal record.
    pub fn new(task: &TaskRecord, links: &Links) -> Self {
        Self {
            task_id: task.task_id.to_string(),
            kind: task.kind,
            repo: task.repo.clone(),
            number: task.number,
            state: StateWord::of(&task.state),
            sender: task.sender.clone(),
            delivery: task.delivery.clone(),
            head_sha: task.head_sha.clone(),
            head_ref: task.head_ref.clone(),
            accepted_unix: task.accepted_unix,
            started_unix: task.started_unix,
            finished_unix: task.outcome().map(|outcome| outcome.finished_unix),
            cancel: task.cancel.as_ref().map(|cancel| CancelView {
                cause: cancel.cause,
                by: cancel.by.clone(),
                reason: cancel.reason.clone(),
            }),
            outcome: task.outcome().map(|outcome| OutcomeView {
                conclusion: outcome.conclusion.as_str().to_owned(),
                title: Some(outcome.title.clone()),
                summary: Some(outcome.summary.clone()),
                exit_code: outcome.exit_code,
                reported: task.reported,
            }),
            check_run: task.check_run,
            links: LinkView {
                issue: links.subject(task),
                pull_request: links.pull_request(task),
                check_run: task.check_run.map(|check_run| links.check_run(&task.repo, check_run)),
            },
        }
    }
}

/// `GET /api/tasks/{id}`: the task, and its container when one exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskDetail {
    /// The task.
    #[serde(flatten)]
    pub task: TaskView,
    /// Its container's labels (`berth.*`), when the container exists.
    pub labels: Option<BTreeMap<String, String>>,
    /// Its container, when it exists.
    pub container: Option<ContainerView>,
}

/// A task's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerView {
    /// The engine's id.
    pub id: String,
    /// Its name (`berth-<task id>`).
    pub name: String,
    /// `created`, `running`, `exited`, `removing` or `missing`.
    pub status: &'static str,
    /// The exit code, once exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
}

impl ContainerView {
    fn new(container: &ManagedContainer) -> Self {
        let (status, exit) = match &container.status {
            ContainerStatus::Created => ("created", None),
            ContainerStatus::Running { .. } => ("running", None),
            ContainerStatus::Exited(exit) => ("exited", Some(exit)),
            ContainerStatus::Removing => ("removing", None),
            ContainerStatus::Missing => ("missing", None),
        };
        Self {
            id: container.id.as_str().to_owned(),
            name: container.name.clone(),
            status,
            exit_code: exit.map(|exit| exit.code),
            oom_killed: exit.is_some_and(|exit| exit.oom_killed),
        }
    }
}

/// `GET /api/tasks`: a filter of the journal's tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<StateWord>,
    /// Only tasks of this repository (`owner/name`, any case).
    pub repo: Option<String>,
    /// Only tasks of this kind.
    pub kind: Option<TaskKind>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Default for TaskFilter {
    fn default() -> Self {
        Self { state: None, repo: None, kind: None, limit: DEFAULT_LIMIT }
    }
}

/// The query of `GET /api/tasks`, as text.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    repo: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
}

impl TaskFilter {
    fn parse(query: ListQuery) -> Result<Self, ApiError> {
        let state = match query.state.as_deref() {
            None => None,
            Some("queued") => Some(StateWord::Queued),
            Some("dispatched") => Some(StateWord::Dispatched),
            Some("finished") => Some(StateWord::Finished),
            Some(other) => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown state {other:?} (expected queued, dispatched or finished)"
                )));
            }
        };
        let kind = query
            .kind
            .as_deref()
            .map(str::parse::<TaskKind>)
            .transpose()
            .map_err(|err| ApiError::InvalidRequest(err.to_string()))?;
        let limit = match query.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
                _ => {
                    return Err(ApiError::InvalidRequest(format!(
                        "limit must be a number from 1 to {MAX_LIMIT}, not {text:?}"
                    )));
                }
            },
        };
        Ok(Self { state, repo: query.repo, kind, limit })
    }

    /// The tasks that pass, newest first, at most `limit`.
    pub fn select(&self, mut tasks: Vec<TaskRecord>) -> Vec<TaskRecord> {
        tasks.retain(|task| {
            self.state.is_none_or(|state| StateWord::of(&task.state) == state)
                && self.kind.is_none_or(|kind| task.kind == kind)
                && self.repo.as_ref().is_none_or(|repo| task.repo.eq_ignore_ascii_case(repo))
        });
        tasks.sort_by_key(|task| std::cmp::Reverse(task.seq));
        tasks.truncate(self.limit);
        tasks
    }
}

/// What the status routes share.
#[derive(Debug, Clone)]
pub struct StatusState {
    /// The journal.
    pub journal: Journal,
    /// The token check, the dispatcher, the runner and the links.
    pub admin: Admin,
}

impl StatusState {
    /// One task from the journal.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when the journal does not know it.
    pub fn task(&self, task_id: &TaskId) -> Result<TaskRecord, ApiError> {
        self.journal
            .task(task_id)
            .map_err(ApiError::Journal)?
            .ok_or_else(|| ApiError::NotFound(format!("task {task_id}")))
    }

    /// The task's container, when the engine is reachable and it exists.
    /// An engine failure reads as no container (and is logged).
    pub async fn container(&self, task_id: &TaskId) -> Option<ManagedContainer> {
        let dispatcher = self.admin.dispatcher().ok()?;
        match dispatcher.find(task_id).await {
            Ok(found) => found,
            Err(err) => {
                warn!(task_id = %task_id, error = %err, "could not look up the task's container");
                None
            }
        }
    }
}

/// The status routes, with the token check in front of each.
pub fn routes(state: StatusState) -> Router {
    Router::new()
        .route("/api/tasks", get(list_tasks))
        .route("/api/tasks/{id}", get(show_task))
        .route("/api/tasks/{id}/logs", get(task_logs))
        .route("/api/tasks/{id}/cancel", post(cancel_task))
        .route("/api/caches", get(list_caches))
        .route_layer(middleware::from_fn_with_state(state.admin.clone(), require_admin))
        .route_layer(middleware::map_response(api_headers))
        .with_state(state)
}

/// On every `/api/*` answer, refusals included: never cached (tasks,
/// summaries and logs are private and change), never sniffed (a log is
/// text, whatever a worker printed).
async fn api_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn require_admin(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let accepted = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Credentials::BearerOrCookie
    } else {
        Credentials::Bearer
    };
    match admin.authorize(request.headers(), accepted) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

fn task_id(path: Result<Path<String>, PathRejection>) -> Result<TaskId, ApiError> {
    let Path(id) = path.map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
    TaskId::new(id).map_err(|err| ApiError::InvalidRequest(err.to_string()))
}

async fn list_tasks(
    State(state): State<StatusState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
    let filter = TaskFilter::parse(query)?;
    let tasks = filter.select(state.journal.tasks().map_err(ApiError::Journal)?);
    let tasks: Vec<TaskView> = tasks.iter().map(|task| TaskView::new(task, state.admin.links())).collect();
    Ok(Json(serde_json::json!({ "tasks": tasks })))
}

/// The clone cache's mirrors of this instance: volume, repository, size
/// after the last refresh and last use (an empty list when the cache is off).
async fn list_caches(State(state): State<StatusState>) -> Result<Json<serde_json::Value>, ApiError> {
    let runner = state.admin.runner()?;
    let caches = runner.caches().await.map_err(|err| ApiError::Unavailable(format!("{err:#}")))?;
    Ok(Json(serde_json::json!({ "caches": caches })))
}

async fn show_task(
    State(state): State<StatusState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskDetail>, ApiError> {
    let task_id = task_id(path)?;
    let record = state.task(&task_id)?;
    let container = state.container(&task_id).await;
    Ok(Json(TaskDetail {
        task: TaskView::new(&record, state.admin.links()),
        labels: container.as_ref().map(|container| container.labels.clone()),
        container: container.as_ref().map(ContainerView::new),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    follow: Option<bool>,
}

async fn task_logs(
    State(state): State<StatusState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task_id = task_id(path)?;
    let Query(query) = query.map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
    let record = state.task(&task_id)?;
    // A finished task's container is removed; its log, when kept, is a file.
    if record.state.is_finished()
        && let Some(kept) = state.admin.kept_log(&task_id)
    {
        return Ok(kept_log_response(kept, query.follow == Some(true), &headers));
    }
    let dispatcher = state.admin.dispatcher()?;
    let container = dispatcher.find(&task_id).await.map_err(|err| {
        warn!(task_id = %task_id, error = %err, "could not look up the task's container");
        ApiError::Unavailable("the container engine did not answer".to_owned())
    })?;
    let Some(container) = container else {
        let reason = match record.state {
            TaskState::Finished { .. } => {
                "finished tasks' containers are removed, and no log was kept of this one (BERTH_LOG_KEEP, BERTH_LOG_RETENTION)"
            }
            TaskState::Queued => "it has not started yet",
            TaskState::Dispatched => "its container is gone",
        };
        return Err(ApiError::NoContainer { task_id: task_id.to_string(), reason });
    };
    if query.follow != Some(true) {
        // The end of it, bounded: a worker may have printed hundreds of megabytes.
        let text =
            dispatcher.logs_tail(&container.id, LOG_TAIL_LINES, LOG_TAIL_BYTES).await.map_err(|err| {
                warn!(task_id = %task_id, error = %err, "could not read the worker's logs");
                ApiError::Unavailable("the container engine did not answer".to_owned())
            })?;
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    // A reconnecting EventSource says which line it saw last; it gets the rest.
    let seen = last_event_id(&headers);
    let stream = dispatcher.logs(&container.id, true);
    Ok(Sse::new(follow_events(stream, seen)).keep_alive(KeepAlive::default()).into_response())
}

/// A finished task's kept log: as text, or with `follow` as the same events
/// a live worker's output gives (then `end`). Either way the header
/// `X-Berth-Log-Cut` says how many bytes of the output before it were left out.
fn kept_log_response(kept: runner::logs::KeptLog, follow: bool, headers: &HeaderMap) -> Response {
    let cut = [(HeaderName::from_static(LOG_CUT_HEADER), HeaderValue::from(kept.cut))];
    if !follow {
        return (cut, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], kept.text).into_response();
    }
    let seen = last_event_id(headers);
    let chunk: Result<LogChunk, dispatcher::DispatchError> = Ok(LogChunk::Stdout(kept.text.into()));
    let stream: LogStream = Box::pin(futures_util::stream::iter([chunk]));
    (cut, Sse::new(follow_events(stream, seen)).keep_alive(KeepAlive::default())).into_response()
}

/// The header that says how many bytes of a finished task's output were
/// left out before its kept log.
pub const LOG_CUT_HEADER: &str = "x-berth-log-cut";

fn last_event_id(headers: &HeaderMap) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The worker's output as events: one `message` per line, its line number as
/// the event id, then one `end` event when the container's output ends.
fn follow_events(stream: LogStream, seen: u64) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let state = Some((stream, LineSplitter::new(seen)));
    futures_util::stream::unfold(state, |state| async move {
        let (mut stream, mut lines) = state?;
        let (batch, next) = match stream.next().await {
            Some(Ok(chunk)) => (lines.push(&chunk), Some((stream, lines))),
            Some(Err(err)) => {
                warn!(error = %err, "the worker's log stream broke off");
                (lines.finish(), None)
            }
            None => (lines.finish(), None),
        };
        let mut events: Vec<Event> =
            batch.into_iter().map(|(id, line)| Event::default().id(id.to_string()).data(line)).collect();
        if next.is_none() {
            events.push(Event::default().event("end").data("the worker's output ended"));
        }
        Some((futures_util::stream::iter(events.into_iter().map(Ok)), next))
    })
    .flatten()
}

/// Cuts a container's output into numbered lines, one buffer per stream so
/// stdout and stderr never mix within a line. Lines numbered `seen` or lower
/// are dropped (a reconnecting client has them already), and so are empty
/// lines, which an `EventSource` would not show anyway.
#[derive(Debug, Default)]
pub struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    numbered: u64,
    seen: u64,
}

impl LineSplitter {
    /// A splitter for a client that has seen lines up to `seen`.
    pub fn new(seen: u64) -> Self {
        Self { seen, ..Self::default() }
    }

    /// The complete lines `chunk` ends.
    pub fn push(&mut self, chunk: &LogChunk) -> Vec<(u64, String)> {
        let mut pending = match chunk {
            LogChunk::Stdout(_) => std::mem::take(&mut self.stdout),
            LogChunk::Stderr(_) => std::mem::take(&mut self.stderr),
        };
        let mut lines = Vec::new();
        for &byte in chunk.bytes().iter() {
            if byte == b'\n' {
                self.emit(&mut pending, &mut lines);
            } else {
                pending.push(byte);
                if pending.len() >= MAX_LINE {
                    self.emit(&mut pending, &mut lines);
                }
            }
        }
        match chunk {
            LogChunk::Stdout(_) => self.stdout = pending,
            LogChunk::Stderr(_) => self.stderr = pending,
        }
        lines
    }

    /// What is left once the output ended: unterminated last lines.
    pub fn finish(&mut self) -> Vec<(u64, String)> {
        let mut lines = Vec::new();
        for mut pending in [std::mem::take(&mut self.stdout), std::mem::take(&mut self.stderr)] {
            if !pending.is_empty() {
                self.emit(&mut pending, &mut lines);
            }
        }
        lines
    }

    fn emit(&mut self, pending: &mut Vec<u8>, lines: &mut Vec<(u64, String)>) {
        self.numbered += 1;
        let text = String::from_utf8_lossy(pending.strip_suffix(b"\r").unwrap_or(pending)).into_owned();
        pending.clear();
        if self.numbered > self.seen && !text.is_empty() {
            lines.push((self.numbered, text));
        }
    }
}

async fn cancel_task(
    State(state): State<StatusState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let task_id = task_id(path)?;
    let record = state.task(&task_id)?;
    let finished = |record: &TaskRecord| {
        ApiError::Conflict(format!(
            "task {} already finished ({})",
            record.task_id,
            record.conclusion().map_or("no conclusion", |conclusion| conclusion.as_str())
        ))
    };
    if record.state.is_finished() {
        return Err(finished(&record));
    }
    let runner = state.admin.runner()?;
    let record = runner
        .request_cancel(&task_id, "operator")
        .await
        .map_err(ApiError::Journal)?
        .ok_or_else(|| ApiError::NotFound(format!("task {task_id}")))?;
    // It may have finished between the look and the request.
    if record.state.is_finished() {
        return Err(finished(&record));
    }
    info!(task_id = %task_id, "cancel requested through the status API");
    Ok((StatusCode::ACCEPTED, Json(TaskView::new(&record, state.admin.links()))))
}
