//! Request shapes against kube's mock service (no cluster needed) and the
//! status mapping on Job and Pod objects as the API server writes them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use core_types::{TaskId, TaskKind, TaskLabels, label};
use dispatcher::{
    ChangeKind, ContainerEngine, ContainerId, ContainerSpec, ContainerStatus, DispatchError, Dispatcher,
    DispatcherConfig, ExitInfo, HardenedProfile, LogChunk, Protection,
};
use futures_util::StreamExt;
use http::{Method, Request, Response};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use crate::status::{self, container_state};
use crate::{
    EXIT_COULD_NOT_START, EXIT_KILLED, EXIT_STOPPED_FROM_OUTSIDE, KubernetesEngine, KubernetesOptions,
};

type Mock = Handle<Request<Body>, Response<Body>>;

const NAMESPACE: &str = "berth";
const NAME: &str = "berth-t-1";
const TOKEN: &str = "ghs_worker_token_value";
const AGENT_KEY: &str = "sk-agent-key-value";

fn engine() -> (KubernetesEngine, Mock) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NAMESPACE);
    (KubernetesEngine::new(client, NAMESPACE, KubernetesOptions::new("berth-workers")), handle)
}

/// One request as the engine sent it, its query decoded.
#[derive(Debug)]
struct Sent {
    method: Method,
    uri: String,
    content_type: String,
    body: Value,
    raw: String,
}

/// Answers the engine's next request with `status` and `answer`.
async fn answer(handle: &mut Mock, status: u16, answer: Value) -> Sent {
    let (request, send) = handle.next_request().await.expect("the engine sends a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("the request body reads");
    let raw = String::from_utf8(bytes.to_vec()).expect("the body is text");
    let body =
        if raw.is_empty() { Value::Null } else { serde_json::from_str(&raw).expect("the body is json") };
    let bytes = serde_json::to_vec(&answer).expect("json encodes");
    send.send_response(Response::builder().status(status).body(Body::from(bytes)).expect("a response"));
    Sent {
        method: parts.method,
        uri: decode(&parts.uri.to_string()),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body,
        raw,
    }
}

/// Answers with plain text (a pod's log).
async fn answer_text(handle: &mut Mock, text: &str) -> Sent {
    let (request, send) = handle.next_request().await.expect("the engine sends a request");
    send.send_response(Response::new(Body::from(text.as_bytes().to_vec())));
    Sent {
        method: request.method().clone(),
        uri: decode(&request.uri().to_string()),
        content_type: String::new(),
        body: Value::Null,
        raw: String::new(),
    }
}

fn decode(uri: &str) -> String {
    uri.replace("%3D", "=").replace("%2F", "/").replace("%2C", ",")
}

fn failure(code: u16, reason: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{reason} (test)"), "reason": reason, "code": code })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs()
}

fn rfc3339(time: SystemTime) -> String {
    let seconds = time.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs();
    let timestamp = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(seconds).expect("fits"))
        .expect("a valid time");
    timestamp.to_string()
}

fn ago(seconds: u64) -> String {
    rfc3339(SystemTime::now() - Duration::from_secs(seconds))
}

fn task() -> TaskLabels {
    TaskLabels {
        task_id: TaskId::new("t-1").expect("a valid id"),
        kind: TaskKind::Review,
        repo: "octo/hello".to_owned(),
        number: 7,
        head_sha: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned()),
        deadline_unix: unix_now() + 3600,
        check_run: Some(42),
        installation: Some(9),
    }
}

fn spec() -> ContainerSpec {
    let mut labels = task().to_labels();
    labels.insert(label::INSTANCE.to_owned(), "ci".to_owned());
    ContainerSpec {
        name: NAME.to_owned(),
        image: "berth-worker:test".to_owned(),
        labels,
        env: vec![
            format!("GITHUB_TOKEN={TOKEN}"),
            "BERTH_TASK_ID=t-1".to_owned(),
            format!("BERTH_AGENT_TOKEN={AGENT_KEY}"),
        ],
        entrypoint: Some(vec!["/usr/local/bin/berth-worker".to_owned()]),
        cmd: None,
        network: "berth-workers".to_owned(),
        profile: KubernetesEngine::fit_profile(HardenedProfile::strict()),
        mounts: Vec::new(),
    }
}

