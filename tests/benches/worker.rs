//! Worker overhead: what `berth-worker` adds around a trivial agent, against
//! the same trivial command run directly as a container's entrypoint, in
//! one run, on the same engine, image, network and hardened profile.
//!
//! The agent is `berth-stub stamp`: it prints the wall clock (ns) as its first
//! instruction and exits. For each container the bench measures
//! - start → first instruction: from just before the start call to the stamp;
//! - agent exit → container exit: from the stamp to the engine's `FinishedAt`
//!   (the worker's own exit, as the engine saw it).
//!
//! The worker path includes everything the worker does for a review: read
//! its environment, `git init` + fetch of a one-commit repository from a
//! local `git daemon` on the bridge, checkout, run the agent, reap it, print
//! the record. Host, container and engine share one clock.
//!
//! Run with `cargo bench -p tests --bench worker`; `BERTH_BENCH_ITERATIONS`
//! sets the sample count (default 20, after 2 warm-ups of each).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_types::{TaskId, TaskKind, WorkerTask};
use dispatcher::{Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile};
use tests::git_server::GitServer;
use tests::{Cleanup, STUB, WORKER, dispatcher_with, task_labels, unique_task_id};

/// One container's two intervals.
#[derive(Debug, Clone, Copy)]
struct Sample {
    start_to_first: Duration,
    exit_to_end: Duration,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime builds");
    runtime.block_on(bench());
}

fn nanos_since_epoch(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos()
}

fn between(from: u128, to: u128) -> Duration {
    Duration::from_nanos(u64::try_from(to.saturating_sub(from)).unwrap_or(u64::MAX))
}

async fn dispatcher_for(entrypoint: &str) -> Dispatcher<DockerEngine> {
    // The shared test configuration (image, strict profile, ...), on the bridge.
    let shared = tests::dispatcher().await.config().clone();
    dispatcher_with(DispatcherConfig {
        network: "bridge".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![entrypoint.to_owned()]),
        ..shared
    })
    .await
}

/// Creates, starts (timing from here), waits, reads the stamp, removes.
async fn measure(
    dispatcher: &Dispatcher<DockerEngine>,
    id: &TaskId,
    env: &[(&'static str, String)],
    cmd: Option<Vec<String>>,
) -> Sample {
    let created = dispatcher.create(&task_labels(id), env, cmd).await.expect("container is created");
    let started = nanos_since_epoch(SystemTime::now());
    dispatcher.start(&created.id).await.expect("container starts");
    let exit = dispatcher.wait_started(&created.id).await.expect("container ends");
    let stdout = dispatcher.stdout_text(&created.id).await.expect("logs are read");
    dispatcher.remove(&created.id).await.expect("container is removed");
    assert_eq!(exit.code, 0, "{id} failed:\n{stdout}");
    let stamp: u128 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("stamp "))
        .and_then(|nanos| nanos.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stamp from {id}:\n{stdout}"));
    let finished = nanos_since_epoch(exit.finished_at.expect("the engine records the end"));
    Sample { start_to_first: between(started, stamp), exit_to_end: between(stamp, finished) }
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank - 1]
}

struct Summary {
    median: Duration,
    p90: Duration,
    min: Duration,
}

fn summarize(samples: impl Iterator<Item = Duration>) -> Summary {
    let mut sorted: Vec<Duration> = samples.collect();
    sorted.sort();
    Summary { median: percentile(&sorted, 50), p90: percentile(&sorted, 90), min: sorted[0] }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn ratio(worker: Duration, direct: Duration) -> String {
    format!("{:.2}x", worker.as_secs_f64() / direct.as_secs_f64().max(1e-9))
}

#[expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]
async fn bench() {
    let iterations: usize = std::env::var(core_types::env_names::BERTH_BENCH_ITERATIONS)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let warmups = 2;
    let server = GitServer::start().await;
    let repo = server.repo("bench.git");
    repo.commit("main", "README.md", "a one-commit repository\n");
    let direct = dispatcher_for(STUB).await;
    let worker = dispatcher_for(WORKER).await;

    let ids: Vec<(TaskId, TaskId)> = (0..iterations + warmups)
        .map(|_| (unique_task_id("bench-direct"), unique_task_id("bench-worker")))
        .collect();
    let _cleanup = Cleanup::tasks(&ids.iter().flat_map(|(a, b)| [a, b]).collect::<Vec<_>>());

    let mut direct_samples = Vec::new();
    let mut worker_samples = Vec::new();
    for (round, (direct_id, worker_id)) in ids.iter().enumerate() {
        let task = WorkerTask {
            task_id: worker_id.clone(),
            kind: TaskKind::Review,
            repo: "bench/berth".to_owned(),
            number: 1,
            clone_url: server.url("bench.git"),
            head_ref: Some("main".to_owned()),
            head_sha: None,
            prompt: "/berth review".to_owned(),
            agent_command: format!("{STUB} stamp"),
            deadline_unix: u64::try_from(nanos_since_epoch(SystemTime::now()) / 1_000_000_000).unwrap_or(0)
                + 600,
            token: None,
        };
        // Interleaved, so drift in the machine's load hits both alike.
        let direct_sample = measure(&direct, direct_id, &[], Some(vec!["stamp".to_owned()])).await;
        let worker_sample = measure(&worker, worker_id, &task.to_env(), None).await;
        if round >= warmups {
            direct_samples.push(direct_sample);
            worker_samples.push(worker_sample);
        }
    }

    println!(
        "worker overhead: {iterations} samples each (after {warmups} warm-ups), trivial agent `berth-stub stamp`"
    );
    println!(
        "| interval | direct median | worker median | ratio | direct p90 | worker p90 | direct min | worker min |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, pick) in [
        (
            "container start → agent's first instruction",
            (|sample: &Sample| sample.start_to_first) as fn(&Sample) -> Duration,
        ),
        ("agent's exit → container exit", |sample: &Sample| sample.exit_to_end),
    ] {
        let direct = summarize(direct_samples.iter().map(pick));
        let worker = summarize(worker_samples.iter().map(pick));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            ms(direct.median),
            ms(worker.median),
            ratio(worker.median, direct.median),
            ms(direct.p90),
            ms(worker.p90),
            ms(direct.min),
            ms(worker.min),
        );
    }
    let total = |samples: &[Sample]| {
        summarize(samples.iter().map(|sample| sample.start_to_first + sample.exit_to_end))
    };
    let (direct_total, worker_total) = (total(&direct_samples), total(&worker_samples));
    println!(
        "| both intervals | {} | {} | {} | {} | {} | {} | {} |",
        ms(direct_total.median),
        ms(worker_total.median),
        ratio(worker_total.median, direct_total.median),
        ms(direct_total.p90),
        ms(worker_total.p90),
        ms(direct_total.min),
        ms(worker_total.min),
    );
    println!(
        "worker overhead (median difference): +{} before the agent, +{} after it",
        ms(summarize(worker_samples.iter().map(|sample| sample.start_to_first))
            .median
            .saturating_sub(summarize(direct_samples.iter().map(|sample| sample.start_to_first)).median)),
        ms(summarize(worker_samples.iter().map(|sample| sample.exit_to_end))
            .median
            .saturating_sub(summarize(direct_samples.iter().map(|sample| sample.exit_to_end)).median)),
    );
}
