//! A local stand-in for the GitHub REST API: a real HTTP server on loopback
//! that answers the calls Berth makes with GitHub's shapes and records every
//! request. `berth demo` runs against it, and so do the end-to-end tests
//! (this machine cannot reach GitHub). Failures can be injected: 5xx for a
//! number of calls, or refused App credentials.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header's scheme and a hint of its kind (`jwt` or `token`), never the secret.
    pub auth: String,
    /// JSON body, if any.
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

/// Everything the fake knows and has seen.
#[derive(Debug, Default)]
pub struct FakeState {
    next_id: u64,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
    /// Check runs by id.
    pub check_runs: BTreeMap<u64, Value>,
    /// Comments by id, with `repo` and `number` fields added.
    pub comments: BTreeMap<u64, Value>,
    /// Review comments on pull requests' lines by id, in GitHub's shape,
    /// with `repo` and `number` fields added.
    pub review_comments: BTreeMap<u64, Value>,
    /// Reactions posted: (repo, comment id, content).
    pub reactions: Vec<(String, u64, String)>,
    /// Pull requests Berth opened.
    pub pulls_created: Vec<Value>,
    /// Pull request heads by `repo#number`: (sha, branch, head repo or None).
    pub pulls: HashMap<String, (String, String, Option<String>)>,
    /// Branch heads by `repo@branch`.
    pub branches: HashMap<String, String>,
    /// Tokens issued: the request bodies (repositories and permissions) and the token.
    pub tokens: Vec<(Value, String)>,
    /// Tokens revoked (`DELETE /installation/token`), as their bearer sent them.
    pub revoked: Vec<String>,
    /// The App's webhook deliveries, as `GET /app/hook/deliveries` lists them.
    pub deliveries: Vec<Value>,
    /// Delivery ids Berth asked to redeliver.
    pub redeliveries: Vec<u64>,
    /// Answer the next N API calls with this status.
    pub fail_next: Option<(u16, u32)>,
    /// Refuse the App's JWT with 401.
    pub reject_credentials: bool,
    /// Create check runs but never answer the request (as if the answer
    /// were lost), so a test can kill Berth between the two.
    pub stall_check_run_answers: bool,
    /// The manifest flow (see its section below): the private key (PEM)
    /// conversions hand out; `None`: a new one from `openssl genrsa`.
    pub manifest_key: Option<String>,
    /// Every manifest posted to the flow, with its code, in order.
    pub manifest_apps: Vec<ManifestApp>,
    /// The App's installations, as `GET /app/installations` lists them.
    pub installations: Vec<Value>,
    /// The App's webhook configuration (`GET /app/hook/config`); set by a conversion.
    pub hook_config: Option<Value>,
}

impl FakeState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id + 1000
    }
}

/// A running fake GitHub.
#[derive(Debug, Clone)]
pub struct FakeGitHub {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for assertions and set-up.
    pub state: Arc<Mutex<FakeState>>,
    shutdown: CancellationToken,
}