/// The Job the API server would hold after `spec`'s create, with `status`.
fn job(suspended: bool, status: Value) -> Job {
    let mut labels = spec().labels;
    let kept: BTreeMap<String, String> = labels
        .extract_if(.., |key, _| {
            [label::MANAGED, label::SCHEMA, label::INSTANCE, label::TASK_ID].contains(&key.as_str())
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": NAME,
            "uid": "job-uid-1",
            "creationTimestamp": ago(600),
            "labels": kept,
            "annotations": labels,
        },
        "spec": { "suspend": suspended, "template": { "spec": { "containers": [] } } },
        "status": status,
    }))
    .expect("a job")
}

fn pod(status: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{NAME}-x7k2p"),
            "creationTimestamp": ago(300),
            "labels": { "batch.kubernetes.io/job-name": NAME, "berth.managed": "true" },
        },
        "spec": { "containers": [{ "name": "worker" }] },
        "status": status,
    }))
    .expect("a pod")
}

fn worker_state(phase: &str, state: Value) -> Value {
    json!({
        "phase": phase,
        "startTime": ago(120),
        "containerStatuses": [{
            "name": "worker", "image": "berth-worker:test", "imageID": "", "ready": false,
            "restartCount": 0, "state": state,
        }],
    })
}

fn started() -> Value {
    json!({ "startTime": ago(120), "active": 1 })
}

fn status_of(job: &Job, pods: &[Pod]) -> ContainerStatus {
    container_state(job, pods, SystemTime::now(), Duration::from_secs(60)).status
}

fn exited(status: ContainerStatus) -> ExitInfo {
    match status {
        ContainerStatus::Exited(exit) => exit,
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn create_makes_a_suspended_hardened_job_that_holds_no_secret() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.create(&spec()).await });

    let created = answer(&mut handle, 201, serde_json::to_value(job(true, json!({}))).expect("json")).await;
    assert_eq!(created.method, Method::POST);
    assert!(created.uri.starts_with("/apis/batch/v1/namespaces/berth/jobs?"), "{}", created.uri);
    let job = &created.body;
    assert!(
        !created.raw.contains(TOKEN) && !created.raw.contains(AGENT_KEY),
        "a secret in the job: {}",
        created.raw
    );

    assert_eq!(job["metadata"]["name"], NAME);
    assert_eq!(
        job["metadata"]["labels"],
        json!({ "berth.managed": "true", "berth.schema": "1", "berth.instance": "ci", "berth.task-id": "t-1" })
    );
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["berth.repo"], "octo/hello");
    assert_eq!(annotations["berth.check-run"], "42");
    assert!(annotations.get("berth.managed").is_none(), "labels are not repeated as annotations");

    let job_spec = &job["spec"];
    assert_eq!(job_spec["suspend"], true);
    assert_eq!(job_spec["backoffLimit"], 0);
    assert_eq!(job_spec["ttlSecondsAfterFinished"], 3600);
    assert_eq!(
        job_spec["podFailurePolicy"],
        json!({ "rules": [{ "action": "FailJob", "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }] }] })
    );
    let deadline = job_spec["activeDeadlineSeconds"].as_i64().expect("a deadline backstop");
    assert!((3600 + 300 - 5..=3600 + 300).contains(&deadline), "{deadline}");

    let template = &job_spec["template"];
    assert_eq!(template["metadata"]["labels"]["berth.managed"], "true");
    assert_eq!(template["metadata"]["labels"]["berth.network"], "berth-workers");
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["terminationGracePeriodSeconds"], 10);
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": { "type": "RuntimeDefault" },
        })
    );
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "worker");
    assert_eq!(container["image"], "berth-worker:test");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["command"], json!(["/usr/local/bin/berth-worker"]));
    assert!(container.get("args").is_none());
    // The task's environment is only in the secret; the Job says only that
    // the pod's log is one stream (no secret in it).
    assert_eq!(container["env"], json!([{ "name": "BERTH_ONE_STREAM", "value": "1" }]));
    assert_eq!(container["envFrom"], json!([{ "secretRef": { "name": NAME, "optional": false } }]));
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"], json!({ "drop": ["ALL"] }));
    assert_eq!(security["seccompProfile"], json!({ "type": "RuntimeDefault" }));
    let limits = json!({ "memory": "2147483648", "cpu": "2000m" });
    assert_eq!(container["resources"], json!({ "limits": limits, "requests": limits }));
    assert_eq!(container["volumeMounts"], json!([{ "name": "tmp", "mountPath": "/tmp" }]));
    assert_eq!(
        pod["volumes"],
        json!([{ "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "1073741824" } }])
    );
    answer(&mut handle, 201, json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": NAME } }))
        .await;
    call.await.expect("no panic").expect("created");
}

#[tokio::test]
async fn the_environment_goes_into_a_secret_owned_by_the_job() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.create(&spec()).await });

    let created = answer(&mut handle, 201, serde_json::to_value(job(true, json!({}))).expect("json")).await;
    assert_eq!(created.method, Method::POST);
    let secret = answer(
        &mut handle,
        201,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": NAME } }),
    )
    .await;
    assert_eq!(secret.method, Method::POST);
    assert!(secret.uri.starts_with("/api/v1/namespaces/berth/secrets?"), "{}", secret.uri);
    let body = &secret.body;
    assert_eq!(body["metadata"]["name"], NAME);
    assert_eq!(
        body["metadata"]["ownerReferences"],
        json!([{ "apiVersion": "batch/v1", "kind": "Job", "name": NAME, "uid": "job-uid-1", "controller": true }])
    );
    assert_eq!(body["metadata"]["labels"]["berth.managed"], "true");
    assert_eq!(body["immutable"], true);
    assert_eq!(body["type"], "Opaque");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret.body).expect("a secret");
    let data: BTreeMap<String, String> = secret
        .data
        .expect("data")
        .into_iter()
        .map(|(key, value)| (key, String::from_utf8(value.0).expect("text")))
        .collect();
    assert_eq!(
        data,
        BTreeMap::from([
            ("BERTH_AGENT_TOKEN".to_owned(), AGENT_KEY.to_owned()),
            ("BERTH_TASK_ID".to_owned(), "t-1".to_owned()),
            ("GITHUB_TOKEN".to_owned(), TOKEN.to_owned()),
        ])
    );
    assert_eq!(
        call.await.expect("no panic").expect("created"),
        Some(ContainerId::from_engine(NAME.to_owned()))
    );
}

