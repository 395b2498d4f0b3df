//! `berth setup` end to end: the real binary, the fake GitHub's manifest
//! flow (its web pages too), headless Chromium through the whole flow, then
//! a real `berth serve` that starts from the files setup wrote and accepts a
//! delivery signed with the secret GitHub handed out, and `berth doctor`'s
//! first-run checks against the same fake. Also: a wrong `state`, a replayed
//! code, an earlier App's files without `--force`, the files' modes, and no
//! secret in any output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_github::FakeGitHub;
use serde_json::json;
use tests::{Daemon, github_signature, http, rsa_key, workspace_binaries};

use crate::operate::Browser;

/// A running `berth setup`, its output kept; killed when dropped.
struct Setup {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

async fn berth() -> PathBuf {
    tokio::task::spawn_blocking(workspace_binaries).await.expect("build task runs").join("berth")
}

fn keep(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    use tokio::io::AsyncReadExt;
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut stream = stream;
        let mut buffer = [0_u8; 4096];
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
    text
}

impl Setup {
    async fn spawn(args: &[&str]) -> Setup {
        let mut command = tokio::process::Command::new(berth().await);
        command
            .arg("setup")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("berth setup starts");
        let stdout = keep(child.stdout.take().expect("stdout piped"));
        let stderr = keep(child.stderr.take().expect("stderr piped"));
        Setup { child, stdout, stderr }
    }

    /// Starts `berth setup` and waits for the address it prints.
    async fn start(args: &[&str]) -> (Setup, String) {
        let mut setup = Setup::spawn(args).await;
        let started = Instant::now();
        loop {
            if let Some(url) = setup.stdout().split_whitespace().find(|word| word.contains("/?key=")) {
                return (setup, url.to_owned());
            }
            if let Ok(Some(status)) = setup.child.try_wait() {
                panic!("berth setup ended ({status}) before printing its address: {}", setup.output());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no address printed: {}", setup.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr.lock().unwrap())
    }

    /// Waits for it to end; its exit code and everything it printed.
    async fn finish(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("berth setup did not end: {}", self.output()))
            .expect("waiting works");
        // The readers drain what is left in the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (status.code().unwrap_or(-1), self.output())
    }

    fn terminate(&self) {
        let pid = i32::try_from(self.child.id().expect("still running")).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    }
}

/// Whether the page in `browser` has an element with this id.
async fn exists(browser: &Browser, id: &str) -> bool {
    browser.script(&format!("return document.getElementById('{id}') !== null"), json!([])).await
        == json!(true)
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).permissions().mode()
        & 0o777
}

/// `application/x-www-form-urlencoded` text.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.*".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn html_unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The text between `before` and the next `"` in `page`.
fn attribute_after<'a>(page: &'a str, before: &str) -> &'a str {
    let start = page.find(before).unwrap_or_else(|| panic!("no {before:?} in {page}")) + before.len();
    let end = start + page[start..].find('"').expect("a closing quote");
    &page[start..end]
}

/// The fake GitHub, handing out a key made with openssl as the App's.
async fn fake_github(keys: &Path) -> (FakeGitHub, String) {
    let fake = FakeGitHub::start().await.unwrap();
    let pem = std::fs::read_to_string(rsa_key(keys)).unwrap();
    fake.with(|state| state.manifest_key = Some(pem.clone()));
    (fake, pem)
}

/// The secrets the fake handed out: the key's lines, the webhook and client secrets.
fn secrets(fake: &FakeGitHub, pem: &str) -> Vec<String> {
    let mut secrets: Vec<String> =
        pem.lines().filter(|line| !line.starts_with("-----")).map(str::to_owned).collect();
    fake.with(|state| {
        for app in &state.manifest_apps {
            secrets.extend(app.webhook_secret.clone());
            secrets.extend(app.client_secret.clone());
        }
    });
    assert!(secrets.len() > 3, "the fake handed out secrets");
    secrets
}

