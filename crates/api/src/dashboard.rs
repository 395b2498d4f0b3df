//! The dashboard: one server-rendered page at `GET /` with the running and
//! queued tasks, recent outcomes and a live log tail of a selected task, and
//! a page per task at `GET /tasks/{id}` (what check runs and result comments
//! link to when `BERTH_PUBLIC_URL` is set): its state, times, outcome,
//! links, and its live or kept log. Signing in from a task page comes back
//! to it.
//!
//! It sits behind the admin token like `/api/*`: a bearer header, or the
//! `berth_token` cookie that the login form (`POST /login`) sets. The cookie
//! holds a random session id kept on the server, never the token; it
//! expires after eight hours and signing out revokes it. Sign-in failures
//! are limited per client address (five a minute, then 429). No token ever
//! travels in a URL. The HTML comes from `maud` templates, which escape
//! every value they splice, so everything from GitHub (titles, repository
//! names, summaries, logins) is escaped; a strict Content-Security-Policy
//! allows only the page's own script and style, served from
//! `/dashboard.js` and `/dashboard.css`. The script refreshes the tables from
//! `/dashboard/tasks` and follows a log with an `EventSource` on the status
//! API's SSE route. There is no build step. Changing things (cancel) stays
//! with the bearer-only API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use core_types::{TaskId, TaskKind};
use maud::{DOCTYPE, Markup, html};
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
        .route("/tasks/{id}", get(task_page))
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
    respond(StatusCode::OK, body)
}

