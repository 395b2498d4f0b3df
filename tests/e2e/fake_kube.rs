//! The fake Kubernetes API server (`tests::fake_kube`) driven by the real
//! `kube` client: Jobs run as real containers, watches resume and expire,
//! failures are injected. Every test removes its containers, and checks it.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::wait::{Condition, await_condition};
use kube::runtime::watcher;
use serde_json::json;
use tests::fake_kube::{FakeKube, Kind};

const LIMIT: Duration = Duration::from_secs(60);

/// A Job running the test image's stub with `args`, never retried.
fn stub_job(name: &str, image: &str, args: &[&str]) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "berth-e2e"}},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"app": "berth-e2e"}}, "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "task", "image": image, "command": [tests::STUB], "args": args}]
            }}
        }
    }))
    .unwrap()
}

fn with_spec(mut job: Job, change: impl FnOnce(&mut serde_json::Value)) -> Job {
    let mut value = serde_json::to_value(&job).unwrap();
    change(&mut value);
    job = serde_json::from_value(value).unwrap();
    job
}

fn job_condition(type_: &'static str) -> impl Condition<Job> {
    move |job: Option<&Job>| {
        job.and_then(|job| job.status.as_ref())
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == type_ && c.status == "True"))
    }
}

async fn wait_job(jobs: &Api<Job>, name: &str, type_: &'static str) -> Job {
    tokio::time::timeout(LIMIT, await_condition(jobs.clone(), name, job_condition(type_)))
        .await
        .unwrap_or_else(|_| panic!("job {name} never reached {type_}"))
        .unwrap()
        .unwrap()
}

/// The single Pod of Job `name`, once `done` holds for it.
async fn wait_pod(pods: &Api<Pod>, job: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let started = Instant::now();
    loop {
        let list = pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await.unwrap();
        if let Some(pod) = list.items.into_iter().find(|pod| done(pod)) {
            return pod;
        }
        assert!(started.elapsed() < LIMIT, "the pod of {job} never became {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.clone()
}

fn running(pod: &Pod) -> bool {
    phase(pod) == "Running"
}

/// Shuts the server down and checks that no container of it is left.
async fn finish(kube: FakeKube) {
    let id = kube.id().to_owned();
    kube.shutdown().await;
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let filters = std::collections::HashMap::from([(
        "label",
        vec![format!("{}={id}", tests::fake_kube::SERVER_LABEL)],
    )]);
    let options =
        bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let left = docker.list_containers(Some(options)).await.unwrap();
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

#[tokio::test]
async fn job_runs_to_completion_with_its_exit_code_and_logs() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());

    jobs.create(
        &PostParams::default(),
        &stub_job("ok", image, &["print", "hello", "then", "eprint", "to stderr"]),
    )
    .await
    .unwrap();
    let failing = stub_job("fails", image, &["print", "about to fail", "then", "exit", "3"]);
    jobs.create(&PostParams::default(), &failing).await.unwrap();

    let done = wait_job(&jobs, "ok", "Complete").await;
    let status = done.status.unwrap();
    assert_eq!(status.succeeded, Some(1));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let pod = wait_pod(&pods, "ok", "Succeeded", |pod| phase(pod) == "Succeeded").await;
    let name = pod.metadata.name.clone().unwrap();
    assert!(name.starts_with("ok-") && name.len() == "ok-".len() + 5, "{name}");
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["job-name"], "ok");
    assert_eq!(labels["controller-uid"], done.metadata.uid.clone().unwrap());
    assert_eq!(labels["app"], "berth-e2e");
    let end = terminated(&pod).unwrap();
    assert_eq!((end.exit_code, end.reason.as_deref()), (0, Some("Completed")));
    assert!(end.started_at.is_some() && end.finished_at.is_some());
    let logs = pods.logs(&name, &LogParams::default()).await.unwrap();
    // stdout and stderr are separate pipes: merged, their order is not fixed.
    let mut lines: Vec<&str> = logs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["hello", "to stderr"], "{logs}");
    let tail = pods.logs(&name, &LogParams { tail_lines: Some(1), ..LogParams::default() }).await.unwrap();
    assert_eq!(tail.lines().count(), 1, "{tail}");

    let failed = wait_job(&jobs, "fails", "Failed").await;
    let status = failed.status.unwrap();
    assert_eq!(status.failed, Some(1));
    let reason = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap().reason;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let pod = wait_pod(&pods, "fails", "Failed", |pod| phase(pod) == "Failed").await;
    let end = terminated(&pod).unwrap();
    assert_eq!((end.exit_code, end.reason.as_deref()), (3, Some("Error")));

    // Label selectors pick the Job's pods only.
    let listed = pods.list(&ListParams::default().labels("app=berth-e2e,job-name!=ok")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.labels.as_ref().unwrap()["job-name"], "fails");
    finish(kube).await;
}

