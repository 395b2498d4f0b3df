//! The clone cache on a large repository, in one run: a review and an
//! implement task with no cache, with a cold cache (the first task) and a
//! warm one (the next, two commits later), and for reference `git clone
//! --depth 1` and a full `git clone` of the same repository from the same
//! server.
//!
//! The repository is made here by `tests/benches/make-large-repo.py`
//! (20,000 commits, about 200 MB of history; `BERTH_BENCH_COMMITS` and
//! `BERTH_BENCH_MEGABYTES` shrink it) and served by a local `git daemon` on
//! the bridge. Each task is the real worker in the real hardened container,
//! with `berth-stub stamp` as the agent: the measure is from just before the
//! container's start to the agent's first instruction (its stamp). With a
//! cache, the refresh container the daemon runs before the worker is timed
//! too (create to removal), and "task total" adds it: the refresh runs
//! beside the daemon's GitHub preparation, so the total is what a task
//! waits at worst. The refresh is the daemon's own (`Dispatcher::run_refresh`);
//! the daemon's GitHub preparation is not part of this bench.
//!
//! Run with `cargo bench -p tests --bench cache`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use core_types::{TaskId, TaskKind, WorkerOptions, WorkerTask, env_names};
use dispatcher::{
    CACHE_MOUNT, CacheVolume, Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile, RefreshEnd,
};
use tests::git_server::GitServer;
use tests::{Cleanup, STUB, WORKER, dispatcher_with, task_labels, unique_task_id};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime builds");
    runtime.block_on(bench());
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn git(args: &[&str]) -> String {
    let output = std::process::Command::new("git").args(args).output().expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs the generator script.
fn make_repo(repo: &Path, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/make-large-repo.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(repo)
        .args(extra)
        .status()
        .expect("python3 runs the generator");
    assert!(status.success(), "the generator failed");
}

async fn worker_dispatcher() -> Dispatcher<DockerEngine> {
    let shared = tests::dispatcher().await.config().clone();
    dispatcher_with(DispatcherConfig {
        network: "bridge".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![WORKER.to_owned()]),
        ..shared
    })
    .await
}

