//! Soak benchmark (issue 12): 500 review tasks with the stand-in agent, at
//! most 8 workers at once, and 3 SIGKILLs of the daemon at random moments.
//! It reports the daemon's memory (resident, sampled every 100 ms, at start,
//! at its peak over every incarnation, and at the end), how long the run
//! took, and whether every task was reported exactly once: one completed
//! check run and one result comment each, and no container left.
//!
//! `cargo bench -p tests --bench soak` (`BERTH_SOAK_TASKS`, default 500).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its report and stops at the first error"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tests::rig::Rig;

const KILLS: usize = 3;
const CAP: &str = "8";

/// The resident memory of `pid` in KiB, from `/proc`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.trim().parse().ok())
}

/// Samples the daemon whose pid is in `pid` until `stop`; keeps the peak.
fn sampler(pid: Arc<AtomicU32>, peak: Arc<AtomicU64>, stop: Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib(pid.load(Ordering::Relaxed)) {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn queued(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::var(core_types::env_names::BERTH_SOAK_TASKS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut random = seed;
    let mut next = move |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let mut rig =
        Rig::start("soak", &[("BERTH_MAX_WORKERS", CAP.to_owned()), ("RUST_LOG", "info".to_owned())]).await;
    for number in 1000..1000 + total {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let pid = Arc::new(AtomicU32::new(rig.daemon.child.id().unwrap()));
    // Let start-up settle before the first reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_kib = rss_kib(pid.load(Ordering::Relaxed)).unwrap();
    let peak = Arc::new(AtomicU64::new(start_kib));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    sampler(pid.clone(), peak.clone(), stop.clone());

    // Kill points: three random places in the stream of deliveries.
    let mut kill_at: Vec<u64> = (0..KILLS).map(|_| 1 + next(total - 1)).collect();
    kill_at.sort_unstable();
    println!("soak: {total} tasks, cap {CAP}, SIGKILL after deliveries {kill_at:?} (seed {seed})");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for (index, number) in (1000..1000 + total).enumerate() {
        let body = if next(4) == 0 { "/berth review sleep 1" } else { "/berth review" };
        let comment = rig.comment(number, true, body, number);
        tasks.push(queued(&rig.deliver("issue_comment", &format!("soak-{number}"), &comment).await));
        if kill_at.contains(&(index as u64 + 1)) {
            // A moment later, so some tasks are mid-dispatch or mid-report.
            tokio::time::sleep(Duration::from_millis(next(2000))).await;
            eprintln!("soak: SIGKILL after {} deliveries", index + 1);
            rig.kill_daemon().await;
            tokio::time::sleep(Duration::from_millis(next(1000))).await;
            rig.start_daemon().await;
            pid.store(rig.daemon.child.id().unwrap(), Ordering::Relaxed);
        }
        // Keep the queue from running away from the workers.
        if index % 50 == 49 {
            let done = rig
                .fake
                .with(|state| state.check_runs.values().filter(|r| r["status"] == "completed").count());
            if (index + 1).saturating_sub(done) > 200 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let accepted = started.elapsed();
    // Every task reaches a completed check run and a comment.
    let limit = Duration::from_secs(60 * 30);
    rig.until("every task to be reported", limit, |state| {
        let completed = state.check_runs.values().filter(|r| r["status"] == "completed").count();
        let commented = state.comments.len();
        completed >= tasks.len() && commented >= tasks.len()
    })
    .await;
    let finished = started.elapsed();
    // Let in-flight writes land, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let end_kib = rss_kib(pid.load(Ordering::Relaxed)).unwrap();
    let (mut once, mut bad) = (0, Vec::new());
    for task in &tasks {
        let (runs, completed, conclusion) = rig.fake.with(|state| {
            let runs: Vec<&Value> =
                state.check_runs.values().filter(|run| run["external_id"] == task.as_str()).collect();
            let completed = runs.iter().filter(|run| run["status"] == "completed").count();
            (runs.len(), completed, runs.first().map(|run| run["conclusion"].clone()))
        });
        let comments = rig.comments_of(task).len();
        if runs == 1 && completed == 1 && comments == 1 {
            once += 1;
        } else {
            bad.push(format!(
                "{task}: {runs} check runs ({completed} completed, {conclusion:?}), {comments} comments"
            ));
        }
    }
    let conclusions = rig.fake.with(|state| {
        let mut counts = std::collections::BTreeMap::new();
        for run in state.check_runs.values() {
            *counts.entry(run["conclusion"].as_str().unwrap_or("none").to_owned()).or_insert(0) += 1;
        }
        counts
    });
    let mut left = rig.containers().await.len();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = rig.containers().await.len();
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| tasks | {total} (cap {CAP}, {KILLS} SIGKILLs) |");
    println!("| all accepted after | {:.1} s |", accepted.as_secs_f64());
    println!(
        "| all reported after | {:.1} s ({:.1} tasks/s) |",
        finished.as_secs_f64(),
        total as f64 / finished.as_secs_f64()
    );
    println!("| daemon RSS at start | {:.1} MiB |", mib(start_kib));
    println!("| daemon RSS peak (any incarnation) | {:.1} MiB |", mib(peak.load(Ordering::Relaxed)));
    println!("| daemon RSS at the end | {:.1} MiB |", mib(end_kib));
    println!("| reported exactly once | {once} of {total} |");
    println!("| conclusions | {conclusions:?} |");
    println!("| containers left | {left} |");
    for line in bad.iter().take(20) {
        println!("NOT ONCE: {line}");
    }
    assert!(
        bad.is_empty() && left == 0,
        "{} tasks not reported exactly once, {left} containers left",
        bad.len()
    );
}
