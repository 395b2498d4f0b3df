//! The clone cache (ADR 23) on the real engine: mirrors in real volumes,
//! filled by real refresh containers, borrowed by real workers, from a local
//! `git daemon`. Where a test damages a mirror, it does so on the host's
//! disk where the engine keeps the volume, as a failing disk would.
//!
//! Never worse than no cache: a damaged pack, a mirror without the head
//! commit and a refresh that fails each still end in a successful task whose
//! log says why; and a mirror is only ever mounted for its own repository.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_types::{TaskId, TaskKind, WorkerOptions, WorkerTask, env_names};
use dispatcher::{
    CACHE_MOUNT, CacheVolume, Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile, RefreshEnd,
};
use serde_json::{Value, json};
use tests::{STUB, WORKER, dispatcher_with, http, task_labels, unique_task_id, workspace_binaries};

use crate::running::Rig;

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A repository id no other test run uses.
fn repo_id(n: u64) -> u64 {
    u64::from(std::process::id()) * 100 + n
}

/// Removes the named volumes when dropped, also when the test panics.
struct VolumeCleanup(Vec<String>);

impl Drop for VolumeCleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_unix_defaults() else { return };
                for name in names {
                    let _ = docker
                        .remove_volume(&name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                        .await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// Where the engine keeps a volume's files on this host.
async fn mountpoint(volume: &str) -> PathBuf {
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    PathBuf::from(docker.inspect_volume(volume).await.unwrap().mountpoint)
}

/// Waits while `still_there` holds (60 s at most, then fails with `what`
/// and the daemon's log).
async fn until_gone<F, Fut>(rig: &Rig, what: &str, mut still_there: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while still_there().await {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}\n{}", rig.daemon.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn volume_exists(volume: &str) -> bool {
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    docker.inspect_volume(volume).await.is_ok()
}

/// Cuts every pack of the mirror to half its size.
fn truncate_packs(mirror: &std::path::Path) -> usize {
    let mut cut = 0;
    for entry in std::fs::read_dir(mirror.join("objects/pack")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "pack") {
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
            cut += 1;
        }
    }
    cut
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

/// Fills `volume` from `url` with a real refresh container.
async fn refresh(dispatcher: &Dispatcher<DockerEngine>, volume: &CacheVolume, url: &str) -> String {
    let env = [
        (env_names::BERTH_CLONE_URL, url.to_owned()),
        (env_names::BERTH_CACHE_DIR, CACHE_MOUNT.to_owned()),
        (env_names::BERTH_DEADLINE, (now_unix() + 300).to_string()),
    ];
    match dispatcher.run_refresh(volume, "e2e/berth", &env, Duration::from_secs(120)).await.unwrap() {
        RefreshEnd::Exited { code: 0, output } => output,
        other => panic!("the refresh failed: {other:?}"),
    }
}

/// Runs a review of `head` in a worker with `volume` mounted; its exit code and logs.
async fn cached_review(
    dispatcher: &Dispatcher<DockerEngine>,
    volume: &CacheVolume,
    url: &str,
    head: &str,
) -> (i64, String) {
    cached_task(dispatcher, volume, url, TaskKind::Review, Some(head), &format!("{STUB} print reviewed"))
        .await
}

/// Runs a task in a worker with `volume` mounted; its exit code and logs.
async fn cached_task(
    dispatcher: &Dispatcher<DockerEngine>,
    volume: &CacheVolume,
    url: &str,
    kind: TaskKind,
    head: Option<&str>,
    agent_command: &str,
) -> (i64, String) {
    let task_id = unique_task_id("cached");
    let _cleanup = tests::Cleanup::tasks(&[&task_id]);
    let task = WorkerTask {
        task_id: task_id.clone(),
        kind,
        repo: "e2e/berth".to_owned(),
        number: 7,
        clone_url: url.to_owned(),
        head_ref: Some(if kind == TaskKind::Review { "feature" } else { "main" }.to_owned()),
        head_sha: head.map(str::to_owned),
        prompt: "/berth".to_owned(),
        agent_command: agent_command.to_owned(),
        deadline_unix: now_unix() + 300,
        token: None,
    };
    let options = WorkerOptions {
        base_ref: (kind == TaskKind::Review).then(|| "main".to_owned()),
        ..WorkerOptions::default()
    };
    let mut env = task.to_env();
    env.extend(options.to_env());
    env.push((env_names::BERTH_CACHE_DIR, CACHE_MOUNT.to_owned()));
    let mut labels = task_labels(&task_id);
    labels.kind = kind;
    let launched = dispatcher.create_with_cache(&labels, &env, None, Some(volume)).await.unwrap();
    dispatcher.start(&launched.id).await.unwrap();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    let logs = dispatcher.logs_text(&launched.id).await.unwrap();
    dispatcher.remove(&launched.id).await.unwrap();
    (exit.code, logs)
}

#[tokio::test]
async fn a_worker_borrows_a_mirror_and_fetches_the_head_it_lacks_from_origin() {
    let server = tests::git_server::GitServer::start().await;
    let seed = server.repo("repo.git");
    seed.commit("main", "README.md", "base\n");
    let head = seed.commit("feature", "feature.txt", "one\n");
    let url = server.url("repo.git");
    let dispatcher = worker_dispatcher().await;
    let volume = dispatcher.cache_volume(repo_id(1), "e2e/berth").await.unwrap();
    let _volumes = VolumeCleanup(vec![volume.name().to_owned()]);
    let output = refresh(&dispatcher, &volume, &url).await;
    assert!(output.contains("berth-cache: size="), "{output}");

    let (code, logs) = cached_review(&dispatcher, &volume, &url, &head).await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("borrowing objects from the clone cache at /srv/clone-cache"), "{logs}");
    assert!(logs.contains(&format!("the clone cache has {head}")), "{logs}");
    assert!(logs.contains(&format!("checked out {head}")), "{logs}");
    assert!(!logs.contains("cloning without it"), "{logs}");

    // Two commits the mirror never saw: the worker fetches them from origin.
    seed.commit("feature", "feature.txt", "two\n");
    let newer = seed.commit("feature", "feature.txt", "three\n");
    let (code, logs) = cached_review(&dispatcher, &volume, &url, &newer).await;
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains(&format!("the clone cache lacks {newer}; fetching what it lacks from origin")),
        "{logs}"
    );
    assert!(logs.contains(&format!("checked out {newer}")), "{logs}");
    assert!(!logs.contains("cloning without it"), "{logs}");
}

