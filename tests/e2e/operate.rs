//! Operating a running daemon: the status API over a real task (listing,
//! labels, outcome, logs followed as server-sent events, cancel), and the
//! dashboard in a real headless Chromium driven over WebDriver.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`; without
//! them it fails with one line saying so (`.ci/run` installs them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::http;

use crate::running::Rig;

const TOKEN: &str = "e2e-operate-admin-token-0123456789";

async fn start(name: &str) -> Rig {
    Rig::start(name, &[("BERTH_ADMIN_TOKEN", TOKEN.to_owned())]).await
}

/// A status API call with the bearer token (or `token`); status and body.
async fn api(rig: &Rig, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, String)> =
        token.map(|token| vec![("Authorization", format!("Bearer {token}"))]).unwrap_or_default();
    http(rig.daemon.addr, method, path, &headers, b"").await.expect("the daemon answers")
}

async fn api_json(rig: &Rig, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = api(rig, method, path, Some(TOKEN)).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{method} {path}: {err}: {body}"));
    (status, value)
}

async fn task_ids(rig: &Rig, query: &str) -> Vec<String> {
    let (status, body) = api_json(rig, "GET", &format!("/api/tasks{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["tasks"]
        .as_array()
        .expect("`tasks` is a list")
        .iter()
        .map(|task| task["task_id"].as_str().expect("every task has an id").to_owned())
        .collect()
}

fn queued(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().expect("a queued delivery names its task").to_owned()
}

/// Polls `GET /api/tasks/{task}` until `done` holds; returns that answer.
async fn until_task(rig: &Rig, task: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = api_json(rig, "GET", &format!("/api/tasks/{task}")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}; last answer {body:#}\ndaemon log:\n{}",
            rig.daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a streamed answer until `enough` holds on what came so far (or the
/// stream ends, or `limit` passes); returns the raw text, head included.
async fn stream_until(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    enough: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the daemon accepts");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("the request is sent");
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = [0_u8; 8192];
    while !enough(&String::from_utf8_lossy(&text)) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(read)) => text.extend_from_slice(&buffer[..read]),
            Ok(Err(err)) => panic!("reading {path}: {err}"),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn the_status_api_shows_a_real_task_follows_its_log_and_cancels_it() {
    let rig = start("operate").await;
    assert_eq!(api(&rig, "GET", "/api/tasks", None).await.0, 401, "no token");
    assert_eq!(
        api(&rig, "GET", "/api/tasks", Some("not-the-admin-token-at-all")).await.0,
        401,
        "wrong token"
    );

    let prompt = "/berth review print operate-first then sleep 2 then print operate-second then sleep 120";
    let task = queued(&rig.deliver("issue_comment", "op-1", &rig.comment(7, true, prompt, 71)).await);
    assert!(task_ids(&rig, "").await.contains(&task), "the list shows the new task");

    let running = until_task(&rig, &task, "the worker to run", |body| {
        body["container"]["status"] == "running" && body["labels"].is_object()
    })
    .await;
    assert_eq!(running["state"], "dispatched", "{running:#}");
    assert_eq!(running["repo"], rig.repo.as_str());
    assert_eq!(running["kind"], "review");
    assert_eq!(running["labels"]["berth.task-id"], task.as_str(), "{running:#}");
    assert_eq!(running["labels"]["berth.repo"], rig.repo.as_str());
    assert_eq!(running["labels"]["berth.managed"], "true");
    assert_eq!(running["container"]["name"], format!("berth-{task}"));
    assert!(running["started_unix"].is_u64(), "{running:#}");
    let check_run = running["check_run"].as_u64().expect("the check run is recorded");
    let fake = rig.fake.url();
    assert_eq!(running["links"]["issue"], format!("{fake}/repos/{}/pulls/7", rig.repo));
    assert_eq!(running["links"]["check_run"], format!("{fake}/repos/{}/check-runs/{check_run}", rig.repo));
    for (query, listed) in [
        ("?state=dispatched", true),
        ("?state=queued", false),
        ("?kind=review", true),
        ("?kind=implement", false),
        (&format!("?repo={}", rig.repo) as &str, true),
        ("?repo=e2e/somewhere-else", false),
    ] {
        assert_eq!(task_ids(&rig, query).await.contains(&task), listed, "{query}");
    }

    // Followed as server-sent events: the first line at once, the second as it comes.
    let events = stream_until(
        rig.daemon.addr,
        &format!("/api/tasks/{task}/logs?follow=true"),
        Duration::from_secs(30),
        |text| text.contains("data: operate-second"),
    )
    .await;
    assert!(events.starts_with("HTTP/1.1 200"), "{events}");
    assert!(events.to_ascii_lowercase().contains("content-type: text/event-stream"), "{events}");
    assert!(events.contains("data: operate-first"), "{events}");
    assert!(events.contains("data: operate-second"), "the log is followed as it grows:\n{events}");
    assert!(events.contains("\nid: "), "lines carry ids for reconnects:\n{events}");
    let (status, logs) = api(&rig, "GET", &format!("/api/tasks/{task}/logs"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(logs.contains("operate-first") && logs.contains("operate-second"), "{logs}");

    // A follower still attached when the task is cancelled sees the end.
    let addr = rig.daemon.addr;
    let follower_path = format!("/api/tasks/{task}/logs?follow=true");
    let follower = tokio::spawn(async move {
        stream_until(addr, &follower_path, Duration::from_secs(60), |text| text.contains("event: end")).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, cancelled) = api_json(&rig, "POST", &format!("/api/tasks/{task}/cancel")).await;
    assert_eq!(status, 202, "{cancelled:#}");
    assert_eq!(cancelled["task_id"], task.as_str());
    assert_eq!(cancelled["state"], "dispatched");
    assert_eq!(cancelled["cancel"]["cause"], "operator", "{cancelled:#}");
    let run = rig.outcome(&task, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled", "{run:#}\n{}", rig.daemon.log_text());
    let ended = follower.await.unwrap();
    assert!(ended.contains("event: end"), "the follower saw the end:\n{ended}");

    let finished =
        until_task(&rig, &task, "the container to be gone", |body| body["container"].is_null()).await;
    assert_eq!(finished["state"], "finished", "{finished:#}");
    assert_eq!(finished["outcome"]["conclusion"], "cancelled");
    assert_eq!(finished["outcome"]["title"], "Cancelled");
    assert!(finished["outcome"]["summary"].as_str().unwrap().contains("operator"), "{finished:#}");
    assert!(finished["finished_unix"].is_u64());
    assert!(task_ids(&rig, "?state=finished").await.contains(&task));

    let (status, again) = api_json(&rig, "POST", &format!("/api/tasks/{task}/cancel")).await;
    assert_eq!(status, 409, "{again}");
    // The container is gone; the log kept of it is served instead.
    let (status, kept) = api(&rig, "GET", &format!("/api/tasks/{task}/logs"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{kept}");
    assert!(kept.contains("operate-first") && kept.contains("operate-second"), "{kept}");
    assert_eq!(api(&rig, "GET", "/api/tasks/no-such-task", Some(TOKEN)).await.0, 404);
    assert_eq!(api(&rig, "POST", "/api/tasks/No_Such_Task/cancel", Some(TOKEN)).await.0, 400);
    assert!(!rig.daemon.log_text().contains(TOKEN), "the daemon never logs the admin token");
}

#[tokio::test]
async fn a_finished_tasks_log_is_served_after_its_container_is_gone() {
    let rig = start("kept-log").await;
    let prompt = "/berth review print kept-first then print kept-second";
    let task = queued(&rig.deliver("issue_comment", "kept-1", &rig.comment(7, true, prompt, 81)).await);
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    let finished = until_task(&rig, &task, "the container to be gone", |body| {
        body["state"] == "finished" && body["container"].is_null()
    })
    .await;
    assert_eq!(finished["outcome"]["conclusion"], "success", "{finished:#}");

    let path = format!("/api/tasks/{task}/logs");
    let answer = stream_until(rig.daemon.addr, &path, Duration::from_secs(10), |text| {
        text.contains("\"berth_result\"")
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("x-berth-log-cut: 0\r\n"), "nothing was cut:\n{answer}");
    assert!(lower.contains("content-type: text/plain"), "{answer}");
    assert!(answer.contains("kept-first") && answer.contains("kept-second"), "{answer}");
    assert!(answer.contains("\"berth_result\""), "the worker's own output is kept too:\n{answer}");
}

#[tokio::test]
async fn the_dashboard_in_chromium_shows_a_real_task_and_follows_its_log() {
    let browser = Browser::start().await;
    let rig = start("dashboard").await;
    let ticks: Vec<String> = (1..=90).map(|n| format!("print dash-tick-{n} then sleep 1")).collect();
    let prompt = format!("/berth review {} then sleep 120", ticks.join(" then "));
    let task = queued(&rig.deliver("issue_comment", "dash-1", &rig.comment(7, true, &prompt, 81)).await);
    until_task(&rig, &task, "the worker to run", |body| body["container"]["status"] == "running").await;

    // A link from GitHub lands on the task's page: sign in there, and come back to it.
    let base = format!("http://{}", rig.daemon.addr);
    let task_page = format!("{base}/tasks/{task}");
    browser.goto(&task_page).await;
    browser
        .wait_for("the login form", |browser| async move {
            browser.script("return document.querySelector('input[name=token]') !== null", json!([])).await
                == json!(true)
        })
        .await;
    let input = browser.find("input[name=token]").await;
    browser.element(&input, "value", json!({ "text": TOKEN })).await;
    let submit = browser.find("button[type=submit]").await;
    browser.element(&submit, "click", json!({})).await;
    let state_text = "return (document.getElementById('task-state') || {}).textContent || ''";
    browser
        .wait_for("the task page after sign-in", |browser| async move {
            browser.script(state_text, json!([])).await == json!("running")
        })
        .await;
    assert_eq!(
        browser.script("return window.location.pathname", json!([])).await,
        json!(format!("/tasks/{task}"))
    );
    let heading = browser.script("return document.querySelector('#task h2').textContent", json!([])).await;
    assert!(heading.as_str().unwrap().contains(&rig.repo), "{heading}");

    // Its log follows the worker's output, on the task page as on the dashboard.
    let log_text = "return (document.getElementById('log') || {}).textContent || ''";
    let last_tick = |text: &str| {
        text.lines().filter_map(|line| line.trim().strip_prefix("dash-tick-")?.parse::<u32>().ok()).max()
    };
    browser
        .wait_for("the worker's lines on the task page", |browser| async move {
            last_tick(browser.script(log_text, json!([])).await.as_str().unwrap_or("")).is_some()
        })
        .await;

    browser.goto(&format!("{base}/")).await;
    let row_text = format!("return (document.getElementById('task-{task}') || {{}}).textContent || ''");
    browser
        .wait_for("the task's row on the dashboard", |browser| {
            let script = row_text.clone();
            async move { browser.script(&script, json!([])).await.as_str().is_some_and(|text| !text.is_empty()) }
        })
        .await;
    let row = browser.script(&row_text, json!([])).await;
    let row = row.as_str().unwrap();
    assert!(row.contains(&task) && row.contains(&rig.repo) && row.contains("running"), "{row}");

    // Select the task: its log tail follows the worker's output.
    browser.goto(&format!("{base}/?task={task}")).await;
    browser
        .wait_for("the worker's lines in the log tail", |browser| async move {
            last_tick(browser.script(log_text, json!([])).await.as_str().unwrap_or("")).is_some()
        })
        .await;
    let first_seen = last_tick(browser.script(log_text, json!([])).await.as_str().unwrap()).unwrap();
    browser
        .wait_for("a newer line to arrive in the log tail", |browser| async move {
            last_tick(browser.script(log_text, json!([])).await.as_str().unwrap_or(""))
                .is_some_and(|tick| tick > first_seen)
        })
        .await;
    let row = browser.script(&row_text, json!([])).await;
    assert!(row.as_str().unwrap().contains(&task), "the tables stay after selecting: {row}");
    let link =
        browser.script("return document.getElementById('task-page').getAttribute('href')", json!([])).await;
    assert_eq!(link, json!(format!("/tasks/{task}")));

    let (status, _) = api(&rig, "POST", &format!("/api/tasks/{task}/cancel"), Some(TOKEN)).await;
    assert_eq!(status, 202);
    assert_eq!(rig.outcome(&task, Duration::from_secs(60)).await["conclusion"], "cancelled");
    until_task(&rig, &task, "the container to be gone", |body| body["container"].is_null()).await;

    // After the end, the page shows the outcome and the log kept of the removed container.
    browser.goto(&task_page).await;
    let outcome = browser
        .script("return (document.getElementById('task-outcome') || {}).textContent || ''", json!([]))
        .await;
    assert!(outcome.as_str().unwrap().starts_with("cancelled"), "{outcome}");
    let kept = browser
        .script("return (document.getElementById('kept-log') || {}).textContent || ''", json!([]))
        .await;
    assert!(kept.as_str().unwrap().contains("dash-tick-1\n"), "{kept}");
    browser.quit().await;
}

/// Headless Chromium behind chromedriver, spoken to over WebDriver's HTTP API
/// (also used by `setup.rs`). Both run in a process group of their own,
/// killed when this is dropped.
pub(crate) struct Browser {
    driver: tokio::process::Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

fn required(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH: the dashboard test needs Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver)"
        )
    })
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        let chromium = required("chromium");
        let chromedriver = required("chromedriver");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            probe.local_addr().expect("a bound listener has an address").port()
        };
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (status, body) = driver_http(addr, "GET", "/status", b"").await;
                if status == 200
                    && serde_json::from_str::<Value>(&body)
                        .is_ok_and(|status| status["value"]["ready"] == true)
                {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Browser { driver, addr, session: String::new(), _profile: profile };
        let created = browser.call("POST", "/session", &capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let (status, text) = driver_http(self.addr, method, path, &body).await;
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("{method} {path}: {err}: {text}"));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), &body).await
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url })).await;
    }

    pub(crate) async fn find(&self, css: &str) -> String {
        let found =
            self.session_call("POST", "/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    pub(crate) async fn element(&self, element: &str, command: &str, body: Value) {
        self.session_call("POST", &format!("/element/{element}/{command}"), body).await;
    }

    pub(crate) async fn script(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Polls `done` until it holds; fails with the page's HTML after 60 s.
    pub(crate) async fn wait_for<'a, F, Fut>(&'a self, what: &str, done: F)
    where
        F: Fn(&'a Browser) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !done(self).await {
            if started.elapsed() > Duration::from_secs(60) {
                let page = self.script("return document.documentElement.outerHTML", json!([])).await;
                panic!("timed out waiting for {what}; the page:\n{}", page.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn quit(self) {
        self.session_call("DELETE", "", json!({})).await;
    }
}

/// One HTTP/1.1 exchange with chromedriver. It keeps connections open
/// whatever the request says, so the answer is read by its Content-Length
/// rather than to the end of the stream.
async fn driver_http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        let mut buffer = [0_u8; 8192];
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Err(std::io::Error::other("chromedriver closed the connection mid-answer"));
            }
            answer.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if rest.len() >= length {
                let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
                return Ok::<_, std::io::Error>((status, rest.to_owned()));
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => panic!("{method} {path} to chromedriver: {err}"),
        Err(_) => panic!("{method} {path}: chromedriver did not answer within 60 s"),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browsers it started share its process group.
        if let Some(pid) = self.driver.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
