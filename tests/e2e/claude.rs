//! The real Claude Code CLI as the agent: `berth-worker` in the hardened
//! test image with the CLI (`tests::claude::claude_image`), talking to
//! [`FakeModel`], a fake of Anthropic's Messages API on the Docker bridge
//! gateway. Needs the CLI in the cache: run `tests/agents/fetch-claude-code.sh`.
//!
//! What works (Claude Code 2.1.332, in a `FROM scratch` image with no shell,
//! uid 65532, all capabilities dropped, `no-new-privileges`):
//!
//! - review: `BERTH_AGENT_COMMAND='claude -p {prompt} --output-format text'`
//! - implement: `BERTH_AGENT_COMMAND='claude -p {prompt} --output-format text --permission-mode acceptEdits'`
//!
//! with this environment for the worker, which hands it on to the agent:
//!
//! - `ANTHROPIC_BASE_URL=http://<bridge gateway>:<port>` (plain HTTP is fine)
//! - `ANTHROPIC_API_KEY=<key>` (sent as `x-api-key`)
//! - `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` (without it the CLI also
//!   sends `HEAD /api/hello` to the base URL, and may try other hosts)
//! - `HOME` writable: the image sets `/home/berth` (mode 1777); the CLI
//!   writes `~/.claude.json` and `~/.claude/` there, nothing in the clone.
//! - `BERTH_SECRET_VARS=ANTHROPIC_API_KEY` so the worker redacts the key.
//!
//! The CLI prints only the model's final text on stdout and nothing on
//! stderr. It cannot write `{summary_file}` itself without a shell, so the
//! record's summary is the worker's "no summary" form around exactly that
//! text: "The agent wrote no summary; the end of its output:" and the text
//! in a fenced block. `claude -p --output-format text` without `{prompt}`
//! also works (checked on the host): the worker gives the prompt on stdin.
//! A prompt starting with `/` (`/berth review`) reaches the model as text,
//! not as a slash command.
//! Each model turn is one `POST /v1/messages?beta=true` with
//! `"stream": true`; with the variable above nothing else is requested.
//! The image needs nothing for the CLI but the binary and the glibc files
//! `ldd` names: no shell (the Bash tool would need one), no certificates.

use std::time::{SystemTime, UNIX_EPOCH};

use core_types::{ResultRecord, ResultStatus, TaskId, TaskKind, WorkerOptions, WorkerTask};
use dispatcher::{Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile};
use tests::claude::claude_image;
use tests::fake_model::{FakeModel, REVIEW_REPLY, Script};
use tests::git_server::{GitServer, bridge_gateway};
use tests::{Cleanup, WORKER, dispatcher_with, task_labels, test_instance, unique_task_id};

/// The review agent command.
const REVIEW_COMMAND: &str = "claude -p {prompt} --output-format text";

/// The implement agent command.
const IMPLEMENT_COMMAND: &str = "claude -p {prompt} --output-format text --permission-mode acceptEdits";

/// How a worker container ended.
struct Run {
    exit: i64,
    logs: String,
    record: ResultRecord,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn task(id: &TaskId, kind: TaskKind, clone_url: String, prompt: &str, agent_command: &str) -> WorkerTask {
    WorkerTask {
        task_id: id.clone(),
        kind,
        repo: "e2e/berth".to_owned(),
        number: 7,
        clone_url,
        head_ref: Some("main".to_owned()),
        head_sha: None,
        prompt: prompt.to_owned(),
        agent_command: agent_command.to_owned(),
        deadline_unix: now_unix() + 300,
        token: None,
    }
}

/// The worker as entrypoint of the Claude image, on the bridge, hardened.
async fn claude_dispatcher() -> Dispatcher<DockerEngine> {
    let image = claude_image().await.to_owned();
    dispatcher_with(DispatcherConfig {
        image,
        network: "bridge".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![WORKER.to_owned()]),
        instance: test_instance(),
    })
    .await
}

