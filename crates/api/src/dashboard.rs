//! The dashboard: one server-rendered page at `GET /` with the running and
//! queued tasks, recent outcomes and a live log tail of a selected task.
//!
//! It sits behind the admin token like `/api/*`: a bearer header, or the
//! `berth_token` cookie that the login form (`POST /login`) sets. The cookie
//! holds a random session id kept on the server, never the token; it
//! expires after eight hours and signing out revokes it. Sign-in failures
//! are limited per client address (five a minute, then 429). No token ever
//! travels in a URL. Everything from GitHub (titles, repository names,
//! summaries, logins) is escaped; a strict Content-Security-Policy allows
//! only the page's own script and style, served from `/dashboard.js` and
//! `/dashboard.css`. The script refreshes the tables from
//! `/dashboard/tasks` and follows a log with an `EventSource` on the status
//! API's SSE route. There is no build step. Changing things (cancel) stays
//! with the bearer-only API.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use core_types::TaskId;
use serde::Deserialize;
use tracing::info;

use crate::error::ApiError;
use crate::status::{Credentials, Links, SESSION_COOKIE, SESSION_TTL, StatusState};
use domain::tasks::{TaskRecord, TaskState};
use journal::now_unix;

/// Finished tasks the page lists.
const RECENT_OUTCOMES: usize = 25;

/// The sign-in form's body at most: it holds one token.
const LOGIN_BODY_LIMIT: usize = 4096;

const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Only the page's own script and style; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes(state: StatusState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/tasks", get(tables))
        .route("/login", post(login).layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)))
        .route("/logout", post(logout))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .with_state(state)
}

/// `?task=<id>`: the task whose details and log the page shows.
#[derive(Debug, Default, Deserialize)]
struct Selection {
    task: Option<String>,
}

async fn page(
    State(state): State<StatusState>,
    headers: HeaderMap,
    selection: Result<Query<Selection>, QueryRejection>,
) -> Response {
    if let Err(err) = state.admin.authorize(&headers, Credentials::BearerOrCookie) {
        return refusal(&err);
    }
    let selected = selection.ok().and_then(|Query(selection)| selection.task);
    let body = match render_page(&state, selected.as_deref()) {
        Ok(body) => body,
        Err(err) => return refusal(&err),
    };
    html(StatusCode::OK, body)
}

async fn tables(
    State(state): State<StatusState>,
    headers: HeaderMap,
    selection: Result<Query<Selection>, QueryRejection>,
) -> Response {
    if let Err(err) = state.admin.authorize(&headers, Credentials::BearerOrCookie) {
        return err.into_response();
    }
    let selected = selection.ok().and_then(|Query(selection)| selection.task);
    match render_tables(&state, selected.as_deref()) {
        Ok(body) => html(StatusCode::OK, body),
        Err(err) => err.into_response(),
    }
}

async fn login(
    State(state): State<StatusState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    // Without a peer (the router driven in tests) every client is one.
    let client = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(ConnectInfo(peer))| peer.ip());
    let presented = form_value(&body, "token").unwrap_or_default();
    match state.admin.sign_in(&presented, client) {
        Ok(session) => {
            info!("dashboard login");
            // No `Secure`: the daemon serves plain HTTP on a private address;
            // put TLS in front of it and the browser keeps the cookie to it.
            let cookie = format!(
                "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_TTL.as_secs()
            );
            redirect_home(&cookie)
        }
        Err(ApiError::Unauthorized) => {
            info!(%client, "dashboard sign-in with a wrong token");
            html(StatusCode::UNAUTHORIZED, login_page(Some("That is not the admin token.")))
        }
        Err(err @ ApiError::TooManyAttempts { .. }) => {
            let mut response = html(err.status(), login_page(Some(&err.to_string())));
            if let ApiError::TooManyAttempts { retry_after } = err {
                response.headers_mut().insert(header::RETRY_AFTER, retry_after.into());
            }
            response
        }
        Err(err) => refusal(&err),
    }
}

async fn logout(State(state): State<StatusState>, headers: HeaderMap) -> Response {
    state.admin.sign_out(&headers);
    redirect_home(&format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
}

fn redirect_home(cookie: &str) -> Response {
    let mut response =
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/"), (header::CACHE_CONTROL, "no-store")])
            .into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(body),
    )
        .into_response()
}

