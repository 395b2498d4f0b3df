//! `berth serve` as a process: the journal through SIGKILL and restarts,
//! redelivery after a restart, and start-up refusals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tests::{Daemon, review_comment, rsa_key};

const SECRET: &str = "e2e-webhook-secret";

struct Env {
    dir: tempfile::TempDir,
    key: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    Env { dir, key }
}

impl Env {
    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
            ("BERTH_GITHUB_APP_ID", "1".to_owned()),
            ("BERTH_GITHUB_PRIVATE_KEY_FILE", self.key.display().to_string()),
            ("BERTH_STATE_DIR", self.dir.path().join("state").display().to_string()),
            ("BERTH_GITHUB_API_URL", "http://127.0.0.1:9".to_owned()),
            ("BERTH_WORKER_IMAGE", "berth-test-no-such-image:none".to_owned()),
        ]
    }
}

async fn deliver(addr: SocketAddr, delivery: &str, body: &[u8]) -> std::io::Result<(u16, Value)> {
    tests::deliver_comment(addr, SECRET, delivery, body).await
}

#[tokio::test]
async fn every_202_survives_a_sigkill_and_a_redelivery_is_a_duplicate_after_restart() {
    let env = env();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    // Three rounds: deliveries in flight, SIGKILL at a different moment each time.
    for (round, kill_after) in [(0_u64, 7_usize), (1, 23), (2, 61)] {
        let daemon = Daemon::start(&env.settings()).await;
        let addr = daemon.addr;
        let mut inflight = tokio::task::JoinSet::new();
        for n in 0..80_u64 {
            let number = round * 1000 + n;
            inflight.spawn(async move {
                let delivery = format!("kill-{number}");
                (delivery, deliver(addr, &format!("kill-{number}"), &review_comment(number)).await)
            });
        }
        let mut answered = 0;
        while let Some(result) = inflight.join_next().await {
            let (delivery, answer) = result.unwrap();
            if let Ok((202, body)) = answer {
                assert_eq!(body["outcome"], "queued", "{body}");
                acknowledged.insert(delivery, body["task"].as_str().unwrap().to_owned());
            }
            answered += 1;
            if answered == kill_after {
                break;
            }
        }
        daemon.kill().await;
        inflight.abort_all();
        while let Some(result) = inflight.join_next().await {
            if let Ok((delivery, Ok((202, body)))) = result {
                acknowledged.insert(delivery, body["task"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert!(acknowledged.len() >= 7 + 23 + 61, "only {} deliveries were acknowledged", acknowledged.len());

    // After the last kill: every acknowledged delivery is known, with its task.
    let daemon = Daemon::start(&env.settings()).await;
    for (delivery, task) in &acknowledged {
        let number: u64 = delivery.trim_start_matches("kill-").parse().unwrap();
        let (status, body) = deliver(daemon.addr, delivery, &review_comment(number)).await.unwrap();
        assert_eq!(status, 202);
        assert_eq!(
            body["outcome"], "duplicate",
            "{delivery} was acknowledged before the kill but not kept: {body}"
        );
        assert_eq!(body["task"].as_str(), Some(task.as_str()), "{body}");
    }
    daemon.kill().await;
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_setting() {
    let env = env();
    let binaries = tokio::task::spawn_blocking(tests::workspace_binaries).await.unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            env.settings().into_iter().filter(|(key, _)| *key != "BERTH_WEBHOOK_SECRET").collect(),
            "BERTH_WEBHOOK_SECRET",
        ),
        (vec![("BERTH_MAX_WORKERS", "many".to_owned())], "BERTH_MAX_WORKERS"),
        (vec![("BERTH_BIND", "0.0.0.0:8080".to_owned())], "BERTH_BIND"),
        (vec![("BERTH_TASK_TIMEOUT", "forever".to_owned())], "BERTH_TASK_TIMEOUT"),
    ];
    for (overrides, setting) in cases {
        let mut settings: BTreeMap<&str, String> = env.settings().into_iter().collect();
        if setting == "BERTH_WEBHOOK_SECRET" {
            settings.remove("BERTH_WEBHOOK_SECRET");
        }
        settings.extend(overrides);
        let output = std::process::Command::new(binaries.join("berth"))
            .arg("serve")
            .env_clear()
            .envs(settings.iter().map(|(key, value)| (*key, value.as_str())))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{setting}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(!stderr.contains(SECRET), "no secret in errors: {stderr}");
    }
}

#[tokio::test]
async fn a_corrupt_journal_stops_start_up() {
    let env = env();
    let state = env.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("journal.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let binaries = tokio::task::spawn_blocking(tests::workspace_binaries).await.unwrap();
    let output = std::process::Command::new(binaries.join("berth"))
        .arg("serve")
        .env_clear()
        .envs(env.settings())
        .env("BERTH_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("journal") && stderr.contains("cannot be opened"), "{stderr}");
    // The file is left as it was for the operator to inspect.
    assert_eq!(std::fs::read(state.join("journal.redb")).unwrap(), vec![0x5a; 64 * 1024]);
}

/// The intake log is folded into redb in the background (ADR 24); a SIGKILL
/// that lands while a fold runs (its transaction half written, or written
/// but its log segments not yet deleted) loses no 202'd delivery and makes
/// no task twice, and the folded segments are deleted after the restart.
#[tokio::test]
async fn a_sigkill_in_the_middle_of_the_background_fold_loses_no_202_and_makes_no_task_twice() {
    const STARTED: &str = "journal fold: folding the intake log into redb";
    const DONE: &str = "journal fold: folded";
    let env = env();
    let mut settings = env.settings();
    settings.push(("RUST_LOG", "info,journal=debug".to_owned()));
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut kills_mid_fold = 0;
    let mut next_number = 0_u64;
    let mut rounds = 0;
    for _round in 0..10 {
        rounds += 1;
        if kills_mid_fold >= 2 {
            break;
        }
        let daemon = Daemon::start(&settings).await;
        let addr = daemon.addr;
        // A steady stream of deliveries from 16 senders, so each fold has records to fold.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut senders = tokio::task::JoinSet::new();
        for sender in 0..16_u64 {
            let stop = std::sync::Arc::clone(&stop);
            let answered = std::sync::Arc::clone(&answered);
            let first = next_number + sender * 1_000_000;
            senders.spawn(async move {
                let mut answers = Vec::new();
                let mut number = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let delivery = format!("fold-{number}");
                    let answer = deliver(addr, &delivery, &review_comment(number)).await;
                    let stopped = answer.is_err();
                    if matches!(answer, Ok((202, _))) {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    answers.push((delivery, answer));
                    number += 1;
                    if stopped {
                        break;
                    }
                }
                answers
            });
        }
        next_number += 16 * 1_000_000;
        // Kill the moment a fold has started (its first line is logged),
        // once this round has had 202s of its own: the fold right after a
        // start only folds what the last round left, and killing there
        // would leave the test with too few deliveries to check.
        let started = std::time::Instant::now();
        while answered.load(std::sync::atomic::Ordering::Relaxed) < 60 {
            assert!(started.elapsed() < Duration::from_secs(30), "no 202s within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen_before = daemon.log.lock().unwrap().matches(STARTED).count();
        let started = std::time::Instant::now();
        loop {
            if daemon.log.lock().unwrap().matches(STARTED).count() > seen_before {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no fold started within 30 s under load");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let log = std::sync::Arc::clone(&daemon.log);
        daemon.kill().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // What the daemon wrote before it died, read to the end of the pipe.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = log.lock().unwrap().clone();
        if log.matches(STARTED).count() > log.matches(DONE).count() {
            kills_mid_fold += 1;
        }
        while let Some(answers) = senders.join_next().await {
            for (delivery, answer) in answers.unwrap() {
                if let Ok((202, body)) = answer {
                    assert_eq!(body["outcome"], "queued", "{body}");
                    acknowledged.insert(delivery, body["task"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    eprintln!(
        "{kills_mid_fold} of {rounds} kills landed while a fold ran; {} deliveries acknowledged",
        acknowledged.len()
    );
    assert!(kills_mid_fold >= 2, "only {kills_mid_fold} of the kills landed while a fold ran");
    assert!(acknowledged.len() > 100, "only {} deliveries were acknowledged", acknowledged.len());

    // Every 202 is kept, with its task, and a redelivery is a duplicate of it.
    let daemon = Daemon::start(&env.settings()).await;
    for (delivery, task) in &acknowledged {
        let number: u64 = delivery.trim_start_matches("fold-").parse().unwrap();
        let (status, body) = deliver(daemon.addr, delivery, &review_comment(number)).await.unwrap();
        assert_eq!(status, 202);
        assert_eq!(
            body["outcome"], "duplicate",
            "{delivery} was acknowledged before the kill but not kept: {body}"
        );
        assert_eq!(body["task"].as_str(), Some(task.as_str()), "{body}");
    }
    // The log read at start is folded in and its segments deleted.
    let intake = env.dir.path().join("state/journal.intake");
    let started = std::time::Instant::now();
    loop {
        // The spare (a folded segment kept to be written over) is not a segment.
        let segments = std::fs::read_dir(&intake)
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension().is_some_and(|ext| ext == "log"))
            .count();
        if segments == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{segments} folded segments are kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill().await;

    // One task per comment, none lost: the journal as the next daemon reads it.
    let journal = loop {
        match journal::Journal::open(&env.dir.path().join("state")) {
            Ok(journal) => break journal,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let tasks = journal.tasks().unwrap();
    let mut per_comment: BTreeMap<u64, usize> = BTreeMap::new();
    for task in &tasks {
        *per_comment.entry(task.comment_id.unwrap()).or_default() += 1;
    }
    assert!(per_comment.values().all(|count| *count == 1), "a comment made two tasks");
    let ids: std::collections::BTreeSet<&str> = tasks.iter().map(|task| task.task_id.as_str()).collect();
    for (delivery, task) in &acknowledged {
        assert!(ids.contains(task.as_str()), "the task of {delivery} is lost");
    }
    let mut seqs: Vec<u64> = tasks.iter().map(|task| task.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), tasks.len(), "every task has a seq of its own");
}