/// Runs the task with the CLI pointed at `model`, to its end; checks the
/// container was hardened; removes it.
async fn run_claude(task: &WorkerTask, model: &FakeModel, api_key: &str) -> Run {
    let dispatcher = claude_dispatcher().await;
    let options = WorkerOptions {
        secret_vars: vec!["ANTHROPIC_API_KEY".to_owned()],
        author_name: Some("Berth Test Bot".to_owned()),
        author_email: Some("bot@berth.invalid".to_owned()),
        ..WorkerOptions::default()
    };
    let mut env = task.to_env();
    env.extend(options.to_env());
    env.extend([
        ("ANTHROPIC_BASE_URL", model.url()),
        ("ANTHROPIC_API_KEY", api_key.to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
    ]);
    let mut labels = task_labels(&task.task_id);
    labels.kind = task.kind;
    labels.deadline_unix = task.deadline_unix;
    let launched = dispatcher.launch(&labels, &env, None).await.expect("the worker launches");
    let exit = dispatcher.wait_started(&launched.id).await.expect("the worker ends");
    let logs = dispatcher.logs_text(&launched.id).await.expect("its logs are read");
    let stdout = dispatcher.stdout_text(&launched.id).await.expect("its stdout is read");
    assert_hardened(&dispatcher::container_name(&task.task_id)).await;
    dispatcher.remove(&launched.id).await.expect("the container is removed");
    let record = ResultRecord::find_last(&stdout)
        .unwrap_or_else(|| panic!("no result record on stdout; logs:\n{logs}"));
    assert_eq!(record.task, task.task_id.as_str(), "{logs}");
    Run { exit: exit.code, logs, record }
}

/// What the agent printed: the log lines that are neither the worker's notes nor the record.
fn agent_output(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|line| {
            !line.starts_with("berth-worker: ") && !line.contains("\"berth_result\"") && !line.is_empty()
        })
        .collect()
}

/// The container ran as 65532 with no capabilities and no new privileges.
async fn assert_hardened(name: &str) {
    let docker = bollard::Docker::connect_with_unix_defaults().expect("the engine answered a moment ago");
    let inspect = docker
        .inspect_container(name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .expect("the worker container is inspected");
    let user = inspect.config.and_then(|config| config.user).unwrap_or_default();
    let host = inspect.host_config.unwrap_or_default();
    assert_eq!(user, "65532:65532");
    assert_eq!(host.cap_drop.unwrap_or_default(), ["ALL"]);
    assert!(host.security_opt.unwrap_or_default().iter().any(|opt| opt == "no-new-privileges"));
}

/// A git server with `repo.git`, `main` holding one commit.
async fn server_with_main() -> (GitServer, tests::git_server::SeedRepo, String) {
    let server = GitServer::start().await;
    let repo = server.repo("repo.git");
    let base = repo.commit("main", "README.md", "the base\n");
    (server, repo, base)
}

#[tokio::test]
async fn a_review_by_claude_code_reports_the_models_text() {
    let (server, _repo, base) = server_with_main().await;
    let model = FakeModel::start(bridge_gateway().await).await;
    let id = unique_task_id("claude-review");
    let _cleanup = Cleanup::tasks(&[&id]);
    let prompt = format!("/berth review please (marker {})", id.as_str());
    let api_key = format!("sk-ant-e2e-{}", std::process::id());
    let mut task = task(&id, TaskKind::Review, server.url("repo.git"), &prompt, REVIEW_COMMAND);
    task.head_sha = Some(base);

    let run = run_claude(&task, &model, &api_key).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::Success);
    assert!(run.record.summary.contains(REVIEW_REPLY), "{}\nlogs:\n{}", run.record.summary, run.logs);
    assert_eq!((run.record.branch, run.record.commit), (None, None));
    assert_eq!(agent_output(&run.logs), [REVIEW_REPLY], "the CLI prints only the final text:\n{}", run.logs);

    let turns = model.message_requests();
    assert_eq!(turns.len(), 1, "one model turn:\n{}", model.summary());
    assert_eq!(model.requests().len(), turns.len(), "nothing but model turns:\n{}", model.summary());
    let turn = &turns[0];
    assert_eq!(turn.path, "/v1/messages?beta=true");
    assert_eq!(turn.header("x-api-key"), Some(api_key.as_str()));
    assert_eq!(turn.header("anthropic-version"), Some("2023-06-01"));
    assert!(turn.header("user-agent").is_some_and(|agent| agent.starts_with("claude-cli/")), "{turn:?}");
    assert_eq!(turn.body["stream"], true);
    let text = model.all_text();
    assert!(text.contains(&prompt), "the prompt reached the model");
    assert!(text.contains("Primary working directory: /home/berth/work/repo"), "the CLI ran in the clone");
    assert!(!run.logs.contains(&api_key), "the key is redacted:\n{}", run.logs);
}

