//! The worker in real containers: the real `berth-worker` binary in the test
//! image, cloning from and pushing to a local `git daemon` on the Docker
//! bridge, with `berth-stub` as the agent. Every case checks the exit code
//! and that the last line of stdout is a result record that parses.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use core_types::{
    ResultRecord, ResultStatus, Secret, TaskId, TaskKind, WorkerOptions, WorkerTask, env_names,
};
use dispatcher::{Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile};
use futures_util::StreamExt;
use tests::git_server::{GitServer, SeedRepo};
use tests::{Cleanup, STUB, WORKER, dispatcher_with, task_labels, unique_task_id};

/// How a worker container ended.
struct Run {
    exit: i64,
    /// stdout and stderr, interleaved.
    logs: String,
    /// The result record: the last line of stdout.
    record: ResultRecord,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn task(id: &TaskId, kind: TaskKind, clone_url: String, agent_command: String) -> WorkerTask {
    WorkerTask {
        task_id: id.clone(),
        kind,
        repo: "e2e/berth".to_owned(),
        number: 7,
        clone_url,
        head_ref: None,
        head_sha: None,
        prompt: "/berth do the thing".to_owned(),
        agent_command,
        deadline_unix: now_unix() + 300,
        token: None,
    }
}

/// The stub as the agent: `berth-stub <args>`.
fn stub(args: &str) -> String {
    format!("{STUB} {args}")
}

async fn worker_dispatcher() -> Dispatcher<DockerEngine> {
    // The shared test configuration (image, strict profile, ...), with the
    // worker as entrypoint on the bridge, where the test's git daemon is.
    let shared = tests::dispatcher().await.config().clone();
    dispatcher_with(DispatcherConfig {
        network: "bridge".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![WORKER.to_owned()]),
        ..shared
    })
    .await
}

