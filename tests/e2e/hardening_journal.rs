//! Staying up under hostile workers and a hostile disk: a worker that prints
//! hundreds of megabytes, an agent that forges the worker's result record,
//! a state directory that runs full, and a journal that must never start
//! empty by accident.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use domain::request::TaskRequest;
use domain::triggers::Decision;
use journal::{Accepted, Journal};
use serde_json::{Value, json};
use tests::private_engine::PrivateEngine;
use tests::{Daemon, github_signature, http, rsa_key};

use crate::running::Rig;

/// The most the daemon may hold at its peak (VmHWM) around a worker that
/// printed 300 MiB. Measured: about 28 MiB (a debug build), the same as
/// with no worker at all; reading the whole output, it was several hundred.
const DAEMON_PEAK_LIMIT_KIB: u64 = 64 * 1024;

fn queued(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

/// A process's peak resident memory (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], b"").await.map_or(0, |(status, _)| status)
}

async fn until_ready(daemon: &Daemon, limit: Duration) -> Duration {
    let started = Instant::now();
    while readyz(daemon.addr).await != 200 {
        assert!(started.elapsed() < limit, "/readyz never turned 200\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// The size of a container's json-file log and its rotated files.
fn log_bytes(log_path: &str) -> u64 {
    let path = Path::new(log_path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return 0 };
    let name = name.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&name))
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_worker_that_prints_300_mb_leaves_the_daemon_small_the_disk_bounded_and_a_restart_ready() {
    // An engine with no default log limits, as a fresh Debian docker.io is
    // (this machine's engine sets 10m x 3 in its daemon.json).
    let engine = PrivateEngine::start().await;
    engine.load_image(tests::test_image().await).await;
    let mut rig = Rig::start_on_engine("chatty", &[("BERTH_TASK_TIMEOUT", "15m".to_owned())], &engine).await;
    rig.fake.set_pull(&rig.repo, 8, &rig.head_sha, "feature", Some(&rig.repo));
    let docker = engine.docker();

    // One worker prints 300 MiB while the daemon watches it.
    let first = queued(
        &rig.deliver("issue_comment", "ch-1", &rig.comment(7, true, "/berth review spew 300", 1)).await,
    );
    rig.wait_task_running(&first, Duration::from_secs(120)).await;
    let name = format!("berth-{first}");
    let inspect = docker
        .inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    let log_config = inspect.host_config.and_then(|host| host.log_config).unwrap();
    assert_eq!(log_config.typ.as_deref(), Some("json-file"));
    let options = log_config.config.unwrap_or_default();
    assert_eq!(
        (options.get("max-size").map(String::as_str), options.get("max-file").map(String::as_str)),
        (Some("10485760"), Some("3")),
        "the worker's logs are bounded whatever the engine's defaults"
    );
    // What the engine keeps of its output on disk, sampled while it prints.
    let log_path = inspect.log_path.unwrap();
    let mut most_on_disk = 0;
    let printing = Instant::now();
    while rig.completed(&first).is_none() {
        assert!(
            printing.elapsed() < Duration::from_secs(900),
            "the chatty task never ended\n{}",
            rig.daemon.log_text()
        );
        most_on_disk = most_on_disk.max(log_bytes(&log_path));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = rig.outcome(&first, Duration::from_secs(1)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert!(most_on_disk > 1 << 20, "the worker's log was sampled while it printed");
    assert!(
        most_on_disk <= 31 << 20,
        "at most 3 files of 10 MiB are kept on disk, saw {} MiB",
        most_on_disk >> 20
    );
    let peak = peak_kib(rig.daemon.child.id().unwrap());
    eprintln!(
        "daemon peak with a 300 MiB worker: {} MiB; most log on disk {} MiB",
        peak >> 10,
        most_on_disk >> 20
    );
    assert!(peak < DAEMON_PEAK_LIMIT_KIB, "the daemon grew to {} MiB reading a worker's output", peak >> 10);

    // Another does the same while the daemon is down; the restarted daemon
    // collects it during its start-up reconcile and still becomes ready.
    let second = queued(
        &rig.deliver("issue_comment", "ch-2", &rig.comment(8, true, "/berth review spew 300", 2)).await,
    );
    rig.wait_task_running(&second, Duration::from_secs(120)).await;
    rig.kill_daemon().await;
    let name = format!("berth-{second}");
    let started = Instant::now();
    loop {
        let state = docker
            .inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .unwrap()
            .state
            .unwrap();
        if state.status == Some(bollard::models::ContainerStateStatusEnum::EXITED) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the chatty worker never finished");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rig.start_daemon().await;
    let took = until_ready(&rig.daemon, Duration::from_secs(120)).await;
    let run = rig.outcome(&second, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    let peak = peak_kib(rig.daemon.child.id().unwrap());
    eprintln!("restarted daemon ready in {took:?}, peak {} MiB", peak >> 10);
    assert!(peak < DAEMON_PEAK_LIMIT_KIB, "the restarted daemon grew to {} MiB", peak >> 10);
    rig.until("the comments", Duration::from_secs(30), |state| {
        [&first, &second].iter().all(|task| {
            let marker = format!("<!-- berth:task={task} -->");
            state.comments.values().any(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
        })
    })
    .await;
    for task in [&first, &second] {
        let runs = rig.fake.with(|state| {
            state.check_runs.values().filter(|run| run["external_id"] == task.as_str()).count()
        });
        assert_eq!((runs, rig.comments_of(task).len()), (1, 1), "{task} is reported once");
    }
    drop(rig);
    drop(engine);
}

#[tokio::test]
async fn an_agent_that_forges_the_workers_record_gets_a_damaged_record_and_no_pull_request() {
    let rig = Rig::start("forge", &[]).await;
    // The agent writes a success record naming `feature` into the worker's
    // own stdout, without a newline, and exits 0.
    let task = queued(
        &rig.deliver(
            "issue_comment",
            "fo-1",
            &rig.comment(12, false, "/berth implement forge-record feature", 600),
        )
        .await,
    );
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "failure", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["output"]["title"], "Result record missing or damaged", "{run}");
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("result record was missing or damaged"), "{summary}");
    rig.until("the comment", Duration::from_secs(20), |state| {
        let marker = format!("<!-- berth:task={task} -->");
        state.comments.values().any(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
    })
    .await;
    let pulls = rig.fake.with(|state| state.pulls_created.clone());
    assert!(pulls.is_empty(), "no pull request from a forged record: {pulls:?}");
}

/// A tmpfs of its own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("berth-tmpfs-").tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte with `fill`.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join("fill")).unwrap();
        let chunk = vec![0x66_u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(28), "filled up: {err}");
                    break;
                }
            }
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("fill")).unwrap();
    }

    fn remount_read_only(&self) {
        let status =
            std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(self.path()).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// An implement request whose issue body is `body_kib` KiB: its task record
/// needs fresh pages in the journal.
fn big_request(number: u64, body_kib: usize) -> Decision {
    Decision::Queue(TaskRequest {
        kind: core_types::TaskKind::Implement,
        repo: "octo/repo".into(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: "https://example.invalid/octo/repo.git".into(),
        repo_id: None,
        prompt: String::new(),
        subject_title: "Big".into(),
        subject_body: "b".repeat(body_kib * 1024),
        base_ref: None,
        sender: "octocat".into(),
        installation: Some(7),
        comment_id: Some(number),
        follow_up: false,
    })
}

#[tokio::test]
async fn a_full_disk_fails_journal_writes_with_the_os_error_and_they_recover_by_themselves() {
    let disk = Tmpfs::mount("16m");
    let journal = Journal::open(disk.path()).unwrap();
    eprintln!("a new journal takes {} KiB", std::fs::metadata(journal.path()).unwrap().len() >> 10);
    let kept = journal.accept("before", "issues", big_request(1, 1)).await.unwrap();
    assert!(matches!(kept, Accepted::Queued { .. }), "{kept:?}");
    disk.fill();
    let mut refused = None;
    for n in 2..40 {
        match journal.accept(&format!("full-{n}"), "issues", big_request(n, 128)).await {
            Ok(_) => {}
            Err(err) => {
                refused = Some((n, err.to_string()));
                break;
            }
        }
    }
    let (n, error) = refused.expect("a write fails on a full disk");
    assert!(error.contains("No space left on device"), "the OS error is named: {error}");
    let failure = journal.write_failure().expect("the journal says it cannot write");
    assert!(failure.contains("No space left on device"), "{failure}");
    // Still failing a while later, though small writes could fit in space
    // freed inside the file: the disk has no room yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failure = journal.write_failure().expect("still not writable");
    assert!(failure.contains("KiB free on the file system"), "{failure}");
    // Reads need no room: they work while writes cannot.
    assert!(journal.delivery("before").unwrap().is_some(), "reads work on a full disk");
    assert_eq!(journal.tasks().unwrap().len(), 1 + usize::try_from(n - 2).unwrap());
    assert!(journal.accept(&format!("full-{n}"), "issues", big_request(n, 128)).await.is_err());

    disk.free();
    // No write needed: the journal probes by itself.
    let started = Instant::now();
    while journal.write_failure().is_some() {
        assert!(started.elapsed() < Duration::from_secs(10), "the journal never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = journal.accept(&format!("full-{n}"), "issues", big_request(n, 128)).await.unwrap();
    assert!(matches!(again, Accepted::Queued { .. }), "{again:?}");
    assert!(journal.delivery("before").unwrap().is_some(), "what was committed before is kept");
    // Every delivery answered before the disk filled is still known after
    // the journal recovered.
    for k in 2..n {
        assert!(
            journal.delivery(&format!("full-{k}")).unwrap().is_some(),
            "full-{k} was answered, then lost"
        );
    }
    let after = journal.accept("after", "issues", big_request(100, 1)).await.unwrap();
    assert!(matches!(after, Accepted::Queued { .. }), "{after:?}");
    assert_eq!(
        journal.tasks().unwrap().len(),
        usize::try_from(n).unwrap() + 1,
        "before, full-2..=full-{n}, after"
    );
}

#[tokio::test]
async fn a_daemon_on_a_full_disk_answers_503_and_recovers_and_backfill_asks_for_what_it_refused() {
    let disk = Tmpfs::mount("16m");
    let state = disk.path().join("state");
    let rig = Rig::start("diskfull", &[("BERTH_STATE_DIR", state.display().to_string())]).await;
    until_ready(&rig.daemon, Duration::from_secs(60)).await;
    assert_eq!(
        rig.deliver("issue_comment", "df-0", &rig.comment(7, true, "hello", 1)).await["outcome"],
        "ignored"
    );

    disk.fill();
    // An implement request with a 256 KiB issue body needs fresh pages.
    let payload = |number: u64| {
        let mut payload = rig.comment(number, false, "/berth implement", 100 + number);
        payload["issue"]["body"] = json!("x".repeat(256 * 1024));
        payload
    };
    let secret = rig.env.iter().find(|(key, _)| *key == "BERTH_WEBHOOK_SECRET").unwrap().1.clone();
    let send = |delivery: String, payload: Value| {
        let addr = rig.daemon.addr;
        let secret = secret.clone();
        async move {
            let body = serde_json::to_vec(&payload).unwrap();
            let headers = [
                ("X-GitHub-Event", "issue_comment".to_owned()),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", github_signature(&secret, &body)),
                ("Content-Type", "application/json".to_owned()),
            ];
            http(addr, "POST", "/webhook", &headers, &body).await.unwrap()
        }
    };
    let mut refused = None;
    for number in 20..40 {
        let (status, text) = send(format!("df-{number}"), payload(number)).await;
        match status {
            202 => {}
            503 => {
                refused = Some(number);
                break;
            }
            other => panic!("{other}: {text}"),
        }
    }
    let refused = refused.expect("a delivery is refused with 503 on a full disk");
    assert_eq!(readyz(rig.daemon.addr).await, 503, "not ready while the journal cannot write");
    let log = rig.daemon.log_text();
    assert!(log.contains("No space left on device"), "the log names the OS error:\n{log}");
    // GitHub lists the delivery it got a 503 for; it does not retry it by itself.
    rig.fake.with(|state| {
        state.deliveries = vec![
            json!({"id": 31, "guid": format!("df-{refused}"), "status_code": 503, "status": "Service Unavailable", "event": "issue_comment", "redelivery": false}),
        ];
    });

    disk.free();
    until_ready(&rig.daemon, Duration::from_secs(20)).await;
    // Backfill runs as soon as the journal can write again, not ten minutes later.
    rig.until("the redelivery request", Duration::from_secs(20), |state| state.redeliveries == [31]).await;
    let log = rig.daemon.log_text();
    assert!(log.contains("the journal can write again"), "{log}");
    // GitHub redelivers: the same delivery is taken now, once.
    let (status, text) = send(format!("df-{refused}"), payload(refused)).await;
    assert_eq!(status, 202, "{text}");
    let task = queued(&serde_json::from_str(&text).unwrap());
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
}

/// `berth serve` on `state`; its exit code and stderr, when it stops by itself.
async fn serve_once(state: &Path, key: &Path) -> (Option<i32>, String) {
    let binaries = tokio::task::spawn_blocking(tests::workspace_binaries).await.unwrap();
    let mut child = tokio::process::Command::new(binaries.join("berth"))
        .arg("serve")
        .env_clear()
        .envs(settings(state, key))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stderr = String::new();
        let mut pipe = child.stderr.take().unwrap();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.unwrap();
        (child.wait().await.unwrap().code(), stderr)
    })
    .await;
    output.expect("berth serve stopped by itself")
}

fn settings(state: &Path, key: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("BERTH_WEBHOOK_SECRET", "e2e-journal-webhook-secret".to_owned()),
        ("BERTH_GITHUB_APP_ID", "1".to_owned()),
        ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
        ("BERTH_STATE_DIR", state.display().to_string()),
        ("BERTH_GITHUB_API_URL", "http://127.0.0.1:9".to_owned()),
        ("BERTH_WORKER_IMAGE", "berth-test-no-such-image:none".to_owned()),
        ("BERTH_BIND", "127.0.0.1:0".to_owned()),
        ("BERTH_LOG_FORMAT", "json".to_owned()),
    ]
}

fn assert_not_called_corrupt(message: &str) {
    for wrong in ["damaged", "corrupt", "move it aside"] {
        assert!(!message.contains(wrong), "{wrong:?} said of a journal that is fine: {message}");
    }
}

#[tokio::test]
async fn start_up_refuses_an_empty_or_damaged_journal_and_names_a_lock_or_a_read_only_directory_for_what_they_are()
 {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    let state = |name: &str| -> PathBuf {
        let state = dir.path().join(name);
        std::fs::create_dir_all(&state).unwrap();
        state
    };

    // A zero-length journal: queued tasks would vanish in a silent fresh start.
    let empty = state("empty");
    std::fs::write(empty.join("journal.redb"), b"").unwrap();
    let (code, stderr) = serve_once(&empty, &key).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is empty (0 bytes)") && stderr.contains("move it aside"), "{stderr}");
    assert_eq!(std::fs::metadata(empty.join("journal.redb")).unwrap().len(), 0, "left as it was");

    // Damaged.
    let damaged = state("damaged");
    std::fs::write(damaged.join("journal.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let (code, stderr) = serve_once(&damaged, &key).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("damaged") && stderr.contains("move it aside"), "{stderr}");

    // Held by a running daemon.
    let held = state("held");
    let first = Daemon::start(&settings(&held, &key)).await;
    let (code, stderr) = serve_once(&held, &key).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another process holds it"), "{stderr}");
    assert_not_called_corrupt(&stderr);
    first.kill().await;

    // On a read-only file system, with a journal and without one.
    let disk = Tmpfs::mount("4m");
    let with_journal = disk.path().join("with");
    drop(Journal::open(&with_journal).unwrap());
    std::fs::create_dir_all(disk.path().join("without")).unwrap();
    // Let the writer thread of the journal above let go of the file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    disk.remount_read_only();
    for state in [with_journal, disk.path().join("without")] {
        let (code, stderr) = serve_once(&state, &key).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("cannot be opened for writing"), "{stderr}");
        assert!(stderr.contains("Read-only file system"), "the OS error is named: {stderr}");
        assert_not_called_corrupt(&stderr);
    }
}
