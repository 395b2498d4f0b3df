//! A Job and its pod read as one container: [`ContainerState`] from the
//! Job's spec and conditions and the pod's container status, and watch
//! events read as [`Change`]s.
//!
//! Pure mapping, no I/O; the clock and the start timeout are arguments.

use std::time::{Duration, SystemTime};

use dispatcher::{Change, ChangeKind, ContainerId, ContainerState, ContainerStatus, ExitInfo};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus as PodContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher::Event;

use crate::spec::{CONTAINER, JOB_NAME_LABEL, merged_labels};

/// The exit code of a worker that never ran: its image could not be pulled,
/// its pod could not be scheduled or created, or its container could not be
/// made, for longer than the start timeout (or at once for a reason that
/// waiting cannot mend: an invalid image name, an image missing under
/// `imagePullPolicy: Never`). Docker's code for "the container could not be
/// run". The worker's own codes are 0 to 4, so this is never one of them.
pub const EXIT_COULD_NOT_START: i64 = 125;

/// The exit code of a worker whose pod was ended from outside (evicted,
/// preempted, drained, deleted by someone) and left no exit status: read as
/// a SIGTERM, "stopped from outside". A pod that did record its container's
/// exit keeps that code.
pub const EXIT_STOPPED_FROM_OUTSIDE: i64 = 143;

/// The exit code of a worker whose pod is gone with no record after the Job
/// failed for any reason but a disruption: its deadline backstop
/// (`activeDeadlineSeconds`) or a kill (pod deleted at once). Read as a
/// SIGKILL, which is what both are.
pub const EXIT_KILLED: i64 = 137;

/// Waiting reasons that no amount of waiting mends.
const FATAL_WAITING: [&str; 2] = ["InvalidImageName", "ErrImageNeverPull"];

pub(crate) fn to_system_time(time: &Time) -> SystemTime {
    SystemTime::from(time.0)
}

fn time(time: Option<&Time>) -> Option<SystemTime> {
    time.map(to_system_time)
}

/// Whether the Job has condition `kind` with status `True`.
fn has_condition(job: &Job, kinds: &[&str]) -> Option<String> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find_map(|condition| {
        (kinds.contains(&condition.type_.as_str()) && condition.status == "True")
            .then(|| condition.reason.clone().unwrap_or_default())
    })
}

/// The worker's container status in `pod`.
fn worker_status(pod: &Pod) -> Option<&PodContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|status| status.name == CONTAINER)
}

/// The pod of `pods` the Job made last (there is one: `backoffLimit: 0`).
fn newest<'a>(job_name: &str, pods: &'a [Pod]) -> Option<&'a Pod> {
    pods.iter()
        .filter(|pod| {
            pod.metadata.labels.as_ref().and_then(|labels| labels.get(JOB_NAME_LABEL)).map(String::as_str)
                == Some(job_name)
        })
        .max_by_key(|pod| pod.metadata.creation_timestamp.as_ref().map(to_system_time))
}

fn could_not_start() -> ContainerStatus {
    ContainerStatus::Exited(ExitInfo {
        code: EXIT_COULD_NOT_START,
        oom_killed: false,
        started_at: None,
        finished_at: None,
    })
}

/// The status of a pod's worker, when the pod says enough: `None` for a
/// pod that is still on its way to running.
fn pod_status(pod: &Pod, pending_too_long: bool) -> Option<ContainerStatus> {
    let worker = worker_status(pod);
    let state = worker.and_then(|status| status.state.as_ref());
    if let Some(terminated) = state.and_then(|state| state.terminated.as_ref()) {
        return Some(ContainerStatus::Exited(ExitInfo::with_times(
            i64::from(terminated.exit_code),
            terminated.reason.as_deref() == Some("OOMKilled"),
            time(terminated.started_at.as_ref()),
            time(terminated.finished_at.as_ref()),
        )));
    }
    if let Some(running) = state.and_then(|state| state.running.as_ref()) {
        return Some(ContainerStatus::Running { started_at: time(running.started_at.as_ref()) });
    }
    let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
    match phase {
        // Ended before its container recorded an exit: evicted or deleted.
        Some("Failed") => {
            return Some(ContainerStatus::Exited(ExitInfo {
                code: EXIT_STOPPED_FROM_OUTSIDE,
                oom_killed: false,
                started_at: None,
                finished_at: None,
            }));
        }
        Some("Succeeded") => {
            return Some(ContainerStatus::Exited(ExitInfo {
                code: 0,
                oom_killed: false,
                started_at: None,
                finished_at: None,
            }));
        }
        _ => {}
    }
    let waiting =
        state.and_then(|state| state.waiting.as_ref()).and_then(|waiting| waiting.reason.as_deref());
    if waiting.is_some_and(|reason| FATAL_WAITING.contains(&reason)) {
        return Some(could_not_start());
    }
    // Pending (pulling, unschedulable, container being made): not yet a
    // failure, until it has lasted past the start timeout.
    pending_too_long.then(could_not_start)
}

