//! The status API and the dashboard through the whole router: the token
//! check, filters, the error statuses, escaping. No engine here, so the
//! routes that need one answer 503; the end-to-end tests cover them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use bytes::Bytes;
use core_types::{Secret, TaskId, TaskKind};
use dispatcher::LogChunk;
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::server::{AppState, router, router_with_admin};
use crate::status::{Admin, LineSplitter, Links};
use core_types::web::{escape, form_value};
use domain::request::TaskRequest;
use domain::signature::WebhookSecrets;
use domain::tasks::{Conclusion, Outcome, PullRequestRef, TaskState};
use domain::triggers::{Decision, Policy};
use journal::{Accepted, Journal};
use telemetry::Metrics;

const TOKEN: &str = "status-test-admin-token-0123456789";

/// The whole router over a journal of its own, with no engine; shared with
/// the hardening tests.
pub(super) struct Harness {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
    /// One admin side for every request, as in the daemon: sessions live in it.
    pub(super) admin: Admin,
}

impl Harness {
    fn new() -> Self {
        Self::with_secrets("status-test-webhook-secret", TOKEN)
    }

    /// A harness whose webhook secret and admin token are these.
    pub(super) fn with_secrets(webhook_secret: &str, admin_token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState {
            secrets: WebhookSecrets::new(Secret::new(webhook_secret), None),
            policy: Arc::new(Policy::default()),
            journal: Journal::open(dir.path()).unwrap(),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: Arc::new(Metrics::default()),
            wake: Arc::new(Notify::new()),
        };
        let admin = Admin::new(Some(&Secret::new(admin_token)), "https://api.github.com");
        Self { _dir: dir, state, admin }
    }

    pub(super) fn router(&self) -> Router {
        router_with_admin(self.state.clone(), self.admin.clone())
    }

    async fn task(&self, delivery: &str, kind: TaskKind, repo: &str, number: u64) -> TaskId {
        let request = TaskRequest {
            kind,
            repo: repo.to_owned(),
            number,
            head_sha: None,
            head_ref: None,
            clone_url: format!("https://example.invalid/{repo}.git"),
            repo_id: None,
            prompt: format!("/berth {kind}"),
            subject_title: String::new(),
            subject_body: String::new(),
            base_ref: None,
            sender: "octocat".to_owned(),
            installation: Some(7),
            comment_id: None,
            follow_up: false,
        };
        match self.state.journal.accept(delivery, "issue_comment", Decision::Queue(request)).await.unwrap() {
            Accepted::Queued { task } => task,
            other => panic!("expected a queued task, got {other:?}"),
        }
    }