#[tokio::test]
async fn a_name_in_use_is_none_like_docker() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.create(&spec()).await });
    answer(&mut handle, 409, failure(409, "AlreadyExists")).await;
    // Looked at, in case it is this task's Job left without its Secret.
    let look = answer(&mut handle, 404, failure(404, "NotFound")).await;
    assert_eq!(look.method, Method::GET);
    assert!(look.uri.starts_with(&format!("/apis/batch/v1/namespaces/berth/jobs/{NAME}")), "{}", look.uri);
    assert_eq!(call.await.expect("no panic").expect("a conflict is no error"), None);
}

#[tokio::test]
async fn a_created_job_of_this_task_left_without_its_secret_gets_one_on_a_name_conflict() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.create(&spec()).await });
    answer(&mut handle, 409, failure(409, "AlreadyExists")).await;
    answer(&mut handle, 200, serde_json::to_value(job(true, json!({}))).expect("json")).await;
    let look = answer(&mut handle, 404, failure(404, "NotFound")).await;
    assert!(look.uri.starts_with(&format!("/api/v1/namespaces/berth/secrets/{NAME}")), "{}", look.uri);
    let made = answer(&mut handle, 201, json!({})).await;
    assert_eq!(made.method, Method::POST);
    assert_eq!(made.body["metadata"]["ownerReferences"][0]["uid"], "job-uid-1");
    assert!(made.body["data"]["GITHUB_TOKEN"].is_string(), "{}", made.raw);
    assert_eq!(call.await.expect("no panic").expect("a conflict is no error"), None);
}

#[tokio::test]
async fn a_started_job_or_another_tasks_gets_no_secret_on_a_name_conflict() {
    for found in [job(false, json!({})), {
        let mut other = job(true, json!({}));
        other.metadata.labels.as_mut().expect("labels").insert(label::TASK_ID.to_owned(), "t-2".to_owned());
        other
    }] {
        let (engine, mut handle) = engine();
        let call = tokio::spawn(async move { engine.create(&spec()).await });
        answer(&mut handle, 409, failure(409, "AlreadyExists")).await;
        answer(&mut handle, 200, serde_json::to_value(found).expect("json")).await;
        assert_eq!(call.await.expect("no panic").expect("a conflict is no error"), None);
    }
}

