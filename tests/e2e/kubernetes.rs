//! The daemon on `BERTH_ENGINE=kubernetes` end to end: the same deliveries
//! as on Docker (`running`, `recovery`) become Jobs on a fake Kubernetes API
//! server whose kubelet runs each pod as a real container (the real
//! berth-worker, cloning from and pushing to the local git server, with the
//! stub as its agent), reported on the fake GitHub; `berth ps` reads the
//! cluster; and SIGKILLs of the daemon still end every task exactly once,
//! leaving no Job, Pod, Secret or container behind.

use std::time::Duration;

use core_types::TaskId;
use tests::fake_kube::Kind;
use tests::workspace_binaries;

use crate::recovery::{assert_each_reported_once, assert_reported_once, chaos, queued};
use crate::running::Rig;

/// How long one task may take on the fake cluster.
const LIMIT: Duration = Duration::from_secs(120);

/// The Job (and Secret) name of `task`.
fn job_name(task: &str) -> String {
    dispatcher::container_name(&TaskId::new(task).unwrap())
}

/// Whether the fake Kubernetes was asked to create a `kind` (the body of a
/// create is not recorded) and was asked about one named `name`.
fn created(rig: &Rig, kind: &str, name: &str) -> bool {
    let path = format!("/namespaces/{}/{kind}", rig.kube().namespace());
    rig.kube().requests().iter().any(|request| request.method == "POST" && request.path.ends_with(&path))
        && rig.kube().requests().iter().any(|request| request.path.ends_with(&format!("{path}/{name}")))
}

#[tokio::test]
async fn a_review_runs_as_a_job_is_reported_once_and_leaves_no_job_or_secret() {
    let rig = Rig::start_on_kubernetes("kube-review", &[]).await;
    let task =
        queued(&rig.deliver("issue_comment", "kr-1", &rig.comment(7, true, "/berth review", 555)).await);
    let run = rig.outcome(&task, LIMIT).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["name"], "berth/review");
    assert_eq!(run["head_sha"], rig.head_sha.as_str(), "the check run is on the pull request's head");
    assert!(run["output"]["summary"].as_str().unwrap().contains("stub agent looked at the change"), "{run}");

    // The worker was a Job with its environment in a Secret of its name.
    let name = job_name(&task);
    assert!(created(&rig, "jobs", &name), "a Job {name} was made: {:#?}", rig.kube().requests());
    assert!(created(&rig, "secrets", &name), "a Secret {name} was made: {:#?}", rig.kube().requests());

    // One check run, one comment, and the worker's token revoked.
    assert_reported_once(&rig, std::slice::from_ref(&task)).await;
    let tokens = rig.fake.with(|state| state.tokens.clone());
    let worker_token = tokens
        .iter()
        .find(|(request, _)| request["repositories"].is_array())
        .expect("a scoped token was made");
    assert_eq!(worker_token.0["repositories"], serde_json::json!([rig.repo_name]));
    let token = worker_token.1.clone();
    rig.until("the worker token to be revoked", Duration::from_secs(30), |state| {
        state.revoked.contains(&token)
    })
    .await;
    // `assert_reported_once` waited for nothing to be left; say it of these two.
    assert!(rig.kube().object(Kind::Job, &name).is_none(), "the Job is gone");
    assert!(rig.kube().object(Kind::Secret, &name).is_none(), "the Secret with the token is gone");
}

#[tokio::test]
async fn an_implement_task_on_kubernetes_pushes_a_branch_and_gets_a_pull_request() {
    let rig = Rig::start_on_kubernetes("kube-implement", &[]).await;
    let answer = rig
        .deliver(
            "issue_comment",
            "ki-1",
            &rig.comment(12, false, "/berth implement write NOTES.md done", 600),
        )
        .await;
    let task = queued(&answer);
    let run = rig.outcome(&task, LIMIT).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["head_sha"], rig.main_sha.as_str());
    assert!(rig.seed.head_of("berth/issue-12").is_some(), "the branch was pushed to the git server");
    rig.until("the pull request", Duration::from_secs(20), |state| !state.pulls_created.is_empty()).await;
    let pulls = rig.fake.with(|state| state.pulls_created.clone());
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0]["head"]["ref"], "berth/issue-12");
    assert_eq!(pulls[0]["base"]["ref"], "main");
    assert_reported_once(&rig, std::slice::from_ref(&task)).await;
    let comments = rig.comments_of(&task);
    assert!(comments[0]["body"].as_str().unwrap().contains("Pull request:"), "{}", comments[0]);
}

