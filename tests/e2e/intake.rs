//! `berth serve` as a process: the journal through SIGKILL and restarts,
//! redelivery after a restart, and start-up refusals.

use std::collections::BTreeMap;
use std::net::SocketAddr;

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