#[tokio::test]
async fn pod_security_context_and_limits_reach_the_container() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let secrets: Api<Secret> = Api::default_namespaced(kube.client());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "token"},
        "stringData": {"BERTH_TOKEN": "s3cret"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let job =
        with_spec(stub_job("hardened", image, &["probe", "then", "env", "BERTH_TOKEN", "PLAIN"]), |job| {
            let spec = &mut job["spec"]["template"]["spec"];
            spec["securityContext"] =
                json!({"runAsUser": 1234, "runAsGroup": 2345, "seccompProfile": {"type": "RuntimeDefault"}});
            spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
            spec["containers"][0]["securityContext"] = json!({
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}
            });
            spec["containers"][0]["resources"] = json!({"limits": {"memory": "256Mi", "cpu": "500m"}});
            spec["containers"][0]["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/tmp"}]);
            spec["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "token"}}]);
            spec["containers"][0]["env"] = json!([{"name": "PLAIN", "value": "plain value"}]);
        });
    jobs.create(&PostParams::default(), &job).await.unwrap();
    wait_job(&jobs, "hardened", "Complete").await;
    let pod = wait_pod(&pods, "hardened", "Succeeded", |pod| phase(pod) == "Succeeded").await;
    let logs = pods.logs(&pod.metadata.name.unwrap(), &LogParams::default()).await.unwrap();
    for expected in [
        "uid=1234 gid=2345",
        "cap_eff=0000000000000000",
        "cap_bnd=0000000000000000",
        "no_new_privs=1",
        "seccomp=2",
        "memory_limit=268435456",
        "cpu_quota=50000",
        "root_writable=false",
        "tmp_writable=true",
        "BERTH_TOKEN=s3cret",
        "PLAIN=plain value",
    ] {
        assert!(logs.contains(expected), "{expected:?} not in {logs}");
    }
    finish(kube).await;
}

#[tokio::test]
async fn a_container_over_its_memory_limit_ends_oom_killed() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let job = with_spec(stub_job("hungry", image, &["alloc", "512"]), |job| {
        job["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    });
    jobs.create(&PostParams::default(), &job).await.unwrap();
    wait_job(&jobs, "hungry", "Failed").await;
    let pod = wait_pod(&pods, "hungry", "Failed", |pod| phase(pod) == "Failed").await;
    let end = terminated(&pod).unwrap();
    assert_eq!((end.exit_code, end.reason.as_deref()), (137, Some("OOMKilled")));
    finish(kube).await;
}

/// Deletes the pod with `grace` and returns its last state (from the
/// DELETED watch event) and how long the deletion took.
async fn delete_and_watch(pods: &Api<Pod>, name: &str, grace: u32) -> (Pod, Duration) {
    let list = pods.list(&ListParams::default()).await.unwrap();
    let version = list.metadata.resource_version.unwrap();
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut events = pods.watch(&params, &version).await.unwrap().boxed();
    let started = Instant::now();
    pods.delete(name, &DeleteParams { grace_period_seconds: Some(grace), ..DeleteParams::default() })
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(LIMIT, events.try_next()).await.unwrap().unwrap().unwrap();
        if let WatchEvent::Deleted(pod) = event {
            return (pod, started.elapsed());
        }
    }
}

#[tokio::test]
async fn deleting_a_pod_with_grace_sends_sigterm_then_sigkill() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    // Behind a shared process namespace the program is not PID 1, so
    // SIGTERM's default action ends it at once: 128 + 15.
    let job = with_spec(stub_job("graceful", image, &["sleep", "120"]), |job| {
        job["spec"]["template"]["spec"]["shareProcessNamespace"] = json!(true);
    });
    jobs.create(&PostParams::default(), &job).await.unwrap();
    // As PID 1 with no handler, SIGTERM is ignored: SIGKILL after the grace.
    jobs.create(&PostParams::default(), &stub_job("stubborn", image, &["sleep", "120"])).await.unwrap();

    let pod = wait_pod(&pods, "graceful", "Running", running).await;
    let (gone, took) = delete_and_watch(&pods, &pod.metadata.name.unwrap(), 20).await;
    assert_eq!(terminated(&gone).unwrap().exit_code, 143);
    assert!(took < Duration::from_secs(10), "SIGTERM did not end it quickly: {took:?}");

    let pod = wait_pod(&pods, "stubborn", "Running", running).await;
    let (gone, took) = delete_and_watch(&pods, &pod.metadata.name.unwrap(), 2).await;
    assert_eq!(terminated(&gone).unwrap().exit_code, 137);
    assert!(took >= Duration::from_secs(2), "killed before the grace period ended: {took:?}");
    finish(kube).await;
}