#[tokio::test]
async fn berth_ps_on_kubernetes_lists_a_running_worker() {
    let rig = Rig::start_on_kubernetes("kube-ps", &[]).await;
    let task = queued(
        &rig.deliver("issue_comment", "kp-1", &rig.comment(7, true, "/berth review sleep 10", 7)).await,
    );
    rig.wait_task_running(&task, LIMIT).await;
    // The CLI as an operator runs it: the engine and the cluster from the
    // environment, nothing else.
    let env: Vec<(&'static str, String)> = rig
        .env
        .iter()
        .filter(|(key, _)| matches!(*key, "BERTH_ENGINE" | "BERTH_KUBE_NAMESPACE" | "KUBECONFIG"))
        .cloned()
        .collect();
    assert_eq!(env.len(), 3, "{env:?}");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workspace_binaries().join("berth"))
            .args(["ps", "--json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["task"] == task.as_str())
        .unwrap_or_else(|| panic!("{task} is listed: {rows:#}"));
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["kind"], "review", "{row}");
    assert_eq!(row["target"], format!("{}#7", rig.repo), "{row}");
    assert_eq!(row["container"], job_name(&task), "{row}");
    assert_eq!(row["instance"], rig.repo_name.as_str(), "{row}");
    assert_each_reported_once(&rig, &[task], LIMIT).await;
}

#[tokio::test]
async fn chaos_on_kubernetes_random_sigkills_still_end_every_task_exactly_once() {
    let mut rig = Rig::start_on_kubernetes("kube-chaos", &[("BERTH_MAX_WORKERS", "3".to_owned())]).await;
    let tasks = chaos(&mut rig, 2, 3).await;
    assert_eq!(tasks.len(), 6);
    assert_each_reported_once(&rig, &tasks, Duration::from_secs(300)).await;
}

#[tokio::test]
async fn a_created_job_a_kill_left_without_its_secret_runs_once_adopted() {
    use dispatcher::{Dispatcher, DispatcherConfig, HardenedProfile};
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};
    use kubernetes::{KubernetesEngine, KubernetesOptions};

    let image = tests::test_image().await.to_owned();
    let fake = tests::fake_kube::FakeKube::start().await;
    let mut options = KubernetesOptions::new(tests::rig::KUBE_NETWORK);
    // Long enough to start, short enough that a pod waiting for a Secret
    // that never comes fails this test rather than hangs it.
    options.start_timeout = Duration::from_secs(30);
    let engine = KubernetesEngine::new(fake.client(), fake.namespace(), options);
    let config = DispatcherConfig {
        image,
        network: tests::rig::KUBE_NETWORK.to_owned(),
        profile: KubernetesEngine::fit_profile(HardenedProfile::strict()),
        entrypoint: Some(vec![tests::STUB.to_owned()]),
        instance: tests::test_instance(),
    };
    let dispatcher = Dispatcher::checked(engine, config).unwrap();
    let id = tests::unique_task_id("kube-secret");
    let labels = tests::task_labels(&id);
    let env = [("BERTH_E2E_VALUE", "from-the-secret".to_owned())];
    let cmd = || Some(vec!["env".to_owned(), "BERTH_E2E_VALUE".to_owned()]);
    // A daemon made the Job and was killed before its Secret.
    let created = dispatcher.create(&labels, &env, cmd()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), &fake.namespace());
    secrets.delete(created.id.as_str(), &DeleteParams::default()).await.unwrap();
    // The next daemon adopts the created Job and starts it.
    let launched = dispatcher.launch(&labels, &env, cmd()).await.unwrap();
    assert!(launched.adopted, "{launched:?}");
    let exit = tokio::time::timeout(LIMIT, dispatcher.wait(&launched.id)).await.unwrap().unwrap();
    assert_eq!(exit.code, 0, "the worker ran with its environment: {exit:?}");
    let output = dispatcher.stdout_tail(&launched.id, 10, 4096).await.unwrap();
    assert_eq!(output, "BERTH_E2E_VALUE=from-the-secret\n");
    dispatcher.remove(&launched.id).await.unwrap();
    fake.shutdown().await;
}