#[tokio::test]
async fn a_job_whose_secret_fails_is_taken_back() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.create(&spec()).await });
    answer(&mut handle, 201, serde_json::to_value(job(true, json!({}))).expect("json")).await;
    answer(&mut handle, 403, failure(403, "Forbidden")).await;
    let cleanup = answer(&mut handle, 200, json!({})).await;
    assert_eq!(cleanup.method, Method::DELETE);
    assert!(
        cleanup.uri.starts_with(&format!("/apis/batch/v1/namespaces/berth/jobs/{NAME}")),
        "{}",
        cleanup.uri
    );
    assert_eq!(cleanup.body["propagationPolicy"], "Background");
    let err = call.await.expect("no panic").expect_err("the create fails");
    assert!(!err.is_transient(), "a refusal is not transient: {err:#}");
}

#[tokio::test]
async fn there_are_no_volumes_so_no_clone_cache_and_a_mounting_spec_is_refused_before_any_call() {
    let (engine, _handle) = engine();
    assert!(!engine.capabilities().named_volumes, "the daemon turns the clone cache off on this engine");
    let mut spec = spec();
    spec.mounts = vec![dispatcher::VolumeMount {
        volume: "berth-cache-default-1".to_owned(),
        target: "/srv/clone-cache".to_owned(),
        read_only: true,
    }];
    let err = engine.create(&spec).await.expect_err("refused");
    assert!(matches!(err, dispatcher::DispatchError::VolumesUnsupported { .. }), "{err:#}");
    assert!(engine.list_volumes("berth.kind", "cache").await.expect("none, not an error").is_empty());
}

#[tokio::test]
async fn a_spec_on_another_network_is_refused_before_any_call() {
    let (engine, _handle) = engine();
    let mut spec = spec();
    spec.network = "none".to_owned();
    let err = engine.create(&spec).await.expect_err("refused");
    let chain = format!("{err}: {}", std::error::Error::source(&err).expect("a source"));
    assert!(chain.contains("network \"none\" is not available"), "{chain}");
}

#[tokio::test]
async fn start_unsuspends_with_the_deadline_counted_from_now() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.start(&ContainerId::from_engine(NAME.to_owned())).await });
    let get = answer(&mut handle, 200, serde_json::to_value(job(true, json!({}))).expect("json")).await;
    assert_eq!(
        (get.method, get.uri.as_str()),
        (Method::GET, "/apis/batch/v1/namespaces/berth/jobs/berth-t-1")
    );
    let patch = answer(&mut handle, 200, serde_json::to_value(job(false, started())).expect("json")).await;
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.body["spec"]["suspend"], false);
    let deadline = patch.body["spec"]["activeDeadlineSeconds"].as_i64().expect("a deadline");
    assert!((3600 + 300 - 5..=3600 + 300).contains(&deadline), "{deadline}");
    call.await.expect("no panic").expect("started");
}

#[tokio::test]
async fn starting_a_started_job_changes_nothing() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.start(&ContainerId::from_engine(NAME.to_owned())).await });
    answer(&mut handle, 200, serde_json::to_value(job(false, started())).expect("json")).await;
    call.await.expect("no panic").expect("started");
}

#[tokio::test]
async fn starting_a_missing_job_is_not_found() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.start(&ContainerId::from_engine(NAME.to_owned())).await });
    answer(&mut handle, 404, failure(404, "NotFound")).await;
    let err = call.await.expect("no panic").expect_err("missing");
    assert!(matches!(err, DispatchError::ContainerNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn remove_deletes_the_job_in_the_background_and_its_secret() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.remove(&ContainerId::from_engine(NAME.to_owned())).await });
    let delete = answer(&mut handle, 200, failure(200, "")).await;
    assert_eq!(delete.method, Method::DELETE);
    assert!(delete.uri.starts_with("/apis/batch/v1/namespaces/berth/jobs/berth-t-1"), "{}", delete.uri);
    assert_eq!(delete.body["propagationPolicy"], "Background");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": NAME, "uid": "secret-uid-1", "labels": { "berth.managed": "true" } },
    });
    let get = answer(&mut handle, 200, secret.clone()).await;
    assert_eq!((get.method, get.uri.as_str()), (Method::GET, "/api/v1/namespaces/berth/secrets/berth-t-1"));
    let delete = answer(&mut handle, 200, secret).await;
    assert_eq!(delete.method, Method::DELETE);
    assert_eq!(delete.body["preconditions"]["uid"], "secret-uid-1");
    call.await.expect("no panic").expect("removed");
}