    async fn finish(&self, task: &TaskId, conclusion: &str, title: &str, summary: &str) {
        let conclusion = Conclusion::parse(conclusion).expect("a conclusion GitHub knows");
        let (title, summary) = (title.to_owned(), summary.to_owned());
        self.state
            .journal
            .update_task(
                task,
                Box::new(move |record| {
                    record.started_unix = Some(record.accepted_unix);
                    let mut outcome = Outcome::new(conclusion, title, summary, record.accepted_unix + 75);
                    outcome.exit_code = Some(0);
                    record.state = TaskState::Finished { outcome };
                    record.check_run = Some(99);
                }),
            )
            .await
            .unwrap()
            .unwrap();
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

async fn send(router: Router, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router.oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn get(router: Router, uri: &str) -> Answer {
    send(router, "GET", uri, &[("authorization", &bearer())], "").await
}

fn ids(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["task_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn without_a_configured_token_every_api_route_is_refused() {
    let harness = Harness::new();
    let task = harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    for (method, uri) in [
        ("GET", "/api/tasks".to_owned()),
        ("GET", format!("/api/tasks/{task}")),
        ("GET", format!("/api/tasks/{task}/logs")),
        ("POST", format!("/api/tasks/{task}/cancel")),
    ] {
        let answer =
            send(router(harness.state.clone()), method, &uri, &[("authorization", &bearer())], "").await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert!(answer.json()["error"].as_str().unwrap().contains("BERTH_ADMIN_TOKEN"), "{}", answer.body);
    }
    let page = send(router(harness.state.clone()), "GET", "/", &[], "").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("BERTH_ADMIN_TOKEN"), "{}", page.body);
    let login = send(router(harness.state.clone()), "POST", "/login", &[], &format!("token={TOKEN}")).await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert!(login.headers.get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn the_api_needs_the_right_bearer_token() {
    let harness = Harness::new();
    harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    let missing = send(harness.router(), "GET", "/api/tasks", &[], "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(missing.json()["error"], "missing or invalid bearer token");
    for wrong in [
        "Bearer not-the-token".to_owned(),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Basic {TOKEN}"),
        TOKEN.to_owned(),
        "Bearer ".to_owned(),
    ] {
        let answer = send(harness.router(), "GET", "/api/tasks", &[("authorization", &wrong)], "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(!answer.body.contains(TOKEN), "the token is never echoed");
    }
    let right = get(harness.router(), "/api/tasks").await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(ids(&right).len(), 1);
    let lowercase =
        send(harness.router(), "GET", "/api/tasks", &[("authorization", &format!("bearer {TOKEN}"))], "")
            .await;
    assert_eq!(lowercase.status, StatusCode::OK);
}

#[tokio::test]
async fn tasks_are_listed_newest_first_and_filtered() {
    let harness = Harness::new();
    let first = harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    let second = harness.task("d-2", TaskKind::Implement, "octo/repo", 2).await;
    let third = harness.task("d-3", TaskKind::Review, "octo/other", 3).await;
    let fourth = harness.task("d-4", TaskKind::Review, "octo/repo", 4).await;
    harness.finish(&first, "success", "Review done", "Fine.").await;
    harness
        .state
        .journal
        .update_task(&second, Box::new(|record| record.state = TaskState::Dispatched))
        .await
        .unwrap();
    let all = [&fourth, &third, &second, &first].map(ToString::to_string).to_vec();

    assert_eq!(ids(&get(harness.router(), "/api/tasks").await), all);
    assert_eq!(ids(&get(harness.router(), "/api/tasks?state=finished").await), [first.to_string()]);
    assert_eq!(ids(&get(harness.router(), "/api/tasks?state=dispatched").await), [second.to_string()]);
    assert_eq!(
        ids(&get(harness.router(), "/api/tasks?state=queued").await),
        [fourth.to_string(), third.to_string()]
    );
    assert_eq!(ids(&get(harness.router(), "/api/tasks?kind=implement").await), [second.to_string()]);
    assert_eq!(ids(&get(harness.router(), "/api/tasks?repo=octo/other").await), [third.to_string()]);
    assert_eq!(ids(&get(harness.router(), "/api/tasks?repo=Octo%2FOther").await), [third.to_string()]);
    assert_eq!(
        ids(&get(harness.router(), "/api/tasks?repo=octo/repo&kind=review&state=queued").await),
        [fourth.to_string()]
    );
    assert_eq!(ids(&get(harness.router(), "/api/tasks?limit=2").await), all[..2]);
    assert!(ids(&get(harness.router(), "/api/tasks?repo=nobody/nothing").await).is_empty());

    for bad in ["state=running", "kind=deploy", "limit=0", "limit=1001", "limit=many", "status=finished"] {
        let answer = get(harness.router(), &format!("/api/tasks?{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{}", answer.body);
    }
}

#[tokio::test]
async fn a_task_shows_its_state_times_outcome_and_links() {
    let harness = Harness::new();
    let task = harness.task("d-1", TaskKind::Review, "octo/repo", 7).await;
    let queued = get(harness.router(), &format!("/api/tasks/{task}")).await;
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.body);
    let queued = queued.json();
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["outcome"], Value::Null);
    assert_eq!(queued["container"], Value::Null, "no engine in this test");
    assert_eq!(queued["labels"], Value::Null);
    assert_eq!(queued["links"]["issue"], "https://github.com/octo/repo/pull/7");
    assert_eq!(queued["links"]["check_run"], Value::Null);

    harness.finish(&task, "success", "Review done", "Looks good.").await;
    let done = get(harness.router(), &format!("/api/tasks/{task}")).await.json();
    let accepted = done["accepted_unix"].as_u64().unwrap();
    assert_eq!(done["task_id"], task.as_str());
    assert_eq!(done["kind"], "review");
    assert_eq!(done["repo"], "octo/repo");
    assert_eq!(done["number"], 7);
    assert_eq!(done["state"], "finished");
    assert_eq!(done["sender"], "octocat");
    assert_eq!(done["finished_unix"].as_u64(), Some(accepted + 75));
    assert_eq!(
        done["outcome"],
        serde_json::json!({"conclusion": "success", "title": "Review done", "summary": "Looks good.", "exit_code": 0, "reported": false})
    );
    assert_eq!(done["check_run"], 99);
    assert_eq!(done["links"]["check_run"], "https://github.com/octo/repo/runs/99");
    assert_eq!(done["links"]["pull_request"], "https://github.com/octo/repo/pull/7");
}

#[tokio::test]
async fn unknown_tasks_are_404_and_invalid_ids_400() {
    let harness = Harness::new();
    for (method, suffix) in [("GET", ""), ("GET", "/logs"), ("POST", "/cancel")] {
        let unknown = send(
            harness.router(),
            method,
            &format!("/api/tasks/no-such-task{suffix}"),
            &[("authorization", &bearer())],
            "",
        )
        .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{method} {suffix}: {}", unknown.body);
        assert_eq!(unknown.json()["error"], "task no-such-task not found");
        let invalid = send(
            harness.router(),
            method,
            &format!("/api/tasks/Not_A_Task{suffix}"),
            &[("authorization", &bearer())],
            "",
        )
        .await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST, "{method} {suffix}: {}", invalid.body);
    }
}

#[tokio::test]
async fn cancelling_a_finished_task_is_a_conflict_and_needs_the_bearer_token() {
    let harness = Harness::new();
    let done = harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    harness.finish(&done, "success", "Review done", "Fine.").await;
    let answer = send(
        harness.router(),
        "POST",
        &format!("/api/tasks/{done}/cancel"),
        &[("authorization", &bearer())],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.json()["error"], format!("task {done} already finished (success)"));

    // Until the engine answers there is no runner to carry a cancel out.
    let active = harness.task("d-2", TaskKind::Review, "octo/repo", 2).await;
    let answer = send(
        harness.router(),
        "POST",
        &format!("/api/tasks/{active}/cancel"),
        &[("authorization", &bearer())],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    let logs = get(harness.router(), &format!("/api/tasks/{active}/logs")).await;
    assert_eq!(logs.status, StatusCode::SERVICE_UNAVAILABLE, "{}", logs.body);

    // The dashboard's cookie reads, but never changes anything.
    let cookie = login(&harness).await;
    let read = send(harness.router(), "GET", "/api/tasks", &[("cookie", &cookie)], "").await;
    assert_eq!(read.status, StatusCode::OK);
    let cancel =
        send(harness.router(), "POST", &format!("/api/tasks/{active}/cancel"), &[("cookie", &cookie)], "")
            .await;
    assert_eq!(cancel.status, StatusCode::UNAUTHORIZED);
    let record = harness.state.journal.task(&active).unwrap().unwrap();
    assert!(record.cancel.is_none());
}

/// Logs in through the form; returns the `Cookie` header to send.
async fn login(harness: &Harness) -> String {
    let answer = send(
        harness.router(),
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.headers[header::LOCATION], "/");
    let set_cookie = answer.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(TOKEN), "the cookie holds a session id, not the token");
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_dashboard_asks_for_the_token_and_lets_the_right_one_in() {
    let harness = Harness::new();
    let task = harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    let anonymous = send(harness.router(), "GET", "/", &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.body.contains("<form method=\"post\" action=\"/login\">"), "{}", anonymous.body);
    assert!(!anonymous.body.contains(task.as_str()), "nothing of the tasks before login");

    let wrong = send(harness.router(), "POST", "/login", &[], "token=nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    assert!(wrong.body.contains("not the admin token"));
    let forged = send(harness.router(), "GET", "/", &[("cookie", "berth_token=0000")], "").await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let raw_token =
        send(harness.router(), "GET", "/", &[("cookie", &format!("berth_token={TOKEN}"))], "").await;
    assert_eq!(raw_token.status, StatusCode::UNAUTHORIZED, "the cookie must be a session id");

    let cookie = login(&harness).await;
    let page = send(harness.router(), "GET", "/", &[("cookie", &format!("theme=dark; {cookie}"))], "").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(&format!("id=\"task-{task}\"")), "{}", page.body);
    let policy = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert!(!page.body.contains("<script>"), "no inline script");

    let with_bearer = get(harness.router(), &format!("/?task={task}")).await;
    assert_eq!(with_bearer.status, StatusCode::OK);
    assert!(with_bearer.body.contains(&format!("data-follow=\"/api/tasks/{task}/logs?follow=true\"")));
    let fragment = send(harness.router(), "GET", "/dashboard/tasks", &[("cookie", &cookie)], "").await;
    assert_eq!(fragment.status, StatusCode::OK);
    assert!(fragment.body.starts_with("<section>") && fragment.body.contains(task.as_str()));
    assert_eq!(
        send(harness.router(), "GET", "/dashboard/tasks", &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );

    let script = send(harness.router(), "GET", "/dashboard.js", &[], "").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.body.contains("EventSource"));

    let logout = send(harness.router(), "POST", "/logout", &[("cookie", &cookie)], "").await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert!(logout.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn a_task_page_asks_for_sign_in_and_comes_back_to_itself() {
    let harness = Harness::new();
    let task = harness.task("d-1", TaskKind::Review, "octo/repo", 7).await;
    harness.finish(&task, "success", "Reviewed", "All good.").await;
    let path = format!("/tasks/{task}");

    let anonymous = send(harness.router(), "GET", &path, &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.body.contains(&format!("name=\"next\" value=\"{path}\"")), "{}", anonymous.body);
    assert!(!anonymous.body.contains("All good."), "nothing of the task before sign-in");

    let signed_in =
        send(harness.router(), "POST", "/login", &[], &format!("token={TOKEN}&next={path}")).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers[header::LOCATION], path.as_str());
    let elsewhere =
        send(harness.router(), "POST", "/login", &[], &format!("token={TOKEN}&next=https://evil.example/"))
            .await;
    assert_eq!(elsewhere.headers[header::LOCATION], "/", "never sent off this Berth");

    let page = get(harness.router(), &path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for shown in
        ["id=\"task-outcome\"", "success: Reviewed", "All good.", "Accepted", "Finished", "octo/repo#7"]
    {
        assert!(page.body.contains(shown), "the page lacks {shown:?}:\n{}", page.body);
    }
    assert!(page.body.contains("This task has finished; its container, and its log with it, was removed."));

    let unknown = get(harness.router(), "/tasks/review-octo-repo-9-none").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("No task review-octo-repo-9-none"), "{}", unknown.body);
    let bad = get(harness.router(), "/tasks/a%20b").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a task id"), "{}", bad.body);
}

#[tokio::test]
async fn everything_from_github_is_escaped_on_the_dashboard() {
    let harness = Harness::new();
    let evil = "<script>alert(1)</script>";
    let task = harness.task("d-1", TaskKind::Implement, "o\"/r<img src=x onerror=alert(2)>", 1).await;
    let sender = harness.task("d-2", TaskKind::Review, "octo/repo", 2).await;
    harness
        .state
        .journal
        .update_task(&sender, Box::new(|record| record.sender = "<b onmouseover=alert(3)>".to_owned()))
        .await
        .unwrap();
    harness.finish(&task, "failure", evil, &format!("{evil} & <iframe src=//evil>")).await;
    for uri in ["/".to_owned(), format!("/?task={task}"), format!("/?task={}", "%3Cscript%3E")] {
        let page = get(harness.router(), &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        for raw in ["<script>", "<img", "<iframe", "<b ", "<x>", "onerror=alert(2)>"] {
            assert!(!page.body.contains(raw), "{uri} carries {raw:?} unescaped:\n{}", page.body);
        }
    }
    let page = get(harness.router(), &format!("/?task={task}")).await;
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;iframe"), "{}", page.body);
}

/// Text from GitHub with markup, both quotes and `&`, as it arrives and as
/// the page must show it. The templates leave `'` alone: every attribute
/// value is in double quotes, so it cannot end one.
struct Hostile {
    field: &'static str,
    raw: &'static str,
    escaped: &'static str,
}

const REPO: Hostile = Hostile {
    field: "repository",
    raw: "acme&co/re\"po<script>alert('repo')</script>",
    escaped: "acme&amp;co/re&quot;po&lt;script&gt;alert('repo')&lt;/script&gt;",
};
const SENDER: Hostile = Hostile {
    field: "sender",
    raw: "<img src=x onerror=\"alert('sender')\">&",
    escaped: "&lt;img src=x onerror=&quot;alert('sender')&quot;&gt;&amp;",
};
const TITLE: Hostile = Hostile {
    field: "title",
    raw: "<script>alert(\"title\")</script> & more",
    escaped: "&lt;script&gt;alert(&quot;title&quot;)&lt;/script&gt; &amp; more",
};
const SUMMARY: Hostile = Hostile {
    field: "summary",
    raw: "\"quoted\" & <iframe src='//evil'>",
    escaped: "&quot;quoted&quot; &amp; &lt;iframe src='//evil'&gt;",
};

#[tokio::test]
async fn hostile_github_text_is_escaped_on_every_dashboard_view() {
    let harness = Harness::new();
    let finished = harness.task("d-1", TaskKind::Implement, REPO.raw, 1).await;
    let active = harness.task("d-2", TaskKind::Review, REPO.raw, 2).await;
    for task in [&finished, &active] {
        harness
            .state
            .journal
            .update_task(task, Box::new(|record| record.sender = SENDER.raw.to_owned()))
            .await
            .unwrap();
    }
    // A conclusion is one of a closed set now (`Conclusion`), so it cannot carry markup.
    harness.finish(&finished, "failure", TITLE.raw, SUMMARY.raw).await;
    let cookie = login(&harness).await;

    let tables = [&REPO, &SENDER, &TITLE];
    let finished_details = [&REPO, &SENDER, &TITLE, &SUMMARY];
    let active_details = [&REPO, &SENDER];
    let views: [(String, &[&Hostile]); 7] = [
        ("/".to_owned(), &tables),
        (format!("/?task={finished}"), &finished_details),
        (format!("/tasks/{finished}"), &finished_details),
        (format!("/tasks/{active}"), &active_details),
        (format!("/?task={active}"), &tables),
        ("/dashboard/tasks".to_owned(), &tables),
        (format!("/dashboard/tasks?task={finished}"), &tables),
    ];
    for (uri, shown) in views {
        let page = send(harness.router(), "GET", &uri, &[("cookie", &cookie)], "").await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        for hostile in [&REPO, &SENDER, &TITLE, &SUMMARY] {
            assert!(
                !page.body.contains(hostile.raw),
                "{uri} carries the {} unescaped:\n{}",
                hostile.field,
                page.body
            );
        }
        for hostile in shown {
            assert!(
                page.body.contains(hostile.escaped),
                "{uri} lacks the escaped {}:\n{}",
                hostile.field,
                page.body
            );
        }
        for markup in ["<script>", "<img", "<iframe", "<b>"] {
            assert!(!page.body.contains(markup), "{uri} carries {markup:?}:\n{}", page.body);
        }
    }
    let details = get(harness.router(), &format!("/?task={finished}")).await;
    assert!(
        details.body.contains(&format!("href=\"https://github.com/{}/issues/1\"", REPO.escaped)),
        "the repository is escaped inside the link's address too:\n{}",
        details.body
    );
}

#[test]
fn links_point_at_github_enterprise_or_the_api() {
    let harness_task = |kind, pull_request: Option<PullRequestRef>| {
        let mut record = domain::tasks::TaskRecord::queued(
            TaskRequest {
                kind,
                repo: "octo/repo".to_owned(),
                number: 5,
                head_sha: None,
                head_ref: None,
                clone_url: String::new(),
                repo_id: None,
                prompt: String::new(),
                subject_title: String::new(),
                subject_body: String::new(),
                base_ref: None,
                sender: String::new(),
                installation: None,
                comment_id: None,
                follow_up: false,
            },
            "d",
            1,
            0,
        );
        let mut outcome = Outcome::new(Conclusion::Success, "Done", "", 1);
        outcome.pull_request = pull_request;
        record.state = TaskState::Finished { outcome };
        record
    };
    let review = harness_task(TaskKind::Review, None);
    let implement = harness_task(TaskKind::Implement, Some(PullRequestRef::Opened { number: 12, url: None }));
    let pending = harness_task(TaskKind::Implement, Some(PullRequestRef::Branch("berth/issue-5".into())));

    let github = Links::new("https://api.github.com/");
    assert_eq!(github.subject(&review), "https://github.com/octo/repo/pull/5");
    assert_eq!(github.subject(&implement), "https://github.com/octo/repo/issues/5");
    assert_eq!(github.pull_request(&implement).as_deref(), Some("https://github.com/octo/repo/pull/12"));
    assert_eq!(github.pull_request(&pending), None);
    assert_eq!(github.check_run("octo/repo", 3), "https://github.com/octo/repo/runs/3");

    let enterprise = Links::new("https://git.example.com/api/v3");
    assert_eq!(enterprise.subject(&review), "https://git.example.com/octo/repo/pull/5");

    let fake = Links::new("http://127.0.0.1:9999");
    assert_eq!(fake.subject(&review), "http://127.0.0.1:9999/repos/octo/repo/pulls/5");
    assert_eq!(fake.subject(&implement), "http://127.0.0.1:9999/repos/octo/repo/issues/5");
    assert_eq!(fake.check_run("octo/repo", 3), "http://127.0.0.1:9999/repos/octo/repo/check-runs/3");
}

#[test]
fn log_lines_are_numbered_per_stream_and_resume_after_the_last_seen() {
    let stdout = |text: &str| LogChunk::Stdout(Bytes::copy_from_slice(text.as_bytes()));
    let stderr = |text: &str| LogChunk::Stderr(Bytes::copy_from_slice(text.as_bytes()));
    let mut lines = LineSplitter::new(0);
    assert_eq!(lines.push(&stdout("one\r\ntw")), [(1, "one".to_owned())]);
    assert_eq!(lines.push(&stderr("note\n")), [(2, "note".to_owned())]);
    assert_eq!(lines.push(&stdout("o\n\nthree")), [(3, "two".to_owned())], "the empty line 4 is not sent");
    assert_eq!(lines.finish(), [(5, "three".to_owned())]);

    let mut resumed = LineSplitter::new(3);
    let mut seen = resumed.push(&stdout("one\ntwo\nthree\nfour\nfive\n"));
    seen.extend(resumed.finish());
    assert_eq!(seen, [(4, "four".to_owned()), (5, "five".to_owned())]);

    let mut long = LineSplitter::new(0);
    let cut = long.push(&stdout(&"x".repeat(40 * 1024)));
    assert_eq!(cut.len(), 2, "a line without end is cut, not buffered forever");
}

#[test]
fn form_values_are_percent_decoded_and_html_is_escaped() {
    assert_eq!(form_value(b"a=1&token=abc%2Bdef+g%26h", "token").as_deref(), Some("abc+def g&h"));
    assert_eq!(form_value(b"token=", "token").as_deref(), Some(""));
    assert_eq!(form_value(b"other=1", "token"), None);
    assert_eq!(form_value(b"token=%zz", "token"), None);
    assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}

#[tokio::test]
async fn a_finished_tasks_kept_log_is_served_with_its_cut_and_shown_escaped_on_its_page() {
    let mut harness = Harness::new();
    let kept_dir = tempfile::tempdir().unwrap();
    let keeper = runner::LogKeeper::under(kept_dir.path(), 1 << 20);
    harness.admin = harness.admin.clone().with_kept_logs(keeper.dir.clone());
    let task = harness.task("d-1", TaskKind::Review, "octo/repo", 1).await;
    let live = harness.task("d-2", TaskKind::Review, "octo/repo", 2).await;
    harness.finish(&task, "success", "Review done", "Fine.").await;
    keeper.write(&task, "step 2\n<b>done</b>\n", 120).unwrap();
    // A kept file for a task that has not finished is not served from disk.
    keeper.write(&live, "stale\n", 0).unwrap();

    let logs = get(harness.router(), &format!("/api/tasks/{task}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.body);
    assert_eq!(logs.body, "step 2\n<b>done</b>\n");
    assert_eq!(logs.headers["x-berth-log-cut"], "120");
    assert!(logs.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(logs.headers[header::CACHE_CONTROL], "no-store");

    let events = get(harness.router(), &format!("/api/tasks/{task}/logs?follow=true")).await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(events.body.contains("id: 1\ndata: step 2\n"), "{}", events.body);
    assert!(events.body.contains("event: end"), "{}", events.body);

    // No engine here: the live task's logs need one.
    let live_logs = get(harness.router(), &format!("/api/tasks/{live}/logs")).await;
    assert_eq!(live_logs.status, StatusCode::SERVICE_UNAVAILABLE, "{}", live_logs.body);

    let page = get(harness.router(), &format!("/?task={task}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("&lt;b&gt;done&lt;/b&gt;"), "{}", page.body);
    assert!(page.body.contains("without the first 120 bytes"), "{}", page.body);
    assert!(!page.body.contains("its log with it, was removed"), "{}", page.body);
}