type Shared = Arc<Mutex<FakeState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeGitHub {
    /// Starts the fake on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::default();
        let shutdown = CancellationToken::new();
        let app = routes(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(Self { addr, state, shutdown })
    }

    /// The base URL to give Berth as `BERTH_GITHUB_API_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Runs `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// Sets a pull request's head.
    pub fn set_pull(&self, repo: &str, number: u64, sha: &str, branch: &str, head_repo: Option<&str>) {
        self.with(|state| {
            state.pulls.insert(
                format!("{repo}#{number}"),
                (sha.to_owned(), branch.to_owned(), head_repo.map(str::to_owned)),
            );
        });
    }

    /// Sets a branch's head.
    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.with(|state| state.branches.insert(format!("{repo}@{branch}"), sha.to_owned()));
    }

    /// A comment written by someone else (`login`, of `kind` `User` or `Bot`);
    /// returns its id. Only the App's own comments can be edited by it.
    pub fn add_comment(&self, repo: &str, number: u64, body: &str, login: &str, kind: &str) -> u64 {
        self.with(|state| {
            let id = state.id();
            let comment = json!({"id": id, "repo": repo, "number": number, "body": body, "user": {"login": login, "type": kind}});
            state.comments.insert(id, comment);
            id
        })
    }

    /// A review comment by `login` on `line` of `path` in pull request
    /// `number`'s diff; returns its id.
    pub fn add_review_comment(
        &self,
        repo: &str,
        number: u64,
        login: &str,
        path: &str,
        line: Option<u64>,
        body: &str,
    ) -> u64 {
        self.with(|state| {
            let id = state.id();
            let comment = json!({
                "url": format!("https://api.github.invalid/repos/{repo}/pulls/comments/{id}"),
                "pull_request_review_id": id + 1_000_000,
                "id": id,
                "node_id": format!("PRRC_{id}"),
                "diff_hunk": "@@ -1,1 +1,1 @@",
                "path": path,
                "commit_id": "0000000000000000000000000000000000000000",
                "original_commit_id": "0000000000000000000000000000000000000000",
                "user": {"login": login, "id": id + 2_000_000, "type": "User"},
                "body": body,
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "html_url": format!("https://github.invalid/{repo}/pull/{number}#discussion_r{id}"),
                "pull_request_url": format!("https://api.github.invalid/repos/{repo}/pulls/{number}"),
                "author_association": "MEMBER",
                "line": line,
                "original_line": line,
                "side": "RIGHT",
                "subject_type": if line.is_some() { "line" } else { "file" },
                "repo": repo,
                "number": number,
            });
            state.review_comments.insert(id, comment);
            id
        })
    }

    /// Completed check runs.
    pub fn completed_check_runs(&self) -> Vec<Value> {
        self.with(|state| {
            state.check_runs.values().filter(|run| run["status"] == "completed").cloned().collect()
        })
    }
}

fn routes(state: Shared) -> Router {
    Router::new()
        .route("/app", get(app))
        .route("/installation/token", axum::routing::delete(revoke_token))
        .route("/app/installations/{id}/access_tokens", post(access_token))
        .route("/app/hook/deliveries", get(list_deliveries))
        .route("/app/hook/deliveries/{id}/attempts", post(redeliver))
        .route("/repos/{owner}/{repo}/installation", get(repo_installation))
        .route("/repos/{owner}/{repo}/pulls/{number}", get(pull))
        .route("/repos/{owner}/{repo}/pulls/{number}/comments", get(list_review_comments))
        .route("/repos/{owner}/{repo}/pulls", get(list_pulls).post(create_pull))
        .route("/repos/{owner}/{repo}/commits/{reference}", get(commit))
        .route("/repos/{owner}/{repo}/commits/{reference}/check-runs", get(list_check_runs))
        .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
        .route("/repos/{owner}/{repo}/check-runs/{id}", patch(update_check_run))
        .route("/repos/{owner}/{repo}/issues/comments/{id}/reactions", post(react))
        .route("/repos/{owner}/{repo}/issues/{number}/comments", get(list_comments).post(create_comment))
        .route("/repos/{owner}/{repo}/issues/comments/{id}", patch(update_comment))
        .merge(manifest_flow_routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

fn auth_kind(headers: &HeaderMap) -> String {
    let value = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or("");
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    let kind = if credential.split('.').count() == 3 {
        "jwt"
    } else if credential.is_empty() {
        "none"
    } else {
        "token"
    };
    format!("{scheme} {kind}")
}

async fn record(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path =
        request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), ToString::to_string);
    let auth = auth_kind(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let json_body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let injected = {
        let mut state = lock(&state);
        let app_route = path.starts_with("/app/") || path.ends_with("/installation");
        if (state.reject_credentials && app_route) || (auth.ends_with("none") && !is_unauthenticated(&path)) {
            Some(StatusCode::UNAUTHORIZED)
        } else {
            match state.fail_next {
                Some((status, left)) if left > 0 => {
                    state.fail_next = if left > 1 { Some((status, left - 1)) } else { None };
                    StatusCode::from_u16(status).ok()
                }
                _ => None,
            }
        }
    };
    let response = match injected {
        Some(status) => {
            let message = if status == StatusCode::UNAUTHORIZED { "Bad credentials" } else { "Server Error" };
            (status, Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})))
                .into_response()
        }
        None => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    };
    lock(&state).requests.push(Recorded {
        method: method.to_string(),
        path,
        auth,
        body: json_body,
        status: response.status().as_u16(),
    });
    response
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