fn assert_no_secret(secrets: &[String], what: &str, text: &str) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "{what} shows a secret:\n{text}");
    }
}

fn ping(hook: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {"type": "App", "config": {"url": hook}}}))
        .unwrap()
}

async fn deliver(addr: std::net::SocketAddr, secret: &str, body: &[u8]) -> (u16, String) {
    let headers = [
        ("X-GitHub-Event", "ping".to_owned()),
        ("X-GitHub-Delivery", format!("setup-{}", free_port())),
        ("X-Hub-Signature-256", github_signature(secret, body)),
        ("Content-Type", "application/json".to_owned()),
    ];
    http(addr, "POST", "/webhook", &headers, body).await.expect("the daemon answers")
}

#[tokio::test]
async fn setup_in_chromium_creates_the_app_and_berth_serve_starts_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, pem) = fake_github(dir.path()).await;
    let state_dir = dir.path().join("state");
    let serve_port = free_port();
    let public_url = format!("http://127.0.0.1:{serve_port}");
    let (setup, url) = Setup::start(&[
        "--url",
        &public_url,
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--github-api-url",
        &fake.url(),
        "--bind",
        "127.0.0.1:0",
        "--name",
        "berth-e2e",
    ])
    .await;
    let setup_origin = url.split("/?key=").next().unwrap().to_owned();

    let browser = Browser::start().await;
    browser.goto(&url).await;
    browser.wait_for("the setup page's button", |browser| exists(browser, "create")).await;
    let href = browser.script("return location.href", json!([])).await;
    assert_eq!(href, format!("{setup_origin}/"), "the key has left the address bar");
    let create = browser.find("#create").await;
    browser.element(&create, "click", json!({})).await;
    browser.wait_for("GitHub's page for the manifest", |browser| exists(browser, "create-app")).await;
    let name = browser.script("return document.getElementById('app-name').textContent", json!([])).await;
    assert_eq!(name, "berth-e2e");
    let confirm = browser.find("#create-app").await;
    browser.element(&confirm, "click", json!({})).await;
    browser.wait_for("the page that says the App is set up", |browser| exists(browser, "done")).await;
    let done_page = browser.script("return document.documentElement.outerHTML", json!([])).await;
    let done_page = done_page.as_str().unwrap().to_owned();
    let install = browser.script("return document.getElementById('install').href", json!([])).await;
    assert_eq!(install, format!("{}/apps/berth/installations/new", fake.url()));

    let (code, setup_output) = setup.finish().await;
    assert_eq!(code, 0, "{setup_output}");
    assert!(setup_output.contains("The GitHub App berth-e2e (id 4242"), "{setup_output}");
    assert!(setup_output.contains(&format!("{}/apps/berth/installations/new", fake.url())), "{setup_output}");

    // What GitHub got: berth app-manifest's manifest, and the way back to the page.
    let posted = fake.with(|state| state.manifest_apps.clone());
    assert_eq!(posted.len(), 1);
    let manifest = &posted[0].manifest;
    assert_eq!(manifest["hook_attributes"]["url"], format!("{public_url}/webhook"));
    assert_eq!(manifest["url"], public_url.as_str());
    assert_eq!(manifest["redirect_url"], format!("{setup_origin}/callback"));
    assert_eq!(manifest["default_permissions"]["checks"], "write");
    assert_eq!(
        manifest["default_events"],
        json!(["issue_comment", "issues", "pull_request", "check_run", "check_suite"])
    );
    assert!(posted[0].converted && posted[0].state.len() == 64, "{:?}", posted[0].state);
    let conversions: Vec<String> = fake.with(|state| {
        state
            .requests
            .iter()
            .filter(|request| request.path.starts_with("/app-manifests/"))
            .map(|request| request.auth.clone())
            .collect()
    });
    assert_eq!(conversions, [" none"], "one conversion, with no credentials");

    // The install link leads to GitHub's install page.
    let install_link = browser.find("#install").await;
    browser.element(&install_link, "click", json!({})).await;
    browser.wait_for("GitHub's install page", |browser| exists(browser, "install-app")).await;
    let install_button = browser.find("#install-app").await;
    browser.element(&install_button, "click", json!({})).await;
    browser.wait_for("the installation", |browser| exists(browser, "installed")).await;
    browser.quit().await;
    assert_eq!(fake.with(|state| state.installations.len()), 1);

    let files = api::setup::Files::in_dir(&state_dir);
    assert_eq!(mode(&state_dir), 0o700);
    for path in files.all() {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(&files.key).unwrap().trim(),
        pem.trim(),
        "GitHub's key, kept as given"
    );

    // berth serve, from the written files alone, takes a delivery signed with GitHub's secret.
    let webhook_secret = posted[0].webhook_secret.clone().expect("the conversion gave a webhook secret");
    let instance = format!("e2e-setup-{}", std::process::id());
    let daemon = Daemon::start(&[
        ("BERTH_CONFIG", files.config.to_str().unwrap().to_owned()),
        ("BERTH_BIND", format!("127.0.0.1:{serve_port}")),
        ("BERTH_INSTANCE", instance.clone()),
    ])
    .await;
    let body = ping(&format!("{public_url}/webhook"));
    let (status, answer) = deliver(daemon.addr, &webhook_secret, &body).await;
    assert_eq!(status, 202, "{answer}\n{}", daemon.log_text());
    let (status, _) = deliver(daemon.addr, "not-the-apps-webhook-secret", &body).await;
    assert_eq!(status, 401, "another secret is refused");

    // berth doctor's first-run checks, with one delivery that did not reach Berth.
    fake.with(|state| {
        state.deliveries = vec![
            json!({"id": 2, "guid": "guid-refused", "status_code": 401, "status": "Invalid HTTP Response: 401", "event": "issue_comment", "action": "created", "delivered_at": "2026-11-30T10:00:00Z", "redelivery": false}),
            json!({"id": 1, "guid": "guid-fine", "status_code": 202, "status": "OK", "event": "installation", "action": "created", "delivered_at": "2026-11-30T09:00:00Z", "redelivery": false}),
        ];
    });
    let doctor = |extra: Vec<(&'static str, String)>| {
        let config = files.config.clone();
        let instance = instance.clone();
        async move {
            let mut command = tokio::process::Command::new(berth().await);
            command
                .args(["doctor", "--config"])
                .arg(&config)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("BERTH_BIND", format!("127.0.0.1:{serve_port}"))
                .env("BERTH_INSTANCE", instance)
                .envs(extra);
            if let Ok(host) = std::env::var("DOCKER_HOST") {
                command.env("DOCKER_HOST", host);
            }
            let output = command.output().await.expect("berth doctor runs");
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
        }
    };
    let report = doctor(vec![]).await;
    let line = |name: &str| {
        report
            .lines()
            .find(|line| line.get(6..).is_some_and(|rest| rest.starts_with(name)))
            .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
            .to_owned()
    };
    assert!(line("github app").starts_with("ok") && line("github app").contains("berth-e2e"), "{report}");
    assert!(line("app access").starts_with("ok"), "{report}");
    assert_eq!(
        line("installations"),
        "ok    installations   installed on e2e (all repositories)",
        "{report}"
    );
    assert!(
        line("webhook url").starts_with("ok")
            && line("webhook url").contains(&format!("{public_url}/webhook")),
        "{report}"
    );
    let deliveries = line("deliveries");
    assert!(deliveries.starts_with("FAIL"), "{report}");
    assert!(
        deliveries.contains("guid-refused (issue_comment.created") && !deliveries.contains("guid-fine"),
        "{report}"
    );
    assert!(deliveries.contains("BERTH_WEBHOOK_SECRET_FILE"), "the fix is named: {report}");
    let agent_key = line("agent key");
    assert!(agent_key.starts_with("FAIL") && agent_key.contains("ANTHROPIC_API_KEY=%s"), "{report}");
    let moved = doctor(vec![("BERTH_PUBLIC_URL", "https://moved.example.com".to_owned())]).await;
    let moved_line = moved.lines().find(|line| line.contains("webhook url")).unwrap().to_owned();
    assert!(
        moved_line.starts_with("FAIL") && moved_line.contains("https://moved.example.com/webhook"),
        "{moved}"
    );

    let secrets = secrets(&fake, &pem);
    assert_no_secret(&secrets, "berth setup's output", &setup_output);
    assert_no_secret(&secrets, "the setup page", &done_page);
    assert_no_secret(&secrets, "berth serve's log", &daemon.log_text());
    assert_no_secret(&secrets, "berth doctor", &format!("{report}{moved}"));
    daemon.kill().await;
}

