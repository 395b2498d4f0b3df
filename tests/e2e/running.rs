//! The running daemon end to end: deliveries become check runs, hardened
//! workers (the real berth-worker, cloning from a local git server, with the
//! stub as its agent) and reports on a fake GitHub that records every call.

use std::time::Duration;

use api::fake_github::FakeGitHub;
use serde_json::{Value, json};
use tests::git_server::{GitServer, SeedRepo};
use tests::{Daemon, github_signature, http, rsa_key, test_image};

const SECRET: &str = "e2e-running-webhook-secret";
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
const AGENT: &str = "/usr/local/bin/berth-stub prompt-steps {prompt_file} {summary_file}";

/// One daemon, its fake GitHub and a git server with one repository.
pub(crate) struct Rig {
    pub(crate) fake: FakeGitHub,
    pub(crate) daemon: Daemon,
    pub(crate) server: GitServer,
    pub(crate) seed: SeedRepo,
    pub(crate) repo: String,
    pub(crate) repo_name: String,
    pub(crate) main_sha: String,
    pub(crate) head_sha: String,
    pub(crate) env: Vec<(&'static str, String)>,
    /// `DOCKER_HOST` of the engine the daemon runs on, when not the machine's.
    docker_host: Option<String>,
    _dir: tempfile::TempDir,
    _cleanup: RepoCleanup,
}

/// Removes every container of a test repository, also when the test fails.
pub(crate) struct RepoCleanup(String, Option<String>);

impl Drop for RepoCleanup {
    fn drop(&mut self) {
        let repo = self.0.clone();
        let host = self.1.clone();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(docker) = docker_client(host.as_deref()) else { return };
                let filters =
                    std::collections::HashMap::from([("label", vec![format!("berth.repo={repo}")])]);
                let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build();
                for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
                    let remove =
                        bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&container.id.unwrap_or_default(), Some(remove)).await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A client of the engine at `host` (`unix://...`), or of the machine's.
fn docker_client(host: Option<&str>) -> Result<bollard::Docker, bollard::errors::Error> {
    match host.and_then(|host| host.strip_prefix("unix://")) {
        Some(socket) => bollard::Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION),
        None => bollard::Docker::connect_with_unix_defaults(),
    }
}

impl Rig {
    /// Starts everything; `settings` override the defaults.
    pub(crate) async fn start(name: &str, settings: &[(&'static str, String)]) -> Rig {
        Rig::start_on(name, settings, None).await
    }

    /// Starts everything with the daemon and its workers on `engine`.
    pub(crate) async fn start_on_engine(
        name: &str,
        settings: &[(&'static str, String)],
        engine: &tests::private_engine::PrivateEngine,
    ) -> Rig {
        Rig::start_on(name, settings, Some((engine.host(), engine.gateway()))).await
    }

    async fn start_on(
        name: &str,
        settings: &[(&'static str, String)],
        engine: Option<(String, std::net::IpAddr)>,
    ) -> Rig {
        let image = test_image().await.to_owned();
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key(dir.path());
        let fake = FakeGitHub::start().await.unwrap();
        let server = match &engine {
            Some((_, gateway)) => GitServer::start_on(*gateway).await,
            None => GitServer::start().await,
        };
        let docker_host = engine.map(|(host, _)| host);
        let repo_name = format!("{name}-{}", std::process::id());
        let repo = format!("e2e/{repo_name}");
        let seed = server.repo(&format!("{repo_name}.git"));
        let main_sha = seed.commit("main", "README.md", "hello\n");
        let head_sha = seed.commit("feature", "feature.txt", "a change\n");
        fake.set_branch(&repo, "main", &main_sha);
        fake.set_pull(&repo, 7, &head_sha, "feature", Some(&repo));
        let mut env: Vec<(&'static str, String)> = vec![
            ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
            ("BERTH_GITHUB_APP_ID", "4242".to_owned()),
            ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
            ("BERTH_GITHUB_API_URL", fake.url()),
            ("BERTH_STATE_DIR", dir.path().join("state").display().to_string()),
            ("BERTH_WORKER_IMAGE", image),
            ("BERTH_WORKER_NETWORK", "bridge".to_owned()),
            ("BERTH_WORKER_MEMORY", "256m".to_owned()),
            ("BERTH_AGENT_COMMAND", AGENT.to_owned()),
            ("BERTH_STOP_GRACE", "4s".to_owned()),
            ("BERTH_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("RUST_LOG", "info,api=debug".to_owned()),
            ("BERTH_INSTANCE", repo_name.clone()),
        ];
        if let Some(host) = &docker_host {
            env.push(("DOCKER_HOST", host.clone()));
        }
        for (key, value) in settings {
            env.retain(|(existing, _)| existing != key);
            env.push((key, value.clone()));
        }
        let daemon = Daemon::start(&env).await;
        let cleanup = RepoCleanup(repo.clone(), docker_host.clone());
        Rig {
            fake,
            daemon,
            server,
            seed,
            repo,
            repo_name,
            main_sha,
            head_sha,
            env,
            docker_host,
            _dir: dir,
            _cleanup: cleanup,
        }
    }

    /// SIGKILLs the daemon (nothing of it runs after this returns).
    pub(crate) async fn kill_daemon(&mut self) {
        let _ = self.daemon.child.start_kill();
        let _ = self.daemon.child.wait().await;
    }

    /// Starts the daemon again on the same journal and settings.
    pub(crate) async fn start_daemon(&mut self) {
        self.daemon = Daemon::start(&self.env).await;
    }

    fn repository(&self) -> Value {
        json!({"full_name": self.repo, "clone_url": self.server.url(&format!("{}.git", self.repo_name)), "default_branch": "main"})
    }

    /// `/berth ...` commented on pull request 7 (or issue `number`) by a trusted OWNER.
    pub(crate) fn comment(&self, number: u64, on_pull: bool, body: &str, comment_id: u64) -> Value {
        let mut issue = json!({"number": number, "title": "Make it better", "body": "Please."});
        if on_pull {
            issue["pull_request"] = json!({"url": "x"});
        }
        json!({
            "action": "created",
            "comment": {"id": comment_id, "body": body, "user": {"login": "alice", "type": "User"}, "author_association": "OWNER"},
            "issue": issue,
            "repository": self.repository(),
            "sender": {"login": "alice", "type": "User"},
            "installation": {"id": 77}
        })
    }

    /// Sends a signed delivery; returns the 202 body.
    pub(crate) async fn deliver(&self, event: &str, delivery: &str, payload: &Value) -> Value {
        let body = serde_json::to_vec(payload).unwrap();
        let headers = [
            ("X-GitHub-Event", event.to_owned()),
            ("X-GitHub-Delivery", delivery.to_owned()),
            ("X-Hub-Signature-256", github_signature(SECRET, &body)),
            ("Content-Type", "application/json".to_owned()),
        ];
        let (status, text) = http(self.daemon.addr, "POST", "/webhook", &headers, &body).await.unwrap();
        assert_eq!(status, 202, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until `done` holds on the fake's state (or fails after `limit`).
    pub(crate) async fn until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&api::fake_github::FakeState) -> bool,
    ) {
        let started = std::time::Instant::now();
        while !self.fake.with(|state| done(state)) {
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what}\nrequests: {:#?}\ndaemon log:\n{}",
                self.fake.with(|state| state
                    .requests
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                    .collect::<Vec<_>>()),
                self.daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The completed check run of `task`.
    pub(crate) fn completed(&self, task: &str) -> Option<Value> {
        self.fake.with(|state| {
            state
                .check_runs
                .values()
                .find(|run| run["external_id"] == task && run["status"] == "completed")
                .cloned()
        })
    }

    /// Waits for the completed check run of `task` and returns it.
    pub(crate) async fn outcome(&self, task: &str, limit: Duration) -> Value {
        self.until(&format!("task {task} to complete"), limit, |state| {
            state.check_runs.values().any(|run| run["external_id"] == task && run["status"] == "completed")
        })
        .await;
        self.completed(task).unwrap()
    }

    /// Comments that carry `task`'s marker.
    pub(crate) fn comments_of(&self, task: &str) -> Vec<Value> {
        let marker = format!("<!-- berth:task={task} -->");
        self.fake.with(|state| {
            state
                .comments
                .values()
                .filter(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
                .cloned()
                .collect()
        })
    }

    /// Waits until at least `count` of this rig's workers run (or fails
    /// after `limit`); returns the running ones.
    pub(crate) async fn wait_running(
        &self,
        count: usize,
        limit: Duration,
    ) -> Vec<bollard::models::ContainerSummary> {
        self.wait_running_where(count, limit, |_| true).await
    }

    /// Waits until `task`'s worker runs (or fails after `limit`).
    pub(crate) async fn wait_task_running(&self, task: &str, limit: Duration) {
        let name = format!("berth-{task}");
        let named = |c: &bollard::models::ContainerSummary| {
            c.names.as_ref().is_some_and(|names| names.iter().any(|n| n.trim_start_matches('/') == name))
        };
        self.wait_running_where(1, limit, named).await;
    }

    async fn wait_running_where(
        &self,
        count: usize,
        limit: Duration,
        select: impl Fn(&bollard::models::ContainerSummary) -> bool,
    ) -> Vec<bollard::models::ContainerSummary> {
        let started = std::time::Instant::now();
        loop {
            let running: Vec<_> = self
                .containers()
                .await
                .into_iter()
                .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) && select(c))
                .collect();
            if running.len() >= count {
                return running;
            }
            assert!(
                started.elapsed() < limit,
                "{count} worker(s) never ran within {limit:?}\n{}",
                self.daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Managed containers of this rig's repository.
    pub(crate) async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let docker = docker_client(self.docker_host.as_deref()).unwrap();
        let filters = std::collections::HashMap::from([("label", vec![format!("berth.repo={}", self.repo)])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker.list_containers(Some(options)).await.unwrap()
    }
}

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_review_comment_runs_a_hardened_worker_and_is_reported_once() {
    let rig = Rig::start("review", &[]).await;
    let task =
        task_of(&rig.deliver("issue_comment", "r-1", &rig.comment(7, true, "/berth review", 555)).await);
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["name"], "berth/review");
    assert_eq!(run["head_sha"], rig.head_sha.as_str(), "the check run is on the pull request's head");
    assert!(run["output"]["summary"].as_str().unwrap().contains("stub agent looked at the change"), "{run}");

    // Exactly one check run and one comment for the task; a reaction on the trigger.
    rig.until("the report to be recorded", Duration::from_secs(10), |state| {
        state.requests.iter().filter(|r| r.method == "PATCH" && r.path.contains("/check-runs/")).count() == 1
    })
    .await;
    let (runs, reactions, tokens) = rig.fake.with(|state| {
        (
            state.check_runs.values().filter(|r| r["external_id"] == task.as_str()).count(),
            state.reactions.clone(),
            state.tokens.clone(),
        )
    });
    assert_eq!(runs, 1);
    assert_eq!(rig.comments_of(&task).len(), 1);
    assert_eq!(reactions, vec![(rig.repo.clone(), 555, "eyes".to_owned())]);
    // The worker's token is scoped to the one repository and the review's permissions.
    let worker_token = tokens
        .iter()
        .find(|(request, _)| request["repositories"].is_array())
        .expect("a scoped token was made");
    assert_eq!(worker_token.0["repositories"], json!([rig.repo_name]));
    assert_eq!(worker_token.0["permissions"]["contents"], "read");
    // Revoked once the task ended.
    let token = worker_token.1.clone();
    rig.until("the worker token to be revoked", Duration::from_secs(30), |state| {
        state.revoked.contains(&token)
    })
    .await;
    // The container is gone once reported.
    rig.until("container removal", Duration::from_secs(10), |_| true).await;
    let mut left = rig.containers().await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = rig.containers().await;
    }
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[tokio::test]
async fn an_implement_task_pushes_a_branch_and_gets_a_pull_request() {
    let rig = Rig::start("implement", &[]).await;
    let answer = rig
        .deliver("issue_comment", "i-1", &rig.comment(12, false, "/berth implement write NOTES.md done", 600))
        .await;
    let task = task_of(&answer);
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["head_sha"], rig.main_sha.as_str());
    assert!(rig.seed.head_of("berth/issue-12").is_some(), "the branch was pushed to the git server");
    rig.until("the pull request", Duration::from_secs(20), |state| !state.pulls_created.is_empty()).await;
    let pulls = rig.fake.with(|state| state.pulls_created.clone());
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0]["head"]["ref"], "berth/issue-12");
    assert_eq!(pulls[0]["base"]["ref"], "main");
    rig.until("the comment", Duration::from_secs(10), |_| true).await;
    let comments = rig.comments_of(&task);
    assert_eq!(comments.len(), 1);
    assert!(comments[0]["body"].as_str().unwrap().contains("Pull request:"), "{}", comments[0]);
}

#[tokio::test]
async fn every_ending_is_reported_with_its_own_conclusion() {
    let rig = Rig::start(
        "endings",
        &[("BERTH_TASK_TIMEOUT", "15s".to_owned()), ("BERTH_MAX_WORKERS", "8".to_owned())],
    )
    .await;
    // Each on its own pull request so none dedupes another.
    for number in [21, 22, 23, 24, 25, 26] {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let timeout = task_of(
        &rig.deliver("issue_comment", "e-1", &rig.comment(21, true, "/berth review sleep 120", 1)).await,
    );
    let by_comment = task_of(
        &rig.deliver("issue_comment", "e-2", &rig.comment(22, true, "/berth review sleep 120", 2)).await,
    );
    let by_close = task_of(
        &rig.deliver("issue_comment", "e-3", &rig.comment(23, true, "/berth review sleep 120", 3)).await,
    );
    let oom = task_of(
        &rig.deliver("issue_comment", "e-4", &rig.comment(24, true, "/berth review alloc 2048", 4)).await,
    );
    let killed = task_of(
        &rig.deliver("issue_comment", "e-5", &rig.comment(25, true, "/berth review sleep 120", 5)).await,
    );
    let failed = task_of(
        &rig.deliver("issue_comment", "e-6", &rig.comment(26, true, "/berth review exit 1", 6)).await,
    );

    // Wait for the sleepers to be running before cancelling or killing them.
    for task in [&by_comment, &by_close, &killed] {
        rig.wait_task_running(task, Duration::from_secs(60)).await;
    }
    let answer = rig.deliver("issue_comment", "e-7", &rig.comment(22, true, "/berth cancel", 7)).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    let closed = json!({
        "action": "closed",
        "pull_request": {"number": 23, "head": {"sha": rig.head_sha, "ref": "feature", "repo": {"full_name": rig.repo}}, "base": {"sha": rig.main_sha, "ref": "main", "repo": {"full_name": rig.repo}}},
        "repository": rig.repository(),
        "sender": {"login": "bob", "type": "User"},
        "installation": {"id": 77}
    });
    assert_eq!(rig.deliver("pull_request", "e-8", &closed).await["outcome"], "cancel_requested");
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    docker
        .kill_container(&format!("berth-{killed}"), None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();

    let expect = [
        (&timeout, "timed_out", "deadline of 15s"),
        (&by_comment, "cancelled", "Cancelled by @alice"),
        (&by_close, "cancelled", "Pull request closed by @bob"),
        (&oom, "failure", "ran out of memory (limit 256 MiB)"),
        (&killed, "failure", "killed from outside Berth (SIGKILL"),
        (&failed, "failure", "The agent exited with an error"),
    ];
    for (task, conclusion, summary) in expect {
        let run = rig.outcome(task, Duration::from_secs(120)).await;
        assert_eq!(run["conclusion"], conclusion, "{task}: {run}");
        let text = run["output"]["summary"].as_str().unwrap();
        assert!(text.contains(summary), "{task}: {text:?} lacks {summary:?}\n{}", rig.daemon.log_text());
        assert_eq!(rig.comments_of(task).len(), 1, "{task}");
    }
}

#[tokio::test]
async fn a_push_supersedes_the_running_review() {
    let rig = Rig::start("supersede", &[]).await;
    let first = task_of(
        &rig.deliver("issue_comment", "s-1", &rig.comment(7, true, "/berth review sleep 120", 1)).await,
    );
    rig.until("the first check run", Duration::from_secs(60), |state| {
        state.check_runs.values().any(|run| run["external_id"] == first.as_str())
    })
    .await;
    let new_head = rig.seed.commit("feature", "feature.txt", "a second change\n");
    let pushed = json!({
        "action": "synchronize",
        "pull_request": {"number": 7, "head": {"sha": new_head, "ref": "feature", "repo": {"full_name": rig.repo}}, "base": {"sha": rig.main_sha, "ref": "main", "repo": {"full_name": rig.repo}}, "user": {"login": "alice"}, "author_association": "OWNER"},
        "repository": rig.repository(),
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 77}
    });
    let answer = rig.deliver("pull_request", "s-2", &pushed).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    let run = rig.outcome(&first, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled");
    assert_eq!(run["output"]["title"], "Superseded");
    assert!(
        run["output"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("Superseded by a push of {}", &new_head[..7])),
        "{run}"
    );
}

#[tokio::test]
async fn the_cap_holds_and_every_task_runs_in_order() {
    let rig = Rig::start("cap", &[("BERTH_MAX_WORKERS", "2".to_owned())]).await;
    let mut tasks = Vec::new();
    for number in 30..36 {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
        let comment = rig.comment(number, true, "/berth review sleep 2", number);
        tasks.push(task_of(&rig.deliver("issue_comment", &format!("c-{number}"), &comment).await));
    }
    let mut most = 0;
    let started = std::time::Instant::now();
    while tasks.iter().any(|task| rig.completed(task).is_none()) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not every task finished\n{}",
            rig.daemon.log_text()
        );
        let live = rig.containers().await.len();
        most = most.max(live);
        assert!(live <= 2, "{live} workers at once with a cap of 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most >= 1);
    // Check runs were created in the order the tasks were accepted.
    let order: Vec<String> = rig.fake.with(|state| {
        let mut runs: Vec<&Value> = state.check_runs.values().collect();
        runs.sort_by_key(|run| run["id"].as_u64());
        runs.iter().map(|run| run["external_id"].as_str().unwrap_or("").to_owned()).collect()
    });
    // Two prepare at once, so neighbours may swap; nothing starts ahead of its window.
    assert_eq!(order.len(), tasks.len());
    for (position, task) in order.iter().enumerate() {
        let accepted = tasks.iter().position(|t| t == task).unwrap();
        assert!(
            accepted.abs_diff(position) < 2,
            "{task} started at {position}, accepted at {accepted}: {order:?}"
        );
    }
}

#[tokio::test]
async fn github_failing_for_a_while_delays_reports_but_sends_them_once() {
    let rig = Rig::start("flaky", &[]).await;
    rig.fake.with(|state| state.fail_next = Some((502, 5)));
    let task = task_of(&rig.deliver("issue_comment", "f-1", &rig.comment(7, true, "/berth review", 9)).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}");
    let (runs, bad) = rig.fake.with(|state| {
        (
            state.check_runs.values().filter(|r| r["external_id"] == task.as_str()).count(),
            state.requests.iter().filter(|r| r.status == 502).count(),
        )
    });
    assert_eq!(bad, 5, "the failures were really served");
    assert_eq!(runs, 1, "no duplicate check run");
    assert_eq!(rig.comments_of(&task).len(), 1, "no duplicate comment");
}

#[tokio::test]
async fn refused_app_credentials_are_a_clear_error_naming_them() {
    let rig = Rig::start("credentials", &[]).await;
    rig.fake.with(|state| state.reject_credentials = true);
    let task = task_of(&rig.deliver("issue_comment", "a-1", &rig.comment(7, true, "/berth review", 9)).await);
    let started = std::time::Instant::now();
    while !rig.daemon.log_text().contains("BERTH_GITHUB_PRIVATE_KEY_FILE") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no clear error in the log:\n{}",
            rig.daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rig.daemon.log_text();
    assert!(
        log.contains("GitHub refused the App's credentials") && log.contains("BERTH_GITHUB_APP_ID"),
        "{log}"
    );
    assert!(rig.containers().await.is_empty(), "no worker without credentials");
    let _ = task;
}

#[tokio::test]
async fn the_worker_gets_only_the_scoped_token_and_no_secret_is_logged() {
    let rig = Rig::start("secrets", &[]).await;
    let task = task_of(
        &rig.deliver("issue_comment", "x-1", &rig.comment(7, true, "/berth review sleep 120", 9)).await,
    );
    let name = format!("berth-{task}");
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let mut env = Vec::new();
    for _ in 0..600 {
        if let Ok(inspect) =
            docker.inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>).await
        {
            env = inspect.config.and_then(|config| config.env).unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!env.is_empty(), "the worker never appeared\n{}", rig.daemon.log_text());
    let token = rig.fake.with(|state| {
        state.tokens.iter().find(|(request, _)| request["repositories"].is_array()).unwrap().1.clone()
    });
    assert!(env.contains(&format!("BERTH_GITHUB_TOKEN={token}")), "the scoped token is handed over: {env:?}");
    let joined = env.join("\n");
    for forbidden in [
        SECRET,
        ADMIN_TOKEN,
        "BEGIN RSA PRIVATE KEY",
        "BERTH_WEBHOOK_SECRET",
        "BERTH_ADMIN_TOKEN",
        "BERTH_GITHUB_PRIVATE_KEY",
        "app-key.pem",
    ] {
        assert!(!joined.contains(forbidden), "the worker's environment holds {forbidden:?}");
    }
    let labels = rig.containers().await.into_iter().map(|c| format!("{:?}", c.labels)).collect::<String>();
    assert!(!labels.contains(&token) && !labels.contains(SECRET), "labels leak a secret: {labels}");

    assert_eq!(
        rig.deliver("issue_comment", "x-2", &rig.comment(7, true, "/berth cancel", 10)).await["outcome"],
        "cancel_requested"
    );
    let run = rig.outcome(&task, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled");
    let log = rig.daemon.log_text();
    for secret in [SECRET, ADMIN_TOKEN, token.as_str(), "BEGIN RSA PRIVATE KEY"] {
        assert!(!log.contains(secret), "daemon log leaks {secret:?}");
    }
}