#[tokio::test]
async fn an_implement_task_by_claude_code_writes_commits_and_pushes() {
    let (server, repo, base) = server_with_main().await;
    let content = "written by the real Claude Code CLI\n";
    let reply = "Added hello.txt as asked. (berth-fake-model)";
    let script = Script::WriteThenReply {
        path: "hello.txt".to_owned(),
        content: content.to_owned(),
        reply: reply.to_owned(),
    };
    let model = FakeModel::start_with(bridge_gateway().await, script).await;
    let id = unique_task_id("claude-implement");
    let _cleanup = Cleanup::tasks(&[&id]);
    let prompt = "/berth implement: add hello.txt";
    let task = task(&id, TaskKind::Implement, server.url("repo.git"), prompt, IMPLEMENT_COMMAND);

    let run = run_claude(&task, &model, "sk-ant-e2e-implement").await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::Success);
    assert!(run.record.summary.contains(reply), "{}\nlogs:\n{}", run.record.summary, run.logs);
    assert_eq!(run.record.branch.as_deref(), Some("berth/issue-7"));
    let pushed = repo.head_of("berth/issue-7").expect("the branch is on the server");
    assert_eq!(run.record.commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(repo.git(&["show", "berth/issue-7:hello.txt"]), content.trim_end());
    assert_eq!(repo.git(&["rev-parse", "berth/issue-7^"]), base, "branched from main");
    assert_eq!(
        repo.git(&["show", "--name-only", "--format=", "berth/issue-7"]),
        "hello.txt",
        "the CLI left nothing else in the clone"
    );

    let turns = model.message_requests();
    assert_eq!(turns.len(), 2, "a tool call, then the answer:\n{}", model.summary());
    assert_eq!(model.requests().len(), turns.len(), "nothing but model turns:\n{}", model.summary());
    let result = turns[1].body["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .map(|last| last["content"].to_string())
        .unwrap_or_default();
    assert!(result.contains("tool_result"), "{result}");
    assert!(result.contains("/home/berth/work/repo/hello.txt"), "{result}");
}

#[tokio::test]
async fn the_model_key_claude_code_sends_is_redacted_from_the_record() {
    let (server, _repo, base) = server_with_main().await;
    let model = FakeModel::start_with(bridge_gateway().await, Script::EchoKey).await;
    let id = unique_task_id("claude-key");
    let _cleanup = Cleanup::tasks(&[&id]);
    let api_key = format!("sk-ant-e2e-secret-{}-{}", std::process::id(), now_unix());
    let mut task = task(&id, TaskKind::Review, server.url("repo.git"), "/berth review", REVIEW_COMMAND);
    task.head_sha = Some(base);

    let run = run_claude(&task, &model, &api_key).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(model.message_requests()[0].header("x-api-key"), Some(api_key.as_str()));
    assert!(run.record.summary.contains("the key I was given is ***"), "{}", run.record.summary);
    assert!(!run.record.summary.contains(&api_key) && !run.logs.contains(&api_key), "{}", run.logs);
}

/// The same CLI on this host against the fake on loopback: no image, no
/// worker; the quickest check that the fake still speaks the CLI's protocol.
#[tokio::test]
async fn claude_code_on_the_host_writes_through_the_fake_on_loopback() {
    let script = Script::WriteThenReply {
        path: "notes/hello.txt".to_owned(),
        content: "from the host\n".to_owned(),
        reply: "Wrote notes/hello.txt.".to_owned(),
    };
    let model = FakeModel::start_with(std::net::Ipv4Addr::LOCALHOST.into(), script).await;
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(tests::claude::claude_binary())
        .args(["-p", "add a note", "--output-format", "text", "--permission-mode", "acceptEdits"])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", model.url())
        .env("ANTHROPIC_API_KEY", "sk-ant-e2e-host")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}\nrequests:\n{}", model.summary());
    assert_eq!(stdout.trim(), "Wrote notes/hello.txt.");
    let written = std::fs::read_to_string(work.path().join("notes/hello.txt")).unwrap();
    assert_eq!(written, "from the host\n");
    assert_eq!(model.message_requests().len(), 2, "{}", model.summary());
    assert!(model.all_text().contains("add a note"));
}

/// What the CLI does not exercise: a plain JSON answer, token counting,
/// unknown routes (recorded, 404).
#[tokio::test]
async fn the_fake_model_answers_plain_json_counts_tokens_and_records_unknown_routes() {
    let model = FakeModel::start(std::net::Ipv4Addr::LOCALHOST.into()).await;
    let json = [("content-type", "application/json".to_owned()), ("x-api-key", "sk-plain".to_owned())];
    let body = br#"{"model":"claude-x","stream":false,"messages":[{"role":"user","content":"hello there"}]}"#;
    let (status, answer) = tests::http(model.addr(), "POST", "/v1/messages", &json, body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["model"], "claude-x");
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(answer["content"][0]["text"], REVIEW_REPLY);

    let (status, answer) =
        tests::http(model.addr(), "POST", "/v1/messages/count_tokens", &json, body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(serde_json::from_str::<serde_json::Value>(&answer).unwrap()["input_tokens"].is_u64());

    let (status, _) = tests::http(model.addr(), "GET", "/v1/models?limit=1", &json, b"").await.unwrap();
    assert_eq!(status, 404);

    let requests = model.requests();
    let paths: Vec<&str> = requests.iter().map(|request| request.path.as_str()).collect();
    assert_eq!(paths, ["/v1/messages", "/v1/messages/count_tokens", "/v1/models?limit=1"]);
    assert_eq!(model.message_requests().len(), 1);
    assert_eq!(requests[0].header("X-Api-Key"), Some("sk-plain"));
    assert!(model.all_text().contains("hello there"));
}