#[tokio::test]
async fn duplicate_create_is_409_and_missing_delete_is_404() {
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    // Suspended, so no pod (and no image) is needed.
    let job = with_spec(stub_job("twice", "berth-test-worker:e2e", &["exit", "0"]), |job| {
        job["spec"]["suspend"] = json!(true);
    });
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let Err(kube::Error::Api(status)) = jobs.create(&PostParams::default(), &job).await else {
        panic!("the second create succeeded")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status.message, "jobs.batch \"twice\" already exists");
    let Err(kube::Error::Api(status)) = jobs.delete("nope", &DeleteParams::background()).await else {
        panic!("deleting a missing job succeeded")
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let invalid = with_spec(job, |job| {
        job["metadata"]["name"] = json!("no-policy");
        job["spec"]["template"]["spec"]["restartPolicy"] = serde_json::Value::Null;
    });
    let Err(kube::Error::Api(status)) = jobs.create(&PostParams::default(), &invalid).await else {
        panic!("a job without restartPolicy was accepted")
    };
    assert_eq!(status.code, 422);
    let condition = jobs.get("twice").await.unwrap().status.unwrap().conditions.unwrap();
    assert!(condition.iter().any(|c| c.type_ == "Suspended" && c.status == "True"));
    finish(kube).await;
}

#[tokio::test]
async fn an_expired_watch_gets_410_and_the_watcher_recovers() {
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let suspended = |name: &str| {
        with_spec(stub_job(name, "berth-test-worker:e2e", &["exit", "0"]), |job| {
            job["spec"]["suspend"] = json!(true);
        })
    };
    jobs.create(&PostParams::default(), &suspended("before")).await.unwrap();
    let old_version = jobs.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    let mut seen = watcher(jobs.clone(), watcher::Config::default()).boxed();
    // The initial list.
    loop {
        if let watcher::Event::InitDone =
            tokio::time::timeout(LIMIT, seen.try_next()).await.unwrap().unwrap().unwrap()
        {
            break;
        }
    }
    kube.expire_watches();
    jobs.create(&PostParams::default(), &suspended("after")).await.unwrap();

    // A watch from a version handed out before the expiry is Gone.
    let mut stale = jobs.watch(&WatchParams::default(), &old_version).await.unwrap().boxed();
    match tokio::time::timeout(LIMIT, stale.try_next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Error(status) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 error event, got {other:?}"),
    }

    // The watcher relists and sees the job made after the expiry.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < LIMIT, "the watcher never recovered");
        let Ok(Some(event)) = tokio::time::timeout(LIMIT, seen.next()).await else {
            panic!("the watcher ended")
        };
        let Ok(event) = event else { continue };
        if let watcher::Event::Apply(job) | watcher::Event::InitApply(job) = event
            && job.metadata.name.as_deref() == Some("after")
        {
            break;
        }
    }
    let lists = kube
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/jobs") && r.param("watch").is_none() && r.method == "GET")
        .count();
    assert!(lists >= 3, "the watcher did not list again: {:#?}", kube.requests());

    // A restart drops every connection; the client and the watcher come back.
    kube.restart(Duration::from_millis(500)).await;
    jobs.create(&PostParams::default(), &suspended("restarted")).await.unwrap();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < LIMIT, "the watcher never came back after the restart");
        let Ok(Some(Ok(event))) = tokio::time::timeout(LIMIT, seen.next()).await else { continue };
        if let watcher::Event::Apply(job) | watcher::Event::InitApply(job) = event
            && job.metadata.name.as_deref() == Some("restarted")
        {
            break;
        }
    }
    assert_eq!(jobs.list(&ListParams::default()).await.unwrap().items.len(), 3);
    finish(kube).await;
}