/// Opens the page with the key (as the printed address would), like a browser.
async fn page(origin: &str, key: &str) -> String {
    let addr = origin.trim_start_matches("http://").parse().unwrap();
    let (status, body) =
        http(addr, "GET", "/", &[("Cookie", format!("berth_setup={key}"))], b"").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// What GitHub does with the page's form: shows the manifest, and on
/// "Create GitHub App" hands out a code. Returns the code.
async fn create_on_github(fake: &FakeGitHub, page: &str) -> String {
    let action = html_unescape(attribute_after(page, "method=\"post\" action=\""));
    let manifest = html_unescape(attribute_after(page, "name=\"manifest\" value=\""));
    let path = action.strip_prefix(&fake.url()).expect("the form posts to the fake's web pages").to_owned();
    let body = format!("manifest={}", form_encode(&manifest));
    let headers = [("Content-Type", "application/x-www-form-urlencoded".to_owned())];
    let (status, github_page) = http(fake.addr, "POST", &path, &headers, body.as_bytes()).await.unwrap();
    assert_eq!(status, 200, "{github_page}");
    let create = attribute_after(&github_page, "method=\"post\" action=\"").to_owned();
    let (status, _) = http(fake.addr, "POST", &create, &[], b"").await.unwrap();
    assert_eq!(status, 302, "GitHub sends the browser back");
    create.rsplit('/').next().unwrap().to_owned()
}

async fn callback(origin: &str, code: &str, state: &str) -> (u16, String) {
    let addr = origin.trim_start_matches("http://").parse().unwrap();
    http(addr, "GET", &format!("/callback?code={code}&state={state}"), &[], b"").await.unwrap()
}

fn split(url: &str) -> (String, String) {
    let (origin, key) = url.split_once("/?key=").unwrap();
    (origin.to_owned(), key.to_owned())
}

#[tokio::test]
async fn setup_refuses_a_wrong_state_a_replayed_code_and_an_earlier_app() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, pem) = fake_github(dir.path()).await;
    let first_dir = dir.path().join("first");
    let second_dir = dir.path().join("second");
    let common = |state_dir: &Path| {
        vec![
            "--url".to_owned(),
            "https://berth.example.com".to_owned(),
            "--state-dir".to_owned(),
            state_dir.to_str().unwrap().to_owned(),
            "--github-api-url".to_owned(),
            fake.url(),
            "--bind".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };
    let args = |state_dir: &Path, extra: &[&str]| {
        let mut args = common(state_dir);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let conversions = || {
        fake.with(|state| {
            state.requests.iter().filter(|request| request.path.starts_with("/app-manifests/")).count()
        })
    };

    let first_args = args(&first_dir, &[]);
    let (first, url) = Setup::start(&as_str(&first_args)).await;
    let (origin, key) = split(&url);
    let form = page(&origin, &key).await;
    let state = attribute_after(&form, "?state=").to_owned();
    let code = create_on_github(&fake, &form).await;

    // A wrong state: refused before GitHub is asked, and the code stays good.
    let (status, refused) = callback(&origin, &code, &"f".repeat(64)).await;
    assert_eq!(status, 403, "{refused}");
    let (status, _) = callback(&origin, &code, "").await;
    assert_eq!(status, 403);
    assert_eq!(conversions(), 0, "GitHub was not asked");
    assert!(!first_dir.join("github-app-key.pem").exists());

    let (status, done) = callback(&origin, &code, &state).await;
    assert_eq!(status, 200, "{done}");
    let (exit, first_output) = first.finish().await;
    assert_eq!(exit, 0, "{first_output}");
    for path in api::setup::Files::in_dir(&first_dir).all() {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }

    // The same code again, with a good state of another setup: GitHub says no, nothing is written.
    let second_args = args(&second_dir, &[]);
    let (second, url) = Setup::start(&as_str(&second_args)).await;
    let (origin, key) = split(&url);
    let state = attribute_after(&page(&origin, &key).await, "?state=").to_owned();
    let (status, replayed) = callback(&origin, &code, &state).await;
    assert_eq!(status, 502, "{replayed}");
    assert!(replayed.contains("GitHub answered 404") && replayed.contains("works once"), "{replayed}");
    assert!(second_dir.join("berth.toml").symlink_metadata().is_err(), "nothing written");
    let (status, _) = callback(&origin, &code, &state).await;
    assert_eq!(status, 403, "a state is good once");
    second.terminate();
    let (exit, second_output) = second.finish().await;
    assert_eq!(exit, 1, "{second_output}");
    assert!(second_output.contains("stopped before a GitHub App was set up"), "{second_output}");

    // An earlier App's files: refused at once without --force, and left as they were.
    let key_before = std::fs::read(first_dir.join("github-app-key.pem")).unwrap();
    let refused = Setup::spawn(&as_str(&args(&first_dir, &[]))).await;
    let (exit, refused_output) = refused.finish().await;
    assert_eq!(exit, 1, "{refused_output}");
    assert!(
        refused_output.contains("already holds a GitHub App's files") && refused_output.contains("--force"),
        "{refused_output}"
    );
    assert!(
        refused_output.contains("github-app-key.pem") && !refused_output.contains("/?key="),
        "{refused_output}"
    );
    assert_eq!(std::fs::read(first_dir.join("github-app-key.pem")).unwrap(), key_before);
    let (forced, _) = Setup::start(&as_str(&args(&first_dir, &["--force"]))).await;
    forced.terminate();
    let (_, forced_output) = forced.finish().await;
    assert_eq!(
        std::fs::read(first_dir.join("github-app-key.pem")).unwrap(),
        key_before,
        "replaced only by a new App"
    );

    // Bad settings: exit 2, one line naming the setting.
    let no_url = Setup::spawn(&["--state-dir", second_dir.to_str().unwrap()]).await;
    let (exit, no_url_output) = no_url.finish().await;
    assert_eq!(exit, 2, "{no_url_output}");
    assert!(
        no_url_output.trim().lines().count() == 1 && no_url_output.contains("BERTH_PUBLIC_URL"),
        "{no_url_output}"
    );
    let serve = tokio::process::Command::new(berth().await)
        .args(["serve", "--config"])
        .arg(first_dir.join("berth.toml"))
        .env_clear()
        .env("BERTH_PUBLIC_URL", "ftp://berth.example.com")
        .output()
        .await
        .unwrap();
    let serve_output = String::from_utf8_lossy(&serve.stderr).into_owned();
    assert_eq!(serve.status.code(), Some(2), "{serve_output}");
    assert!(
        serve_output.trim().lines().count() == 1 && serve_output.contains("BERTH_PUBLIC_URL"),
        "{serve_output}"
    );

    let secrets = secrets(&fake, &pem);
    for (what, text) in [
        ("the first setup", &first_output),
        ("the done page", &done),
        ("the replay's page", &replayed),
        ("the second setup", &second_output),
        ("the refused setup", &refused_output),
        ("the forced setup", &forced_output),
        ("berth serve", &serve_output),
    ] {
        assert_no_secret(&secrets, what, text);
    }
}