/// The Job `job` and its pods as one container at `now`.
pub(crate) fn container_state(
    job: &Job,
    pods: &[Pod],
    now: SystemTime,
    start_timeout: Duration,
) -> ContainerState {
    let name = job.metadata.name.clone().unwrap_or_default();
    let status = job_status(job, newest(&name, pods), now, start_timeout);
    ContainerState {
        id: ContainerId::from_engine(name.clone()),
        name,
        labels: merged_labels(&job.metadata),
        status,
        created_at: time(job.metadata.creation_timestamp.as_ref()),
    }
}

fn job_status(job: &Job, pod: Option<&Pod>, now: SystemTime, start_timeout: Duration) -> ContainerStatus {
    if job.metadata.deletion_timestamp.is_some() {
        return ContainerStatus::Removing;
    }
    if job.spec.as_ref().and_then(|spec| spec.suspend) == Some(true) {
        return ContainerStatus::Created;
    }
    // `status.startTime` is set (again) when the Job is unsuspended.
    let started = job.status.as_ref().and_then(|status| status.start_time.as_ref()).map(to_system_time);
    let pending_too_long =
        started.is_some_and(|started| now.duration_since(started).is_ok_and(|waited| waited > start_timeout));
    if let Some(pod) = pod {
        return pod_status(pod, pending_too_long).unwrap_or(ContainerStatus::Running { started_at: None });
    }
    // No pod: it is not made yet, or it is gone with its record.
    if has_condition(job, &["Complete", "SuccessCriteriaMet"]).is_some() {
        return ContainerStatus::Exited(ExitInfo {
            code: 0,
            oom_killed: false,
            started_at: None,
            finished_at: None,
        });
    }
    if let Some(reason) = has_condition(job, &["Failed", "FailureTarget"]) {
        let code = if reason == "PodFailurePolicy" { EXIT_STOPPED_FROM_OUTSIDE } else { EXIT_KILLED };
        return ContainerStatus::Exited(ExitInfo {
            code,
            oom_killed: false,
            started_at: None,
            finished_at: None,
        });
    }
    // A pod that was never made (a quota, an admission policy refusing it).
    if pending_too_long {
        return could_not_start();
    }
    ContainerStatus::Running { started_at: None }
}

/// A Job watch event as a change: a Job that finished died, a deleted one is
/// removed. The (re)list at a watch's start is the state, not a change.
pub(crate) fn job_change(event: &Event<Job>) -> Option<Change> {
    let (job, kind) = match event {
        Event::Apply(job) => {
            has_condition(job, &["Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"])?;
            (job, ChangeKind::Died)
        }
        Event::Delete(job) => (job, ChangeKind::Removed),
        Event::Init | Event::InitApply(_) | Event::InitDone => return None,
    };
    Some(Change { id: ContainerId::from_engine(job.metadata.name.clone()?), kind })
}

/// A Pod watch event as a change to its Job: the worker started, or its
/// pod ended or went away.
pub(crate) fn pod_change(event: &Event<Pod>) -> Option<Change> {
    let (pod, kind) = match event {
        Event::Apply(pod) => {
            let state = worker_status(pod).and_then(|status| status.state.as_ref());
            let failed = pod.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Failed");
            if failed || state.is_some_and(|state| state.terminated.is_some()) {
                (pod, ChangeKind::Died)
            } else if state.is_some_and(|state| state.running.is_some()) {
                (pod, ChangeKind::Started)
            } else {
                return None;
            }
        }
        Event::Delete(pod) => (pod, ChangeKind::Died),
        Event::Init | Event::InitApply(_) | Event::InitDone => return None,
    };
    let job = pod.metadata.labels.as_ref()?.get(JOB_NAME_LABEL)?;
    Some(Change { id: ContainerId::from_engine(job.clone()), kind })
}