/// The page for a refused request: the login form when a token is needed,
/// else what is wrong, with the status the API would answer.
fn refusal(err: &ApiError) -> Response {
    let body = match err {
        ApiError::Unauthorized => login_page(None),
        ApiError::ApiDisabled => document(
            "Berth",
            "<main class=\"narrow\"><h1>Berth</h1><p>The dashboard is off: no \
             <code>BERTH_ADMIN_TOKEN</code> is configured.</p></main>",
        ),
        other => document(
            "Berth",
            &format!("<main class=\"narrow\"><h1>Berth</h1><p>{}</p></main>", escape(&other.to_string())),
        ),
    };
    html(err.status(), body)
}

fn login_page(message: Option<&str>) -> String {
    let message =
        message.map(|message| format!("<p class=\"error\">{}</p>", escape(message))).unwrap_or_default();
    document(
        "Berth: sign in",
        &format!(
            "<main class=\"narrow\"><h1>Berth</h1>{message}\
             <form method=\"post\" action=\"/login\">\
             <label for=\"token\">Admin token</label>\
             <input id=\"token\" type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
             <button type=\"submit\">Sign in</button></form></main>"
        ),
    )
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/dashboard.css\">\
         <script src=\"/dashboard.js\" defer></script></head>\n<body>{body}</body></html>\n",
        escape(title)
    )
}

fn render_page(state: &StatusState, selected: Option<&str>) -> Result<String, ApiError> {
    let tables = render_tables(state, selected)?;
    let details = render_selected(state, selected)?;
    Ok(document(
        "Berth",
        &format!(
            "<header><h1>Berth</h1><form method=\"post\" action=\"/logout\">\
             <button type=\"submit\">Sign out</button></form></header>\
             <main><div id=\"tasks\">{tables}</div>{details}</main>"
        ),
    ))
}

