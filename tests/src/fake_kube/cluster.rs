//! The fake's cluster side: a Job controller (one Pod at a time, back-off
//! limit, active deadline, suspend, TTL after finished, the
//! `SuccessCriteriaMet`/`FailureTarget` then `Complete`/`Failed` conditions of
//! Kubernetes 1.31+), a garbage collector for owner references, and a
//! kubelet that runs each Pod's first container as a real Docker container.
//!
//! The kubelet never pulls: an image that is not on the engine leaves the Pod
//! Pending with `ImagePullBackOff` (`ErrImageNeverPull` under
//! `imagePullPolicy: Never`). A running Pod whose `activeDeadlineSeconds`
//! passes is stopped and ends Failed with reason `DeadlineExceeded`. It maps the Pod spec to Docker as a
//! container runtime would: `securityContext` (user, group, read-only root,
//! capabilities, `allowPrivilegeEscalation: false` as `no-new-privileges`,
//! seccomp `RuntimeDefault` as Docker's default profile and no profile as
//! `Unconfined`, the kubelet's default), `resources.limits` (memory with swap
//! off, cpu), `emptyDir` volumes as tmpfs mounts, `env` and `envFrom`
//! Secrets, `command`/`args`, `hostAliases`, and `shareProcessNamespace` as
//! Docker's init (so the program is not PID 1, as behind a pause container).
//! Containers join Docker's default bridge and never get published ports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff;
use serde_json::{Value, json};

use super::{Kind, KubeError, POD_LABEL, SERVER_LABEL, Shared, Store, now, random_suffix};

/// How often the controller looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_millis(200);

/// What happens to an object's dependents when it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Dependents stay, without the owner reference.
    Orphan,
    /// The owner goes at once; the garbage collector deletes the dependents.
    Background,
    /// The owner stays (with `deletionTimestamp`) until its dependents are gone.
    Foreground,
}

impl Propagation {
    /// The API server's default: `batch/v1` Jobs orphan their Pods unless
    /// told otherwise (kubectl asks for `Background`).
    pub(crate) fn default_for(kind: Kind) -> Propagation {
        match kind {
            Kind::Job => Propagation::Orphan,
            Kind::Pod | Kind::Secret => Propagation::Background,
        }
    }
}

/// A container to stop with a grace period, decided under the store lock and
/// done after it.
struct Stop {
    container: String,
    grace: i64,
}

