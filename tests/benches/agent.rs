//! Real agent benchmark: from the webhook's 202 to the first model request
//! made by the real Claude Code CLI, through a real `berth serve` (the
//! settings of `claude_rig` in `tests/e2e/real_agent.rs`: the Claude test
//! image, the README's agent command, the model played by [`FakeModel`] on
//! the Docker bridge, the pull request cloned from a local `git daemon`, the
//! fake GitHub on loopback), split in three by the engine's and the worker's
//! own clocks:
//!
//! - engine start: the 202 → the container's `State.StartedAt` (Berth's
//!   GitHub preparation on the fake, create, start);
//! - clone: `StartedAt` → the worker's `berth-worker: running the agent`
//!   line, timestamped by the engine (`docker logs --timestamps`);
//! - CLI start-up: that line → the fake model receiving the first
//!   `POST /v1/messages`.
//!
//! Against, in the same run and interleaved sample by sample, the same CLI
//! as the entrypoint of the same image with the same hardened profile (no
//! worker, no clone): created and started by raw bollard calls (split at its
//! `StartedAt`), and by `docker run --rm`, each timed from just before its
//! first call to the first model request. Host, engine and containers share
//! one clock.
//!
//! `cargo bench -p tests --bench agent` (`BERTH_BENCH_N` samples per path,
//! default 10, after one warm-up round). Needs the Claude Code CLI in the
//! cache: run `tests/agents/fetch-claude-code.sh`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use fake_github::FakeGitHub;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tests::claude::{CLAUDE, claude_image, claude_settings};
use tests::fake_model::FakeModel;
use tests::git_server::{GitServer, bridge_gateway};
use tests::{
    Daemon, docker_cli, engine_time, github_signature, hardened_cli_flags, hardened_host_config, http,
    rsa_key, started_at,
};

const SECRET: &str = "bench-agent-webhook-secret";
const API_KEY: &str = "sk-ant-bench-agent-0123456789abcdef";
/// The CLI's arguments on the paths without Berth.
const DIRECT_ARGS: [&str; 4] = ["-p", "review this", "--output-format", "text"];
/// The worker's note just before it spawns the agent (after the checkout).
const AGENT_LINE: &str = "berth-worker: running the agent";
/// How long one sample may take before the benchmark gives up.
const LIMIT: Duration = Duration::from_secs(180);

/// Removes every container of this run (labelled `berth.bench=true`, or of
/// the daemon's instance), also when the benchmark panics.
struct Cleanup {
    instance: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let instance = self.instance.clone();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(docker) = Docker::connect_with_unix_defaults() else { return };
                for label in ["berth.bench=true".to_owned(), format!("berth.instance={instance}")] {
                    let filters = HashMap::from([("label", vec![label])]);
                    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
                    for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
                        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
                        let _ =
                            docker.remove_container(&container.id.unwrap_or_default(), Some(remove)).await;
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

/// Everything the Berth path needs.
struct Rig {
    daemon: Daemon,
    fake: FakeGitHub,
    repo: String,
    clone_url: String,
}

impl Rig {
    fn comment(&self, number: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "action": "created",
            "comment": {"id": 9000 + number, "body": "/berth review", "user": {"login": "alice", "type": "User"}, "author_association": "OWNER"},
            "issue": {"number": number, "title": "Make it better", "body": "Please.", "pull_request": {"url": "x"}},
            "repository": {"full_name": self.repo, "clone_url": self.clone_url, "default_branch": "main"},
            "sender": {"login": "alice", "type": "User"},
            "installation": {"id": 77}
        }))
        .unwrap()
    }

    /// Sends `/berth review` on pull request `number`; the task and when the 202 arrived.
    async fn deliver(&self, number: u64) -> (String, SystemTime) {
        let body = self.comment(number);
        let headers = [
            ("X-GitHub-Event", "issue_comment".to_owned()),
            ("X-GitHub-Delivery", format!("bench-agent-{number}")),
            ("X-Hub-Signature-256", github_signature(SECRET, &body)),
            ("Content-Type", "application/json".to_owned()),
        ];
        let (status, text) = http(self.daemon.addr, "POST", "/webhook", &headers, &body).await.unwrap();
        let t202 = SystemTime::now();
        assert_eq!(status, 202, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["outcome"], "queued", "{answer}");
        (answer["task"].as_str().unwrap().to_owned(), t202)
    }
}