#[tokio::test]
async fn removing_twice_is_fine() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.remove(&ContainerId::from_engine(NAME.to_owned())).await });
    answer(&mut handle, 404, failure(404, "NotFound")).await;
    answer(&mut handle, 404, failure(404, "NotFound")).await;
    call.await.expect("no panic").expect("a missing job is removed already");
}

#[tokio::test]
async fn inspect_reads_the_job_and_its_pods_and_merges_labels_back() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.inspect(NAME).await });
    answer(&mut handle, 200, serde_json::to_value(job(false, started())).expect("json")).await;
    let running = pod(worker_state("Running", json!({ "running": { "startedAt": ago(100) } })));
    let list = json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [running] });
    let pods = answer(&mut handle, 200, list).await;
    assert_eq!(
        pods.uri,
        "/api/v1/namespaces/berth/pods?&labelSelector=batch.kubernetes.io/job-name=berth-t-1"
    );
    let state = call.await.expect("no panic").expect("inspected").expect("found");
    assert_eq!(state.id.as_str(), NAME);
    assert!(matches!(state.status, ContainerStatus::Running { started_at: Some(_) }), "{:?}", state.status);
    let mut expected = task().to_labels();
    expected.insert(label::INSTANCE.to_owned(), "ci".to_owned());
    assert_eq!(state.labels, expected);
    assert_eq!(TaskLabels::from_btree(&state.labels).expect("labels read"), task());
}

#[tokio::test]
async fn inspect_of_a_missing_job_is_none() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.inspect(NAME).await });
    answer(&mut handle, 404, failure(404, "NotFound")).await;
    assert_eq!(call.await.expect("no panic").expect("no error"), None);
    // A name no Job can have is not asked for at all.
    let (other, _handle) = crate::tests::engine();
    assert_eq!(other.inspect(&format!("berth-{}", "a".repeat(63))).await.expect("no error"), None);
}

#[test]
fn a_suspended_job_is_created() {
    assert_eq!(status_of(&job(true, json!({})), &[]), ContainerStatus::Created);
}

#[test]
fn a_started_job_without_a_pod_yet_is_running() {
    let just_started = job(false, json!({ "startTime": ago(5), "active": 1 }));
    assert_eq!(status_of(&just_started, &[]), ContainerStatus::Running { started_at: None });
}

#[test]
fn a_terminated_worker_exits_with_its_code_and_times() {
    let state = json!({ "terminated": { "exitCode": 0, "reason": "Completed", "startedAt": ago(100), "finishedAt": ago(10) } });
    let exit = exited(status_of(&job(false, started()), &[pod(worker_state("Succeeded", state))]));
    assert_eq!((exit.code, exit.oom_killed), (0, false));
    let (started_at, finished_at) = (exit.started_at.expect("started"), exit.finished_at.expect("finished"));
    assert_eq!(finished_at.duration_since(started_at).expect("in order"), Duration::from_secs(90));
}

#[test]
fn an_oom_killed_worker_is_flagged() {
    let state = json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled" } });
    let exit = exited(status_of(&job(false, started()), &[pod(worker_state("Failed", state))]));
    assert_eq!((exit.code, exit.oom_killed), (137, true));
}

#[test]
fn a_pod_pending_on_its_image_runs_until_the_start_timeout_then_could_not_start() {
    let waiting = worker_state("Pending", json!({ "waiting": { "reason": "ImagePullBackOff" } }));
    let recent = job(false, json!({ "startTime": ago(30), "active": 1 }));
    assert_eq!(status_of(&recent, &[pod(waiting.clone())]), ContainerStatus::Running { started_at: None });
    let long_ago = job(false, json!({ "startTime": ago(90), "active": 1 }));
    assert_eq!(exited(status_of(&long_ago, &[pod(waiting)])).code, EXIT_COULD_NOT_START);
}

