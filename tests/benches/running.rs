//! Running benchmark (issue 5): latency from the 202 to the worker running,
//! against raw bollard create + start of the same container in the same run
//! (the fake GitHub on loopback is in Berth's loop: head, token, check run);
//! and a burst of 100 tasks with the cap at 8, against raw bollard running the
//! same 100 containers 8 at a time. The `docker` CLI (`docker run -d`, and
//! `run`, `wait`, `rm` in the burst) does the same work in the same run.
//! Every latency ends at the engine's `State.StartedAt`.
//!
//! `cargo bench -p tests --bench running` (`BERTH_BENCH_N` latency samples, default 20).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
};
use fake_github::FakeGitHub;
use futures_util::{StreamExt, stream};
use serde_json::json;
use tests::{
    Daemon, STUB, docker_cli, github_signature, hardened_cli_flags, hardened_host_config, http, rsa_key,
    started_at, test_image,
};

const SECRET: &str = "bench-running-secret";
const REPO: &str = "bench/running";

fn comment(number: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "created",
        "comment": {"id": number, "body": "/berth review", "user": {"login": "alice", "type": "User"}, "author_association": "OWNER"},
        "issue": {"number": number, "pull_request": {"url": "x"}},
        "repository": {"full_name": REPO, "clone_url": "git://127.0.0.1:9/none.git", "default_branch": "main"},
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 1}
    }))
    .unwrap()
}

async fn deliver(daemon: &Daemon, number: u64) -> String {
    let body = comment(number);
    let headers = [
        ("X-GitHub-Event", "issue_comment".to_owned()),
        ("X-GitHub-Delivery", format!("bench-{number}")),
        ("X-Hub-Signature-256", github_signature(SECRET, &body)),
    ];
    let (status, text) = http(daemon.addr, "POST", "/webhook", &headers, &body).await.unwrap();
    assert_eq!(status, 202, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    answer["task"].as_str().unwrap().to_owned()
}

fn hardened_body(image: &str, labels: HashMap<String, String>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.into()),
        user: Some("65532:65532".into()),
        entrypoint: Some(vec![STUB.into()]),
        env: Some((0..12).map(|i| format!("BERTH_BENCH_{i}=value-{i}")).collect()),
        labels: Some(labels),
        host_config: Some(hardened_host_config()),
        ..Default::default()
    }
}

/// Milliseconds from `before` to the container's `State.StartedAt`.
fn since(before: SystemTime, inspect: &bollard::models::ContainerInspectResponse) -> f64 {
    let started = started_at(inspect).expect("a started container has StartedAt");
    started.duration_since(before).unwrap_or_default().as_secs_f64() * 1000.0
}

