//! Berth with the real Claude Code CLI as its agent, end to end: signed
//! deliveries to a real daemon, hardened workers from the Claude test image
//! (`tests::claude::claude_image`), the model played by [`FakeModel`] on the
//! Docker bridge, GitHub by the fake, git by a real `git daemon`.
//!
//! The settings are the README's "Running a real agent": the key only in
//! `BERTH_WORKER_SECRETS_FILE`, the base URL and the traffic switch in
//! `BERTH_WORKER_ENV_FILE`, and the agent command below.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tests::claude::{claude_image, claude_settings};
use tests::fake_model::{FakeModel, Script};
use tests::git_server::bridge_gateway;
use tests::{http, workspace_binaries};

use crate::running::{ADMIN_TOKEN, Rig};

const API_KEY: &str = "sk-ant-e2e-secret-key-0123456789abcdef";

const REVIEW_TEXT: &str =
    "## Review by the fake model\n\nThe parser change is right; add a test for empty input.";

/// A rig whose workers run Claude Code against `model`.
async fn claude_rig(name: &str, model: &FakeModel, dir: &tempfile::TempDir) -> Rig {
    let image = claude_image().await.to_owned();
    let mut settings = claude_settings(dir.path(), &model.url(), API_KEY);
    settings.extend([("BERTH_WORKER_IMAGE", image), ("RUST_LOG", "debug".to_owned())]);
    Rig::start(name, &settings).await
}

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