#[test]
fn an_unschedulable_pod_past_the_timeout_could_not_start() {
    let unschedulable = json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable" }],
    });
    let long_ago = job(false, json!({ "startTime": ago(90), "active": 1 }));
    assert_eq!(exited(status_of(&long_ago, &[pod(unschedulable)])).code, EXIT_COULD_NOT_START);
    // And a Job whose pod was never made (a quota refused it).
    assert_eq!(exited(status_of(&long_ago, &[])).code, EXIT_COULD_NOT_START);
}

#[test]
fn an_image_missing_under_pull_never_could_not_start_at_once() {
    let waiting = worker_state("Pending", json!({ "waiting": { "reason": "ErrImageNeverPull" } }));
    let recent = job(false, json!({ "startTime": ago(5), "active": 1 }));
    assert_eq!(exited(status_of(&recent, &[pod(waiting)])).code, EXIT_COULD_NOT_START);
}

#[test]
fn an_evicted_pod_without_an_exit_was_stopped_from_outside() {
    let evicted = json!({
        "phase": "Failed",
        "reason": "Evicted",
        "conditions": [{ "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet" }],
    });
    let exit = exited(status_of(&job(false, started()), &[pod(evicted)]));
    assert_eq!((exit.code, exit.oom_killed), (EXIT_STOPPED_FROM_OUTSIDE, false));
}

#[test]
fn a_failed_job_whose_pod_is_gone_reads_its_reason() {
    let failed = |reason: &str| {
        job(
            false,
            json!({ "startTime": ago(120), "failed": 1, "conditions": [{ "type": "Failed", "status": "True", "reason": reason }] }),
        )
    };
    assert_eq!(exited(status_of(&failed("PodFailurePolicy"), &[])).code, EXIT_STOPPED_FROM_OUTSIDE);
    assert_eq!(exited(status_of(&failed("DeadlineExceeded"), &[])).code, EXIT_KILLED);
    assert_eq!(exited(status_of(&failed("BackoffLimitExceeded"), &[])).code, EXIT_KILLED);
}

#[test]
fn a_job_being_deleted_is_removing() {
    let mut job = job(false, started());
    job.metadata.deletion_timestamp = job.metadata.creation_timestamp.clone();
    assert_eq!(status_of(&job, &[]), ContainerStatus::Removing);
}

#[test]
fn watch_events_read_as_changes_of_the_job() {
    let id = ContainerId::from_engine(NAME.to_owned());
    let running = pod(worker_state("Running", json!({ "running": {} })));
    let ended = pod(worker_state("Failed", json!({ "terminated": { "exitCode": 1 } })));
    let change = |event: &Event<Pod>| status::pod_change(event).map(|change| (change.id, change.kind));
    assert_eq!(change(&Event::Apply(running.clone())), Some((id.clone(), ChangeKind::Started)));
    assert_eq!(change(&Event::Apply(ended.clone())), Some((id.clone(), ChangeKind::Died)));
    assert_eq!(change(&Event::Delete(running.clone())), Some((id.clone(), ChangeKind::Died)));
    assert_eq!(change(&Event::InitApply(ended)), None, "a listing is state, not a change");
    let pending = pod(worker_state("Pending", json!({ "waiting": { "reason": "ContainerCreating" } })));
    assert_eq!(change(&Event::Apply(pending)), None);

    let complete = job(false, json!({ "conditions": [{ "type": "Complete", "status": "True" }] }));
    let job_change = |event: &Event<Job>| status::job_change(event).map(|change| (change.id, change.kind));
    assert_eq!(job_change(&Event::Apply(complete.clone())), Some((id.clone(), ChangeKind::Died)));
    assert_eq!(job_change(&Event::Apply(job(false, started()))), None);
    assert_eq!(job_change(&Event::Delete(complete)), Some((id, ChangeKind::Removed)));
}

#[tokio::test]
async fn listing_selects_managed_jobs_and_their_pods_by_label() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.list_by_label(label::MANAGED, "true").await });
    let jobs = json!({ "apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [job(true, json!({}))] });
    let listed = answer(&mut handle, 200, jobs).await;
    assert_eq!(listed.uri, "/apis/batch/v1/namespaces/berth/jobs?&labelSelector=berth.managed=true");
    let pods = answer(
        &mut handle,
        200,
        json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [] }),
    )
    .await;
    assert_eq!(pods.uri, "/api/v1/namespaces/berth/pods?&labelSelector=berth.managed=true");
    let states = call.await.expect("no panic").expect("listed");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].status, ContainerStatus::Created);
}

