//! A [`ContainerSpec`] as Kubernetes objects: the suspended Job that runs the
//! worker and the Secret that holds its environment.
//!
//! Pure translation, no I/O. What Kubernetes cannot be asked (a pids limit,
//! an init, per-pod log limits) is not written here; the engine says so in
//! its capabilities, and `Dispatcher::checked` refuses a profile that asks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use core_types::env_names::BERTH_ONE_STREAM;
use core_types::label;
use dispatcher::{ContainerSpec, HardenedProfile};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{ImagePull, KubernetesOptions};

/// The worker's container in its pod.
pub(crate) const CONTAINER: &str = "worker";

/// The label the Job controller puts on a Job's pods (Kubernetes 1.27 on).
pub(crate) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// The pod label naming the network of [`ContainerSpec::network`], for the
/// operator's NetworkPolicies to select on.
pub(crate) const NETWORK_LABEL: &str = "berth.network";

/// The `berth.*` keys kept as Kubernetes labels, so that selectors can find
/// them; every other key is an annotation, as label values cannot hold
/// `owner/name` or more than 63 characters.
pub(crate) const LABEL_KEYS: [&str; 4] = [label::MANAGED, label::SCHEMA, label::INSTANCE, label::TASK_ID];

/// Why a spec cannot be a Job.
pub(crate) type SpecError = String;

/// Whether `value` may be a Kubernetes label value: at most 63 of
/// `[A-Za-z0-9._-]`, starting and ending with a letter or digit (or empty).
pub(crate) fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The spec's labels split into Kubernetes labels (the [`LABEL_KEYS`] whose
/// values fit) and annotations (everything else).
pub(crate) fn split_labels(
    labels: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .partition(|(key, value)| LABEL_KEYS.contains(&key.as_str()) && is_label_value(value))
}

/// The `berth.*` labels and annotations of an object, merged back into the
/// one map a [`ContainerSpec`] had (the engine's own keys left out).
pub(crate) fn merged_labels(metadata: &ObjectMeta) -> BTreeMap<String, String> {
    let ours = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .filter(|(key, _)| key.starts_with("berth.") && !key.contains('/'))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<Vec<_>>()
    };
    let mut merged: BTreeMap<String, String> = ours(&metadata.annotations).into_iter().collect();
    // A label is what selectors saw; it wins over an annotation of the same key.
    merged.extend(ours(&metadata.labels));
    merged.remove(NETWORK_LABEL);
    merged
}

/// The Job's `activeDeadlineSeconds` when started at `now`: the time left
/// to the `berth.deadline` label plus the grace, at least one second; none
/// when the spec has no readable deadline. A backstop only: Berth's monitor
/// stops the worker at its deadline itself.
pub(crate) fn active_deadline(
    labels: &BTreeMap<String, String>,
    grace: Duration,
    now: SystemTime,
) -> Option<i64> {
    let deadline = labels.get(label::DEADLINE)?.parse::<u64>().ok()?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let left = deadline.saturating_sub(now).saturating_add(grace.as_secs());
    Some(i64::try_from(left).unwrap_or(i64::MAX).max(1))
}

/// `uid:gid` of the profile as numbers; Kubernetes knows no user names.
fn user_ids(profile: &HardenedProfile) -> Result<(i64, i64), SpecError> {
    let (uid, gid) = profile.user.split_once(':').unwrap_or((&profile.user, &profile.user));
    match (uid.parse::<i64>(), gid.parse::<i64>()) {
        (Ok(uid), Ok(gid)) if uid > 0 => Ok((uid, gid)),
        _ => Err(format!(
            "the worker user {:?} is not a numeric non-root uid:gid, which a pod's securityContext needs",
            profile.user
        )),
    }
}

/// CPU in millicores (Kubernetes' finest unit), at least one.
fn cpu_quantity(nano_cpus: i64) -> Quantity {
    Quantity(format!("{}m", (nano_cpus / 1_000_000).max(1)))
}

/// The environment as the Secret's data: every `NAME=value` of the spec.
fn env_data(spec: &ContainerSpec) -> Result<BTreeMap<String, ByteString>, SpecError> {
    spec.env
        .iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if valid {
                Ok((name.to_owned(), ByteString(value.as_bytes().to_vec())))
            } else {
                Err(format!("environment variable name {name:?} cannot be a Secret key"))
            }
        })
        .collect()
}