fn comment_text(rig: &Rig, task: &str) -> String {
    let comments = rig.comments_of(task);
    assert_eq!(comments.len(), 1, "one result comment: {comments:?}");
    comments[0]["body"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn claude_reviews_a_pull_request_and_its_review_is_the_result_comment() {
    let model = FakeModel::start_with(
        bridge_gateway().await,
        Script::WriteThenReply {
            path: "/home/berth/work/summary.md".to_owned(),
            content: REVIEW_TEXT.to_owned(),
            reply: "I wrote the review to the summary file.".to_owned(),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rig = claude_rig("claude-review", &model, &dir).await;
    let mut comment = rig.comment(7, true, "/berth review look hard at the parser", 7001);
    comment["issue"]["title"] = "Teach the parser empty input".into();
    comment["issue"]["body"] = "The parser panics on an empty file; this returns an error instead.".into();
    let task = task_of(&rig.deliver("issue_comment", "claude-r-1", &comment).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\nmodel: {}\n{}", model.summary(), rig.daemon.log_text());
    assert!(run["output"]["summary"].as_str().unwrap().contains(REVIEW_TEXT), "{run}");
    rig.until("the result comment", Duration::from_secs(20), |state| !state.comments.is_empty()).await;
    assert!(comment_text(&rig, &task).contains(REVIEW_TEXT));

    // The model got the whole task, with the key from the secrets file only.
    let messages = model.message_requests();
    assert!(!messages.is_empty(), "{}", model.summary());
    assert!(messages.iter().all(|request| request.header("x-api-key") == Some(API_KEY)));
    let prompt = model.all_text();
    for needle in [
        "Teach the parser empty input",
        "The parser panics on an empty file",
        "look hard at the parser",
        "@alice",
        "origin/main",
        rig.head_sha.as_str(),
        "/home/berth/work/summary.md",
    ] {
        assert!(prompt.contains(needle), "{needle:?} never reached the model");
    }
}

#[tokio::test]
async fn claude_implements_an_issue_its_file_is_pushed_and_gets_a_pull_request() {
    let model = FakeModel::start_with(
        bridge_gateway().await,
        Script::WriteThenReply {
            path: "GREETING.md".to_owned(),
            content: "Hello from the fake model.\n".to_owned(),
            reply: "Added GREETING.md with a greeting.".to_owned(),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rig = claude_rig("claude-impl", &model, &dir).await;
    let mut comment = rig.comment(12, false, "/berth implement keep it short", 7002);
    comment["issue"]["title"] = "Add a greeting file".into();
    comment["issue"]["body"] = "Create GREETING.md that says hello.".into();
    let task = task_of(&rig.deliver("issue_comment", "claude-i-1", &comment).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\nmodel: {}\n{}", model.summary(), rig.daemon.log_text());

    // The file is committed on berth/issue-12 on the git server, and the pull request exists.
    let pushed = rig.seed.head_of("berth/issue-12").expect("berth/issue-12 was pushed");
    let greeting = rig.seed.git(&["show", &format!("{pushed}:GREETING.md")]);
    assert_eq!(greeting.trim(), "Hello from the fake model.");
    let files = rig.seed.git(&["diff", "--name-only", &format!("{}..{pushed}", rig.main_sha)]);
    assert_eq!(files.trim(), "GREETING.md", "only the agent's file is committed");
    rig.until("the pull request", Duration::from_secs(20), |state| !state.pulls_created.is_empty()).await;
    let pulls = rig.fake.with(|state| state.pulls_created.clone());
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["head"]["ref"], "berth/issue-12", "{pulls:?}");

    let prompt = model.all_text();
    for needle in
        ["Add a greeting file", "Create GREETING.md that says hello.", "keep it short", "berth/issue-12"]
    {
        assert!(prompt.contains(needle), "{needle:?} never reached the model");
    }
    assert_eq!(model.message_requests().len(), 2, "the tool call, then the turn with its result");
}

#[tokio::test]
async fn a_model_that_echoes_the_key_never_gets_it_shown_anywhere() {
    let model = FakeModel::start_with(bridge_gateway().await, Script::EchoKey).await;
    let dir = tempfile::tempdir().unwrap();
    let rig = claude_rig("claude-key", &model, &dir).await;
    let task = task_of(
        &rig.deliver("issue_comment", "claude-k-1", &rig.comment(7, true, "/berth review", 7003)).await,
    );

    // While the worker runs: its labels, its live output (from the engine and
    // through the status API), `berth ps`, and the hardened profile as the
    // engine holds it.
    rig.wait_task_running(&task, Duration::from_secs(60)).await;
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let name = format!("berth-{task}");
    let inspect = docker
        .inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    let labels = serde_json::to_string(&inspect.config.as_ref().unwrap().labels).unwrap();
    let host = inspect.host_config.clone().unwrap();
    assert_eq!(inspect.config.as_ref().unwrap().user.as_deref(), Some("65532:65532"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.security_opt.unwrap_or_default().iter().any(|opt| opt == "no-new-privileges"));
    assert_eq!(
        (host.memory, host.memory_swap, host.init, host.privileged),
        (Some(1 << 30), Some(1 << 30), Some(true), Some(false))
    );
    assert!(host.pids_limit.is_some_and(|limit| limit > 0));
    let ps = String::from_utf8(
        std::process::Command::new(workspace_binaries().join("berth"))
            .args(["ps", "--all", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let options =
        bollard::query_parameters::LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
    let mut stream = docker.logs(&name, Some(options));
    let mut worker_logs = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        worker_logs.push_str(&chunk.to_string());
    }
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\nmodel: {}", model.summary());
    rig.until("the result comment", Duration::from_secs(20), |state| !state.comments.is_empty()).await;

    // The model did get the key, and did send it back.
    assert!(model.message_requests().iter().any(|request| request.header("x-api-key") == Some(API_KEY)));
    assert!(worker_logs.contains("***"), "the echoed key is redacted in the worker's output:\n{worker_logs}");
    let comment = comment_text(&rig, &task);
    assert!(comment.contains("***"), "{comment}");
    let headers = [("Authorization", format!("Bearer {ADMIN_TOKEN}"))];
    let (_, tasks) = http(rig.daemon.addr, "GET", "/api/tasks", &headers, b"").await.unwrap();
    let (_, detail) =
        http(rig.daemon.addr, "GET", &format!("/api/tasks/{task}"), &headers, b"").await.unwrap();
    let github = rig.fake.with(|state| serde_json::to_string(&(&state.check_runs, &state.comments)).unwrap());
    for (what, text) in [
        ("labels", labels),
        ("worker logs", worker_logs),
        ("berth ps", ps),
        ("comment and check run", github),
        ("status API", tasks + &detail),
        ("daemon log", rig.daemon.log_text()),
    ] {
        assert!(!text.contains(API_KEY), "the key leaked into the {what}: {text}");
    }
}