/// Runs the controller and garbage collector until the server stops.
pub(crate) async fn control(shared: Arc<Shared>) {
    loop {
        let notified = shared.changed.notified();
        reconcile(&shared);
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn reconcile(shared: &Arc<Shared>) {
    let mut stops = Vec::new();
    let mut new_pods = Vec::new();
    let changed = {
        let mut store = shared.store();
        let before = store.resource_version;
        collect_garbage(&mut store, &mut stops);
        for job in store.all::<Job>(Kind::Job) {
            sync_job(&mut store, &job, &mut stops, &mut new_pods);
        }
        store.resource_version != before
    };
    for pod in new_pods {
        shared.spawn(kubelet(shared.clone(), pod));
    }
    for stop in stops {
        shared.spawn(stop_container(shared.clone(), stop));
    }
    // Only a real change wakes anyone: waking on every pass would spin.
    if changed {
        shared.changed.notify_waiters();
    }
}

async fn stop_container(shared: Arc<Shared>, stop: Stop) {
    let grace = i32::try_from(stop.grace).unwrap_or(i32::MAX);
    let options = bollard::query_parameters::StopContainerOptionsBuilder::new().t(grace).build();
    let _ = shared.docker.stop_container(&stop.container, Some(options)).await;
}

fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|owners| owners.iter().filter_map(|owner| owner["uid"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn is_foreground_deleting(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
        && object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|finalizers| finalizers.iter().any(|f| f == "foregroundDeletion"))
}

/// Deletes dependents whose owners are all gone or being deleted in the
/// foreground, and finishes foreground deletions with no dependents left.
fn collect_garbage(store: &mut Store, stops: &mut Vec<Stop>) {
    let foreground: Vec<String> = store
        .objects
        .values()
        .filter(|object| is_foreground_deleting(object))
        .filter_map(|object| object["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    let doomed: Vec<(Kind, String)> = store
        .objects
        .iter()
        .filter(|(_, object)| object["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|((kind, name), object)| {
            let owners = owner_uids(object);
            let orphaned = !owners.is_empty()
                && owners.iter().all(|uid| !store.uid_exists(uid) || foreground.contains(uid));
            orphaned.then(|| (*kind, name.clone()))
        })
        .collect();
    for (kind, name) in doomed {
        match kind {
            Kind::Pod => {
                if let Some((_, Some(stop))) = mark_pod_deleted(store, &name, None) {
                    stops.push(stop);
                }
            }
            Kind::Secret | Kind::Job => {
                store.remove(kind, &name);
            }
        }
    }
    for uid in foreground {
        let has_dependents = store.objects.values().any(|object| owner_uids(object).contains(&uid));
        if !has_dependents {
            let owner = store
                .objects
                .iter()
                .find(|(_, object)| object["metadata"]["uid"] == uid.as_str())
                .map(|((kind, name), _)| (*kind, name.clone()));
            if let Some((kind, name)) = owner {
                store.remove(kind, &name);
            }
        }
    }
}

/// Marks a Pod for deletion with a grace period (its own by default); the
/// Pod and the container to stop, if one runs.
fn mark_pod_deleted(store: &mut Store, name: &str, grace: Option<i64>) -> Option<(Value, Option<Stop>)> {
    let pod: Pod = store.get(Kind::Pod, name)?;
    let grace = grace
        .or_else(|| pod.spec.as_ref().and_then(|spec| spec.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0);
    if let Some(previous) = pod.metadata.deletion_grace_period_seconds
        && previous <= grace
    {
        return Some((store.raw(Kind::Pod, name).cloned()?, None));
    }
    let updated = store.update::<Pod>(Kind::Pod, name, |pod| {
        let deadline = now().0 + jiff::SignedDuration::from_secs(grace);
        pod.metadata.deletion_timestamp = Some(Time(deadline));
        pod.metadata.deletion_grace_period_seconds = Some(grace);
    })?;
    let terminal = is_terminal(&updated);
    let stop = store
        .containers
        .get(name)
        .filter(|_| !terminal)
        .map(|container| Stop { container: container.clone(), grace });
    Some((store.raw(Kind::Pod, name).cloned()?, stop))
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|status| status.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

fn has_condition(conditions: &[JobCondition], type_: &str) -> bool {
    conditions.iter().any(|condition| condition.type_ == type_ && condition.status == "True")
}

fn sync_job(store: &mut Store, job: &Job, stops: &mut Vec<Stop>, new_pods: &mut Vec<String>) {
    if job.metadata.deletion_timestamp.is_some() {
        return;
    }
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = job.spec.clone() else { return };
    let mut status = job.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    let finished = has_condition(&conditions, "Complete") || has_condition(&conditions, "Failed");
    if finished {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let finished_at = status
                .completion_time
                .clone()
                .or_else(|| {
                    conditions
                        .iter()
                        .find(|c| c.type_ == "Failed")
                        .and_then(|c| c.last_transition_time.clone())
                })
                .map(|time| time.0);
            if let Some(finished_at) = finished_at
                && now().0 >= finished_at + jiff::SignedDuration::from_secs(i64::from(ttl))
            {
                // The TTL controller deletes in the background.
                store.remove(Kind::Job, &name);
            }
        }
        return;
    }
    let pods: Vec<Pod> = store
        .all::<Pod>(Kind::Pod)
        .into_iter()
        .filter(|pod| {
            pod.metadata.owner_references.as_ref().is_some_and(|owners| {
                owners.iter().any(|owner| owner.uid == uid && owner.controller == Some(true))
            })
        })
        .collect();
    let mut succeeded = status.succeeded.unwrap_or(0);
    let mut failed = status.failed.unwrap_or(0);
    for pod in pods.iter().filter(|pod| is_terminal(pod)) {
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        if store.counted.insert(pod_uid) {
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
                succeeded += 1;
            } else {
                failed += 1;
            }
        }
    }
    let active: Vec<&Pod> =
        pods.iter().filter(|pod| !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none()).collect();
    let terminating =
        pods.iter().filter(|pod| !is_terminal(pod) && pod.metadata.deletion_timestamp.is_some()).count();
    let ready = active
        .iter()
        .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    let delete_active = |store: &mut Store, stops: &mut Vec<Stop>| {
        for pod in &active {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            if let Some((_, Some(stop))) = mark_pod_deleted(store, &pod_name, None) {
                stops.push(stop);
            }
        }
    };
    let mut active_count = active.len();
    if spec.suspend == Some(true) {
        delete_active(store, stops);
        active_count = 0;
        if !has_condition(&conditions, "Suspended") {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(condition("Suspended", "JobSuspended", "Job suspended"));
        }
        status.start_time = None;
    } else {
        if has_condition(&conditions, "Suspended") {
            for c in conditions.iter_mut().filter(|c| c.type_ == "Suspended") {
                *c = JobCondition {
                    status: "False".to_owned(),
                    ..condition("Suspended", "JobResumed", "Job resumed")
                };
            }
        }
        let start = status.start_time.get_or_insert_with(now).0;
        if !has_condition(&conditions, "SuccessCriteriaMet") && !has_condition(&conditions, "FailureTarget") {
            let deadline_passed = spec
                .active_deadline_seconds
                .is_some_and(|seconds| now().0 >= start + jiff::SignedDuration::from_secs(seconds));
            if succeeded >= spec.completions.unwrap_or(1) {
                conditions.push(condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
            } else if deadline_passed {
                conditions.push(condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
            } else if failed > spec.backoff_limit.unwrap_or(6) {
                conditions.push(condition(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ));
            }
        }
        let target = conditions
            .iter()
            .find(|c| (c.type_ == "SuccessCriteriaMet" || c.type_ == "FailureTarget") && c.status == "True")
            .cloned();
        if let Some(target) = target {
            delete_active(store, stops);
            active_count = 0;
            if active.is_empty() && terminating == 0 {
                let complete = target.type_ == "SuccessCriteriaMet";
                let final_type = if complete { "Complete" } else { "Failed" };
                conditions.push(JobCondition { type_: final_type.to_owned(), ..target });
                if complete {
                    status.completion_time = Some(now());
                }
            }
        } else if active.is_empty() {
            let pod = new_pod(store, job);
            active_count = 1;
            new_pods.push(pod);
        }
    }
    status.active = (active_count > 0).then(|| i32::try_from(active_count).unwrap_or(i32::MAX));
    status.succeeded = (succeeded > 0).then_some(succeeded);
    status.failed = (failed > 0).then_some(failed);
    status.ready = Some(i32::try_from(ready.min(active_count)).unwrap_or(0));
    status.terminating = Some(i32::try_from(terminating).unwrap_or(0));
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    let status = JobStatus { ..status };
    store.update::<Job>(Kind::Job, &name, |job| job.status = Some(status));
}

/// Creates the Pod of `job` (Pending) and returns its name.
fn new_pod(store: &mut Store, job: &Job) -> String {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let template = job.spec.as_ref().map(|spec| spec.template.clone()).unwrap_or_default();
    let mut name = format!("{job_name}-{}", random_suffix());
    while store.raw(Kind::Pod, &name).is_some() {
        name = format!("{job_name}-{}", random_suffix());
    }
    let template_metadata = template.metadata.unwrap_or_default();
    let uid = store.uid();
    let owner = OwnerReference {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        name: job_name.clone(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let pod = json!({
        "metadata": {
            "name": name,
            "generateName": format!("{job_name}-"),
            "uid": uid,
            "creationTimestamp": now(),
            "labels": template_metadata.labels.unwrap_or_default(),
            "annotations": template_metadata.annotations.unwrap_or_default(),
            "ownerReferences": [owner],
        },
        "spec": template.spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    store.insert(Kind::Pod, pod);
    name
}

/// Waits for a change or the resync period.
async fn settle(shared: &Shared) {
    let notified = shared.changed.notified();
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep(RESYNC) => {}
    }
}

fn set_status(shared: &Shared, pod: &str, change: impl FnOnce(&mut PodStatus)) {
    let changed = {
        let mut store = shared.store();
        let before = store.resource_version;
        store.update::<Pod>(Kind::Pod, pod, |pod| change(pod.status.get_or_insert_with(Default::default)));
        store.resource_version != before
    };
    if changed {
        shared.changed.notify_waiters();
    }
}

fn pod_condition(type_: &str, status: bool, reason: Option<&str>, message: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message: message.map(str::to_owned),
        last_transition_time: Some(now()),
        ..Default::default()
    }
}

fn waiting(pod: &Pod, reason: &str, message: Option<String>) -> Vec<ContainerStatus> {
    let container = pod.spec.as_ref().and_then(|spec| spec.containers.first());
    vec![ContainerStatus {
        name: container.map(|c| c.name.clone()).unwrap_or_default(),
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.to_owned()), message }),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

/// What the kubelet should do about a Pod before it has a container.
enum Gate {
    Go(Box<Pod>),
    /// The Pod is gone or was deleted (and is now removed).
    Gone,
    /// The Pod was evicted before it ran.
    Evicted,
}

fn gate(shared: &Shared, name: &str) -> Gate {
    let mut store = shared.store();
    let Some(pod) = store.get::<Pod>(Kind::Pod, name) else { return Gate::Gone };
    if pod.metadata.deletion_timestamp.is_some() {
        store.remove(Kind::Pod, name);
        return Gate::Gone;
    }
    if store.evicted.contains(name) {
        return Gate::Evicted;
    }
    Gate::Go(Box::new(pod))
}

fn evicted_status(status: &mut PodStatus) {
    status.phase = Some("Failed".to_owned());
    status.reason = Some("Evicted".to_owned());
    status.message = Some("The node was low on resource: memory.".to_owned());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions
        .retain(|c| c.type_ != "DisruptionTarget" && c.type_ != "Ready" && c.type_ != "ContainersReady");
    conditions.push(pod_condition(
        "DisruptionTarget",
        true,
        Some("TerminationByKubelet"),
        Some("The node was low on resource: memory."),
    ));
    conditions.push(pod_condition("Ready", false, Some("PodFailed"), None));
    conditions.push(pod_condition("ContainersReady", false, Some("PodFailed"), None));
}

/// Runs one Pod from scheduling to removal.
async fn kubelet(shared: Arc<Shared>, name: String) {
    let container = run_pod(&shared, &name).await;
    // Terminal: keep the Pod (and the container, for its logs) until it is deleted.
    loop {
        let deleting = {
            let store = shared.store();
            match store.get::<Pod>(Kind::Pod, &name) {
                None => true,
                Some(pod) => pod.metadata.deletion_timestamp.is_some(),
            }
        };
        if deleting {
            break;
        }
        settle(&shared).await;
    }
    if let Some(container) = container {
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = shared.docker.remove_container(&container, Some(options)).await;
    }
    let mut store = shared.store();
    store.containers.remove(&name);
    store.remove(Kind::Pod, &name);
    drop(store);
    shared.changed.notify_waiters();
}

/// Schedules, creates, starts and waits for the Pod's container; returns it
/// once the Pod is terminal (`None` when no container was made).
async fn run_pod(shared: &Arc<Shared>, name: &str) -> Option<String> {
    // Scheduling.
    let mut unschedulable = false;
    let pod = loop {
        let pod = match gate(shared, name) {
            Gate::Go(pod) => pod,
            Gate::Gone => return None,
            Gate::Evicted => {
                set_status(shared, name, evicted_status);
                return None;
            }
        };
        if !shared.store().pending_forever {
            break pod;
        }
        if unschedulable {
            settle(shared).await;
            continue;
        }
        unschedulable = true;
        set_status(shared, name, |status| {
            status.phase = Some("Pending".to_owned());
            status.conditions = Some(vec![pod_condition(
                "PodScheduled",
                false,
                Some("Unschedulable"),
                Some("0/1 nodes are available: 1 node(s) were unschedulable."),
            )]);
        });
        settle(shared).await;
    };
    let statuses = waiting(&pod, "ContainerCreating", None);
    shared.store().update::<Pod>(Kind::Pod, name, |pod| {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some("fake-node".to_owned());
        }
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Pending".to_owned());
        status.host_ip = Some("127.0.0.1".to_owned());
        status.start_time = Some(now());
        status.conditions = Some(vec![
            pod_condition("PodScheduled", true, None, None),
            pod_condition("Initialized", true, None, None),
            pod_condition("ContainersReady", false, Some("ContainersNotReady"), None),
            pod_condition("Ready", false, Some("ContainersNotReady"), None),
        ]);
        status.container_statuses = Some(statuses);
    });
    shared.changed.notify_waiters();
    // The image, which is never pulled.
    let image = pod.spec.as_ref().and_then(|spec| spec.containers.first()).and_then(|c| c.image.clone());
    let image = image.unwrap_or_default();
    let mut reported = false;
    let pod = loop {
        let pod = match gate(shared, name) {
            Gate::Go(pod) => pod,
            Gate::Gone => return None,
            Gate::Evicted => {
                set_status(shared, name, evicted_status);
                return None;
            }
        };
        if shared.docker.inspect_image(&image).await.is_ok() {
            break pod;
        }
        if !reported {
            // Under `imagePullPolicy: Never` the kubelet does not try at all.
            let never = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.containers.first())
                .and_then(|container| container.image_pull_policy.as_deref())
                == Some("Never");
            let (reason, message) = if never {
                (
                    "ErrImageNeverPull",
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                )
            } else {
                (
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\": the fake Kubernetes never pulls"),
                )
            };
            set_status(shared, name, |status| {
                status.container_statuses = Some(waiting(&pod, reason, Some(message)))
            });
            reported = true;
        }
        settle(shared).await;
    };
    // The container's configuration, which may wait for a Secret.
    let body = loop {
        let pod = match gate(shared, name) {
            Gate::Go(pod) => pod,
            Gate::Gone => return None,
            Gate::Evicted => {
                set_status(shared, name, evicted_status);
                return None;
            }
        };
        let built = container_body(&shared.store(), &shared.id, &pod);
        match built {
            Ok(body) => break body,
            Err(message) => {
                set_status(shared, name, |status| {
                    status.container_statuses =
                        Some(waiting(&pod, "CreateContainerConfigError", Some(message)));
                });
                settle(shared).await;
            }
        }
    };
    let container_name = format!("fake-kube-{}-{name}", shared.id);
    let options =
        bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&container_name).build();
    let created = match shared.docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(err) => {
            fail_to_start(shared, name, &pod, &err.to_string());
            return None;
        }
    };
    shared.store().containers.insert(name.to_owned(), created.clone());
    // The wait is registered before the start so a quick exit is not missed.
    let wait_options =
        bollard::query_parameters::WaitContainerOptionsBuilder::new().condition("next-exit").build();
    let mut wait = Box::pin(shared.docker.wait_container(&created, Some(wait_options)));
    let waited = tokio::select! {
        biased;
        first = wait.next() => Some(first),
        () = tokio::time::sleep(Duration::from_millis(50)) => None,
    };
    if let Err(err) = shared.docker.start_container(&created, None).await {
        fail_to_start(shared, name, &pod, &err.to_string());
        return Some(created);
    }
    let inspect = shared.docker.inspect_container(&created, None).await.ok();
    let started_at = inspect
        .as_ref()
        .and_then(|i| i.state.as_ref())
        .and_then(|s| s.started_at.as_deref())
        .and_then(engine_time);
    let ip = inspect
        .as_ref()
        .and_then(|i| i.network_settings.as_ref())
        .and_then(|n| n.networks.as_ref()?.values().find_map(|network| network.ip_address.clone()))
        .filter(|ip| !ip.is_empty());
    let container_spec =
        pod.spec.as_ref().and_then(|spec| spec.containers.first()).cloned().unwrap_or_default();
    let base_status = ContainerStatus {
        name: container_spec.name.clone(),
        image: image.clone(),
        image_id: inspect.as_ref().and_then(|i| i.image.clone()).unwrap_or_default(),
        container_id: Some(format!("docker://{created}")),
        restart_count: 0,
        ..Default::default()
    };
    {
        let running = ContainerStatus {
            ready: true,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: started_at.clone() }),
                ..Default::default()
            }),
            ..base_status.clone()
        };
        set_status(shared, name, |status| {
            status.phase = Some("Running".to_owned());
            status.pod_ip.clone_from(&ip);
            status.pod_ips = ip.clone().map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip }]);
            for condition in status.conditions.iter_mut().flatten() {
                if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                    *condition = pod_condition(&condition.type_.clone(), true, None, None);
                }
            }
            status.container_statuses = Some(vec![running]);
        });
    }
    // A deletion or eviction that came while the container was being made.
    let (deleting, evicted) = {
        let store = shared.store();
        let grace = store.get::<Pod>(Kind::Pod, name).and_then(|pod| {
            pod.metadata.deletion_timestamp.as_ref()?;
            pod.metadata.deletion_grace_period_seconds
        });
        (grace, store.evicted.contains(name))
    };
    if evicted {
        let options = bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        let _ = shared.docker.kill_container(&created, Some(options)).await;
    } else if let Some(grace) = deleting {
        stop_container(shared.clone(), Stop { container: created.clone(), grace }).await;
    }
    // Running: until the container exits, or the Pod's own
    // `activeDeadlineSeconds` passes and the kubelet stops it, as a real one
    // does (SIGTERM, then SIGKILL after the Pod's grace period).
    let mut deadline_exceeded = false;
    if waited.is_none() {
        loop {
            if !deadline_exceeded && let Some(grace) = deadline_passed(shared, name) {
                deadline_exceeded = true;
                shared.spawn(stop_container(shared.clone(), Stop { container: created.clone(), grace }));
            }
            tokio::select! {
                _ = wait.next() => break,
                () = settle(shared) => {}
            }
        }
    }
    drop(wait);
    let mut state =
        shared.docker.inspect_container(&created, None).await.ok().and_then(|i| i.state).unwrap_or_default();
    // Docker sets the OOM flag from containerd's OOM event, which can come
    // after the exit; a kubelet reads the cgroup instead. Look again briefly.
    for _ in 0..5 {
        if state.exit_code != Some(137) || state.oom_killed == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(later) = shared.docker.inspect_container(&created, None).await.ok().and_then(|i| i.state)
        {
            state = later;
        }
    }
    let exit_code = i32::try_from(state.exit_code.unwrap_or(-1)).unwrap_or(-1);
    let reason = if state.oom_killed == Some(true) {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let terminated = ContainerStatus {
        ready: false,
        started: Some(false),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_owned()),
                started_at: state.started_at.as_deref().and_then(engine_time),
                finished_at: state.finished_at.as_deref().and_then(engine_time),
                container_id: Some(format!("docker://{created}")),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..base_status
    };
    let evicted = shared.store().evicted.contains(name);
    set_status(shared, name, |status| {
        let failed = exit_code != 0 || evicted || deadline_exceeded;
        status.phase = Some(if failed { "Failed" } else { "Succeeded" }.to_owned());
        if deadline_exceeded && !evicted {
            status.reason = Some("DeadlineExceeded".to_owned());
            status.message = Some("Pod was active on the node longer than the specified deadline".to_owned());
        }
        for condition in status.conditions.iter_mut().flatten() {
            if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                *condition = pod_condition(&condition.type_.clone(), false, Some("PodCompleted"), None);
            }
        }
        status.container_statuses = Some(vec![terminated]);
        if evicted {
            evicted_status(status);
        }
    });
    Some(created)
}