fn environment(
    task: &WorkerTask,
    options: &WorkerOptions,
    extra: &[(&str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = task.to_env();
    env.extend(options.to_env());
    // An extra variable replaces one of the same name.
    env.retain(|(name, _)| extra.iter().all(|(extra_name, _)| extra_name != name));
    env.extend(extra.iter().map(|(name, value)| (leak(name), value.clone())));
    env
}

/// `Dispatcher::create` takes `&'static str` names; tests use a few literals.
fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

/// Parses the record from the last stdout line; panics with the logs if it is not one.
fn last_record(stdout: &str, logs: &str) -> ResultRecord {
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
    let record: ResultRecord = serde_json::from_str(last).unwrap_or_else(|err| {
        panic!("the last stdout line is not a result record ({err}): {last:?}\nlogs:\n{logs}")
    });
    assert_eq!(ResultRecord::find_last(stdout).as_ref(), Some(&record));
    record
}

/// Runs the task in a worker container to its end, then removes the container.
async fn run_worker(task: &WorkerTask, options: &WorkerOptions, extra: &[(&str, String)]) -> Run {
    let dispatcher = worker_dispatcher().await;
    let mut labels = task_labels(&task.task_id);
    labels.kind = task.kind;
    labels.deadline_unix = task.deadline_unix;
    let launched = dispatcher
        .launch(&labels, &environment(task, options, extra), None)
        .await
        .expect("the worker launches");
    let exit = dispatcher.wait_started(&launched.id).await.expect("the worker ends");
    let logs = dispatcher.logs_text(&launched.id).await.expect("its logs are read");
    let stdout = dispatcher.stdout_text(&launched.id).await.expect("its stdout is read");
    dispatcher.remove(&launched.id).await.expect("the container is removed");
    let record = last_record(&stdout, &logs);
    assert_eq!(record.task, task.task_id.as_str(), "{logs}");
    Run { exit: exit.code, logs, record }
}

/// A server with `repo.git`: `main` has one commit.
async fn server_with_main() -> (GitServer, SeedRepo, String) {
    let server = GitServer::start().await;
    let repo = server.repo("repo.git");
    let base = repo.commit("main", "README.md", "the base\n");
    (server, repo, base)
}

#[tokio::test]
async fn a_review_clones_the_head_commit_and_reports_the_agents_summary() {
    let (server, repo, base) = server_with_main().await;
    let head = repo.commit("feature", "feature.txt", "at the head\n");
    // The branch moved on after the trigger: the worker must take the head commit, not the tip.
    let tip = repo.commit("feature", "feature.txt", "after the head\n");
    assert_ne!(head, tip);
    let id = unique_task_id("review");
    let _cleanup = Cleanup::tasks(&[&id]);
    let mut task = task(
        &id,
        TaskKind::Review,
        server.url("repo.git"),
        stub(
            "cat .git/HEAD then cat feature.txt then cat .git/refs/remotes/origin/main then pwd \
             then write {summary_file} Reviewed {repo}#{number} at {head_sha} against {base_ref}",
        ),
    );
    task.head_sha = Some(head.clone());
    task.head_ref = Some("feature".to_owned());
    let options = WorkerOptions { base_ref: Some("main".to_owned()), ..WorkerOptions::default() };

    let run = run_worker(&task, &options, &[]).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::Success);
    assert_eq!(run.record.summary, format!("Reviewed e2e/berth#7 at {head} against main"));
    assert_eq!((run.record.branch, run.record.commit), (None, None));
    let lines: Vec<&str> = run.logs.lines().collect();
    assert!(lines.contains(&head.as_str()), "HEAD is detached at the head commit:\n{}", run.logs);
    assert!(lines.contains(&"at the head"), "the file as of the head commit:\n{}", run.logs);
    assert!(lines.contains(&base.as_str()), "the base branch was fetched for diffs:\n{}", run.logs);
    assert!(lines.contains(&"/home/berth/work/repo"), "the agent runs in the clone:\n{}", run.logs);
}

#[tokio::test]
async fn an_implement_task_pushes_its_branch_to_the_server() {
    let (server, repo, base) = server_with_main().await;
    let id = unique_task_id("implement");
    let unchanged = unique_task_id("implement-noop");
    let _cleanup = Cleanup::tasks(&[&id, &unchanged]);
    let options = WorkerOptions {
        author_name: Some("Berth Test Bot".to_owned()),
        author_email: Some("bot@berth.invalid".to_owned()),
        ..WorkerOptions::default()
    };
    let task = task(
        &id,
        TaskKind::Implement,
        server.url("repo.git"),
        stub(
            "write src/new.txt implemented by the agent then write {summary_file} Added src/new.txt on {branch}",
        ),
    );

    let run = run_worker(&task, &options, &[]).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::Success);
    assert_eq!(run.record.summary, "Added src/new.txt on berth/issue-7");
    assert_eq!(run.record.branch.as_deref(), Some("berth/issue-7"));
    let pushed = repo.head_of("berth/issue-7").expect("the branch is on the server");
    assert_eq!(run.record.commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(repo.git(&["show", "berth/issue-7:src/new.txt"]), "implemented by the agent");
    assert_eq!(repo.git(&["rev-parse", "berth/issue-7^"]), base, "branched from main");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an <%ae>", "berth/issue-7"]),
        "Berth Test Bot <bot@berth.invalid>"
    );
    assert!(repo.git(&["log", "-1", "--format=%s", "berth/issue-7"]).starts_with("berth: implement #7"));
    assert_eq!(repo.head_of("main").as_deref(), Some(base.as_str()), "main is untouched");

    // An agent that changes nothing pushes nothing.
    let mut task = task.clone();
    task.task_id = unchanged;
    task.number = 8;
    task.agent_command = stub("print nothing to do");
    let run = run_worker(&task, &WorkerOptions::default(), &[]).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert!(run.record.summary.starts_with("The agent made no changes."), "{}", run.record.summary);
    assert_eq!(run.record.branch, None);
    assert_eq!(repo.head_of("berth/issue-8"), None);
}