#[tokio::test]
async fn an_implement_task_borrows_the_mirror_fetches_the_new_base_and_pushes_its_branch() {
    let server = tests::git_server::GitServer::start().await;
    let seed = server.repo("repo.git");
    seed.commit("main", "README.md", "base\n");
    let url = server.url("repo.git");
    let dispatcher = worker_dispatcher().await;
    let volume = dispatcher.cache_volume(repo_id(4), "e2e/berth").await.unwrap();
    let _volumes = VolumeCleanup(vec![volume.name().to_owned()]);
    refresh(&dispatcher, &volume, &url).await;
    // A commit on the base the mirror has not seen.
    let base = seed.commit("main", "later.txt", "after the refresh\n");
    let agent = format!("{STUB} write src/new.txt implemented with a borrowed clone");
    let (code, logs) = cached_task(&dispatcher, &volume, &url, TaskKind::Implement, None, &agent).await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("borrowing objects from the clone cache"), "{logs}");
    assert!(!logs.contains("cloning without it"), "{logs}");
    assert!(logs.contains(&format!("checked out {base}")), "{logs}");
    assert_eq!(seed.git(&["show", "berth/issue-7:src/new.txt"]), "implemented with a borrowed clone");
    assert_eq!(seed.git(&["rev-parse", "berth/issue-7^"]), base, "the task branch starts at the base");
}

#[tokio::test]
async fn a_mirror_with_a_truncated_pack_falls_back_to_a_plain_clone_and_says_why() {
    let server = tests::git_server::GitServer::start().await;
    let seed = server.repo("repo.git");
    seed.commit("main", "README.md", "base\n");
    let head = seed.commit("feature", "feature.txt", "one\n");
    let url = server.url("repo.git");
    let dispatcher = worker_dispatcher().await;
    let volume = dispatcher.cache_volume(repo_id(2), "e2e/berth").await.unwrap();
    let _volumes = VolumeCleanup(vec![volume.name().to_owned()]);
    refresh(&dispatcher, &volume, &url).await;
    let cut = truncate_packs(&mountpoint(volume.name()).await);
    assert!(cut >= 1, "the refresh left a pack to cut");

    let (code, logs) = cached_review(&dispatcher, &volume, &url, &head).await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("the clone cache could not serve this task"), "{logs}");
    assert!(logs.contains("cloning without it"), "{logs}");
    assert!(logs.contains(&format!("checked out {head}")), "{logs}");
}