#[tokio::test]
async fn listing_by_an_annotation_lists_managed_jobs_and_filters() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.list_by_label(label::REPO, "octo/other").await });
    let jobs = json!({ "apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [job(true, json!({}))] });
    let listed = answer(&mut handle, 200, jobs).await;
    assert_eq!(listed.uri, "/apis/batch/v1/namespaces/berth/jobs?&labelSelector=berth.managed=true");
    answer(&mut handle, 200, json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [] }))
        .await;
    assert_eq!(call.await.expect("no panic").expect("listed"), Vec::new());
}

#[tokio::test]
async fn changes_watch_jobs_and_pods_of_this_instance() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut options = KubernetesOptions::new("berth-workers");
    options.watch_instance = Some("ci".to_owned());
    let engine = KubernetesEngine::new(Client::new(service, NAMESPACE), NAMESPACE, options);
    let mut changes = engine.changes(label::MANAGED, "true");
    let poll =
        tokio::spawn(async move { changes.next().await.map(|change| change.map(|change| change.kind)) });
    let mut uris = Vec::new();
    for _ in 0..2 {
        let list = json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": [] });
        uris.push(answer(&mut handle, 200, list).await.uri);
    }
    uris.sort();
    assert_eq!(uris.len(), 2);
    assert!(uris[0].starts_with("/api/v1/namespaces/berth/pods?"), "{uris:?}");
    assert!(uris[1].starts_with("/apis/batch/v1/namespaces/berth/jobs?"), "{uris:?}");
    for uri in &uris {
        assert!(uri.contains("labelSelector=berth.managed=true,berth.instance=ci"), "{uri}");
    }
    poll.abort();
}

#[tokio::test]
async fn stop_sets_the_pods_deadline_so_its_exit_and_logs_stay() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move {
        engine.stop(&ContainerId::from_engine(NAME.to_owned()), Duration::from_secs(10)).await
    });
    let running = pod(worker_state("Running", json!({ "running": { "startedAt": ago(110) } })));
    let list = json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [running] });
    answer(&mut handle, 200, list).await;
    let patch = answer(&mut handle, 200, serde_json::to_value(pod(json!({}))).expect("json")).await;
    assert_eq!(patch.method, Method::PATCH);
    assert!(patch.uri.starts_with("/api/v1/namespaces/berth/pods/berth-t-1-x7k2p"), "{}", patch.uri);
    let deadline = patch.body["spec"]["activeDeadlineSeconds"].as_i64().expect("a deadline");
    assert!((120..=125).contains(&deadline), "the pod started 120 s ago: {deadline}");
    call.await.expect("no panic").expect("stopped");
}

#[tokio::test]
async fn kill_deletes_the_pod_without_grace() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.kill(&ContainerId::from_engine(NAME.to_owned())).await });
    let running = pod(worker_state("Running", json!({ "running": {} })));
    answer(
        &mut handle,
        200,
        json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [running] }),
    )
    .await;
    let delete = answer(&mut handle, 200, serde_json::to_value(pod(json!({}))).expect("json")).await;
    assert_eq!(delete.method, Method::DELETE);
    assert!(delete.uri.starts_with("/api/v1/namespaces/berth/pods/berth-t-1-x7k2p"), "{}", delete.uri);
    assert_eq!(delete.body["gracePeriodSeconds"], 0);
    call.await.expect("no panic").expect("killed");
}

#[tokio::test]
async fn logs_read_the_pods_log_as_stdout() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move {
        let mut logs = engine.logs(&ContainerId::from_engine(NAME.to_owned()), false, Some(256));
        let mut text = Vec::new();
        while let Some(chunk) = logs.next().await {
            match chunk.expect("a chunk") {
                LogChunk::Stdout(bytes) => text.extend_from_slice(&bytes),
                LogChunk::Stderr(_) => panic!("kubernetes has one stream"),
            }
        }
        String::from_utf8(text).expect("text")
    });
    let running = pod(worker_state("Running", json!({ "running": {} })));
    answer(
        &mut handle,
        200,
        json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [running] }),
    )
    .await;
    let log = answer_text(&mut handle, "working\n{\"berth\":\"result\"}\n").await;
    assert_eq!(log.method, Method::GET);
    assert_eq!(log.uri, "/api/v1/namespaces/berth/pods/berth-t-1-x7k2p/log?&container=worker&tailLines=256");
    assert_eq!(call.await.expect("no panic"), "working\n{\"berth\":\"result\"}\n");
}