#[tokio::test]
async fn a_missing_repository_ref_or_variable_is_a_setup_failure() {
    let (server, _repo, _base) = server_with_main().await;
    let ids: Vec<TaskId> = ["no-repo", "no-ref", "no-commit", "bad-env"].map(unique_task_id).to_vec();
    let _cleanup = Cleanup::tasks(&ids.iter().collect::<Vec<_>>());
    let agent = stub("print the agent ran");

    let mut no_repo = task(&ids[0], TaskKind::Implement, server.url("nope.git"), agent.clone());
    no_repo.head_ref = Some("main".to_owned());
    let mut no_ref = task(&ids[1], TaskKind::Implement, server.url("repo.git"), agent.clone());
    no_ref.head_ref = Some("no-such-branch".to_owned());
    let mut no_commit = task(&ids[2], TaskKind::Review, server.url("repo.git"), agent.clone());
    no_commit.head_sha = Some("0123456789abcdef0123456789abcdef01234567".to_owned());
    let bad_env = task(&ids[3], TaskKind::Review, server.url("repo.git"), agent.clone());
    let options = WorkerOptions::default();
    let bad_number = [(env_names::BERTH_NUMBER, "seven".to_owned())];
    let (no_repo, no_ref, no_commit, bad_env) = tokio::join!(
        run_worker(&no_repo, &options, &[]),
        run_worker(&no_ref, &options, &[]),
        run_worker(&no_commit, &options, &[]),
        // Overrides the valid BERTH_NUMBER the task sets.
        run_worker(&bad_env, &options, &bad_number),
    );
    for (run, reason) in [
        (&no_repo, "no such repository"),
        (&no_ref, "no-such-branch not found"),
        (&no_commit, "not our ref"),
        (&bad_env, "BERTH_NUMBER is invalid"),
    ] {
        assert_eq!(run.exit, 2, "{}", run.logs);
        assert_eq!(run.record.status, ResultStatus::SetupFailed);
        assert!(run.record.summary.contains(reason), "{reason:?} not in {:?}", run.record.summary);
        assert!(!run.logs.contains("the agent ran"), "no agent after a failed setup:\n{}", run.logs);
    }
    // Bad input: one line (on stderr) naming the variable, besides the record.
    // The engine orders stdout and stderr lines only by their own timestamps,
    // so the two lines may come in either order.
    let lines: Vec<&str> = bad_env.logs.lines().filter(|line| !line.contains("\"berth_result\"")).collect();
    assert_eq!(lines.len(), 1, "{}", bad_env.logs);
    assert!(lines[0].contains("BERTH_NUMBER") && lines[0].contains("\"seven\""), "{}", lines[0]);
}

#[tokio::test]
async fn an_agent_that_fails_makes_the_worker_exit_1() {
    let (server, _repo, _base) = server_with_main().await;
    let id = unique_task_id("agent-fails");
    let _cleanup = Cleanup::tasks(&[&id]);
    let mut task =
        task(&id, TaskKind::Implement, server.url("repo.git"), stub("print working on it then exit 7"));
    task.head_ref = Some("main".to_owned());
    let run = run_worker(&task, &WorkerOptions::default(), &[]).await;
    assert_eq!(run.exit, 1, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::Failure);
    assert!(run.record.summary.contains("exit code 7"), "{}", run.record.summary);
    assert!(run.record.summary.contains("working on it"), "the end of its output: {}", run.record.summary);
    assert_eq!(run.record.branch, None, "a failed agent's work is not pushed");
}

/// The note the worker prints once the agent's processes are dealt with.
fn cleanup_note(logs: &str) -> &str {
    logs.lines()
        .find(|line| line.starts_with("berth-worker: agent ended"))
        .unwrap_or_else(|| panic!("no cleanup note:\n{logs}"))
}