fn validation_failed(message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

async fn access_token(
    State(state): State<Shared>,
    Path(id): Path<u64>,
    body: Option<Json<Value>>,
) -> Response {
    let mut state = lock(&state);
    let n = state.id();
    let token = format!("ghs_fake{n:034}");
    let request = body.map_or(Value::Null, |Json(body)| body);
    state.tokens.push((request.clone(), token.clone()));
    let expires = "2099-01-01T00:00:00Z";
    (
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": expires,
            "permissions": request.get("permissions").cloned().unwrap_or(json!({"checks": "write", "issues": "write", "pull_requests": "write", "contents": "write", "metadata": "read"})),
            "repository_selection": if request.get("repositories").is_some() { "selected" } else { "all" },
            "installation_id": id,
        })),
    )
        .into_response()
}

async fn repo_installation(Path((owner, repo)): Path<(String, String)>) -> Response {
    Json(json!({"id": 1, "app_id": 1, "account": {"login": owner}, "repository_selection": "all", "target_type": "Organization", "repo": repo}))
        .into_response()
}

fn repo_json(full_name: &str) -> Value {
    json!({"full_name": full_name, "name": full_name.rsplit('/').next(), "clone_url": format!("https://github.invalid/{full_name}.git")})
}

async fn pull(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let state = lock(&state);
    let Some((sha, branch, head_repo)) = state.pulls.get(&format!("{full}#{number}")).cloned() else {
        return not_found();
    };
    Json(json!({
        "number": number,
        "state": "open",
        "head": {"sha": sha, "ref": branch, "repo": head_repo.as_deref().map(repo_json)},
        "base": {"sha": "0000000000000000000000000000000000000000", "ref": "main", "repo": repo_json(&full)},
        "html_url": format!("https://github.invalid/{full}/pull/{number}"),
    }))
    .into_response()
}

async fn list_pulls(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let head = query.get("head").cloned().unwrap_or_default();
    let state = lock(&state);
    let found: Vec<Value> = state
        .pulls_created
        .iter()
        .filter(|pull| {
            pull["repo"] == full.as_str()
                && format!("{owner}:{}", pull["head"]["ref"].as_str().unwrap_or("")) == head
        })
        .cloned()
        .collect();
    Json(Value::Array(found)).into_response()
}

async fn create_pull(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let mut state = lock(&state);
    let number = state.id();
    let pull = json!({
        "number": number,
        "repo": full,
        "title": body["title"],
        "body": body["body"],
        "head": {"ref": body["head"]},
        "base": {"ref": body["base"]},
        "state": "open",
        "html_url": format!("https://github.invalid/{full}/pull/{number}"),
    });
    state.pulls_created.push(pull.clone());
    (StatusCode::CREATED, Json(pull)).into_response()
}

async fn commit(
    State(state): State<Shared>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
) -> Response {
    let state = lock(&state);
    match state.branches.get(&format!("{owner}/{repo}@{reference}")) {
        Some(sha) => Json(json!({"sha": sha})).into_response(),
        None => not_found(),
    }
}

async fn list_check_runs(
    State(state): State<Shared>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let state = lock(&state);
    let runs: Vec<Value> = state
        .check_runs
        .values()
        .filter(|run| run["repo"] == full.as_str() && run["head_sha"] == reference.as_str())
        .filter(|run| query.get("check_name").is_none_or(|name| run["name"] == name.as_str()))
        .cloned()
        .collect();
    Json(json!({"total_count": runs.len(), "check_runs": runs})).into_response()
}