#[tokio::test]
async fn an_empty_mirror_volume_is_not_borrowed_from_and_the_worker_says_so() {
    let server = tests::git_server::GitServer::start().await;
    let seed = server.repo("repo.git");
    seed.commit("main", "README.md", "base\n");
    let head = seed.commit("feature", "feature.txt", "one\n");
    let url = server.url("repo.git");
    let dispatcher = worker_dispatcher().await;
    let volume = dispatcher.cache_volume(repo_id(3), "e2e/berth").await.unwrap();
    let _volumes = VolumeCleanup(vec![volume.name().to_owned()]);
    let (code, logs) = cached_review(&dispatcher, &volume, &url, &head).await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("the clone cache cannot be used: /srv/clone-cache holds no mirror yet"), "{logs}");
    assert!(logs.contains(&format!("checked out {head}")), "{logs}");
}

/// A status API call with the rig's admin token.
async fn api(rig: &Rig, path: &str) -> Value {
    let headers = [("Authorization", format!("Bearer {}", tests::rig::ADMIN_TOKEN))];
    let (status, body) = http(rig.daemon.addr, "GET", path, &headers, b"").await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn queued(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

/// Runs `/berth review <steps>` on pull request 7 to its end; its check run and kept log.
async fn review(rig: &Rig, delivery: &str, steps: &str, comment: u64) -> (Value, String) {
    let payload = rig.comment(7, true, &format!("/berth review {steps}"), comment);
    let task = queued(&rig.deliver("issue_comment", delivery, &payload).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    let headers = [("Authorization", format!("Bearer {}", tests::rig::ADMIN_TOKEN))];
    let (_, log) =
        http(rig.daemon.addr, "GET", &format!("/api/tasks/{task}/logs"), &headers, b"").await.unwrap();
    (run, log)
}

/// Runs `/berth implement write NOTES.md done` on issue `number` to its end; its check run and kept log.
async fn implement(rig: &Rig, delivery: &str, number: u64, comment: u64) -> (Value, String) {
    let payload = rig.comment(number, false, "/berth implement write NOTES.md done", comment);
    let task = queued(&rig.deliver("issue_comment", delivery, &payload).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    (run, kept_log(rig, &task).await)
}

fn volume_name(rig: &Rig, id: u64) -> String {
    dispatcher::cache::cache_volume_name(&rig.repo_name, id)
}

#[tokio::test]
async fn the_daemon_refreshes_a_mirror_per_repository_and_the_next_review_takes_the_new_commits_from_it() {
    let mut rig = Rig::start("cache-warm", &[]).await;
    let id = repo_id(10);
    rig.repo_id = Some(id);
    let volume = volume_name(&rig, id);
    // An implement task never waits for a first fill: its depth-1 clone costs less.
    let (run, log) = implement(&rig, "cache-warm-0", 12, 9100).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(log.contains("no clone cache for this task: the repository's mirror is not filled yet"), "{log}");
    assert!(!volume_exists(&volume).await, "no mirror was made for it");
    let (run, log) = review(&rig, "cache-warm-1", "", 9101).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(log.contains("borrowing objects from the clone cache"), "{log}");
    assert!(log.contains(&format!("the clone cache has {}", rig.head_sha)), "{log}");

    // Two new commits, and a lock file a killed refresh would leave behind.
    rig.seed.commit("feature", "feature.txt", "two\n");
    let newer = rig.seed.commit("feature", "feature.txt", "three\n");
    rig.fake.set_pull(&rig.repo, 7, &newer, "feature", Some(&rig.repo));
    let mirror = mountpoint(&volume).await;
    std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
    let (run, log) = review(&rig, "cache-warm-2", "", 9102).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    // The refresh fetched them before the worker started: nothing to fetch from origin.
    assert!(log.contains(&format!("the clone cache has {newer}")), "{log}");
    assert!(log.contains(&format!("checked out {newer}")), "{log}");
    assert!(!mirror.join("refs/heads/main.lock").exists(), "the refresh cleared the stale lock");

    // Once a review has filled it, an implement task borrows too.
    let (run, log) = implement(&rig, "cache-warm-3", 13, 9103).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(log.contains("borrowing objects from the clone cache"), "{log}");
    assert!(!log.contains("cloning without it"), "{log}");
    assert!(rig.seed.head_of("berth/issue-13").is_some(), "the branch was pushed");

    // The status API and `berth ps --caches` list the mirror with its size and last use.
    let caches = api(&rig, "/api/caches").await;
    let listed = caches["caches"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{caches:#}");
    assert_eq!(listed[0]["repo_id"], id, "{caches:#}");
    assert_eq!(listed[0]["repo"], rig.repo.as_str(), "{caches:#}");
    assert_eq!(listed[0]["volume"], volume.as_str(), "{caches:#}");
    assert!(listed[0]["size_bytes"].as_u64().is_some_and(|size| size > 0), "{caches:#}");
    assert!(listed[0]["last_used_unix"].as_u64().is_some_and(|at| at + 300 > now_unix()), "{caches:#}");
    let state_dir = rig.env.iter().find(|(key, _)| *key == "BERTH_STATE_DIR").unwrap().1.clone();
    let output = std::process::Command::new(workspace_binaries().join("berth"))
        .args(["ps", "--caches", "--json", "--state-dir", &state_dir])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|row| row["volume"] == volume.as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("berth ps --caches lists {volume}: {rows:#}"));
    assert_eq!(row["size_bytes"], listed[0]["size_bytes"], "{rows:#}");
    // No refresh container is left behind.
    let left: Vec<_> = rig
        .containers()
        .await
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get("berth.kind")).is_some_and(|k| k == "cache-refresh"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_refresh_that_fails_leaves_the_task_to_a_plain_clone_that_succeeds_and_says_why() {
    let mut rig = Rig::start("cache-refresh-fails", &[]).await;
    let id = repo_id(20);
    rig.repo_id = Some(id);
    let volume = volume_name(&rig, id);
    let (run, _) = review(&rig, "cache-fail-1", "", 9201).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    // A mirror git cannot read its own configuration of: every fetch into it fails.
    std::fs::write(mountpoint(&volume).await.join("config"), "[core\nthis is not git config\n").unwrap();
    let (run, log) = review(&rig, "cache-fail-2", "", 9202).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(log.contains("no clone cache for this task: the mirror's refresh failed (exit 1"), "{log}");
    assert!(log.contains(&format!("checked out {}", rig.head_sha)), "{log}");
    assert!(!log.contains("borrowing objects"), "{log}");
    // The damaged mirror was dropped (no worker held it), so the next task fills it anew.
    assert!(!volume_exists(&volume).await, "the failed mirror's volume is removed");
    let (run, log) = review(&rig, "cache-fail-3", "", 9203).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(log.contains("borrowing objects from the clone cache"), "{log}");
}

#[tokio::test]
async fn a_mirror_is_only_ever_mounted_for_tasks_of_its_own_repository() {
    let mut rig = Rig::start("cache-isolation", &[]).await;
    let (id_a, id_b) = (repo_id(30), repo_id(31));
    rig.repo_id = Some(id_a);
    let (volume_a, volume_b) = (volume_name(&rig, id_a), volume_name(&rig, id_b));
    let _volumes = VolumeCleanup(vec![volume_a.clone(), volume_b.clone()]);
    // Repository A's private file reaches A's mirror.
    rig.seed.commit("main", "private-to-a.txt", "a's secret\n");
    let (run, _) = review(&rig, "iso-a", "", 9301).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(volume_exists(&volume_a).await);

    // Repository B on the same server, through the same daemon.
    let b = SecondRepo::new(&rig, id_b);
    let (repo_b, head_b) = (b.repo.clone(), b.head.clone());
    let b_payload = |steps: &str, comment: u64| b.payload(&rig, steps, comment);

    // A volume under B's name that says it is A's mirror: never mounted for B.
    let forged = dispatcher_for(&rig).await;
    let forged_a = forged.cache_volume(id_a, &rig.repo).await.unwrap();
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let mut labels: std::collections::HashMap<String, String> =
        docker.inspect_volume(forged_a.name()).await.unwrap().labels;
    labels.insert("berth.repo".to_owned(), repo_b.clone());
    docker
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(volume_b.clone()),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .unwrap();
    let task = queued(&rig.deliver("issue_comment", "iso-b-forged", &b_payload("", 9302)).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    let log = kept_log(&rig, &task).await;
    assert!(log.contains("is not this repository's mirror"), "{log}");
    assert!(!log.contains("borrowing objects"), "{log}");
    docker.remove_volume(&volume_b, None::<bollard::query_parameters::RemoveVolumeOptions>).await.unwrap();

    // B's own mirror, and only it, read-only, while B's worker runs.
    let task = queued(&rig.deliver("issue_comment", "iso-b", &b_payload("sleep 8", 9303)).await);
    let container = loop {
        let found = docker
            .inspect_container(&dispatcher::container_name(&TaskId::new(task.as_str()).unwrap()), None)
            .await;
        if let Ok(found) = found
            && found.state.as_ref().and_then(|state| state.running) == Some(true)
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mounts = container.mounts.unwrap_or_default();
    let volumes: Vec<(String, bool)> = mounts
        .iter()
        .filter(|mount| mount.typ.as_deref() == Some("volume"))
        .map(|mount| (mount.name.clone().unwrap_or_default(), mount.rw.unwrap_or(true)))
        .collect();
    assert_eq!(
        volumes,
        [(volume_b.clone(), false)],
        "B's worker mounts B's mirror read-only and nothing else"
    );
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    let log = kept_log(&rig, &task).await;
    assert!(log.contains(&format!("the clone cache has {head_b}")), "{log}");
    // A's mirror never held B's commit, and B's never A's.
    assert!(!git_has(&mountpoint(&volume_a).await, &head_b), "A's mirror holds none of B");
    let a_main = rig.seed.head_of("main").unwrap();
    assert!(!git_has(&mountpoint(&volume_b).await, &a_main), "B's mirror holds none of A");
    assert!(git_has(&mountpoint(&volume_a).await, &a_main));
}

/// Whether the bare repository at `dir` has `commit`.
fn git_has(dir: &std::path::Path, commit: &str) -> bool {
    std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(["-c", "safe.directory=*", "cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .unwrap()
        .success()
}

async fn kept_log(rig: &Rig, task: &str) -> String {
    let headers = [("Authorization", format!("Bearer {}", tests::rig::ADMIN_TOKEN))];
    let (status, log) =
        http(rig.daemon.addr, "GET", &format!("/api/tasks/{task}/logs"), &headers, b"").await.unwrap();
    assert_eq!(status, 200, "{log}");
    log
}

/// A dispatcher of the rig's instance, for making volumes as the daemon would.
async fn dispatcher_for(rig: &Rig) -> Dispatcher<DockerEngine> {
    let shared = tests::dispatcher().await.config().clone();
    dispatcher_with(DispatcherConfig { instance: rig.repo_name.clone(), ..shared }).await
}

/// A second repository on a rig's git server, with pull request 7.
struct SecondRepo {
    repo: String,
    name: String,
    id: u64,
    head: String,
    _cleanup: tests::rig::RepoCleanup,
}

impl SecondRepo {
    fn new(rig: &Rig, id: u64) -> Self {
        let name = format!("other-{}-{id}", std::process::id());
        let repo = format!("e2e/{name}");
        let cleanup = tests::rig::RepoCleanup::new(&repo);
        let seed = rig.server.repo(&format!("{name}.git"));
        seed.commit("main", "README.md", "b\n");
        let head = seed.commit("feature", "b.txt", "b's change\n");
        rig.fake.set_branch(&repo, "main", &head);
        rig.fake.set_pull(&repo, 7, &head, "feature", Some(&repo));
        SecondRepo { repo, name, id, head, _cleanup: cleanup }
    }

    /// `/berth review <steps>` on its pull request 7.
    fn payload(&self, rig: &Rig, steps: &str, comment: u64) -> Value {
        let mut payload = rig.comment(7, true, &format!("/berth review {steps}"), comment);
        payload["repository"] = json!({
            "id": self.id,
            "full_name": self.repo,
            "clone_url": rig.server.url(&format!("{}.git", self.name)),
            "default_branch": "main"
        });
        payload
    }
}

#[tokio::test]
async fn the_size_cap_removes_mirrors_not_in_use_and_never_one_a_worker_has_mounted() {
    // A cap of one byte: every mirror is over it, so only being in use keeps one.
    let mut rig = Rig::start("cache-cap", &[("BERTH_CLONE_CACHE_SIZE", "1".to_owned())]).await;
    let (id_a, id_b) = (repo_id(40), repo_id(41));
    rig.repo_id = Some(id_a);
    let (volume_a, volume_b) = (volume_name(&rig, id_a), volume_name(&rig, id_b));
    let _volumes = VolumeCleanup(vec![volume_a.clone(), volume_b.clone()]);
    let b = SecondRepo::new(&rig, id_b);

    // A's worker holds A's mirror while B's task refreshes B's and evicts.
    let a_task = queued(
        &rig.deliver("issue_comment", "cap-a", &rig.comment(7, true, "/berth review sleep 15", 9401)).await,
    );
    rig.wait_task_running(&a_task, Duration::from_secs(60)).await;
    let b_task = queued(&rig.deliver("issue_comment", "cap-b", &b.payload(&rig, "", 9402)).await);
    let run = rig.outcome(&b_task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    assert!(kept_log(&rig, &b_task).await.contains("borrowing objects from the clone cache"));
    assert!(rig.completed(&a_task).is_none(), "A still runs");
    assert!(volume_exists(&volume_a).await, "a mounted mirror is never evicted");
    assert!(
        rig.daemon.log_text().contains("a mirror over the cap is in use; kept"),
        "{}",
        rig.daemon.log_text()
    );

    // Once A's worker is gone, its mirror is over the cap and goes.
    let run = rig.outcome(&a_task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}\n{}", rig.daemon.log_text());
    until_gone(&rig, "A's mirror is evicted", || volume_exists(&volume_a)).await;
    assert!(
        rig.daemon.log_text().contains("evicted a least recently used mirror"),
        "{}",
        rig.daemon.log_text()
    );
}

#[tokio::test]
async fn a_refresh_container_left_by_a_killed_daemon_is_removed_at_start() {
    let name = "cache-leftover";
    let instance = format!("{name}-{}", std::process::id());
    let repo = format!("e2e/{instance}");
    let _cleanup = tests::rig::RepoCleanup::new(&repo);
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let container_name = dispatcher::cache::refresh_container_name(&instance, repo_id(50));
    let labels = std::collections::HashMap::from([
        ("berth.managed".to_owned(), "true".to_owned()),
        ("berth.schema".to_owned(), "1".to_owned()),
        ("berth.instance".to_owned(), instance.clone()),
        ("berth.kind".to_owned(), "cache-refresh".to_owned()),
        ("berth.repo-id".to_owned(), repo_id(50).to_string()),
        ("berth.repo".to_owned(), repo.clone()),
    ]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(tests::test_image().await.to_owned()),
        entrypoint: Some(vec![STUB.to_owned()]),
        cmd: Some(vec!["sleep".to_owned(), "300".to_owned()]),
        labels: Some(labels),
        ..Default::default()
    };
    let options =
        bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&container_name).build();
    let created = docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&created.id, None).await.unwrap();
    // `berth ps` shows it for what it is, not as a damaged task.
    let output = std::process::Command::new(workspace_binaries().join("berth"))
        .args(["ps", "--all", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|row| row["task"] == container_name.as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("berth ps lists {container_name}: {rows:#}"));
    assert_eq!(row["kind"], "cache-refresh", "{row:#}");
    assert_eq!(row["target"], format!("{repo} (id {})", repo_id(50)), "{row:#}");
    assert!(row.get("problem").is_none(), "{row:#}");

    let rig = Rig::start(name, &[]).await;
    until_gone(&rig, "the left-over refresh container is removed", || async {
        docker.inspect_container(&created.id, None).await.is_ok()
    })
    .await;
    assert!(
        rig.daemon.log_text().contains("removing a refresh container left over"),
        "{}",
        rig.daemon.log_text()
    );
}