#[tokio::test]
async fn an_agent_past_its_deadline_is_stopped_with_its_children_and_the_worker_exits_3() {
    let (server, _repo, _base) = server_with_main().await;
    let id = unique_task_id("deadline");
    let _cleanup = Cleanup::tasks(&[&id]);
    // Two children that ignore SIGTERM (one in the agent's group, one in a
    // group of its own), and the agent sleeping on past the deadline.
    let mut task = task(&id, TaskKind::Review, server.url("repo.git"), stub("tree 300 then sleep 300"));
    task.head_ref = Some("main".to_owned());
    task.deadline_unix = now_unix() + 6;
    let options = WorkerOptions { grace_secs: Some(1), ..WorkerOptions::default() };
    let started = Instant::now();
    let run = run_worker(&task, &options, &[]).await;
    assert_eq!(run.exit, 3, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::TimedOut);
    assert!(run.record.summary.contains("SIGKILL after 1s"), "{}", run.record.summary);
    assert!(run.logs.contains("tree ready"), "the agent was running at the deadline:\n{}", run.logs);
    // Both children outlived the agent's SIGTERM and were killed; none is left.
    assert_eq!(
        cleanup_note(&run.logs),
        "berth-worker: agent ended: stopped at the deadline; 2 leftover processes killed, 0 still alive"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped at the deadline, not at the children's end"
    );
}

#[tokio::test]
async fn a_container_stopped_mid_run_stops_its_agent_and_exits_4() {
    let (server, _repo, _base) = server_with_main().await;
    let id = unique_task_id("stopped");
    let _cleanup = Cleanup::tasks(&[&id]);
    let mut task = task(&id, TaskKind::Review, server.url("repo.git"), stub("tree 300 then sleep 300"));
    task.head_ref = Some("main".to_owned());
    let options = WorkerOptions { grace_secs: Some(1), ..WorkerOptions::default() };
    let dispatcher = worker_dispatcher().await;
    let launched =
        dispatcher.launch(&task_labels(&id), &environment(&task, &options, &[]), None).await.unwrap();

    // Stop only once the agent and its children are up.
    let mut logs = dispatcher.logs(&launched.id, true);
    let mut seen = String::new();
    while !seen.contains("tree ready") {
        let chunk = logs.next().await.unwrap_or_else(|| panic!("the worker ended early:\n{seen}")).unwrap();
        seen.push_str(&String::from_utf8_lossy(chunk.bytes()));
    }
    let stop_grace = Duration::from_secs(20);
    let started = Instant::now();
    dispatcher.stop(&launched.id, stop_grace).await.unwrap();
    let took = started.elapsed();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    let all = dispatcher.logs_text(&launched.id).await.unwrap();
    let record = last_record(&dispatcher.stdout_text(&launched.id).await.unwrap(), &all);
    dispatcher.remove(&launched.id).await.unwrap();

    assert_eq!(exit.code, 4, "{all}");
    assert_eq!(record.status, ResultStatus::Cancelled);
    assert!(took < stop_grace, "the worker ended by itself, not by the engine's SIGKILL ({took:?})");
    assert_eq!(
        cleanup_note(&all),
        "berth-worker: agent ended: stopped on SIGTERM; 2 leftover processes killed, 0 still alive"
    );
}