/// The Pod's grace period when its `activeDeadlineSeconds`, counted from
/// its start, has passed; `None` while it has not (or none is set).
fn deadline_passed(shared: &Shared, name: &str) -> Option<i64> {
    let pod: Pod = shared.store().get(Kind::Pod, name)?;
    let spec = pod.spec.as_ref()?;
    let seconds = spec.active_deadline_seconds?;
    let started = pod.status.as_ref()?.start_time.as_ref()?.0;
    (now().0 >= started + jiff::SignedDuration::from_secs(seconds))
        .then(|| spec.termination_grace_period_seconds.unwrap_or(30).max(0))
}

fn fail_to_start(shared: &Shared, name: &str, pod: &Pod, message: &str) {
    let mut statuses = waiting(pod, "StartError", None);
    if let Some(status) = statuses.first_mut() {
        status.state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 128,
                reason: Some("StartError".to_owned()),
                message: Some(message.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    set_status(shared, name, |status| {
        status.phase = Some("Failed".to_owned());
        status.container_statuses = Some(statuses);
    });
}

/// An engine timestamp as a Kubernetes time; `None` for the engine's "never".
fn engine_time(text: &str) -> Option<Time> {
    let timestamp: jiff::Timestamp = text.parse().ok()?;
    (timestamp.as_second() > 0).then_some(Time(timestamp))
}

/// Bytes of a memory quantity (`64Mi`, `1G`, `1048576`).
pub(crate) fn memory_bytes(quantity: &str) -> Option<i64> {
    let quantity = quantity.trim();
    let split = quantity.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    #[expect(clippy::cast_possible_truncation, reason = "quantities are far below i64::MAX")]
    Some((number * factor).ceil() as i64)
}

/// Nano-CPUs of a cpu quantity (`500m`, `2`, `1.5`).
pub(crate) fn nano_cpus(quantity: &str) -> Option<i64> {
    let quantity = quantity.trim();
    let (number, factor) = match quantity.strip_suffix('m') {
        Some(milli) => (milli, 1e6),
        None => (quantity, 1e9),
    };
    let number: f64 = number.parse().ok()?;
    #[expect(clippy::cast_possible_truncation, reason = "quantities are far below i64::MAX")]
    Some((number * factor).round() as i64)
}

/// The Docker container for a Pod's first container; the message of a
/// `CreateContainerConfigError` when it cannot be made (yet).
fn container_body(
    store: &Store,
    server: &str,
    pod: &Pod,
) -> Result<bollard::models::ContainerCreateBody, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec.containers.first().cloned().ok_or("the Pod has no containers")?;
    let secret = |secret_name: &str| store.get::<Secret>(Kind::Secret, secret_name);
    let mut env = Vec::new();
    for source in container.env_from.iter().flatten() {
        if source.config_map_ref.is_some() {
            return Err("the fake does not serve ConfigMaps".to_owned());
        }
        let Some(reference) = &source.secret_ref else { continue };
        match secret(&reference.name) {
            Some(secret) => {
                for (key, value) in secret.data.unwrap_or_default() {
                    let prefix = source.prefix.as_deref().unwrap_or("");
                    env.push(format!("{prefix}{key}={}", String::from_utf8_lossy(&value.0)));
                }
            }
            None if reference.optional == Some(true) => {}
            None => return Err(format!("secret \"{}\" not found", reference.name)),
        }
    }
    for variable in container.env.iter().flatten() {
        if let Some(value) = &variable.value {
            env.push(format!("{}={value}", variable.name));
        } else if let Some(from) = &variable.value_from {
            let Some(key_ref) = &from.secret_key_ref else {
                return Err(format!("env {}: the fake supports only secretKeyRef", variable.name));
            };
            let value =
                secret(&key_ref.name).and_then(|s| s.data.unwrap_or_default().get(&key_ref.key).cloned());
            match value {
                Some(value) => env.push(format!("{}={}", variable.name, String::from_utf8_lossy(&value.0))),
                None if key_ref.optional == Some(true) => {}
                None => {
                    return Err(format!(
                        "secret \"{}\" not found or has no key {:?}",
                        key_ref.name, key_ref.key
                    ));
                }
            }
        } else {
            env.push(format!("{}=", variable.name));
        }
    }
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let user = security.run_as_user.or(pod_security.run_as_user);
    let group = security.run_as_group.or(pod_security.run_as_group);
    let user = match (user, group) {
        (Some(user), Some(group)) => Some(format!("{user}:{group}")),
        (Some(user), None) => Some(user.to_string()),
        (None, _) => None,
    };
    let mut security_opt = Vec::new();
    if security.allow_privilege_escalation == Some(false) {
        security_opt.push("no-new-privileges".to_owned());
    }
    let seccomp = security.seccomp_profile.or(pod_security.seccomp_profile).map(|profile| profile.type_);
    match seccomp.as_deref() {
        Some("RuntimeDefault") => {}
        // The kubelet's default (seccompDefault off) is no profile at all.
        None | Some("Unconfined") => security_opt.push("seccomp=unconfined".to_owned()),
        Some(other) => return Err(format!("the fake does not support seccomp profile type {other}")),
    }
    let capabilities = security.capabilities.unwrap_or_default();
    let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    let memory = limits.get("memory").and_then(|q| memory_bytes(&q.0));
    let cpus = limits.get("cpu").and_then(|q| nano_cpus(&q.0));
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mut tmpfs = HashMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|volume| volume.name == mount.name)
            .ok_or_else(|| format!("volume {:?} is not declared", mount.name))?;
        let Some(empty_dir) = &volume.empty_dir else {
            return Err(format!("volume {:?}: the fake supports only emptyDir volumes", mount.name));
        };
        let mut options = "rw,nosuid,nodev,mode=0777".to_owned();
        if let Some(size) = empty_dir.size_limit.as_ref().and_then(|q| memory_bytes(&q.0)) {
            options.push_str(&format!(",size={size}"));
        }
        tmpfs.insert(mount.mount_path.clone(), options);
    }
    let extra_hosts: Vec<String> = spec
        .host_aliases
        .iter()
        .flatten()
        .flat_map(|alias| alias.hostnames.iter().flatten().map(move |host| format!("{host}:{}", alias.ip)))
        .collect();
    let labels =
        HashMap::from([(SERVER_LABEL.to_owned(), server.to_owned()), (POD_LABEL.to_owned(), name.clone())]);
    let host_config = bollard::models::HostConfig {
        memory,
        memory_swap: memory,
        nano_cpus: cpus,
        cap_drop: capabilities.drop,
        cap_add: capabilities.add,
        security_opt: Some(security_opt),
        privileged: security.privileged,
        readonly_rootfs: security.read_only_root_filesystem,
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        init: spec.share_process_namespace,
        extra_hosts: (!extra_hosts.is_empty()).then_some(extra_hosts),
        group_add: pod_security
            .supplemental_groups
            .map(|groups| groups.iter().map(ToString::to_string).collect()),
        ..Default::default()
    };
    Ok(bollard::models::ContainerCreateBody {
        image: container.image.clone(),
        entrypoint: container.command.clone(),
        cmd: container.args.clone(),
        env: Some(env),
        user,
        working_dir: container.working_dir.clone(),
        hostname: Some(name.chars().take(63).collect()),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// Deletes an object as the API server does; its last state (or its state
/// while a deletion is under way), `None` when there is no such object.
pub(crate) async fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    name: &str,
    policy: Propagation,
    grace: Option<i64>,
) -> Option<Value> {
    let (answer, stop) = {
        let mut store = shared.store();
        match kind {
            Kind::Pod => mark_pod_deleted(&mut store, name, grace)?,
            Kind::Job | Kind::Secret => {
                let object = store.raw(kind, name)?.clone();
                let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
                let answer = match policy {
                    Propagation::Orphan => {
                        let dependents: Vec<(Kind, String)> = store
                            .objects
                            .iter()
                            .filter(|(_, dependent)| owner_uids(dependent).contains(&uid))
                            .map(|((kind, name), _)| (*kind, name.clone()))
                            .collect();
                        for (dependent_kind, dependent) in dependents {
                            let Some(mut value) = store.raw(dependent_kind, &dependent).cloned() else {
                                continue;
                            };
                            if let Some(owners) = value["metadata"]["ownerReferences"].as_array_mut() {
                                owners.retain(|owner| owner["uid"] != uid.as_str());
                            }
                            store.replace(dependent_kind, value);
                        }
                        store.remove(kind, name)?
                    }
                    Propagation::Background => store.remove(kind, name)?,
                    Propagation::Foreground => {
                        if object["metadata"]["deletionTimestamp"].is_null() {
                            let mut object = object;
                            object["metadata"]["deletionTimestamp"] = json!(now());
                            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                            let finalizers = &mut object["metadata"]["finalizers"];
                            if !finalizers.is_array() {
                                *finalizers = json!([]);
                            }
                            if let Some(list) = finalizers.as_array_mut() {
                                list.push(json!("foregroundDeletion"));
                            }
                            store.replace(kind, object)
                        } else {
                            object
                        }
                    }
                };
                (answer, None)
            }
        }
    };
    if let Some(stop) = stop {
        shared.spawn(stop_container(shared.clone(), stop));
    }
    shared.changed.notify_waiters();
    Some(answer)
}

/// `GET pods/{name}/log`: the container's stdout and stderr, merged.
pub(crate) async fn logs(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, KubeError> {
    let (container, pod) = {
        let store = shared.store();
        if store.namespace() != namespace {
            return Err(KubeError::not_found(Kind::Pod, &name));
        }
        let pod = store.get::<Pod>(Kind::Pod, &name).ok_or_else(|| KubeError::not_found(Kind::Pod, &name))?;
        (store.containers.get(&name).cloned(), pod)
    };
    let container_name =
        pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()).unwrap_or_default();
    if let Some(asked) = query.get("container")
        && *asked != container_name
    {
        return Err(KubeError::bad_request(format!("container {asked} is not valid for pod {name}")));
    }
    let Some(container) = container else {
        let reason = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
            .unwrap_or_else(|| "ContainerCreating".to_owned());
        return Err(KubeError::bad_request(format!(
            "container \"{container_name}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    };
    let flag = |key: &str| query.get(key).is_some_and(|value| value == "true");
    let mut options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(flag("follow"))
        .timestamps(flag("timestamps"));
    if let Some(tail) = query.get("tailLines") {
        options = options.tail(tail);
    }
    let options = options.build();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let docker = shared.docker.clone();
    shared.spawn(async move {
        let mut stream = Box::pin(docker.logs(&container, Some(options)));
        while let Some(Ok(output)) = stream.next().await {
            if tx.send(output.into_bytes()).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(body))
        .expect("a log response builds"))
}
