//! Recovery benchmark: time from `berth serve` starting to `/readyz` 200
//! with N running workers to re-attach, and with N workers that exited while
//! the daemon was away to collect. Baselines in the same run: the least any
//! recovery must do, listing and inspecting the same containers through raw
//! bollard calls and through the `docker` CLI.
//!
//! `cargo bench -p tests --bench recovery` (N from `BERTH_BENCH_N`, default 100).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use core_types::{TaskId, TaskKind, TaskLabels};
use dispatcher::{DispatcherConfig, HardenedProfile};
use fake_github::FakeGitHub;
use futures_util::{StreamExt, stream};
use tests::{Daemon, STUB, dispatcher_with, http, rsa_key, test_image};

async fn ready_after(env: &[(&'static str, String)]) -> (Daemon, Duration) {
    let started = Instant::now();
    let daemon = Daemon::start(env).await;
    loop {
        if let Ok((200, _)) = http(daemon.addr, "GET", "/readyz", &[], b"").await {
            return (daemon, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn raw_list_inspect(instance: &str) -> (usize, Duration) {
    let started = Instant::now();
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let filters = std::collections::HashMap::from([("label", vec![format!("berth.instance={instance}")])]);
    let options =
        bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let ids: Vec<String> =
        docker.list_containers(Some(options)).await.unwrap().into_iter().filter_map(|c| c.id).collect();
    let inspected = stream::iter(ids)
        .map(|id| {
            let docker = docker.clone();
            async move {
                docker
                    .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .count()
        .await;
    (inspected, started.elapsed())
}

fn cli_list_inspect(instance: &str) -> (usize, Duration) {
    let started = Instant::now();
    let output = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("label=berth.instance={instance}")])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    let inspect = std::process::Command::new("docker").arg("inspect").args(&ids).output().unwrap();
    assert!(inspect.status.success());
    (ids.len(), started.elapsed())
}

#[tokio::main]
async fn main() {
    let n: usize =
        std::env::var(core_types::env_names::BERTH_BENCH_N).ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let image = test_image().await.to_owned();
    let instance = format!("bench-recovery-{}", std::process::id());
    let dispatcher = dispatcher_with(DispatcherConfig {
        image: image.clone(),
        network: "none".into(),
        profile: HardenedProfile::strict().with_memory(64 << 20),
        entrypoint: Some(vec![STUB.into()]),
        instance: instance.clone(),
    })
    .await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    eprintln!("starting {n} workers");
    let ids: Vec<dispatcher::ContainerId> = stream::iter(0..n)
        .map(|index| {
            let dispatcher = &dispatcher;
            async move {
                let labels = TaskLabels {
                    task_id: TaskId::new(format!("bench-recovery-{}-{index}", std::process::id())).unwrap(),
                    kind: TaskKind::Review,
                    repo: "bench/recovery".into(),
                    number: index as u64 + 1,
                    head_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
                    delivery: Some(format!("bench-{index}")),
                    deadline_unix: now + 3600,
                    check_run: None,
                    installation: Some(1),
                };
                dispatcher.launch(&labels, &[], Some(vec!["sleep".into(), "3600".into()])).await.unwrap().id
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    let fake = FakeGitHub::start().await.unwrap();
    let env: Vec<(&'static str, String)> = vec![
        ("BERTH_WEBHOOK_SECRET", "bench-recovery-webhook-secret".into()),
        ("BERTH_GITHUB_APP_ID", "1".into()),
        ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
        ("BERTH_GITHUB_API_URL", fake.url()),
        ("BERTH_STATE_DIR", dir.path().join("state").display().to_string()),
        ("BERTH_WORKER_IMAGE", image.clone()),
        ("BERTH_INSTANCE", instance.clone()),
        ("BERTH_MAX_WORKERS", (n * 2).to_string()),
        ("RUST_LOG", "info".into()),
    ];

    let (raw_running_count, raw_running) = raw_list_inspect(&instance).await;
    let (cli_running_count, cli_running) = cli_list_inspect(&instance);
    assert_eq!((raw_running_count, cli_running_count), (n, n));
    let (daemon, running_ready) = ready_after(&env).await;
    daemon.kill().await;

    eprintln!("stopping the {n} workers while the daemon is away");
    stream::iter(ids.iter())
        .for_each_concurrent(16, |id| {
            let dispatcher = &dispatcher;
            async move { dispatcher.kill(id).await.unwrap() }
        })
        .await;
    let (raw_exited_count, raw_exited) = raw_list_inspect(&instance).await;
    let (_, cli_exited) = cli_list_inspect(&instance);
    assert_eq!(raw_exited_count, n);
    let collected_at = Instant::now();
    let (daemon, exited_ready) = ready_after(&env).await;
    let left = dispatcher.list().await.unwrap().len();
    let removed_by_ready = n - left;
    // Reports go out after readiness; wait for them for completeness.
    while fake.with(|state| state.comments.len()) < n && collected_at.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_reported = collected_at.elapsed();
    let reported = fake.with(|state| state.comments.len());
    daemon.kill().await;
    for id in &ids {
        let _ = dispatcher.remove(id).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{n} workers; time from process start to /readyz 200, and the floor any recovery pays\n");
    println!(
        "| scenario | berth to /readyz ms | per worker ms | raw bollard list+inspect ms | docker CLI ps+inspect ms | berth / raw | berth / CLI |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {n} running (re-attach) | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
        ms(running_ready),
        ms(running_ready) / n as f64,
        ms(raw_running),
        ms(cli_running),
        ms(running_ready) / ms(raw_running),
        ms(running_ready) / ms(cli_running)
    );
    println!(
        "| {n} exited while away (collect, record, remove) | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
        ms(exited_ready),
        ms(exited_ready) / n as f64,
        ms(raw_exited),
        ms(cli_exited),
        ms(exited_ready) / ms(raw_exited),
        ms(exited_ready) / ms(cli_exited)
    );
    println!(
        "\nremoved by readiness: {removed_by_ready}/{n}; reported to the fake GitHub: {reported}/{n} after {:.0} ms",
        ms(all_reported)
    );
}
