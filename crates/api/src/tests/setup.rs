//! `berth setup` (its page, the callback against the fake GitHub, the files
//! it writes) and the first-run checks of `berth doctor`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser;
use core_types::Secret;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::config::{Cli, Command, SetupArgs, public_url};
use crate::doctor::{
    AppPages, CallError, access_check, app_check, deliveries_check, hook_check, installations_check,
};
use crate::setup::{Agent, Files, SetupConfig, SetupServer, check_existing};
use fake_github::{FakeGitHub, ManifestApp};
use github::{AppInfo, Delivery, HookConfig, Installation};

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn setup_args(extra: &[&str]) -> SetupArgs {
    let mut args = vec!["berth", "setup"];
    if !extra.contains(&"--url") {
        args.extend(["--url", "https://berth.example.com/"]);
    }
    args.extend(extra);
    match Cli::try_parse_from(args).unwrap().command {
        Command::Setup(args) => *args,
        other => panic!("parsed {other:?}"),
    }
}

fn config(dir: &std::path::Path, api: &str) -> SetupConfig {
    let mut config =
        setup_args(&["--github-api-url", api, "--state-dir", dir.to_str().unwrap()]).validate().unwrap();
    config.bind = "127.0.0.1:8080".parse().unwrap();
    config
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn call(server: &Arc<SetupServer>, uri: &str, cookie: bool) -> Answer {
    let mut request = Request::get(uri).header(header::HOST, "127.0.0.1:8080");
    if cookie {
        request = request.header(header::COOKIE, format!("other=1; berth_setup={KEY}"));
    }
    let response = server.clone().router().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// The state in the page's form.
fn state_of(page: &str) -> String {
    let start = page.find("state=").expect("the form carries a state") + "state=".len();
    page[start..].chars().take_while(char::is_ascii_hexdigit).collect()
}

/// The manifest in the page's form.
fn manifest_of(page: &str) -> Value {
    let start = page.find("name=\"manifest\" value=\"").unwrap() + "name=\"manifest\" value=\"".len();
    let end = start + page[start..].find('"').unwrap();
    let text = page[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap()
}

/// A code the fake hands out once "Create GitHub App" was pressed for `manifest`.
fn created_code(fake: &FakeGitHub, manifest: Value, state: &str) -> String {
    let code = format!("code{}", fake.with(|fake| fake.manifest_apps.len()));
    fake.with(|fake| {
        fake.manifest_apps.push(ManifestApp {
            manifest,
            org: None,
            state: state.to_owned(),
            code: code.clone(),
            created: true,
            converted: false,
            webhook_secret: None,
            client_secret: None,
        });
    });
    code
}

fn conversions(fake: &FakeGitHub) -> usize {
    fake.with(|fake| {
        fake.requests.iter().filter(|request| request.path.starts_with("/app-manifests/")).count()
    })
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn public_urls_are_plain_http_base_urls() {
    assert_eq!(public_url("https://berth.example.com/").unwrap(), "https://berth.example.com");
    assert_eq!(public_url(" http://127.0.0.1:8080 ").unwrap(), "http://127.0.0.1:8080");
    assert_eq!(public_url("https://example.com/berth/").unwrap(), "https://example.com/berth");
    for bad in [
        "berth.example.com",
        "ftp://x",
        "https://",
        "https://a/b?c=d",
        "https://a#b",
        "https://u@a",
        "https://a b",
    ] {
        assert!(public_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn setup_settings_are_checked_and_the_web_address_derived() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    let github = setup_args(&["--state-dir", dir]).validate().unwrap();
    assert_eq!(github.public_url, "https://berth.example.com");
    assert_eq!(github.github_web_url, "https://github.com");
    assert_eq!(github.agent, Agent::ClaudeCode);
    let enterprise = setup_args(&["--github-api-url", "https://git.example.com/api/v3/", "--state-dir", dir])
        .validate()
        .unwrap();
    assert_eq!(enterprise.github_web_url, "https://git.example.com");
    let fake =
        setup_args(&["--github-api-url", "http://127.0.0.1:9", "--state-dir", dir]).validate().unwrap();
    assert_eq!(fake.github_web_url, "http://127.0.0.1:9", "a local fake serves GitHub's pages itself");
    let given =
        setup_args(&["--github-web-url", "https://octo.ghe.com", "--state-dir", dir]).validate().unwrap();
    assert_eq!(given.github_web_url, "https://octo.ghe.com");

    let missing = Cli::try_parse_from(["berth", "setup"]).unwrap();
    let Command::Setup(missing) = missing.command else { panic!() };
    if std::env::var_os("BERTH_PUBLIC_URL").is_none() {
        assert_eq!(missing.validate().unwrap_err().setting, "BERTH_PUBLIC_URL");
    }
    for (extra, setting) in [
        (&["--url", "berth.example.com"][..], "BERTH_PUBLIC_URL"),
        (&["--org", "not an org"][..], "--org"),
        (&["--bind", "0.0.0.0:8080"][..], "BERTH_BIND"),
        (&["--agent", "copilot"][..], "--agent"),
        (&["--name", "a-name-that-is-longer-than-github-allows"][..], "--name"),
        (&["--github-api-url", "ftp://x"][..], "BERTH_GITHUB_API_URL"),
    ] {
        assert_eq!(setup_args(extra).validate().unwrap_err().setting, setting, "{extra:?}");
    }
}

#[tokio::test]
async fn the_page_needs_the_printed_key_and_posts_the_manifest_with_a_fresh_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = SetupServer::new(config(dir.path(), "https://api.github.com"), Secret::new(KEY)).unwrap();

    let refused = call(&server, "/", false).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!refused.body.contains("manifest"), "{}", refused.body);
    assert_eq!(call(&server, "/?key=wrong", false).await.status, StatusCode::FORBIDDEN);

    let opened = call(&server, &format!("/?key={KEY}"), false).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER, "the key leaves the address bar");
    assert_eq!(opened.headers[header::LOCATION], "/");
    let cookie = opened.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with(&format!("berth_setup={KEY};")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");

    let page = call(&server, "/", true).await;
    assert_eq!(page.status, StatusCode::OK);
    let policy = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        policy.contains("form-action 'self' https://github.com;") && !policy.contains("script-src"),
        "{policy}"
    );
    assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let state = state_of(&page.body);
    assert_eq!(state.len(), 64, "32 random bytes");
    assert!(
        page.body.contains(&format!("action=\"https://github.com/settings/apps/new?state={state}\"")),
        "{}",
        page.body
    );
    let manifest = manifest_of(&page.body);
    let mut expected = crate::cli::app_manifest(&crate::config::AppManifestArgs {
        url: "https://berth.example.com".to_owned(),
        name: "berth".to_owned(),
    });
    expected["redirect_url"] = json!("http://127.0.0.1:8080/callback");
    expected["description"] = manifest["description"].clone();
    assert_eq!(manifest, expected, "berth app-manifest's manifest, plus the way back");
    assert_ne!(state_of(&call(&server, "/", true).await.body), state, "every page load has its own state");

    let org = call(&server, "/?org=acme", true).await;
    assert!(
        org.body.contains("action=\"https://github.com/organizations/acme/settings/apps/new?state="),
        "{}",
        org.body
    );
    let bad_org = call(&server, "/?org=%3Cscript%3E", true).await;
    assert!(
        bad_org.body.contains("&lt;script&gt;") && !bad_org.body.contains("<script>"),
        "{}",
        bad_org.body
    );
}

#[tokio::test]
async fn the_callback_converts_the_code_once_and_writes_the_files_mode_0600() {
    let fake = FakeGitHub::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    crate::setup::prepare_dir(&state_dir).unwrap();
    assert_eq!(mode(&state_dir), 0o700);
    let server = SetupServer::new(config(&state_dir, &fake.url()), Secret::new(KEY)).unwrap();
    let page = call(&server, "/", true).await;
    let state = state_of(&page.body);
    let code = created_code(&fake, manifest_of(&page.body), &state);

    // A wrong state never reaches GitHub, and leaves the code usable.
    let wrong = call(&server, &format!("/callback?code={code}&state={}", "0".repeat(64)), false).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);
    assert!(wrong.body.contains("not started here"), "{}", wrong.body);
    assert_eq!(call(&server, &format!("/callback?code={code}"), false).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(conversions(&fake), 0, "GitHub was not asked");
    assert!(Files::in_dir(&state_dir).existing().is_empty());

    let done = call(&server, &format!("/callback?code={code}&state={state}"), false).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(server.done().is_cancelled(), "setup ends once the App is set up");
    let app = server.finished().await.expect("the App is recorded");
    assert_eq!(app.id, fake_github::FAKE_APP_ID);
    assert!(
        done.body.contains(&format!("href=\"{}/apps/berth/installations/new\"", fake.url())),
        "{}",
        done.body
    );
    let files = Files::in_dir(&state_dir);
    for path in files.all() {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    let admin_token = std::fs::read_to_string(&files.admin_token).unwrap();
    assert_eq!(admin_token.trim().len(), 64, "a random token");
    let secret = fake.with(|fake| fake.manifest_apps[0].webhook_secret.clone()).unwrap();
    assert_eq!(std::fs::read_to_string(&files.webhook_secret).unwrap(), format!("{secret}\n"));
    let pem = std::fs::read_to_string(&files.key).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "a PKCS#1 key as GitHub gives");
    let pem_line = pem.lines().nth(1).unwrap();
    assert!(!done.body.contains(&secret) && !done.body.contains(pem_line), "the page shows no secret");
    assert!(!format!("{app:?}").contains(&secret) && !format!("{app:?}").contains(pem_line));
    let message = crate::setup::done_message(&config(&state_dir, &fake.url()), &files, &app);
    assert!(!message.contains(&secret) && !message.contains(pem_line), "{message}");
    assert!(!message.contains(admin_token.trim()), "the token is named by its file only: {message}");
    assert!(message.contains(files.admin_token.to_str().unwrap()), "{message}");
    assert!(message.contains("/apps/berth/installations/new"), "{message}");

    // berth serve reads the config file, and the files it names.
    let config_path = files.config.to_str().unwrap().to_owned();
    let args = crate::config::with_config_file(
        ["berth", "serve", "--config", &config_path].map(std::ffi::OsString::from).to_vec(),
        |_| None,
    )
    .unwrap();
    let Command::Serve(serve) = Cli::try_parse_from(args).unwrap().command else { panic!() };
    let serve = serve.validate().unwrap();
    assert_eq!(serve.github_app_id, fake_github::FAKE_APP_ID);
    assert_eq!(serve.webhook_secret.expose(), secret);
    assert_eq!(serve.github_api_url, fake.url());
    assert_eq!(serve.public_url.as_deref(), Some("https://berth.example.com"));
    assert_eq!(serve.state_dir, state_dir);
    assert_eq!(serve.worker_image, crate::setup::CLAUDE_IMAGE);
    assert_eq!(serve.agent_command, crate::setup::CLAUDE_COMMAND);
    assert_eq!(serve.worker_memory_bytes, 4 << 30);
    // With the admin token: the check run's task link signs in, and `berth
    // cancel` finds the daemon and the token through the same file.
    assert_eq!(serve.admin_token.as_ref().map(Secret::expose), Some(admin_token.trim()));
    let args = crate::config::with_config_file(
        ["berth", "cancel", "task-1", "--config", &config_path].map(std::ffi::OsString::from).to_vec(),
        |_| None,
    )
    .unwrap();
    let Command::Cancel(cancel) = Cli::try_parse_from(args).unwrap().command else { panic!() };
    assert_eq!(cancel.validate().unwrap().token.expose(), admin_token.trim());

    // The state is good once; the code too.
    let replayed = call(&server, &format!("/callback?code={code}&state={state}"), false).await;
    assert_eq!(replayed.status, StatusCode::FORBIDDEN);
    assert_eq!(conversions(&fake), 1);
    let other_dir = dir.path().join("other");
    let other = SetupServer::new(config(&other_dir, &fake.url()), Secret::new(KEY)).unwrap();
    let other_state = state_of(&call(&other, "/", true).await.body);
    let again = call(&other, &format!("/callback?code={code}&state={other_state}"), false).await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY, "{}", again.body);
    assert!(
        again.body.contains("GitHub answered 404") && again.body.contains("works once"),
        "{}",
        again.body
    );
    assert!(!other_dir.join("github-app-key.pem").exists(), "nothing written for a replayed code");
    assert!(other.finished().await.is_none() && !other.done().is_cancelled());
}

#[tokio::test]
async fn states_expire_and_an_earlier_app_is_kept_without_force() {
    let fake = FakeGitHub::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut expiring = config(dir.path(), &fake.url());
    expiring.state_ttl = Duration::ZERO;
    let server = SetupServer::new(expiring, Secret::new(KEY)).unwrap();
    let page = call(&server, "/", true).await;
    let state = state_of(&page.body);
    let code = created_code(&fake, manifest_of(&page.body), &state);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expired = call(&server, &format!("/callback?code={code}&state={state}"), false).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert!(expired.body.contains("expired"), "{}", expired.body);
    assert_eq!(conversions(&fake), 0);

    let files = Files::in_dir(dir.path());
    std::fs::write(&files.key, "an earlier App's key").unwrap();
    let refused = check_existing(&files, false).unwrap_err().to_string();
    assert!(refused.contains("github-app-key.pem") && refused.contains("--force"), "{refused}");
    assert!(check_existing(&files, true).is_ok());
    // Between start and callback, too: the code is then left unused.
    let server = SetupServer::new(config(dir.path(), &fake.url()), Secret::new(KEY)).unwrap();
    let page = call(&server, "/", true).await;
    let state = state_of(&page.body);
    let code = created_code(&fake, manifest_of(&page.body), &state);
    let kept = call(&server, &format!("/callback?code={code}&state={state}"), false).await;
    assert_eq!(kept.status, StatusCode::CONFLICT, "{}", kept.body);
    assert_eq!(std::fs::read_to_string(&files.key).unwrap(), "an earlier App's key");
    assert_eq!(conversions(&fake), 0);
}

#[tokio::test]
async fn the_app_name_github_hands_back_is_escaped_on_every_setup_page() {
    // GitHub's form lets the name be changed before the App is created; the
    // conversion answers with whatever it became.
    let raw = "<script>alert(\"app\")</script> & 'co'";
    let escaped = "&lt;script&gt;alert(&quot;app&quot;)&lt;/script&gt; &amp; 'co'";
    let fake = FakeGitHub::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = SetupServer::new(config(dir.path(), &fake.url()), Secret::new(KEY)).unwrap();
    let mut callbacks = Vec::new();
    for _ in 0..2 {
        let page = call(&server, "/", true).await;
        let state = state_of(&page.body);
        let mut manifest = manifest_of(&page.body);
        manifest["name"] = json!(raw);
        let code = created_code(&fake, manifest, &state);
        callbacks.push(format!("/callback?code={code}&state={state}"));
    }

    let done = call(&server, &callbacks[0], false).await;
    let reloaded = call(&server, "/", true).await;
    let second = call(&server, &callbacks[1], false).await;
    for (what, answer, status) in [
        ("the done page", done, StatusCode::OK),
        ("the page reloaded", reloaded, StatusCode::OK),
        ("a second callback", second, StatusCode::CONFLICT),
    ] {
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert!(!answer.body.contains(raw) && !answer.body.contains("<script>"), "{what}: {}", answer.body);
        assert!(answer.body.contains(escaped), "{what}: {}", answer.body);
    }
    assert_eq!(conversions(&fake), 1, "the second code was not used");
}

/// The App as `GET /app` would describe it, through the same parser.
fn app(value: Value) -> AppInfo {
    AppInfo::from_json(&value).expect("an id and a slug")
}

fn installations(value: Value) -> Vec<Installation> {
    value.as_array().unwrap().iter().map(|value| Installation::from_json(value).unwrap()).collect()
}

fn deliveries(value: Value) -> Vec<Delivery> {
    value.as_array().unwrap().iter().map(|value| Delivery::from_json(value).unwrap()).collect()
}

fn pages() -> AppPages {
    AppPages::of(
        &app(
            json!({"id": 7, "slug": "berth-x", "owner": {"login": "acme", "type": "Organization"}, "html_url": "https://github.com/apps/berth-x"}),
        ),
        "https://github.com",
    )
}

#[test]
fn app_pages_are_the_owners() {
    let pages = pages();
    assert_eq!(pages.settings, "https://github.com/organizations/acme/settings/apps/berth-x");
    assert_eq!(pages.install, "https://github.com/apps/berth-x/installations/new");
    let personal = AppPages::of(
        &app(json!({"id": 7, "slug": "b", "owner": {"login": "al", "type": "User"}})),
        "https://ghe.example.com",
    );
    assert_eq!(personal.settings, "https://ghe.example.com/settings/apps/b");
    assert_eq!(personal.install, "https://ghe.example.com/apps/b/installations/new");
}

#[test]
fn the_first_run_checks_name_each_problem_with_its_fix() {
    let pages = pages();
    let refused = app_check(
        &Err(CallError { status: Some(401), message: "A JSON web token could not be decoded".into() }),
        7,
        "https://api.github.com",
    );
    let problem = refused.problem.unwrap();
    assert!(problem.contains("401") && problem.contains("BERTH_GITHUB_PRIVATE_KEY_FILE"), "{problem}");
    let clock = app_check(
        &Err(CallError {
            status: Some(401),
            message: "'Issued at' claim ('iat') must be an Integer representing a time in the past".into(),
        }),
        7,
        "x",
    );
    assert!(clock.problem.unwrap().contains("clock"));
    assert!(
        app_check(&Ok(app(json!({"id": 7, "slug": "b", "name": "B", "owner": {"login": "acme"}}))), 7, "x")
            .problem
            .is_none()
    );

    let full = app(
        json!({"id": 7, "slug": "b", "permissions": {"checks": "write", "contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"}, "events": ["issue_comment", "issues", "pull_request", "check_run", "check_suite", "push"]}),
    );
    assert!(access_check(&full, &pages).problem.is_none());
    let lacking = app(
        json!({"id": 7, "slug": "b", "permissions": {"checks": "write", "contents": "read", "issues": "write", "pull_requests": "write", "metadata": "read"}, "events": ["issues"]}),
    );
    let problem = access_check(&lacking, &pages).problem.unwrap();
    assert!(
        problem.contains("contents (write)")
            && problem.contains("issue_comment event")
            && problem.contains("check_suite event")
            && problem.contains(&pages.settings),
        "{problem}"
    );

    let nowhere = installations_check(&Ok(Vec::new()), &pages).problem.unwrap();
    assert!(nowhere.contains("installed nowhere") && nowhere.contains(&pages.install), "{nowhere}");
    let installed = installations_check(
        &Ok(installations(
            json!([{"id": 1, "account": {"login": "acme"}, "repository_selection": "all", "suspended_at": null}]),
        )),
        &pages,
    );
    assert_eq!(installed.detail, "installed on acme (all repositories)");
    let suspended = installations_check(
        &Ok(installations(
            json!([{"id": 2, "account": {"login": "acme"}, "suspended_at": "2026-01-01T00:00:00Z"}]),
        )),
        &pages,
    );
    assert!(suspended.problem.unwrap().contains("suspended"));

    let hook = Ok(HookConfig::from_json(
        &json!({"url": "https://berth.example.com/webhook", "content_type": "json", "insecure_ssl": "0"}),
    ));
    assert!(hook_check(&hook, Some("https://berth.example.com"), &pages).problem.is_none());
    let elsewhere = hook_check(&hook, Some("https://other.example.com"), &pages).problem.unwrap();
    assert!(
        elsewhere.contains("https://other.example.com/webhook") && elsewhere.contains(&pages.settings),
        "{elsewhere}"
    );
    let unset = hook_check(&hook, None, &pages).problem.unwrap();
    assert!(unset.contains("BERTH_PUBLIC_URL=https://berth.example.com"), "{unset}");
    let form = Ok(HookConfig::from_json(
        &json!({"url": "https://berth.example.com/webhook", "content_type": "form"}),
    ));
    assert!(
        hook_check(&form, Some("https://berth.example.com"), &pages)
            .problem
            .unwrap()
            .contains("application/json")
    );
}

#[test]
fn failed_deliveries_are_named_unless_a_later_attempt_reached_berth() {
    let pages = pages();
    let delivery = |guid: &str, code: u64, status: &str| json!({"id": 1, "guid": guid, "status_code": code, "status": status, "event": "issue_comment", "action": "created", "delivered_at": "2026-11-30T10:00:00Z"});
    let hook = "https://berth.example.com/webhook";
    assert!(deliveries_check(&Ok(Vec::new()), hook, &pages).problem.is_none());
    // Newest first: g1 failed, then was redelivered and reached Berth; a late
    // repeat of g2 failed after g2 had reached Berth.
    let healed = json!([
        delivery("g2", 502, "Invalid HTTP Response: 502"),
        delivery("g1", 202, "OK"),
        delivery("g1", 503, "Invalid HTTP Response: 503"),
        delivery("g2", 202, "OK")
    ]);
    let check = deliveries_check(&Ok(deliveries(healed)), hook, &pages);
    assert!(check.problem.is_none(), "{check:?}");
    assert_eq!(check.detail, "the last 2 reached Berth");

    let failing = json!([
        delivery("g3", 401, "Invalid HTTP Response: 401"),
        delivery("g4", 0, "failed to connect to host"),
        delivery("g5", 202, "OK"),
    ]);
    let problem = deliveries_check(&Ok(deliveries(failing)), hook, &pages).problem.unwrap();
    assert!(problem.starts_with("2 of the last 3 deliveries did not reach Berth"), "{problem}");
    assert!(
        problem.contains("g3 (issue_comment.created, 2026-11-30T10:00:00Z): Invalid HTTP Response: 401"),
        "{problem}"
    );
    assert!(problem.contains("g4") && !problem.contains("g5"), "{problem}");
    assert!(problem.contains("BERTH_WEBHOOK_SECRET_FILE"), "the fix for a refused signature: {problem}");
    assert!(
        problem.contains("could not reach https://berth.example.com/webhook"),
        "the fix for an unreachable URL: {problem}"
    );
}