/// `docker run -d` of the same hardened container as [`hardened_body`].
fn cli_run_args(name: &str, image: &str) -> Vec<String> {
    let mut args = vec!["run".to_owned(), "-d".to_owned(), format!("--name={name}")];
    args.extend(hardened_cli_flags());
    args.extend((0..12).map(|i| format!("--env=BERTH_BENCH_{i}=value-{i}")));
    args.push(format!("--entrypoint={STUB}"));
    args.push(image.to_owned());
    args
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: u64 =
        std::env::var(core_types::env_names::BERTH_BENCH_N).ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let image = test_image().await.to_owned();
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap().negotiate_version().await.unwrap();
    let fake = FakeGitHub::start().await.unwrap();
    for number in 1..=(n + 200) {
        fake.set_pull(REPO, number, "0123456789abcdef0123456789abcdef01234567", "feature", Some(REPO));
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    let instance = format!("bench-running-{}", std::process::id());
    let env: Vec<(&'static str, String)> = vec![
        ("BERTH_WEBHOOK_SECRET", SECRET.into()),
        ("BERTH_GITHUB_APP_ID", "1".into()),
        ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
        ("BERTH_GITHUB_API_URL", fake.url()),
        ("BERTH_STATE_DIR", dir.path().join("state").display().to_string()),
        ("BERTH_WORKER_IMAGE", image.clone()),
        // The stub as the entrypoint: it exits at once, so only dispatch is measured.
        ("BERTH_WORKER_ENTRYPOINT", STUB.into()),
        ("BERTH_WORKER_NETWORK", "none".into()),
        ("BERTH_INSTANCE", instance.clone()),
        ("BERTH_MAX_WORKERS", "8".into()),
        ("RUST_LOG", "info".into()),
    ];
    let daemon = Daemon::start(&env).await;
    while !matches!(http(daemon.addr, "GET", "/readyz", &[], b"").await, Ok((200, _))) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Latency: one task at a time, 202 to State.StartedAt, interleaved with raw create + start.
    let (mut berth, mut raw, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    for number in 0..=n {
        let accepted = SystemTime::now();
        let task = deliver(&daemon, number + 1).await;
        let name = format!("berth-{task}");
        let started = loop {
            if let Ok(inspect) = docker.inspect_container(&name, None::<InspectContainerOptions>).await
                && let Some(at) = started_at(&inspect)
            {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let latency = started.duration_since(accepted).unwrap_or_default().as_secs_f64() * 1000.0;
        while fake.completed_check_runs().iter().all(|run| run["external_id"] != task.as_str()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let raw_name = format!("bench-raw-{}-{number}", std::process::id());
        let labels = HashMap::from([("berth.bench".to_owned(), "true".to_owned())]);
        let before = SystemTime::now();
        let options = CreateContainerOptionsBuilder::new().name(&raw_name).build();
        let created = docker.create_container(Some(options), hardened_body(&image, labels)).await.unwrap();
        docker.start_container(&created.id, None).await.unwrap();
        let inspect = docker.inspect_container(&created.id, None::<InspectContainerOptions>).await.unwrap();
        let raw_latency = since(before, &inspect);
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        docker.remove_container(&created.id, Some(remove)).await.unwrap();

        let cli_name = format!("bench-cli-{}-{number}", std::process::id());
        let args = cli_run_args(&cli_name, &image);
        let before = SystemTime::now();
        let id = tokio::task::spawn_blocking(move || docker_cli(&args)).await.unwrap();
        let inspect = docker.inspect_container(&id, None::<InspectContainerOptions>).await.unwrap();
        let cli_latency = since(before, &inspect);
        docker
            .remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
            .await
            .unwrap();
        if number > 0 {
            berth.push(latency);
            raw.push(raw_latency);
            cli.push(cli_latency);
        }
    }

    // Burst: 100 tasks at once, cap 8.
    let burst = 100_u64;
    let first = n + 50;
    let started = Instant::now();
    let tasks: Vec<String> =
        stream::iter(first..first + burst).then(|number| deliver(&daemon, number)).collect().await;
    while fake
        .completed_check_runs()
        .iter()
        .filter(|run| tasks.iter().any(|task| run["external_id"] == task.as_str()))
        .count()
        < tasks.len()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let berth_burst = started.elapsed();
    let started = Instant::now();
    stream::iter(0..burst)
        .for_each_concurrent(8, |index| {
            let docker = docker.clone();
            let image = image.clone();
            async move {
                let name = format!("bench-raw-burst-{}-{index}", std::process::id());
                let options = CreateContainerOptionsBuilder::new().name(&name).build();
                let labels = HashMap::from([("berth.bench".to_owned(), "true".to_owned())]);
                let created =
                    docker.create_container(Some(options), hardened_body(&image, labels)).await.unwrap();
                docker.start_container(&created.id, None).await.unwrap();
                let _ = docker
                    .wait_container(&created.id, None::<bollard::query_parameters::WaitContainerOptions>)
                    .next()
                    .await;
                let remove = RemoveContainerOptionsBuilder::new().force(true).build();
                docker.remove_container(&created.id, Some(remove)).await.unwrap();
            }
        })
        .await;
    let raw_burst = started.elapsed();
    let started = Instant::now();
    stream::iter(0..burst)
        .for_each_concurrent(8, |index| {
            let image = image.clone();
            async move {
                let name = format!("bench-cli-burst-{}-{index}", std::process::id());
                let args = cli_run_args(&name, &image);
                tokio::task::spawn_blocking(move || {
                    let id = docker_cli(&args);
                    docker_cli(&["wait".to_owned(), id.clone()]);
                    docker_cli(&["rm".to_owned(), id]);
                })
                .await
                .unwrap();
            }
        })
        .await;
    let cli_burst = started.elapsed();
    daemon.kill().await;

    let (berth_p50, berth_p90) = (percentile(&mut berth.clone(), 0.5), percentile(&mut berth, 0.9));
    let (raw_p50, raw_p90) = (percentile(&mut raw.clone(), 0.5), percentile(&mut raw, 0.9));
    let (cli_p50, cli_p90) = (percentile(&mut cli.clone(), 0.5), percentile(&mut cli, 0.9));
    println!("{n} tasks one at a time; latency from the 202 to the worker running (State.StartedAt)\n");
    println!("| path | p50 ms | p90 ms |");
    println!("|---|---|---|");
    println!(
        "| berth: 202 → GitHub prep (fake on loopback) → create → start | {berth_p50:.1} | {berth_p90:.1} |"
    );
    println!("| raw bollard create + start | {raw_p50:.1} | {raw_p90:.1} |");
    println!("| docker run -d | {cli_p50:.1} | {cli_p90:.1} |");
    println!("| ratio (berth / raw) | {:.2} | {:.2} |", berth_p50 / raw_p50, berth_p90 / raw_p90);
    println!("| ratio (berth / docker run -d) | {:.2} | {:.2} |", berth_p50 / cli_p50, berth_p90 / cli_p90);
    println!("\nburst of {burst} tasks, cap 8 (until every check run completed / every container removed)\n");
    println!("| path | seconds | tasks/s |");
    println!("|---|---|---|");
    println!(
        "| berth | {:.1} | {:.1} |",
        berth_burst.as_secs_f64(),
        burst as f64 / berth_burst.as_secs_f64()
    );
    println!(
        "| raw bollard, 8 at a time | {:.1} | {:.1} |",
        raw_burst.as_secs_f64(),
        burst as f64 / raw_burst.as_secs_f64()
    );
    println!(
        "| docker CLI (run -d, wait, rm), 8 at a time | {:.1} | {:.1} |",
        cli_burst.as_secs_f64(),
        burst as f64 / cli_burst.as_secs_f64()
    );
    println!(
        "| ratio (berth time / raw time) | {:.2} | |",
        berth_burst.as_secs_f64() / raw_burst.as_secs_f64()
    );
    println!(
        "| ratio (berth time / CLI time) | {:.2} | |",
        berth_burst.as_secs_f64() / cli_burst.as_secs_f64()
    );
}