#[tokio::test]
async fn the_token_and_other_secrets_never_appear_in_the_logs() {
    let (server, _repo, _base) = server_with_main().await;
    let id = unique_task_id("secrets");
    let http_id = unique_task_id("secrets-http");
    let _cleanup = Cleanup::tasks(&[&id, &http_id]);
    let token = format!("ghs_e2e{}Secret{}", std::process::id(), now_unix());
    let model_key = format!("sk-model-{}", now_unix());
    let options = WorkerOptions { secret_vars: vec!["MODEL_API_KEY".to_owned()], ..WorkerOptions::default() };
    let extra = [("MODEL_API_KEY", model_key.clone())];
    // The agent prints the token (from its environment and from its argv) on
    // both streams, and writes it into its summary.
    let mut task = task(
        &id,
        TaskKind::Review,
        server.url("repo.git"),
        stub(&format!(
            "env BERTH_GITHUB_TOKEN GH_TOKEN GITHUB_TOKEN MODEL_API_KEY then env-err BERTH_GITHUB_TOKEN \
             then print argv {token} then eprint key {model_key} then write {{summary_file}} token {token} key {model_key}"
        )),
    );
    task.head_ref = Some("main".to_owned());
    task.token = Some(Secret::new(token.clone()));

    let run = run_worker(&task, &options, &extra).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    for line in [
        "BERTH_GITHUB_TOKEN=***",
        "GH_TOKEN=***",
        "GITHUB_TOKEN=***",
        "MODEL_API_KEY=***",
        "argv ***",
        "key ***",
    ] {
        assert!(run.logs.lines().any(|logged| logged == line), "{line:?} not in:\n{}", run.logs);
    }
    assert_eq!(run.record.summary, "token *** key ***");

    // Over HTTP the token becomes a header; a failing clone must not show it either.
    let closed_port = std::net::TcpListener::bind((server.host(), 0)).unwrap().local_addr().unwrap().port();
    let mut http = task.clone();
    http.task_id = http_id;
    http.clone_url = format!("http://{}:{closed_port}/repo.git", server.host());
    let failed = run_worker(&http, &options, &extra).await;
    assert_eq!(failed.exit, 2, "{}", failed.logs);
    assert!(failed.record.summary.contains(&closed_port.to_string()), "{}", failed.record.summary);

    for run in [&run, &failed] {
        let everything = format!("{}\n{}", run.logs, run.record.summary);
        let basic = tests_base64(&format!("x-access-token:{token}"));
        for secret in [token.as_str(), model_key.as_str(), basic.as_str()] {
            assert!(!everything.contains(secret), "{secret:?} leaked:\n{everything}");
        }
    }
}

/// Standard base64, to look for the header form of the token.
fn tests_base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0_u32, |n, (index, byte)| n | u32::from(*byte) << (16 - 8 * index));
        for position in 0..4 {
            out.push(if position <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * position) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Runs the worker binary on this host (no container), so the test can look
/// for the agent's processes after the worker is gone: a container's
/// processes die with it, which would hide a worker that forgot them.
#[tokio::test]
async fn processes_the_agent_leaves_behind_do_not_outlive_the_worker() {
    let binaries = tokio::task::spawn_blocking(tests::workspace_binaries).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let server_root = root.path().join("server");
    std::fs::create_dir_all(&server_root).unwrap();
    let bare = server_root.join("repo.git");
    let seed = |args: &[&str], dir: &std::path::Path| {
        let status = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@berth.invalid")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@berth.invalid")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    seed(&["init", "--quiet", "--bare", "--initial-branch=main", bare.to_str().unwrap()], &server_root);
    seed(&["init", "--quiet", "--initial-branch=main", "work"], &server_root);
    let work = server_root.join("work");
    std::fs::write(work.join("README.md"), "base\n").unwrap();
    seed(&["add", "--all"], &work);
    seed(&["commit", "--quiet", "-m", "base"], &work);
    seed(&["push", "--quiet", bare.to_str().unwrap(), "main"], &work);

    let id = unique_task_id("host-leftovers");
    // The agent starts two SIGTERM-ignoring children (one escapes its group) and exits at once.
    let mut task = task(
        &id,
        TaskKind::Review,
        format!("file://{}", bare.display()),
        format!("{} tree 120", binaries.join("berth-stub").display()),
    );
    task.head_ref = Some("main".to_owned());
    let options = WorkerOptions {
        work_dir: Some(root.path().join("work").to_string_lossy().into_owned()),
        grace_secs: Some(1),
        ..WorkerOptions::default()
    };
    let output = tokio::process::Command::new(binaries.join("berth-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", root.path())
        .envs(environment(&task, &options, &[]))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs = format!("{stdout}{stderr}");
    assert_eq!(output.status.code(), Some(0), "{logs}");
    assert_eq!(last_record(&stdout, &logs).status, ResultStatus::Success);
    let pids: BTreeSet<i32> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tree pids "))
        .unwrap_or_else(|| panic!("no pids in:\n{logs}"))
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the agent's child {pid} outlived the worker:\n{logs}"
        );
    }
    assert!(cleanup_note(&logs).ends_with("2 leftover processes killed, 0 still alive"), "{logs}");
}

