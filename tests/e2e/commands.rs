//! The operator commands as a user runs them: `berth demo` end to end,
//! `berth ps` while no daemon runs, `berth logs`, `berth doctor` and
//! `berth app-manifest`.

use std::process::Command;

use tests::{Cleanup, dispatcher, task_labels, unique_task_id, workspace_binaries};

fn berth() -> Command {
    Command::new(workspace_binaries().join("berth"))
}

#[tokio::test]
async fn berth_demo_runs_the_whole_flow() {
    let (pid, output) = tokio::task::spawn_blocking(|| {
        let child = berth()
            .arg("demo")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child.id(), child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "berth demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "[1/6] building the worker image",
        "202 Accepted",
        "check run \"berth/review\" in progress",
        "berth-worker: checked out",
        "check run completed: \"success\"",
        "result comment posted",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
    // Nothing of it is left: not its directory (a key, a journal, the
    // sample repository), not the git daemon that took pushes on the bridge.
    let temp = std::env::temp_dir().join(format!("berth-demo-{pid}"));
    assert!(!temp.exists(), "{} is left behind", temp.display());
    let serving = format!("--base-path={}", temp.join("repos").display());
    let left = processes_with(&serving);
    assert!(left.is_empty(), "the demo's git daemon outlived it: {left:?}");
}

/// Ctrl-C in the middle of the demo: it exits, and its git daemon (in a
/// process group of its own, out of the terminal's reach) and its
/// directory go with it.
#[tokio::test]
async fn an_interrupted_demo_leaves_nothing_behind() {
    let (pid, status, seen) = tokio::task::spawn_blocking(|| {
        use std::io::BufRead;
        let mut child = berth().arg("demo").stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut seen = String::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            // The git daemon is serving once step 3 starts.
            if line.starts_with("[3/6]") {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
                break;
            }
        }
        (child.id(), child.wait().unwrap(), seen)
    })
    .await
    .unwrap();
    assert!(seen.contains("[3/6]"), "the demo never reached step 3:\n{seen}");
    assert!(!status.success(), "an interrupted demo exits with a failure");
    let temp = std::env::temp_dir().join(format!("berth-demo-{pid}"));
    assert!(!temp.exists(), "{} is left behind", temp.display());
    let serving = format!("--base-path={}", temp.join("repos").display());
    let left = processes_with(&serving);
    assert!(left.is_empty(), "the demo's git daemon outlived it: {left:?}");
}

/// Each process whose command line holds `needle`, as its `stat` line
/// (pid, name, state, parent, group) and its command line with spaces for NULs.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let cmdline =
                String::from_utf8_lossy(&std::fs::read(dir.join("cmdline")).ok()?).replace('\0', " ");
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            let stat: String = stat.split(' ').take(5).collect::<Vec<_>>().join(" ");
            cmdline.contains(needle).then(|| format!("{stat}: {cmdline}"))
        })
        .collect()
}

#[tokio::test]
async fn ps_and_logs_read_docker_directly_while_no_daemon_runs() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("ps");
    let _cleanup = Cleanup::tasks(&[&id]);
    let launched = dispatcher
        .launch(
            &task_labels(&id),
            &[],
            Some(vec!["print".into(), "hello".into(), "from".into(), "ps".into()]),
        )
        .await
        .unwrap();
    // Exited, so the state `berth ps` shows is settled.
    dispatcher.wait(&launched.id).await.unwrap();
    let output = tokio::task::spawn_blocking(|| berth().args(["ps", "--all", "--json"]).output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row =
        rows.as_array().unwrap().iter().find(|row| row["task"] == id.as_str()).expect("the task is listed");
    assert_eq!(row["state"], "exited (0)");
    assert_eq!(row["target"], "e2e/berth#1");
    let table =
        tokio::task::spawn_blocking(|| berth().args(["ps", "--all"]).output().unwrap()).await.unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(id.as_str()));
    let task = id.to_string();
    let logs =
        tokio::task::spawn_blocking(move || berth().args(["logs", &task]).output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello from ps\n");
    let missing =
        tokio::task::spawn_blocking(|| berth().args(["logs", "no-such-task-anywhere"]).output().unwrap())
            .await
            .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no container"));
    dispatcher.remove(&launched.id).await.unwrap();

    // Once the container is gone, the log the daemon kept of it is printed.
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir(state.path().join("logs")).unwrap();
    let kept = state.path().join("logs").join(format!("{id}.log"));
    std::fs::write(&kept, "berth-log cut=12\nkept \u{1b}[31mline\n").unwrap();
    let task = id.to_string();
    let state_dir = state.path().to_owned();
    let kept = tokio::task::spawn_blocking(move || {
        berth().args(["logs", &task]).env("BERTH_STATE_DIR", state_dir).output().unwrap()
    })
    .await
    .unwrap();
    assert!(kept.status.success(), "{}", String::from_utf8_lossy(&kept.stderr));
    assert_eq!(String::from_utf8_lossy(&kept.stdout), "kept line\n", "escape sequences removed");
    assert!(String::from_utf8_lossy(&kept.stderr).contains("first 12 bytes"));
}