struct BerthSample {
    t202: SystemTime,
    started: SystemTime,
    agent: SystemTime,
    first: SystemTime,
}

struct RawSample {
    before: SystemTime,
    started: SystemTime,
    first: SystemTime,
}

struct CliSample {
    before: SystemTime,
    first: SystemTime,
}

/// Milliseconds from `from` to `to` (negative if `to` is earlier).
fn ms(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(ahead) => ahead.as_secs_f64() * 1000.0,
        Err(behind) => -behind.duration().as_secs_f64() * 1000.0,
    }
}

/// When the fake model received the first model turn at or after `since`.
fn first_message(model: &FakeModel, since: SystemTime) -> SystemTime {
    let turns = model.message_requests();
    let first = turns.iter().filter(|turn| turn.received >= since).min_by_key(|turn| turn.received);
    let first =
        first.unwrap_or_else(|| panic!("no model request since the sample began:\n{}", model.summary()));
    assert_eq!(first.header("x-api-key"), Some(API_KEY), "the model got the key");
    first.received
}

/// The engine's timestamp of the worker's [`AGENT_LINE`] in container
/// `name`, or `None` if the container ends (or is removed) without it.
///
/// The engine follows only a running container's log: attached before the
/// start, the stream ends at once, so it is attached again until the line
/// is seen. Each attachment returns the whole log from the start.
async fn agent_line_time(docker: Docker, name: String) -> Option<SystemTime> {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        let inspect = docker.inspect_container(&name, None::<InspectContainerOptions>).await.ok()?;
        let status = inspect.state.and_then(|state| state.status);
        let last = matches!(status, Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD));
        let options =
            LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).timestamps(true).build();
        let mut stream = docker.logs(&name, Some(options));
        let mut pending = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            pending.push_str(&chunk.to_string());
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if line.contains(AGENT_LINE) {
                    // "2026-11-30T11:27:43.123456789Z berth-worker: running the agent ..."
                    return line.split_once(' ').and_then(|(stamp, _)| engine_time(stamp));
                }
            }
        }
        if last {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// One task through Berth: the 202, its worker's start, the agent's spawn,
/// the first model request; waits for the check run and the container's removal.
async fn berth_sample(rig: &Rig, docker: &Docker, model: &FakeModel, number: u64) -> BerthSample {
    let (task, t202) = rig.deliver(number).await;
    let name = format!("berth-{task}");
    let began = Instant::now();
    while docker.inspect_container(&name, None::<InspectContainerOptions>).await.is_err() {
        assert!(began.elapsed() < LIMIT, "{name} was never created\n{}", rig.daemon.log_text());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let line = tokio::spawn(agent_line_time(docker.clone(), name.clone()));
    let started = loop {
        if let Ok(inspect) = docker.inspect_container(&name, None::<InspectContainerOptions>).await
            && let Some(at) = started_at(&inspect)
        {
            break at;
        }
        assert!(began.elapsed() < LIMIT, "{name} never started\n{}", rig.daemon.log_text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let run = loop {
        if let Some(run) = rig.fake.completed_check_runs().into_iter().find(|run| run["external_id"] == task)
        {
            break run;
        }
        assert!(began.elapsed() < LIMIT, "task {task} never completed\n{}", rig.daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(run["conclusion"], "success", "{run}\nmodel: {}\n{}", model.summary(), rig.daemon.log_text());
    let agent = line.await.unwrap().unwrap_or_else(|| panic!("{name} never logged {AGENT_LINE:?}"));
    // Berth removes the worker once reported; the next sample starts on a quiet engine.
    while docker.inspect_container(&name, None::<InspectContainerOptions>).await.is_ok() {
        assert!(began.elapsed() < LIMIT, "{name} was never removed\n{}", rig.daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first_message(model, t202);
    BerthSample { t202, started, agent, first }
}

fn direct_env(model: &FakeModel) -> Vec<String> {
    vec![
        format!("ANTHROPIC_BASE_URL={}", model.url()),
        format!("ANTHROPIC_API_KEY={API_KEY}"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1".to_owned(),
        // The image's own (mode 1777); the CLI writes ~/.claude.json and ~/.claude/.
        "HOME=/home/berth".to_owned(),
    ]
}

/// The CLI as entrypoint, created, started, waited for and removed by raw bollard calls.
async fn raw_sample(docker: &Docker, image: &str, model: &FakeModel, name: &str) -> RawSample {
    let host_config = bollard::models::HostConfig {
        network_mode: Some("bridge".into()),
        memory: Some(1 << 30),
        memory_swap: Some(1 << 30),
        ..hardened_host_config()
    };
    let body = ContainerCreateBody {
        image: Some(image.into()),
        user: Some("65532:65532".into()),
        entrypoint: Some(vec![CLAUDE.into()]),
        cmd: Some(DIRECT_ARGS.map(str::to_owned).to_vec()),
        env: Some(direct_env(model)),
        working_dir: Some("/tmp".into()),
        labels: Some(HashMap::from([("berth.bench".to_owned(), "true".to_owned())])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let before = SystemTime::now();
    let created = docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&created.id, None).await.unwrap();
    // An exit code other than 0 is an error of the wait stream; the inspect below tells.
    let _ = docker.wait_container(&created.id, None::<WaitContainerOptions>).next().await;
    let inspect = docker.inspect_container(&created.id, None::<InspectContainerOptions>).await.unwrap();
    let code = inspect.state.as_ref().and_then(|state| state.exit_code);
    assert_eq!(code, Some(0), "the CLI failed in {name}: {:?}\nmodel: {}", inspect.state, model.summary());
    let started = started_at(&inspect).expect("a started container has StartedAt");
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(&created.id, Some(remove)).await.unwrap();
    let first = first_message(model, before);
    RawSample { before, started, first }
}

/// The same container by `docker run --rm`, which returns once it is gone.
async fn cli_sample(image: &str, model: &FakeModel, name: &str) -> CliSample {
    let mut args = vec!["run".to_owned(), "--rm".to_owned(), format!("--name={name}")];
    args.extend(hardened_cli_flags().into_iter().map(|flag| match flag.as_str() {
        "--network=none" => "--network=bridge".to_owned(),
        "--memory=2g" => "--memory=1g".to_owned(),
        "--memory-swap=2g" => "--memory-swap=1g".to_owned(),
        _ => flag,
    }));
    args.extend(direct_env(model).into_iter().map(|pair| format!("--env={pair}")));
    args.push("--workdir=/tmp".to_owned());
    args.push(format!("--entrypoint={CLAUDE}"));
    args.push(image.to_owned());
    args.extend(DIRECT_ARGS.map(str::to_owned));
    let before = SystemTime::now();
    tokio::task::spawn_blocking(move || docker_cli(&args)).await.unwrap();
    let first = first_message(model, before);
    CliSample { before, first }
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len() as f64
}

#[tokio::main]
async fn main() {
    let n: u64 =
        std::env::var(core_types::env_names::BERTH_BENCH_N).ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    assert!(n > 0, "BERTH_BENCH_N must be at least 1");
    let image = claude_image().await.to_owned();
    let docker = Docker::connect_with_unix_defaults().unwrap().negotiate_version().await.unwrap();
    let gateway = bridge_gateway().await;
    let model = FakeModel::start(gateway).await;
    let pid = std::process::id();
    let instance = format!("bench-agent-{pid}");
    let _cleanup = Cleanup { instance: instance.clone() };

    // The repository and its pull requests (one per sample, so none dedupes another).
    let server = GitServer::start_on(gateway).await;
    let repo_name = format!("agent-{pid}");
    let repo = format!("bench/{repo_name}");
    let seed = server.repo(&format!("{repo_name}.git"));
    let main_sha = seed.commit("main", "README.md", "hello\n");
    let head_sha = seed.commit("feature", "feature.txt", "a change\n");
    let fake = FakeGitHub::start().await.unwrap();
    fake.set_branch(&repo, "main", &main_sha);
    for number in 1..=n + 1 {
        fake.set_pull(&repo, number, &head_sha, "feature", Some(&repo));
    }

    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    let mut env: Vec<(&'static str, String)> = vec![
        ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
        ("BERTH_GITHUB_APP_ID", "4242".to_owned()),
        ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
        ("BERTH_GITHUB_API_URL", fake.url()),
        ("BERTH_STATE_DIR", dir.path().join("state").display().to_string()),
        ("BERTH_WORKER_IMAGE", image.clone()),
        ("BERTH_WORKER_NETWORK", "bridge".to_owned()),
        ("BERTH_INSTANCE", instance.clone()),
        ("BERTH_MAX_WORKERS", "1".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    env.extend(claude_settings(dir.path(), &model.url(), API_KEY));
    let daemon = Daemon::start(&env).await;
    while !matches!(http(daemon.addr, "GET", "/readyz", &[], b"").await, Ok((200, _))) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rig = Rig { daemon, fake, repo, clone_url: server.url(&format!("{repo_name}.git")) };

    // Interleaved, one round per sample; round 0 is a warm-up.
    let (mut berth, mut raw, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=n {
        let b = berth_sample(&rig, &docker, &model, round + 1).await;
        let r = raw_sample(&docker, &image, &model, &format!("bench-agent-raw-{pid}-{round}")).await;
        let c = cli_sample(&image, &model, &format!("bench-agent-cli-{pid}-{round}")).await;
        eprintln!(
            "round {round}{}: berth {:.0} + {:.0} + {:.0} = {:.0} ms; raw {:.0} + {:.0} = {:.0} ms; docker run {:.0} ms",
            if round == 0 { " (warm-up)" } else { "" },
            ms(b.t202, b.started),
            ms(b.started, b.agent),
            ms(b.agent, b.first),
            ms(b.t202, b.first),
            ms(r.before, r.started),
            ms(r.started, r.first),
            ms(r.before, r.first),
            ms(c.before, c.first),
        );
        if round > 0 {
            berth.push(b);
            raw.push(r);
            cli.push(c);
        }
    }
    let Rig { daemon, .. } = rig;
    daemon.kill().await;

    let column = |values: Vec<f64>| (median(&values), mean(&values));
    let b_engine = column(berth.iter().map(|s| ms(s.t202, s.started)).collect());
    let b_clone = column(berth.iter().map(|s| ms(s.started, s.agent)).collect());
    let b_cli = column(berth.iter().map(|s| ms(s.agent, s.first)).collect());
    let b_total = column(berth.iter().map(|s| ms(s.t202, s.first)).collect());
    let r_engine = column(raw.iter().map(|s| ms(s.before, s.started)).collect());
    let r_cli = column(raw.iter().map(|s| ms(s.started, s.first)).collect());
    let r_total = column(raw.iter().map(|s| ms(s.before, s.first)).collect());
    let c_total = column(cli.iter().map(|s| ms(s.before, s.first)).collect());

    println!(
        "\n{n} samples per path (after one warm-up round), interleaved; time to the first model request\n"
    );
    println!("| path | part | p50 ms | mean ms |");
    println!("|---|---|---:|---:|");
    let row = |path: &str, part: &str, (p50, avg): (f64, f64)| {
        println!("| {path} | {part} | {p50:.0} | {avg:.0} |");
    };
    row("berth", "engine start: 202 → `StartedAt` (GitHub prep on the fake, create, start)", b_engine);
    row("berth", "clone: `StartedAt` → \"running the agent\"", b_clone);
    row("berth", "CLI start-up: \"running the agent\" → first model request", b_cli);
    row("berth", "**total: 202 → first model request**", b_total);
    row("raw bollard", "engine start: before create → `StartedAt`", r_engine);
    row("raw bollard", "CLI start-up: `StartedAt` → first model request", r_cli);
    row("raw bollard", "**total: before create → first model request**", r_total);
    row("docker run --rm", "**total: before spawn → first model request**", c_total);
    println!("\n| ratio | p50 | mean |");
    println!("|---|---:|---:|");
    let ratio = |name: &str, (a50, amean): (f64, f64), (b50, bmean): (f64, f64)| {
        println!("| {name} | {:.2} | {:.2} |", a50 / b50, amean / bmean);
    };
    ratio("berth total / raw bollard total", b_total, r_total);
    ratio("berth total / docker run --rm total", b_total, c_total);
    ratio("berth engine start / raw bollard engine start", b_engine, r_engine);
    ratio("berth CLI start-up / raw bollard `StartedAt` → first request", b_cli, r_cli);
}