/// `GET /tasks/{id}`: one task's page.
async fn task_page(State(state): State<StatusState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Ok(task_id) = TaskId::new(id.as_str()) else {
        let message = format!("{id:?} is not a task id.");
        return respond(StatusCode::BAD_REQUEST, notice_page("Berth: no such task", &message));
    };
    match state.admin.authorize(&headers, Credentials::BearerOrCookie) {
        Ok(()) => {}
        Err(ApiError::Unauthorized) => {
            let back = format!("/tasks/{}", task_id.as_str());
            return respond(StatusCode::UNAUTHORIZED, login_form(None, Some(&back)));
        }
        Err(err) => return refusal(&err),
    }
    let task = match state.journal.task(&task_id) {
        Ok(Some(task)) => task,
        Ok(None) => {
            let message = format!("No task {} is known to this Berth.", task_id.as_str());
            return respond(StatusCode::NOT_FOUND, notice_page("Berth: no such task", &message));
        }
        Err(err) => return refusal(&ApiError::Journal(err)),
    };
    respond(StatusCode::OK, render_task_page(&state, &task))
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
        Ok(body) => respond(StatusCode::OK, body),
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
    let back = form_value(&body, "next").and_then(|next| task_page_path(&next));
    match state.admin.sign_in(&presented, client) {
        Ok(session) => {
            info!("dashboard login");
            // No `Secure`: the daemon serves plain HTTP on a private address;
            // put TLS in front of it and the browser keeps the cookie to it.
            let cookie = format!(
                "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_TTL.as_secs()
            );
            redirect_to(back.as_deref().unwrap_or("/"), &cookie)
        }
        Err(ApiError::Unauthorized) => {
            info!(%client, "dashboard sign-in with a wrong token");
            respond(
                StatusCode::UNAUTHORIZED,
                login_form(Some("That is not the admin token."), back.as_deref()),
            )
        }
        Err(err @ ApiError::TooManyAttempts { .. }) => {
            let mut response = respond(err.status(), login_form(Some(&err.to_string()), back.as_deref()));
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
    redirect_to("/", &format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
}

/// `next` as a place to go back to after signing in: only a task page of
/// this Berth, so the form cannot be made to send anyone elsewhere.
fn task_page_path(next: &str) -> Option<String> {
    let id = next.strip_prefix("/tasks/")?;
    let id = TaskId::new(id).ok()?;
    Some(format!("/tasks/{}", id.as_str()))
}

fn redirect_to(location: &str, cookie: &str) -> Response {
    let Ok(location) = HeaderValue::from_str(location) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
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

fn respond(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(body.into_string()),
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
            html! {
                main.narrow {
                    h1 { "Berth" }
                    p { "The dashboard is off: no " code { (core_types::env_names::BERTH_ADMIN_TOKEN) } " is configured." }
                }
            },
        ),
        other => document(
            "Berth",
            html! {
                main.narrow {
                    h1 { "Berth" }
                    p { (other) }
                }
            },
        ),
    };
    respond(err.status(), body)
}

fn login_page(message: Option<&str>) -> Markup {
    login_form(message, None)
}

/// The sign-in form; `back`: the task page to return to.
fn login_form(message: Option<&str>, back: Option<&str>) -> Markup {
    document(
        "Berth: sign in",
        html! {
            main.narrow {
                h1 { "Berth" }
                @if let Some(message) = message {
                    p.error { (message) }
                }
                form method="post" action="/login" {
                    @if let Some(back) = back {
                        input type="hidden" name="next" value=(back);
                    }
                    label for="token" { "Admin token" }
                    input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

fn notice_page(title: &str, message: &str) -> Markup {
    document(
        title,
        html! {
            main.narrow {
                h1 { a href="/" { "Berth" } }
                p.error { (message) }
            }
        },
    )
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/dashboard.css";
                script src="/dashboard.js" defer {}
            }
            body { (body) }
        }
    }
}

fn render_page(state: &StatusState, selected: Option<&str>) -> Result<Markup, ApiError> {
    let tables = render_tables(state, selected)?;
    let details = render_selected(state, selected)?;
    Ok(document(
        "Berth",
        html! {
            header {
                h1 { "Berth" }
                form method="post" action="/logout" {
                    button type="submit" { "Sign out" }
                }
            }
            main {
                div id="tasks" { (tables) }
                (details)
            }
        },
    ))
}

/// The two tables; also what the script fetches to refresh them.
fn render_tables(state: &StatusState, selected: Option<&str>) -> Result<Markup, ApiError> {
    let tasks = state.journal.tasks().map_err(ApiError::Journal)?;
    let links = state.admin.links();
    let now = now_unix();
    let mut active: Vec<&TaskRecord> = tasks.iter().filter(|task| !task.state.is_finished()).collect();
    active.sort_by_key(|task| task.seq);
    let mut finished: Vec<&TaskRecord> = tasks.iter().filter(|task| task.state.is_finished()).collect();
    finished.sort_by_key(|task| std::cmp::Reverse(task.outcome().map_or(0, |outcome| outcome.finished_unix)));
    finished.truncate(RECENT_OUTCOMES);

    Ok(html! {
        section {
            h2 { "Running and queued (" (active.len()) ")" }
            @if active.is_empty() {
                p.empty { "Nothing is running or queued." }
            } @else {
                table id="active" {
                    thead {
                        tr { th { "Task" } th { "Kind" } th { "Repository" } th { "State" } th { "Since" } th { "By" } }
                    }
                    tbody {
                        @for task in &active {
                            tr id={ "task-" (task.task_id.as_str()) }
                                data-task=(task.task_id.as_str())
                                class=[selected_class(task, selected)] {
                                td { (task_link(task)) }
                                td { (task.kind) }
                                td { (subject_link(task, links)) }
                                td class={ "state-" (task.state.as_str()) } { (activity(task)) }
                                td { (ago(now, task.started_unix.unwrap_or(task.accepted_unix))) }
                                td { (task.sender) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Recent outcomes" }
            @if finished.is_empty() {
                p.empty { "No task has finished yet." }
            } @else {
                table id="finished" {
                    thead {
                        tr {
                            th { "Task" } th { "Kind" } th { "Repository" } th { "Conclusion" }
                            th { "Title" } th { "Took" } th { "Finished" }
                        }
                    }
                    tbody {
                        @for task in &finished {
                            @let conclusion = task.conclusion().map_or("unknown", |conclusion| conclusion.as_str());
                            tr id={ "task-" (task.task_id.as_str()) }
                                data-task=(task.task_id.as_str())
                                class=[selected_class(task, selected)] {
                                td { (task_link(task)) }
                                td { (task.kind) }
                                td { (subject_link(task, links)) }
                                td class={ "conclusion-" (css_word(conclusion)) } { (conclusion) }
                                td { (task.outcome().map_or("", |outcome| outcome.title.as_str())) }
                                td { (took(task)) }
                                td { (task.outcome().map(|outcome| ago(now, outcome.finished_unix)).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The selected task's details and its log tail.
fn render_selected(state: &StatusState, selected: Option<&str>) -> Result<Markup, ApiError> {
    let Some(selected) = selected else {
        return Ok(html! {
            section id="selected" {
                h2 { "Log" }
                p.empty { "Select a task to follow its log." }
            }
        });
    };
    let Ok(task_id) = TaskId::new(selected) else {
        return Ok(html! {
            section id="selected" {
                h2 { "Log" }
                p.error { (selected) " is not a task id." }
            }
        });
    };
    let Some(task) = state.journal.task(&task_id).map_err(ApiError::Journal)? else {
        return Ok(html! {
            section id="selected" {
                h2 { "Log" }
                p.error { "No task " (task_id.as_str()) " is known." }
            }
        });
    };
    let links = state.admin.links();
    let id = task.task_id.as_str();
    Ok(html! {
        section id="selected" data-task=(id) {
            h2 { "Task " code { (id) } }
            p { a id="task-page" href={ "/tasks/" (id) } { "Open its page" } }
            dl {
                dt { "Kind" } dd { (task.kind) }
                dt { "Repository" } dd { (subject_link(&task, links)) }
                dt { "State" } dd { (activity(&task)) }
                dt { "Triggered by" } dd { (task.sender) }
                @if let Some(check_run) = task.check_run {
                    dt { "Check run" }
                    dd { a href=(links.check_run(&task.repo, check_run)) rel="noreferrer" { (check_run) } }
                }
                @if let Some(outcome) = task.outcome() {
                    dt { "Outcome" }
                    dd class={ "conclusion-" (css_word(outcome.conclusion.as_str())) } {
                        (outcome.conclusion) ": " (outcome.title)
                    }
                }
            }
            @if let Some(outcome) = task.outcome() {
                h3 { "Summary" }
                pre.summary { (outcome.summary) }
            }
            (log_section(state, &task))
        }
    })
}

/// One task's page: everything Berth knows of it, and its log.
fn render_task_page(state: &StatusState, task: &TaskRecord) -> Markup {
    let links = state.admin.links();
    let id = task.task_id.as_str();
    let outcome = task.outcome();
    document(
        &format!("Berth: {} {}#{}", task.kind, task.repo, task.number),
        html! {
            header {
                h1 { a href="/" { "Berth" } }
                form method="post" action="/logout" {
                    button type="submit" { "Sign out" }
                }
            }
            main {
                section id="task" data-task=(id) {
                    h2 { (task.kind) " of " (subject_link(task, links)) }
                    p { "Task " code { (id) } }
                    dl {
                        dt { "State" } dd id="task-state" class={ "state-" (task.state.as_str()) } { (activity(task)) }
                        @if let Some(outcome) = outcome {
                            dt { "Outcome" }
                            dd id="task-outcome" class={ "conclusion-" (css_word(outcome.conclusion.as_str())) } {
                                (outcome.conclusion) ": " (outcome.title)
                            }
                        }
                        dt { "Triggered by" } dd { (task.sender) }
                        dt { "Accepted" } dd { (utc(task.accepted_unix)) }
                        @if let Some(started) = task.started_unix {
                            dt { "Started" } dd { (utc(started)) }
                        }
                        @if let Some(outcome) = outcome {
                            dt { "Finished" } dd { (utc(outcome.finished_unix)) }
                            dt { "Took" } dd { (took(task)) }
                        }
                        @if let Some(sha) = &task.head_sha {
                            dt { "Commit" } dd { code { (sha.get(..12).unwrap_or(sha)) } }
                        }
                        @if let Some(check_run) = task.check_run {
                            dt { "Check run" }
                            dd { a href=(links.check_run(&task.repo, check_run)) rel="noreferrer" { (check_run) } }
                        }
                        @if let (TaskKind::Implement, Some(url)) = (task.kind, links.pull_request(task)) {
                            dt { "Pull request" } dd { a href=(url) rel="noreferrer" { (url) } }
                        }
                        @if let Some(cancel) = &task.cancel {
                            dt { "Cancel" } dd { (cancel.reason) }
                        }
                    }
                    @if let Some(outcome) = outcome {
                        h3 { "Summary" }
                        pre.summary { (outcome.summary) }
                    }
                    (log_section(state, task))
                }
            }
        },
    )
}

/// The task's log: live while its worker runs, kept after it is removed.
fn log_section(state: &StatusState, task: &TaskRecord) -> Markup {
    let id = task.task_id.as_str();
    html! {
        h3 { "Log " span id="log-state" {} }
        @if task.state.is_finished() {
            @if let Some(kept) = state.admin.kept_log(&task.task_id) {
                p.empty {
                    "This task has finished and its container was removed; this is the log kept of it"
                    @if kept.cut > 0 { ", without the first " (kept.cut) " bytes" }
                    "."
                }
                pre id="kept-log" { (kept.text) }
            } @else {
                p.empty { "This task has finished; its container, and its log with it, was removed." }
            }
        } @else {
            pre id="log" data-follow={ "/api/tasks/" (id) "/logs?follow=true" } {}
        }
    }
}

/// A unix time as `2026-11-30 16:40:12 UTC`.
fn utc(unix: u64) -> String {
    let (days, seconds) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(i64::MAX - 719_468) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// `selected` on the row of the task the page shows.
fn selected_class(task: &TaskRecord, selected: Option<&str>) -> Option<&'static str> {
    (selected == Some(task.task_id.as_str())).then_some("selected")
}

fn task_link(task: &TaskRecord) -> Markup {
    let id = task.task_id.as_str();
    html! { a href={ "/?task=" (id) } { code { (id) } } }
}

fn subject_link(task: &TaskRecord, links: &Links) -> Markup {
    html! { a href=(links.subject(task)) rel="noreferrer" { (task.repo) "#" (task.number) } }
}

/// How long a finished task ran.
fn took(task: &TaskRecord) -> String {
    match (task.started_unix, task.outcome()) {
        (Some(started), Some(outcome)) => duration(outcome.finished_unix.saturating_sub(started)),
        _ => "not run".to_owned(),
    }
}

/// What an active task is doing, in a word or two.
fn activity(task: &TaskRecord) -> &'static str {
    match (&task.state, task.cancel.is_some(), task.started_unix.is_some()) {
        (TaskState::Finished { .. }, _, _) => "finished",
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

use core_types::web::form_value;

#[cfg(test)]
mod tests {
    use super::{task_page_path, utc};

    #[test]
    fn times_read_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_055_073), "2026-11-30 16:11:13 UTC");
    }

    #[test]
    fn sign_in_goes_back_only_to_a_task_page() {
        assert_eq!(task_page_path("/tasks/review-o-r-1-abc").as_deref(), Some("/tasks/review-o-r-1-abc"));
        assert_eq!(task_page_path("https://evil.example/tasks/x"), None);
        assert_eq!(task_page_path("//evil.example"), None);
        assert_eq!(task_page_path("/tasks/../../etc"), None);
        assert_eq!(task_page_path("/tasks/a b"), None);
    }
}