async fn create_check_run(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let (run, stall) = {
        let mut state = lock(&state);
        let id = state.id();
        let mut run = body;
        run["id"] = json!(id);
        run["repo"] = json!(format!("{owner}/{repo}"));
        state.check_runs.insert(id, run.clone());
        (run, state.stall_check_run_answers)
    };
    if stall {
        std::future::pending::<()>().await;
    }
    (StatusCode::CREATED, Json(run)).into_response()
}

async fn update_check_run(
    State(state): State<Shared>,
    Path((_, _, id)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let mut state = lock(&state);
    let Some(run) = state.check_runs.get_mut(&id) else { return not_found() };
    if let (Some(run), Some(changes)) = (run.as_object_mut(), body.as_object()) {
        for (key, value) in changes {
            run.insert(key.clone(), value.clone());
        }
    }
    Json(run.clone()).into_response()
}

async fn react(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let content = body["content"].as_str().unwrap_or("").to_owned();
    let mut state = lock(&state);
    let full = format!("{owner}/{repo}");
    let exists = state.reactions.iter().any(|(r, c, k)| *r == full && *c == id && *k == content);
    if !exists {
        state.reactions.push((full, id, content.clone()));
    }
    let status = if exists { StatusCode::OK } else { StatusCode::CREATED };
    (status, Json(json!({"id": id, "content": content}))).into_response()
}

/// The App's slug, and so its bot user's login.
const APP_SLUG: &str = "berth";
const APP_BOT: &str = "berth[bot]";

async fn revoke_token(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let value = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or("");
    let token = value.split_once(' ').map_or(value, |(_, token)| token).to_owned();
    let mut state = lock(&state);
    if !state.tokens.iter().any(|(_, issued)| *issued == token) || state.revoked.contains(&token) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    state.revoked.push(token);
    StatusCode::NO_CONTENT.into_response()
}

async fn app(State(state): State<Shared>) -> Response {
    let mut app = json!({
        "id": 4242,
        "slug": APP_SLUG,
        "name": "Berth",
        "owner": {"login": "e2e", "type": "Organization"},
        "html_url": format!("https://github.invalid/apps/{APP_SLUG}"),
        "permissions": {"checks": "write", "contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"},
        "events": ["check_run", "check_suite", "issue_comment", "issues", "pull_request"],
    });
    // Once the manifest flow made the App, it is described as made.
    if let Some(made) = lock(&state).manifest_apps.iter().rev().find(|made| made.converted) {
        manifest_app_description(&mut app, made);
    }
    Json(app).into_response()
}

async fn list_comments(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = lock(&state);
    Json(page_of(&query, &state.comments, &format!("{owner}/{repo}"), number)).into_response()
}

/// The page `?page=` (from 1) of `?per_page=` (30) of the comments on
/// `repo#number`, as GitHub pages a list.
fn page_of(
    query: &HashMap<String, String>,
    comments: &BTreeMap<u64, Value>,
    repo: &str,
    number: u64,
) -> Value {
    let per_page: usize = query.get("per_page").and_then(|value| value.parse().ok()).unwrap_or(30);
    let page: usize = query.get("page").and_then(|value| value.parse().ok()).unwrap_or(1).max(1);
    comments
        .values()
        .filter(|comment| comment["repo"] == repo && comment["number"] == number)
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

async fn list_review_comments(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let state = lock(&state);
    if !state.pulls.contains_key(&format!("{full}#{number}")) {
        return not_found();
    }
    Json(page_of(&query, &state.review_comments, &full, number)).into_response()
}

async fn create_comment(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let mut state = lock(&state);
    let id = state.id();
    let comment = json!({"id": id, "repo": format!("{owner}/{repo}"), "number": number, "body": body["body"], "user": {"login": APP_BOT, "type": "Bot"}});
    state.comments.insert(id, comment.clone());
    (StatusCode::CREATED, Json(comment)).into_response()
}

async fn update_comment(
    State(state): State<Shared>,
    Path((_, _, id)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let mut state = lock(&state);
    let Some(comment) = state.comments.get_mut(&id) else { return not_found() };
    if comment["user"]["login"] != APP_BOT {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest"})),
        )
            .into_response();
    }
    comment["body"] = body["body"].clone();
    Json(comment.clone()).into_response()
}

/// `GET /app/hook/deliveries` as GitHub pages it: newest first, `per_page`
/// (30, at most 100) from `cursor` on, and a `Link` header whose
/// `rel="next"` carries the next page's cursor. A cursor here is `v1_<id>`
/// of the page's first delivery, as GitHub's look.
async fn list_deliveries(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let per_page = match query.get("per_page").map(|text| text.parse::<usize>()) {
        None => 30,
        Some(Ok(count)) if count > 0 => count.min(100),
        Some(_) => return validation_failed("per_page must be a whole number from 1 to 100"),
    };
    let mut log = lock(&state).deliveries.clone();
    let id_of = |delivery: &Value| delivery["id"].as_u64().unwrap_or_default();
    log.sort_by_key(|delivery| std::cmp::Reverse(id_of(delivery)));
    let start = match query.get("cursor") {
        None => 0,
        Some(cursor) => match cursor.strip_prefix("v1_").and_then(|id| id.parse::<u64>().ok()) {
            Some(first) => log.iter().position(|delivery| id_of(delivery) <= first).unwrap_or(log.len()),
            None => {
                return (StatusCode::BAD_REQUEST, Json(json!({"message": "Bad Request: invalid cursor"})))
                    .into_response();
            }
        },
    };
    let page: Vec<Value> = log.iter().skip(start).take(per_page).cloned().collect();
    let mut response = Json(Value::Array(page)).into_response();
    if let Some(next) = log.get(start + per_page) {
        let link = format!(
            "<{}/app/hook/deliveries?per_page={per_page}&cursor=v1_{}>; rel=\"next\"",
            fake_base(&headers),
            id_of(next)
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&link) {
            response.headers_mut().insert(axum::http::header::LINK, value);
        }
    }
    response
}

async fn redeliver(State(state): State<Shared>, Path(id): Path<u64>, method: Method) -> Response {
    debug_assert_eq!(method, Method::POST);
    lock(&state).redeliveries.push(id);
    (StatusCode::ACCEPTED, Json(json!({}))).into_response()
}

// ---------------------------------------------------------------------------
// The App manifest flow, the App's installations and its webhook
// configuration: what `berth setup` and the first-run checks of `berth
// doctor` use. GitHub's web pages of the flow are served here too, at the
// fake's own address (for a local fake, links to GitHub's web go into its
// base URL): the manifest form, the "Create GitHub App" button that
// redirects back with a one-time code, and the install page.
// ---------------------------------------------------------------------------

/// One manifest posted to the flow.
#[derive(Debug, Clone)]
pub struct ManifestApp {
    /// The manifest as posted.
    pub manifest: Value,
    /// The organisation it was posted for; `None`: the personal account.
    pub org: Option<String>,
    /// The `state` the form's address carried, handed back in the redirect.
    pub state: String,
    /// The one-time code.
    pub code: String,
    /// Whether "Create GitHub App" was pressed (the code is then handed out).
    pub created: bool,
    /// Whether the code was converted (it works once).
    pub converted: bool,
    /// The webhook secret the conversion handed out.
    pub webhook_secret: Option<String>,
    /// The OAuth client secret the conversion handed out (Berth needs none).
    pub client_secret: Option<String>,
}

/// The fake's personal account, owner of the Apps made without an organisation.
pub const FAKE_USER: &str = "e2e";

/// The id of the fake's one App (`GET /app`); conversions hand out this App.
pub const FAKE_APP_ID: u64 = 4242;

impl FakeGitHub {
    /// Installs the App on `login`'s account (all repositories), as if done
    /// on GitHub; `berth doctor` then finds it installed.
    pub fn add_installation(&self, login: &str) {
        add_installation(&self.state, login);
    }
}

fn add_installation(state: &Shared, login: &str) {
    let mut state = lock(state);
    let id = state.id();
    state.installations.push(json!({
        "id": id,
        "app_id": FAKE_APP_ID,
        "app_slug": APP_SLUG,
        "account": {"login": login, "type": "User"},
        "target_type": "User",
        "repository_selection": "all",
        "suspended_at": null,
    }));
}

/// GitHub's web pages and the conversion need no credentials.
fn is_unauthenticated(path: &str) -> bool {
    ["/app-manifests/", "/settings/apps/", "/organizations/", "/apps/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

fn manifest_flow_routes() -> Router<Shared> {
    Router::new()
        .route("/settings/apps/new", post(new_app_page))
        .route("/organizations/{org}/settings/apps/new", post(new_org_app_page))
        .route("/settings/apps/new/{code}", post(create_app))
        .route("/app-manifests/{code}/conversions", post(convert_manifest))
        .route("/app/installations", get(list_installations))
        .route("/app/hook/config", get(hook_config))
        .route("/apps/{slug}/installations/new", get(install_page).post(install))
}

fn web_page(status: StatusCode, title: &str, body: &str) -> Response {
    let title = core_types::web::escape(title);
    let document = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n{body}\n</body></html>\n"
    );
    (status, [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], document).into_response()
}

/// `http://<the fake's address, as the client called it>`.
fn fake_base(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn random_hex(length: usize) -> String {
    let mut bytes = [0_u8; 32];
    let random = match std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
    {
        Ok(()) => bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>(),
        Err(_) => format!(
            "{:064x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        ),
    };
    random.chars().cycle().take(length).collect()
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

async fn new_app_page(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    body: bytes::Bytes,
) -> Response {
    manifest_page(&state, None, &query, &body)
}

async fn new_org_app_page(
    State(state): State<Shared>,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: bytes::Bytes,
) -> Response {
    manifest_page(&state, Some(org), &query, &body)
}

/// GitHub's page for a posted manifest: what will be created, and the button.
fn manifest_page(
    state: &Shared,
    org: Option<String>,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let invalid =
        |reason: &str| web_page(StatusCode::UNPROCESSABLE_ENTITY, "Invalid GitHub App configuration", reason);
    let Some(text) = core_types::web::form_value(body, "manifest") else {
        return invalid("No manifest was posted.");
    };
    let Ok(manifest) = serde_json::from_str::<Value>(&text) else {
        return invalid("The manifest is not JSON.");
    };
    for field in ["/name", "/url", "/redirect_url", "/hook_attributes/url"] {
        if manifest.pointer(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return invalid(&format!("The manifest has no {field}."));
        }
    }
    let mut state = lock(state);
    let code = format!("{:x}{}", state.id(), random_hex(20));
    let owner = org.clone().unwrap_or_else(|| FAKE_USER.to_owned());
    let name = manifest["name"].as_str().unwrap_or_default().to_owned();
    state.manifest_apps.push(ManifestApp {
        manifest,
        org,
        state: query.get("state").cloned().unwrap_or_default(),
        code: code.clone(),
        created: false,
        converted: false,
        webhook_secret: None,
        client_secret: None,
    });
    let escape = core_types::web::escape;
    web_page(
        StatusCode::OK,
        "Create GitHub App",
        &format!(
            "<h1>Create GitHub App for {owner}</h1><p id=\"app-name\">{name}</p>\
             <form method=\"post\" action=\"/settings/apps/new/{code}\">\
             <button type=\"submit\" id=\"create-app\">Create GitHub App for {owner}</button></form>",
            owner = escape(&owner),
            name = escape(&name),
        ),
    )
}

/// "Create GitHub App": the App exists; the browser goes back with the code.
async fn create_app(State(state): State<Shared>, Path(code): Path<String>) -> Response {
    let mut state = lock(&state);
    let Some(app) = state.manifest_apps.iter_mut().find(|app| app.code == code && !app.created) else {
        return web_page(StatusCode::NOT_FOUND, "Not Found", "No such App request.");
    };
    app.created = true;
    let redirect = app.manifest["redirect_url"].as_str().unwrap_or_default();
    let separator = if redirect.contains('?') { '&' } else { '?' };
    let location =
        format!("{redirect}{separator}code={}&state={}", query_escape(&code), query_escape(&app.state));
    (StatusCode::FOUND, [(axum::http::header::LOCATION, location)]).into_response()
}

/// `POST /app-manifests/{code}/conversions`: the App with its key and webhook
/// secret, once per code.
async fn convert_manifest(
    State(state): State<Shared>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Response {
    let claimed = {
        let mut state = lock(&state);
        let key = state.manifest_key.clone();
        state.manifest_apps.iter_mut().find(|app| app.code == code && app.created && !app.converted).map(
            |app| {
                app.converted = true;
                (app.manifest.clone(), app.org.clone(), key)
            },
        )
    };
    let Some((manifest, org, key)) = claimed else { return not_found() };
    let pem = match key {
        Some(pem) => pem,
        None => match tokio::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .await
        {
            Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).into_owned(),
            _ => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"message": "the fake needs openssl"})),
                )
                    .into_response();
            }
        },
    };
    let webhook_secret = random_hex(40);
    let client_secret = random_hex(40);
    let base = fake_base(&headers);
    let hook_url = manifest["hook_attributes"]["url"].clone();
    {
        let mut state = lock(&state);
        if let Some(app) = state.manifest_apps.iter_mut().find(|app| app.code == code) {
            app.webhook_secret = Some(webhook_secret.clone());
            app.client_secret = Some(client_secret.clone());
        }
        state.hook_config =
            Some(json!({"content_type": "json", "insecure_ssl": "0", "url": hook_url, "secret": "********"}));
    }
    let (owner, owner_type) = match &org {
        Some(org) => (org.as_str(), "Organization"),
        None => (FAKE_USER, "User"),
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "id": FAKE_APP_ID,
            "slug": APP_SLUG,
            "node_id": "A_fake",
            "name": manifest["name"],
            "description": manifest["description"],
            "external_url": manifest["url"],
            "html_url": format!("{base}/apps/{APP_SLUG}"),
            "owner": {"login": owner, "type": owner_type},
            "permissions": manifest["default_permissions"],
            "events": manifest["default_events"],
            "created_at": "2026-11-30T00:00:00Z",
            "updated_at": "2026-11-30T00:00:00Z",
            "client_id": format!("Iv1.{}", random_hex(16)),
            "client_secret": client_secret,
            "webhook_secret": webhook_secret,
            "pem": pem,
        })),
    )
        .into_response()
}