#[tokio::test]
async fn a_follow_up_commits_on_top_of_its_branch_and_never_over_a_branch_that_moved() {
    let (server, repo, _base) = server_with_main().await;
    // As GitHub does, the server takes pushes from shallow clones: only the
    // worker's own refusal to force keeps a moved branch as it is.
    repo.git(&["config", "receive.shallowUpdate", "true"]);
    let earlier = repo.commit("berth/issue-3", "first.txt", "from the first task\n");
    let id = unique_task_id("follow-up");
    let moved_id = unique_task_id("follow-up-moved");
    let _cleanup = Cleanup::tasks(&[&id, &moved_id]);
    let options = WorkerOptions { follow_up: true, ..WorkerOptions::default() };
    let mut follow_up = task(
        &id,
        TaskKind::Implement,
        server.url("repo.git"),
        stub("write second.txt from the follow-up then write {summary_file} on {branch} from {head_sha}"),
    );
    follow_up.number = 9;
    follow_up.head_ref = Some("berth/issue-3".to_owned());
    follow_up.head_sha = Some(earlier.clone());

    let run = run_worker(&follow_up, &options, &[]).await;
    assert_eq!(run.exit, 0, "{}", run.logs);
    assert_eq!(run.record.summary, format!("on berth/issue-3 from {earlier}"));
    assert_eq!(run.record.branch.as_deref(), Some("berth/issue-3"));
    let pushed = repo.head_of("berth/issue-3").unwrap();
    assert_eq!(run.record.commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(repo.git(&["rev-parse", "berth/issue-3^"]), earlier, "on top of the earlier commit");
    assert_eq!(repo.git(&["show", "berth/issue-3:first.txt"]), "from the first task");
    assert_eq!(repo.git(&["show", "berth/issue-3:second.txt"]), "from the follow-up");
    assert_eq!(repo.head_of("berth/issue-9"), None, "no branch named after the pull request");

    // The branch moves while the next follow-up's agent runs: its push is
    // refused, said so, and the branch stays where the other push put it.
    let mut moved = follow_up.clone();
    moved.task_id = moved_id;
    moved.head_sha = Some(pushed.clone());
    moved.agent_command = stub("sleep 8 then write third.txt lost");
    let requests = || server.log().matches("upload-pack").count();
    let before = requests();
    let running = tokio::spawn(async move { run_worker(&moved, &options, &[]).await });
    let cloning = Instant::now();
    while requests() == before {
        assert!(cloning.elapsed() < Duration::from_secs(60), "the worker never cloned:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Someone else's commit, not on top of what the worker cloned.
    let theirs = repo.commit("elsewhere", "theirs.txt", "someone else\n");
    repo.git(&["update-ref", "refs/heads/berth/issue-3", &theirs]);
    let run = running.await.unwrap();
    assert_eq!(run.exit, 2, "{}", run.logs);
    assert_eq!(run.record.status, ResultStatus::SetupFailed);
    assert!(
        run.record.summary.contains(&format!(
            "the branch berth/issue-3 moved while the task ran (cloned at {pushed}, now at {theirs})"
        )),
        "{}",
        run.record.summary
    );
    assert_eq!(run.record.branch, None);
    assert_eq!(repo.head_of("berth/issue-3").as_deref(), Some(theirs.as_str()), "not overwritten");
}