/// The two tables; also what the script fetches to refresh them.
fn render_tables(state: &StatusState, selected: Option<&str>) -> Result<String, ApiError> {
    let tasks = state.journal.tasks().map_err(ApiError::Journal)?;
    let links = state.admin.links();
    let now = now_unix();
    let mut active: Vec<&TaskRecord> =
        tasks.iter().filter(|task| task.state != TaskState::Finished).collect();
    active.sort_by_key(|task| task.seq);
    let mut finished: Vec<&TaskRecord> =
        tasks.iter().filter(|task| task.state == TaskState::Finished).collect();
    finished.sort_by_key(|task| std::cmp::Reverse(task.finished_unix.unwrap_or(0)));
    finished.truncate(RECENT_OUTCOMES);

    let mut out = String::new();
    let _ = write!(out, "<section><h2>Running and queued ({})</h2>", active.len());
    if active.is_empty() {
        out.push_str("<p class=\"empty\">Nothing is running or queued.</p>");
    } else {
        out.push_str(
            "<table id=\"active\"><thead><tr><th>Task</th><th>Kind</th><th>Repository</th>\
             <th>State</th><th>Since</th><th>By</th></tr></thead><tbody>",
        );
        for task in active {
            let since = task.started_unix.unwrap_or(task.accepted_unix);
            let _ = write!(
                out,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td><td>{}</td></tr>",
                row_attributes(task, selected),
                task_link(task),
                task.kind,
                subject_link(task, links),
                task.state.as_str(),
                activity(task),
                ago(now, since),
                escape(&task.sender),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section><section><h2>Recent outcomes</h2>");
    if finished.is_empty() {
        out.push_str("<p class=\"empty\">No task has finished yet.</p>");
    } else {
        out.push_str(
            "<table id=\"finished\"><thead><tr><th>Task</th><th>Kind</th><th>Repository</th>\
             <th>Conclusion</th><th>Title</th><th>Took</th><th>Finished</th></tr></thead><tbody>",
        );
        for task in finished {
            let conclusion = task.conclusion.as_deref().unwrap_or("unknown");
            let took = match (task.started_unix, task.finished_unix) {
                (Some(started), Some(finished)) => duration(finished.saturating_sub(started)),
                _ => "not run".to_owned(),
            };
            let _ = write!(
                out,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td class=\"conclusion-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                row_attributes(task, selected),
                task_link(task),
                task.kind,
                subject_link(task, links),
                css_word(conclusion),
                escape(conclusion),
                escape(task.title.as_deref().unwrap_or("")),
                took,
                task.finished_unix.map(|finished| ago(now, finished)).unwrap_or_default(),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    Ok(out)
}

/// The selected task's details and its log tail.
fn render_selected(state: &StatusState, selected: Option<&str>) -> Result<String, ApiError> {
    let Some(selected) = selected else {
        return Ok("<section id=\"selected\"><h2>Log</h2><p class=\"empty\">Select a task to follow its log.</p></section>"
            .to_owned());
    };
    let Ok(task_id) = TaskId::new(selected) else {
        return Ok(format!(
            "<section id=\"selected\"><h2>Log</h2><p class=\"error\">{} is not a task id.</p></section>",
            escape(selected)
        ));
    };
    let Some(task) = state.journal.task(&task_id).map_err(ApiError::Journal)? else {
        return Ok(format!(
            "<section id=\"selected\"><h2>Log</h2><p class=\"error\">No task {} is known.</p></section>",
            escape(task_id.as_str())
        ));
    };
    let links = state.admin.links();
    let mut out = format!(
        "<section id=\"selected\" data-task=\"{id}\"><h2>Task <code>{id}</code></h2><dl>\
         <dt>Kind</dt><dd>{kind}</dd><dt>Repository</dt><dd>{subject}</dd>\
         <dt>State</dt><dd>{state}</dd><dt>Triggered by</dt><dd>{sender}</dd>",
        id = escape(task.task_id.as_str()),
        kind = task.kind,
        subject = subject_link(&task, links),
        state = activity(&task),
        sender = escape(&task.sender),
    );
    if let Some(check_run) = task.check_run {
        let _ = write!(
            out,
            "<dt>Check run</dt><dd><a href=\"{}\" rel=\"noreferrer\">{check_run}</a></dd>",
            escape(&links.check_run(&task.repo, check_run))
        );
    }
    if let Some(conclusion) = &task.conclusion {
        let _ = write!(
            out,
            "<dt>Outcome</dt><dd class=\"conclusion-{}\">{}: {}</dd>",
            css_word(conclusion),
            escape(conclusion),
            escape(task.title.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</dl>");
    if let Some(summary) = &task.summary {
        let _ = write!(out, "<h3>Summary</h3><pre class=\"summary\">{}</pre>", escape(summary));
    }
    out.push_str("<h3>Log <span id=\"log-state\"></span></h3>");
    if task.state == TaskState::Finished {
        out.push_str(
            "<p class=\"empty\">This task has finished; its container, and its log with it, was removed.</p>",
        );
    } else {
        let _ = write!(
            out,
            "<pre id=\"log\" data-follow=\"/api/tasks/{}/logs?follow=true\"></pre>",
            escape(task.task_id.as_str())
        );
    }
    out.push_str("</section>");
    Ok(out)
}

fn row_attributes(task: &TaskRecord, selected: Option<&str>) -> String {
    let class = if selected == Some(task.task_id.as_str()) { " class=\"selected\"" } else { "" };
    format!(
        " id=\"task-{}\" data-task=\"{}\"{class}",
        escape(task.task_id.as_str()),
        escape(task.task_id.as_str())
    )
}

fn task_link(task: &TaskRecord) -> String {
    let id = escape(task.task_id.as_str());
    format!("<a href=\"/?task={id}\"><code>{id}</code></a>")
}

fn subject_link(task: &TaskRecord, links: &Links) -> String {
    format!(
        "<a href=\"{}\" rel=\"noreferrer\">{}#{}</a>",
        escape(&links.subject(task)),
        escape(&task.repo),
        task.number
    )
}

/// What an active task is doing, in a word or two.
fn activity(task: &TaskRecord) -> &'static str {
    match (task.state, task.cancel.is_some(), task.started_unix.is_some()) {
        (TaskState::Finished, _, _) => "finished",
        (_, true, _) => "cancelling",
        (TaskState::Queued, false, _) => "queued",
        (TaskState::Dispatched, false, true) => "running",
        (TaskState::Dispatched, false, false) => "starting",
    }
}

/// A conclusion as a class name: lowercase letters and `_` only.
fn css_word(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').collect()
}

fn ago(now: u64, then: u64) -> String {
    format!("{} ago", duration(now.saturating_sub(then)))
}

fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

pub use core_types::web::{escape, form_value};