/// `GET /app` of an App the manifest flow made: its name, owner, permissions and events.
fn manifest_app_description(app: &mut Value, made: &ManifestApp) {
    app["name"] = made.manifest["name"].clone();
    app["owner"] = match &made.org {
        Some(org) => json!({"login": org, "type": "Organization"}),
        None => json!({"login": FAKE_USER, "type": "User"}),
    };
    app["permissions"] = made.manifest["default_permissions"].clone();
    app["events"] = made.manifest["default_events"].clone();
}

async fn list_installations(State(state): State<Shared>) -> Response {
    Json(Value::Array(lock(&state).installations.clone())).into_response()
}

async fn hook_config(State(state): State<Shared>) -> Response {
    let config = lock(&state).hook_config.clone().unwrap_or_else(
        || json!({"content_type": "json", "insecure_ssl": "0", "url": "https://berth.invalid/webhook", "secret": "********"}),
    );
    Json(config).into_response()
}

/// GitHub's install page: the account, and the button.
async fn install_page(Path(slug): Path<String>) -> Response {
    let slug = core_types::web::escape(&slug);
    web_page(
        StatusCode::OK,
        "Install",
        &format!(
            "<h1>Install {slug}</h1><form method=\"post\" action=\"/apps/{slug}/installations/new\">\
             <button type=\"submit\" id=\"install-app\">Install on all repositories of {FAKE_USER}</button></form>"
        ),
    )
}

/// "Install": the App is installed on the fake's account (once).
async fn install(State(state): State<Shared>) -> Response {
    let installed =
        lock(&state).installations.iter().any(|installation| installation["account"]["login"] == FAKE_USER);
    if !installed {
        add_installation(&state, FAKE_USER);
    }
    web_page(StatusCode::OK, "Installed", &format!("<h1 id=\"installed\">Installed on {FAKE_USER}</h1>"))
}