/// The worker's container start → the agent's first instruction.
async fn run_task(
    dispatcher: &Dispatcher<DockerEngine>,
    kind: TaskKind,
    url: &str,
    head: Option<&str>,
    cache: Option<&CacheVolume>,
) -> Duration {
    let task_id: TaskId = unique_task_id("bench-cache");
    let _cleanup = Cleanup::tasks(&[&task_id]);
    let task = WorkerTask {
        task_id: task_id.clone(),
        kind,
        repo: "bench/large".to_owned(),
        number: 1,
        clone_url: url.to_owned(),
        head_ref: Some(if kind == TaskKind::Review { "feature" } else { "main" }.to_owned()),
        head_sha: head.map(str::to_owned),
        prompt: "/berth".to_owned(),
        agent_command: format!("{STUB} stamp"),
        deadline_unix: now_unix() + 1800,
        token: None,
    };
    let options = WorkerOptions {
        base_ref: (kind == TaskKind::Review).then(|| "main".to_owned()),
        ..WorkerOptions::default()
    };
    let mut env = task.to_env();
    env.extend(options.to_env());
    if cache.is_some() {
        env.push((env_names::BERTH_CACHE_DIR, CACHE_MOUNT.to_owned()));
    }
    let mut labels = task_labels(&task_id);
    labels.kind = kind;
    let created = dispatcher.create_with_cache(&labels, &env, None, cache).await.unwrap();
    let started = nanos(SystemTime::now());
    dispatcher.start(&created.id).await.unwrap();
    let exit = dispatcher.wait(&created.id).await.unwrap();
    let logs = dispatcher.logs_text(&created.id).await.unwrap();
    dispatcher.remove(&created.id).await.unwrap();
    assert_eq!(exit.code, 0, "{logs}");
    if cache.is_some() {
        assert!(logs.contains("borrowing objects from the clone cache"), "{logs}");
        assert!(!logs.contains("cloning without it"), "{logs}");
    }
    let stamp: u128 = logs
        .lines()
        .find_map(|line| line.strip_prefix("stamp "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stamp:\n{logs}"));
    Duration::from_nanos(u64::try_from(stamp.saturating_sub(started)).unwrap())
}

/// One refresh of `volume` by the daemon's refresh container, timed from create to removal.
async fn refresh(dispatcher: &Dispatcher<DockerEngine>, volume: &CacheVolume, url: &str) -> Duration {
    let env = [
        (env_names::BERTH_CLONE_URL, url.to_owned()),
        (env_names::BERTH_CACHE_DIR, CACHE_MOUNT.to_owned()),
        (env_names::BERTH_DEADLINE, (now_unix() + 1800).to_string()),
    ];
    let started = Instant::now();
    let end = dispatcher.run_refresh(volume, "bench/large", &env, Duration::from_secs(1800)).await.unwrap();
    assert!(matches!(end, RefreshEnd::Exited { code: 0, .. }), "{end:?}");
    started.elapsed()
}

/// `git clone <args>` on this host from the server, timed.
fn host_clone(url: &str, args: &[&str]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("clone");
    let started = Instant::now();
    let mut all = vec!["clone", "--quiet"];
    all.extend_from_slice(args);
    let target_text = target.to_string_lossy().into_owned();
    all.extend([url, target_text.as_str()]);
    git(&all);
    started.elapsed()
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn times(base: Duration, other: Duration) -> String {
    format!("{:.1}×", base.as_secs_f64() / other.as_secs_f64().max(1e-9))
}

#[expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]
async fn bench() {
    let commits = env_number("BERTH_BENCH_COMMITS", 20_000);
    let megabytes = env_number("BERTH_BENCH_MEGABYTES", 200);
    let server = GitServer::start().await;
    let bare = server.root().join("large.git");
    let made = Instant::now();
    make_repo(&bare, &["--commits", &commits.to_string(), "--megabytes", &megabytes.to_string()]);
    let bare_text = bare.to_string_lossy().into_owned();
    let size = git(&["--git-dir", &bare_text, "count-objects", "-v"]);
    println!("repository: {commits} commits, made in {}; {}", secs(made.elapsed()), size.replace('\n', ", "));
    let url = server.url("large.git");
    let dispatcher = worker_dispatcher().await;

    let depth1 = host_clone(&url, &["--depth", "1", "--single-branch", "--branch", "feature"]);
    let full = host_clone(&url, &[]);

    let mut rows = Vec::new();
    for (kind, number) in [(TaskKind::Review, 1_u64), (TaskKind::Implement, 2)] {
        let head = || git(&["--git-dir", &bare_text, "rev-parse", "feature"]);
        let review_head = |kind: TaskKind| (kind == TaskKind::Review).then(head);
        let plain = run_task(&dispatcher, kind, &url, review_head(kind).as_deref(), None).await;
        let volume = dispatcher
            .cache_volume(u64::from(std::process::id()) * 10 + number, "bench/large")
            .await
            .unwrap();
        let volume_name = volume.name().to_owned();
        let _volumes = scopeguard(volume_name.clone());
        let cold_refresh = refresh(&dispatcher, &volume, &url).await;
        let cold = run_task(&dispatcher, kind, &url, review_head(kind).as_deref(), Some(&volume)).await;
        // Two new commits on the branch the task checks out.
        let branch = if kind == TaskKind::Review { "feature" } else { "main" };
        make_repo(&bare, &["--extend", branch, "--commits", "2"]);
        let warm_refresh = refresh(&dispatcher, &volume, &url).await;
        let warm = run_task(&dispatcher, kind, &url, review_head(kind).as_deref(), Some(&volume)).await;
        rows.push((kind, plain, cold_refresh, cold, warm_refresh, warm));
    }

    println!();
    println!(
        "| task | path | container start → agent's first instruction | refresh before it | task total | vs no cache (start → first instruction) |"
    );
    println!("|---|---|---|---|---|---|");
    for (kind, plain, cold_refresh, cold, warm_refresh, warm) in &rows {
        let today = if *kind == TaskKind::Review { "full history of the head" } else { "depth 1" };
        println!("| {kind} | no cache ({today}) | {} | — | {} | 1.0× |", secs(*plain), secs(*plain));
        if *kind == TaskKind::Implement {
            // The daemon never fills a mirror for an implement task (its
            // depth-1 clone is cheaper): its first task takes the no-cache path.
            println!(
                "| {kind} | cold cache (first task: no fill, the no-cache path) | {} | — | {} | 1.0× |",
                secs(*plain),
                secs(*plain)
            );
            println!(
                "| {kind} | (a first fill, which the daemon does not do for an implement task) | {} | {} | {} | {} |",
                secs(*cold),
                secs(*cold_refresh),
                secs(*cold + *cold_refresh),
                times(*plain, *cold)
            );
        } else {
            println!(
                "| {kind} | cold cache (first task) | {} | {} | {} | {} |",
                secs(*cold),
                secs(*cold_refresh),
                secs(*cold + *cold_refresh),
                times(*plain, *cold)
            );
        }
        println!(
            "| {kind} | warm cache (two new commits) | {} | {} | {} | {} |",
            secs(*warm),
            secs(*warm_refresh),
            secs(*warm + *warm_refresh),
            times(*plain, *warm)
        );
    }
    println!("| reference | `git clone --depth 1` on the host | {} | | | |", secs(depth1));
    println!("| reference | full `git clone` on the host | {} | | | |", secs(full));
}

/// Removes the volume when dropped.
fn scopeguard(volume: String) -> impl Drop {
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker").args(["volume", "rm", "-f", &self.0]).output();
        }
    }
    Guard(volume)
}