#[tokio::test]
async fn describe_names_kubernetes_its_version_and_namespace() {
    let (engine, mut handle) = engine();
    let call = tokio::spawn(async move { engine.describe().await });
    let version = json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "", "gitTreeState": "",
        "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64",
    });
    let sent = answer(&mut handle, 200, version).await;
    assert_eq!(sent.uri, "/version");
    let info = call.await.expect("no panic").expect("described");
    assert_eq!((info.kind.as_str(), info.version.as_str()), ("kubernetes", "v1.33.1"));
    assert_eq!(info.endpoint, "namespace berth");
}

#[tokio::test]
async fn the_strict_profile_is_refused_until_fitted_to_what_a_pod_can_have() {
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let engine =
        KubernetesEngine::new(Client::new(service, NAMESPACE), NAMESPACE, KubernetesOptions::new("n"));
    let config = |profile| DispatcherConfig {
        image: "berth-worker:test".to_owned(),
        network: "n".to_owned(),
        profile,
        entrypoint: None,
        instance: "ci".to_owned(),
    };
    let refused =
        Dispatcher::checked(engine.clone(), config(HardenedProfile::strict())).expect_err("refused");
    let DispatchError::ProfileUnsupported { missing, .. } = refused else { panic!("{refused:?}") };
    assert_eq!(missing, vec![Protection::PidsLimit, Protection::Init, Protection::LogLimits]);
    let fitted = KubernetesEngine::fit_profile(HardenedProfile::strict());
    Dispatcher::checked(engine, config(fitted)).expect("a fitted profile runs");
}

#[tokio::test]
async fn doctor_asks_one_access_review_per_needed_verb_and_names_what_is_denied() {
    let (engine, mut handle) = engine();
    let asking = tokio::spawn(async move { engine.missing_permissions().await });
    let mut asked = Vec::new();
    for _ in crate::NEEDED {
        let (request, send) = handle.next_request().await.expect("a review");
        let (parts, body) = request.into_parts();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri.path(), "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
        let review: Value =
            serde_json::from_slice(&body.collect_bytes().await.expect("a body")).expect("json");
        let attributes = &review["spec"]["resourceAttributes"];
        assert_eq!(attributes["namespace"], NAMESPACE);
        let verb = attributes["verb"].as_str().expect("a verb").to_owned();
        let resource = attributes["resource"].as_str().expect("a resource").to_owned();
        // The account may do everything but delete secrets.
        let allowed = !(resource == "secrets" && verb == "delete");
        let mut answer = review.clone();
        answer["status"] = json!({ "allowed": allowed });
        send.send_response(Response::new(Body::from(serde_json::to_vec(&answer).expect("json"))));
        asked.push((
            attributes["group"].as_str().unwrap_or_default().to_owned(),
            resource,
            verb,
            attributes["subresource"].clone(),
        ));
    }
    let missing = asking.await.expect("the task ends").expect("the reviews are answered");
    assert_eq!(missing, ["delete core/secrets"]);
    assert!(asked.contains(&("".to_owned(), "pods".to_owned(), "get".to_owned(), json!("log"))), "{asked:?}");
    assert!(
        asked
            .iter()
            .any(|(group, resource, verb, _)| group == "batch" && resource == "jobs" && verb == "create")
    );
}

#[tokio::test]
async fn doctor_reads_the_namespaces_pod_security_level() {
    let (engine, mut handle) = engine();
    let reading = tokio::spawn(async move { engine.pod_security_level().await });
    let sent = answer(
        &mut handle,
        200,
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": NAMESPACE, "labels": { "pod-security.kubernetes.io/enforce": "restricted" } }
        }),
    )
    .await;
    assert_eq!((sent.method, sent.uri.as_str()), (Method::GET, "/api/v1/namespaces/berth"));
    assert_eq!(reading.await.expect("the task ends").expect("read"), Some("restricted".to_owned()));
}