/// The scratch volumes of a read-only root: memory-backed `emptyDir`s capped
/// at the profile's scratch size (tmpfs of that size since Kubernetes 1.22,
/// counted against the memory limit), at `/tmp` and at the image's `HOME`.
fn scratch(profile: &HardenedProfile, home: Option<&str>) -> (Vec<Volume>, Vec<VolumeMount>) {
    if !profile.read_only_root {
        return (Vec::new(), Vec::new());
    }
    let mut paths = vec![("tmp", "/tmp")];
    if let Some(home) = home.filter(|home| home.starts_with('/') && *home != "/" && !home.starts_with("/tmp"))
    {
        paths.push(("home", home));
    }
    let size_limit = (profile.scratch_bytes > 0).then(|| Quantity(profile.scratch_bytes.to_string()));
    paths
        .into_iter()
        .map(|(name, path)| {
            let volume = Volume {
                name: name.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_owned()),
                    size_limit: size_limit.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mount =
                VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), ..Default::default() };
            (volume, mount)
        })
        .unzip()
}

/// The suspended Job for `spec`, unsuspended by start. It names the Secret
/// of the same name for its environment and holds no secret itself.
///
/// # Errors
/// When the spec asks for what a pod cannot be given: a network other than
/// the configured one, a non-numeric or root user, an env name that cannot be
/// a Secret key.
pub(crate) fn job(
    spec: &ContainerSpec,
    options: &KubernetesOptions,
    now: SystemTime,
) -> Result<Job, SpecError> {
    if spec.network != options.network {
        return Err(format!(
            "network {:?} is not available on kubernetes (this engine runs workers on {:?}, the pod network as the namespace's NetworkPolicies shape it)",
            spec.network, options.network
        ));
    }
    env_data(spec)?;
    let profile = &spec.profile;
    let (uid, gid) = user_ids(profile)?;
    let (labels, annotations) = split_labels(&spec.labels);
    let mut pod_labels = labels.clone();
    if is_label_value(&spec.network) {
        pod_labels.insert(NETWORK_LABEL.to_owned(), spec.network.clone());
    }

    let mut limits = BTreeMap::new();
    if profile.memory_bytes > 0 {
        limits.insert("memory".to_owned(), Quantity(profile.memory_bytes.to_string()));
    }
    if profile.nano_cpus > 0 {
        limits.insert("cpu".to_owned(), cpu_quantity(profile.nano_cpus));
    }
    let (volumes, volume_mounts) = scratch(profile, options.scratch_home.as_deref());

    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(
            match options.image_pull {
                ImagePull::IfNotPresent => "IfNotPresent",
                ImagePull::Never => "Never",
            }
            .to_owned(),
        ),
        command: spec.entrypoint.clone(),
        args: spec.cmd.clone(),
        // A pod's log merges stdout and stderr, and the worker's result
        // record must stay its last line. Not a secret, so not in the Secret.
        env: Some(vec![EnvVar {
            name: BERTH_ONE_STREAM.to_owned(),
            value: Some("1".to_owned()),
            ..Default::default()
        }]),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: spec.name.clone(), optional: Some(false) }),
            ..Default::default()
        }]),
        // Limits equal to requests: the pod is of the Guaranteed class, which
        // no node gives swap to.
        resources: Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(!profile.no_new_privileges),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: (!profile.cap_add.is_empty()).then(|| profile.cap_add.clone()),
            }),
            read_only_root_filesystem: Some(profile.read_only_root),
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(gid),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        ..Default::default()
    };

    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        // The SIGKILL after a stop's SIGTERM: fixed per pod, as Kubernetes
        // does not change it on a running pod (see `KubernetesOptions::stop_grace`).
        termination_grace_period_seconds: Some(
            i64::try_from(options.stop_grace.as_secs()).unwrap_or(i64::MAX),
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(gid),
            fs_group: Some(gid),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..Default::default()
    };

    Ok(Job {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Created, not started: start unsuspends it.
            suspend: Some(true),
            parallelism: Some(1),
            completions: Some(1),
            backoff_limit: Some(0),
            // An eviction, a preemption or a node drain ends the Job with
            // reason `PodFailurePolicy`, visible as such, instead of being
            // counted as the worker's own failure.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".to_owned(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".to_owned(),
                        status: Some("True".to_owned()),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            active_deadline_seconds: active_deadline(&spec.labels, options.deadline_grace, now),
            ttl_seconds_after_finished: Some(
                i32::try_from(options.finished_ttl.as_secs()).unwrap_or(i32::MAX),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The Secret holding `spec`'s environment, named as its Job and owned by
/// it (`job_uid`), so that deleting the Job deletes it. Immutable: nothing
/// changes a worker's environment after create.
///
/// # Errors
/// When an env name cannot be a Secret key.
pub(crate) fn secret(spec: &ContainerSpec, job_uid: &str) -> Result<Secret, SpecError> {
    let (labels, _) = split_labels(&spec.labels);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "Job".to_owned(),
                name: spec.name.clone(),
                uid: job_uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(env_data(spec)?),
        ..Default::default()
    })
}