#[tokio::test]
async fn doctor_names_each_problem_and_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("key.pem");
    std::fs::write(&bad_key, "not a key").unwrap();
    let state = dir.path().join("state");
    let output = tokio::task::spawn_blocking(move || {
        berth()
            .arg("doctor")
            .env_clear()
            .env("BERTH_GITHUB_PRIVATE_KEY_FILE", &bad_key)
            .env("BERTH_WORKER_IMAGE", "berth-test-no-such-image:none")
            .env("BERTH_STATE_DIR", &state)
            .env("BERTH_BIND", "127.0.0.1:0")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok    docker"), "{stdout}");
    assert!(stdout.contains("FAIL  worker image") && stdout.contains("berth never pulls"), "{stdout}");
    assert!(stdout.contains("FAIL  app key") && stdout.contains("not a usable RSA private key"), "{stdout}");
    assert!(stdout.contains("FAIL  webhook secret"), "{stdout}");
    assert!(stdout.contains("ok    state dir"), "{stdout}");
}

#[tokio::test]
async fn app_manifest_asks_for_exactly_what_berth_uses() {
    let output = tokio::task::spawn_blocking(|| {
        berth().args(["app-manifest", "--url", "https://berth.example.com/"]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(manifest["hook_attributes"]["url"], "https://berth.example.com/webhook");
    assert_eq!(
        manifest["default_events"],
        serde_json::json!(["issue_comment", "issues", "pull_request", "check_run", "check_suite"])
    );
    assert_eq!(
        manifest["default_permissions"],
        serde_json::json!({"checks": "write", "contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"})
    );
}

#[tokio::test]
async fn logs_follow_a_running_worker_and_cancel_asks_the_daemon() {
    use crate::running::{ADMIN_TOKEN, Rig};
    let rig = Rig::start("cli", &[]).await;
    let answer =
        rig.deliver("issue_comment", "cli-1", &rig.comment(7, true, "/berth review sleep 60", 1)).await;
    let task = answer["task"].as_str().unwrap().to_owned();
    rig.wait_task_running(&task, std::time::Duration::from_secs(90)).await;
    // Follows until the worker ends, which the cancel below brings about.
    let follow = tokio::process::Command::new(workspace_binaries().join("berth"))
        .args(["logs", "--follow", &task])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bind = rig.daemon.addr.to_string();
    let cancel = |token: &'static str| {
        let (bind, task) = (bind.clone(), task.clone());
        tokio::task::spawn_blocking(move || {
            berth()
                .args(["cancel", &task])
                .env_clear()
                .env("BERTH_BIND", bind)
                .env("BERTH_ADMIN_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    // Without a token it is bad configuration: exit 2, one line naming it.
    let untokened =
        tokio::task::spawn_blocking(|| berth().args(["cancel", "any-task"]).env_clear().output().unwrap())
            .await
            .unwrap();
    assert_eq!(untokened.status.code(), Some(2), "{untokened:?}");
    let line = String::from_utf8_lossy(&untokened.stderr).into_owned();
    assert!(line.contains("BERTH_ADMIN_TOKEN") && line.trim().lines().count() == 1, "{line}");
    let refused = cancel("not-the-admin-token-at-all").await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("(401)"), "{refused:?}");
    let accepted = cancel(ADMIN_TOKEN).await.unwrap();
    assert!(accepted.status.success(), "{accepted:?}");
    assert!(String::from_utf8_lossy(&accepted.stdout).contains(&format!("cancel requested for {task}")));

    let run = rig.outcome(&task, std::time::Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled", "{run}");
    let followed = tokio::time::timeout(std::time::Duration::from_secs(60), follow.wait_with_output())
        .await
        .expect("logs --follow ends with the worker")
        .unwrap();
    let text = String::from_utf8_lossy(&followed.stdout);
    assert!(text.contains("berth-worker: checked out"), "{text}");
}