#[tokio::test]
async fn pending_forever_keeps_pods_unschedulable_until_lifted() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    kube.pending_forever(true);
    jobs.create(&PostParams::default(), &stub_job("waits", image, &["exit", "0"])).await.unwrap();
    let pod = wait_pod(&pods, "waits", "Unschedulable", |pod| {
        pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
    })
    .await;
    assert_eq!(phase(&pod), "Pending");
    assert!(kube.containers().await.is_empty(), "a pending pod has no container");
    let job = jobs.get("waits").await.unwrap();
    assert_eq!(job.status.unwrap().active, Some(1));

    kube.pending_forever(false);
    wait_job(&jobs, "waits", "Complete").await;
    finish(kube).await;
}

#[tokio::test]
async fn an_image_not_on_the_engine_is_image_pull_back_off() {
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    jobs.create(&PostParams::default(), &stub_job("absent", "berth-test-absent:never", &["exit", "0"]))
        .await
        .unwrap();
    let pod = wait_pod(&pods, "absent", "ImagePullBackOff", |pod| {
        let waiting = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.waiting.as_ref());
        waiting.and_then(|w| w.reason.as_deref()) == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&pod), "Pending");
    let Err(kube::Error::Api(status)) = pods.logs(&pod.metadata.name.unwrap(), &LogParams::default()).await
    else {
        panic!("logs of a container that never started")
    };
    assert_eq!(status.code, 400);
    finish(kube).await;
}

#[tokio::test]
async fn an_evicted_pod_fails_with_a_disruption_target() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    jobs.create(&PostParams::default(), &stub_job("evicted", image, &["sleep", "120"])).await.unwrap();
    let pod = wait_pod(&pods, "evicted", "Running", running).await;
    assert!(kube.evict(&pod.metadata.name.unwrap()).await);
    let pod = wait_pod(&pods, "evicted", "Failed", |pod| phase(pod) == "Failed").await;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert!(status.conditions.unwrap().iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
    assert_eq!(terminated(&pod).unwrap().exit_code, 137);
    wait_job(&jobs, "evicted", "Failed").await;
    finish(kube).await;
}

#[tokio::test]
async fn deadline_suspend_ttl_and_background_delete_behave_as_the_job_controller() {
    let image = tests::test_image().await;
    let kube = FakeKube::start().await;
    let jobs: Api<Job> = Api::default_namespaced(kube.client());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let secrets: Api<Secret> = Api::default_namespaced(kube.client());

    // activeDeadlineSeconds: the pod is killed and the job fails.
    let late = with_spec(stub_job("late", image, &["sleep", "120"]), |job| {
        job["spec"]["activeDeadlineSeconds"] = json!(2);
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    });
    jobs.create(&PostParams::default(), &late).await.unwrap();
    let failed = wait_job(&jobs, "late", "Failed").await;
    let reason =
        failed.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap().reason;
    assert_eq!(reason.as_deref(), Some("DeadlineExceeded"));

    // Suspended: no pod until a merge patch resumes it; then the TTL removes it.
    let resumable = with_spec(stub_job("resumable", image, &["exit", "0"]), |job| {
        job["spec"]["suspend"] = json!(true);
        job["spec"]["ttlSecondsAfterFinished"] = json!(1);
    });
    jobs.create(&PostParams::default(), &resumable).await.unwrap();
    wait_job(&jobs, "resumable", "Suspended").await;
    assert!(pods.list(&ListParams::default().labels("job-name=resumable")).await.unwrap().items.is_empty());
    let patch = Patch::Merge(json!({"spec": {"suspend": false}}));
    jobs.patch("resumable", &PatchParams::default(), &patch).await.unwrap();
    let done = wait_job(&jobs, "resumable", "Complete").await;
    let uid = done.metadata.uid.clone().unwrap();
    tokio::time::timeout(
        LIMIT,
        await_condition(jobs.clone(), "resumable", kube::runtime::conditions::is_deleted(&uid)),
    )
    .await
    .unwrap()
    .unwrap();

    // Background propagation deletes the pods and the Secrets the job owns.
    let owner =
        jobs.create(&PostParams::default(), &stub_job("owner", image, &["sleep", "120"])).await.unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": owner.metadata.uid.unwrap()
        }]},
        "stringData": {"key": "value"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    wait_pod(&pods, "owner", "Running", running).await;
    jobs.delete("owner", &DeleteParams { grace_period_seconds: None, ..DeleteParams::background() })
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels("job-name=owner")).await.unwrap().items.len();
        let secret = secrets.get_opt("owned").await.unwrap();
        if left == 0 && secret.is_none() {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "background deletion left {left} pod(s), secret {}",
            secret.is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kube.object(Kind::Job, "owner").is_none());
    finish(kube).await;
}
