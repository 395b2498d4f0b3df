//! [`KubernetesEngine`]: the engine seam's operations as calls on Jobs, Pods
//! and Secrets in one namespace.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use core_types::label;
use dispatcher::{
    Capabilities, ChangeStream, ContainerEngine, ContainerId, ContainerSpec, ContainerState, ContainerStatus,
    DispatchError, EngineError, EngineInfo, ExitInfo, HardenedProfile, ImageStatus, LogChunk, LogStream,
};
use futures_util::future::ready;
use futures_util::{AsyncReadExt, StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::warn;

use crate::spec::{self, CONTAINER, JOB_NAME_LABEL, LABEL_KEYS};
use crate::status::{self, container_state};

/// How often a wait looks again without being told of a change: watches
/// may miss events, and a pod stuck pending becomes an exit only by time.
const WAIT_RECHECK: Duration = Duration::from_secs(10);

/// How much of a log a stream reads at once.
const LOG_CHUNK: usize = 16 * 1024;

/// Where a worker's image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePull {
    /// The node pulls it when it lacks it (`imagePullPolicy: IfNotPresent`).
    IfNotPresent,
    /// Only images already on the node run (`imagePullPolicy: Never`), as
    /// Berth on Docker never pulls; a missing one is [`EXIT_COULD_NOT_START`](crate::EXIT_COULD_NOT_START).
    Never,
}

/// What the engine needs beyond the client and the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// The one network name a [`ContainerSpec`] may ask for: workers run on
    /// the pod network as the namespace's NetworkPolicies shape it (their
    /// pods carry `berth.network=<name>` to select on), and any other name
    /// is refused at create rather than ignored.
    pub network: String,
    /// `imagePullPolicy` of the worker.
    pub image_pull: ImagePull,
    /// The worker image's `HOME`, which gets a writable scratch volume like
    /// `/tmp` under a read-only root. Kubernetes cannot read an image's
    /// configuration before running it, so it is said here.
    pub scratch_home: Option<String>,
    /// The pod's `terminationGracePeriodSeconds`: how long a stop's SIGTERM
    /// is given before SIGKILL. Fixed when the Job is created, since
    /// Kubernetes does not change it on a running pod.
    pub stop_grace: Duration,
    /// Added to the time left to `berth.deadline` for the Job's
    /// `activeDeadlineSeconds`, a backstop that ends the worker when the
    /// daemon is not there to stop it.
    pub deadline_grace: Duration,
    /// The Job's `ttlSecondsAfterFinished`: a finished Job the daemon never
    /// removed is deleted after this long (its outcome is then lost to a
    /// daemon that comes back later).
    pub finished_ttl: Duration,
    /// How long a started worker's pod may stay pending (image pull backoff,
    /// unschedulable, no pod made) before it reads as exited with
    /// [`EXIT_COULD_NOT_START`](crate::EXIT_COULD_NOT_START).
    pub start_timeout: Duration,
    /// When set, [`ContainerEngine::changes`] watches only this deployment's
    /// workers (`berth.instance=<instance>`); listings still see every
    /// instance in the namespace.
    pub watch_instance: Option<String>,
}

impl KubernetesOptions {
    /// Options for workers on `network`: the node may pull, no `HOME`
    /// volume, 10 s stop grace, a 5 minute deadline backstop, finished Jobs
    /// kept an hour, 5 minutes to get a pod running, changes of every instance.
    pub fn new(network: impl Into<String>) -> Self {
        Self {
            network: network.into(),
            image_pull: ImagePull::IfNotPresent,
            scratch_home: None,
            stop_grace: Duration::from_secs(10),
            deadline_grace: Duration::from_secs(5 * 60),
            finished_ttl: Duration::from_secs(60 * 60),
            start_timeout: Duration::from_secs(5 * 60),
            watch_instance: None,
        }
    }
}

/// Kubernetes Jobs in one namespace behind the engine seam.
#[derive(Clone)]
pub struct KubernetesEngine {
    client: Client,
    namespace: String,
    options: KubernetesOptions,
}

impl fmt::Debug for KubernetesEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesEngine")
            .field("namespace", &self.namespace)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// `Some(())` for a watch event that may mean a change: an object changed
/// or deleted, or a (re)listing done. Not for each object of a listing, nor
/// an error (the watcher backs off and relists; a wait's recheck covers it).
fn is_news<K>(event: &Result<watcher::Event<K>, watcher::Error>) -> Option<()> {
    matches!(event, Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone))
        .then_some(())
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A kube error in our words: transient when the API server was not there
/// to answer (connection refused or dropped, 429, 503, 504), not when it
/// answered with a refusal (403, 422, ...).
fn engine_error(err: &kube::Error) -> EngineError {
    match err {
        kube::Error::Api(status) => EngineError::other(
            format!("kubernetes answered {} {}: {}", status.code, status.reason, status.message),
            matches!(status.code, 429 | 503 | 504),
        ),
        kube::Error::HyperError(_) | kube::Error::Service(_) => EngineError::other(err.to_string(), true),
        other => EngineError::other(other.to_string(), false),
    }
}

fn call_failed(operation: &'static str, container: &str, err: &kube::Error) -> DispatchError {
    if status_code(err) == Some(404) {
        DispatchError::ContainerNotFound { container: container.to_owned(), operation }
    } else {
        DispatchError::EngineCall { operation, container: container.to_owned(), source: engine_error(err) }
    }
}

/// Whether a Secret carries `berth.managed=true`.
fn is_managed(secret: &Secret) -> bool {
    secret.metadata.labels.as_ref().and_then(|labels| labels.get(label::MANAGED)).map(String::as_str)
        == Some("true")
}

/// Whether `name` can name a Job at all (a DNS label); an older, longer
/// container name simply does not exist here.
fn is_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= dispatcher::MAX_CONTAINER_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl KubernetesEngine {
    /// What Kubernetes enforces per pod. Not a pids limit (the kubelet's
    /// `podPidsLimit` bounds every pod of a node; a pod cannot ask), not an
    /// init (the image's entrypoint must be one, e.g. tini, or the worker
    /// handles signals and reaps itself), not per-pod log limits (the
    /// kubelet rotates every container's log by its `containerLogMaxSize` and
    /// `containerLogMaxFiles`, whatever a pod asks). Swap: limits equal to
    /// requests make the pod Guaranteed, which no node gives swap to.
    pub const CAPABILITIES: Capabilities = Capabilities {
        memory_limit: true,
        swap_limit: true,
        cpu_limit: true,
        pids_limit: false,
        non_root_user: true,
        drop_all_capabilities: true,
        no_new_privileges: true,
        init: false,
        log_limits: false,
        read_only_root: true,
        scratch_tmpfs: true,
        // A Job's pod may land on any node: no volume of one node's engine
        // follows it, so there is no clone cache and workers clone plainly
        // (ADR 23). The seam's volume calls keep their defaults: none.
        named_volumes: false,
    };

    /// The client, for this crate's other requests.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// An engine over `client` in `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>, options: KubernetesOptions) -> Self {
        Self { client, namespace: namespace.into(), options }
    }

    /// Connects as kube-rs does by default: the kubeconfig (`KUBECONFIG` or
    /// `~/.kube/config`) or, inside a pod, its service account.
    ///
    /// # Errors
    /// [`DispatchError::EngineUnreachable`] when no configuration is found
    /// or the client cannot be built.
    pub async fn connect(
        namespace: impl Into<String>,
        options: KubernetesOptions,
    ) -> Result<Self, DispatchError> {
        let client = Client::try_default().await.map_err(|err| DispatchError::EngineUnreachable {
            endpoint: "the cluster of the kubeconfig or the in-cluster service account".to_owned(),
            source: engine_error(&err),
        })?;
        Ok(Self::new(client, namespace, options))
    }

    /// `profile` without what a pod cannot be given (a pids limit, an init,
    /// per-pod log limits; see [`KubernetesEngine::CAPABILITIES`]), so that
    /// `Dispatcher::checked` accepts it on this engine. The operator sets
    /// the node-wide equivalents on the kubelet.
    pub fn fit_profile(mut profile: HardenedProfile) -> HardenedProfile {
        profile.pids_limit = 0;
        profile.init = false;
        profile.log_max_bytes = 0;
        profile.log_max_files = 0;
        debug_assert!(
            Self::CAPABILITIES.missing_for(&profile).is_empty(),
            "a fitted profile asks only for what a pod can have"
        );
        profile
    }

    /// The namespace the workers run in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The pods the Job `name` made.
    async fn pods_of(&self, name: &str) -> Result<Vec<Pod>, DispatchError> {
        let params = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={name}"));
        let pods =
            self.pods().list(&params).await.map_err(|err| call_failed("list the pods of", name, &err))?;
        Ok(pods.items)
    }

    /// The Job's newest pod, if it has one.
    async fn pod_of(&self, name: &str) -> Result<Option<Pod>, DispatchError> {
        let pods = self.pods_of(name).await?;
        Ok(pods
            .into_iter()
            .max_by_key(|pod| pod.metadata.creation_timestamp.as_ref().map(status::to_system_time)))
    }

    /// Creates the Secret of `spec`'s environment, owned by the Job `job_uid`.
    async fn create_secret(&self, spec: &ContainerSpec, job_uid: &str) -> Result<(), DispatchError> {
        let failed = |err: &kube::Error| DispatchError::EngineCall {
            operation: "create the environment secret of",
            container: spec.name.clone(),
            source: engine_error(err),
        };
        let secret = spec::secret(spec, job_uid).map_err(|message| DispatchError::EngineCall {
            operation: "create",
            container: spec.name.clone(),
            source: EngineError::other(message, false),
        })?;
        match self.secrets().create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(()),
            Err(err) if status_code(&err) == Some(409) => {}
            Err(err) => return Err(failed(&err)),
        }
        // The name is held: by the Secret of an earlier Job of this name that
        // the garbage collector has not reached yet (replace it), or by
        // something not ours (leave it and refuse).
        let existing = self.secrets().get_opt(&spec.name).await.map_err(|err| failed(&err))?;
        let ours = existing.as_ref().is_some_and(is_managed);
        if existing.is_some() && !ours {
            return Err(DispatchError::EngineCall {
                operation: "create the environment secret of",
                container: spec.name.clone(),
                source: EngineError::other(
                    format!("a secret named {} that berth does not manage is in the way", spec.name),
                    false,
                ),
            });
        }
        if existing.is_some() {
            match self.secrets().delete(&spec.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(err) if status_code(&err) == Some(404) => {}
                Err(err) => return Err(failed(&err)),
            }
        }
        self.secrets().create(&PostParams::default(), &secret).await.map(|_| ()).map_err(|err| failed(&err))
    }

    /// Gives the Job of `spec`'s name the Secret it lacks, when the Job is
    /// this very task's and still suspended: a daemon killed between the
    /// Job's create and its Secret's leaves such a Job, which the next one
    /// adopts and starts, and whose pod would otherwise wait for its
    /// environment until the start timeout. Anything else is left as it is,
    /// for the caller to judge.
    async fn restore_secret(&self, spec: &ContainerSpec) -> Result<(), DispatchError> {
        let failed = |err: &kube::Error| call_failed("adopt", &spec.name, err);
        let Some(job) = self.jobs().get_opt(&spec.name).await.map_err(|err| failed(&err))? else {
            return Ok(());
        };
        let labels = spec::merged_labels(&job.metadata);
        let task = |labels: &std::collections::BTreeMap<String, String>| labels.get(label::TASK_ID).cloned();
        let ours = labels.get(label::MANAGED).map(String::as_str) == Some("true")
            && task(&labels).is_some()
            && task(&labels) == task(&spec.labels);
        let suspended = job.spec.as_ref().and_then(|job| job.suspend) == Some(true);
        let Some(uid) = job.metadata.uid.filter(|_| ours && suspended) else { return Ok(()) };
        if self.secrets().get_opt(&spec.name).await.map_err(|err| failed(&err))?.is_some() {
            return Ok(());
        }
        warn!(container_id = %spec.name, "a created job had no environment secret (its creator stopped between the two); making it");
        self.create_secret(spec, &uid).await
    }

    /// Deletes the Job `name` and, through its owner references, its pods
    /// and Secret; a Job already gone is fine.
    async fn delete_job(&self, name: &str) -> Result<(), DispatchError> {
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match self.jobs().delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            Err(err) => Err(call_failed("remove", name, &err)),
        }
    }

    /// The label selector for a `label=value` query, and whether the
    /// results must still be filtered by it (for a key kept as an annotation,
    /// which selectors cannot see, every managed Job is listed).
    fn selector(label: &str, value: &str) -> (String, bool) {
        if LABEL_KEYS.contains(&label) && spec::is_label_value(value) {
            (format!("{label}={value}"), false)
        } else {
            (format!("{}=true", label::MANAGED), true)
        }
    }

    /// Waits while the Job `name` is started but its worker has not run yet
    /// (no pod, or a pod still pending), so that a followed log opens on a
    /// running or ended worker instead of ending before it began. Returns at
    /// once for any other state, a created Job included.
    async fn until_worker_ran(&self, name: &str) -> Result<(), DispatchError> {
        let mut events: Option<stream::BoxStream<'static, ()>> = None;
        loop {
            let status = self.inspect(name).await?.map(|state| state.status);
            if !matches!(status, Some(ContainerStatus::Running { started_at: None })) {
                return Ok(());
            }
            let events = events.get_or_insert_with(|| self.job_events(name));
            tokio::select! {
                _ = events.next() => {}
                () = tokio::time::sleep(WAIT_RECHECK) => {}
            }
        }
    }

    /// A stream that yields `()` when the Job `name` or its pods may have
    /// changed (and at each watch's initial listing), and never ends.
    fn job_events(&self, name: &str) -> stream::BoxStream<'static, ()> {
        let jobs = watcher(self.jobs(), watcher::Config::default().fields(&format!("metadata.name={name}")))
            .default_backoff();
        let pods =
            watcher(self.pods(), watcher::Config::default().labels(&format!("{JOB_NAME_LABEL}={name}")))
                .default_backoff();
        stream::select(
            jobs.filter_map(|event| ready(is_news(&event))),
            pods.filter_map(|event| ready(is_news(&event))),
        )
        .boxed()
    }
}

impl ContainerEngine for KubernetesEngine {
    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    async fn describe(&self) -> Result<EngineInfo, DispatchError> {
        let endpoint = format!("namespace {}", self.namespace);
        let info = self.client.apiserver_version().await.map_err(|err| DispatchError::EngineUnreachable {
            endpoint: endpoint.clone(),
            source: engine_error(&err),
        })?;
        Ok(EngineInfo {
            kind: "kubernetes".to_owned(),
            endpoint,
            version: info.git_version,
            api_version: "batch/v1".to_owned(),
            storage_driver: None,
        })
    }

    /// Kubernetes cannot tell whether a node has an image without running
    /// it: every image reads as present with an empty id. A missing one shows
    /// when the worker starts, as [`EXIT_COULD_NOT_START`](crate::EXIT_COULD_NOT_START).
    async fn image_status(&self, _image: &str) -> Result<ImageStatus, DispatchError> {
        Ok(ImageStatus::Present { id: String::new() })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Option<ContainerId>, DispatchError> {
        if !spec.mounts.is_empty() {
            return Err(DispatchError::VolumesUnsupported { engine: "kubernetes".to_owned() });
        }
        let job = spec::job(spec, &self.options, SystemTime::now()).map_err(|message| {
            DispatchError::EngineCall {
                operation: "create",
                container: spec.name.clone(),
                source: EngineError::other(message, false),
            }
        })?;
        let created = match self.jobs().create(&PostParams::default(), &job).await {
            Ok(created) => created,
            // The name is taken: the caller inspects it and adopts it if it
            // is this task's, which then must have its environment.
            Err(err) if status_code(&err) == Some(409) => {
                self.restore_secret(spec).await?;
                return Ok(None);
            }
            Err(err) => {
                return Err(DispatchError::EngineCall {
                    operation: "create",
                    container: spec.name.clone(),
                    source: engine_error(&err),
                });
            }
        };
        let uid = created.metadata.uid.unwrap_or_default();
        let secret = if uid.is_empty() {
            Err(DispatchError::EngineCall {
                operation: "create",
                container: spec.name.clone(),
                source: EngineError::other("the created job has no uid to own its secret", false),
            })
        } else {
            self.create_secret(spec, &uid).await
        };
        if let Err(err) = secret {
            // A Job without its environment must never be adopted and
            // started by a later create: take it back.
            if let Err(cleanup) = self.delete_job(&spec.name).await {
                warn!(container_id = %spec.name, error = %cleanup, "could not remove a job left without its secret");
            }
            return Err(err);
        }
        Ok(Some(ContainerId::from_engine(spec.name.clone())))
    }

    /// Unsuspends the Job, with its deadline backstop counted from now (a
    /// queued worker may have waited long). A started Job is left alone.
    async fn start(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let name = id.as_str();
        let start_failed = |err: &kube::Error| {
            if status_code(err) == Some(404) {
                DispatchError::ContainerNotFound { container: name.to_owned(), operation: "start" }
            } else {
                DispatchError::StartFailed { container: name.to_owned(), source: engine_error(err) }
            }
        };
        let job = self.jobs().get(name).await.map_err(|err| start_failed(&err))?;
        if job.spec.as_ref().and_then(|spec| spec.suspend) != Some(true) {
            return Ok(());
        }
        let mut patch = serde_json::json!({ "spec": { "suspend": false } });
        let labels = spec::merged_labels(&job.metadata);
        if let Some(deadline) = spec::active_deadline(&labels, self.options.deadline_grace, SystemTime::now())
        {
            patch["spec"]["activeDeadlineSeconds"] = deadline.into();
        }
        self.jobs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|err| start_failed(&err))
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerState>, DispatchError> {
        if !is_job_name(id_or_name) {
            return Ok(None);
        }
        let job =
            self.jobs().get_opt(id_or_name).await.map_err(|err| call_failed("inspect", id_or_name, &err))?;
        let Some(job) = job else { return Ok(None) };
        let pods = self.pods_of(id_or_name).await?;
        Ok(Some(container_state(&job, &pods, SystemTime::now(), self.options.start_timeout)))
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        let mut events: Option<stream::BoxStream<'static, ()>> = None;
        loop {
            let status =
                self.inspect(id.as_str()).await?.map_or(ContainerStatus::Missing, |state| state.status);
            match status {
                ContainerStatus::Exited(exit) => return Ok(exit),
                ContainerStatus::Missing => {
                    return Err(DispatchError::ContainerNotFound {
                        container: id.to_string(),
                        operation: "wait for",
                    });
                }
                ContainerStatus::Created | ContainerStatus::Running { .. } | ContainerStatus::Removing => {}
            }
            // Watch from the first look on; the watch's own listing closes
            // the gap between that look and the watch (it yields once it has
            // listed), and the recheck covers missed events and pods that
            // stay pending past the start timeout.
            let events = events.get_or_insert_with(|| self.job_events(id.as_str()));
            tokio::select! {
                _ = events.next() => {}
                () = tokio::time::sleep(WAIT_RECHECK) => {}
            }
        }
    }

    async fn list_by_label(&self, label: &str, value: &str) -> Result<Vec<ContainerState>, DispatchError> {
        let (selector, filter) = Self::selector(label, value);
        let params = ListParams::default().labels(&selector);
        let list_failed = |err: &kube::Error| DispatchError::ListFailed { source: engine_error(err) };
        let jobs = self.jobs().list(&params).await.map_err(|err| list_failed(&err))?;
        let pods = self.pods().list(&params).await.map_err(|err| list_failed(&err))?;
        let now = SystemTime::now();
        Ok(jobs
            .items
            .iter()
            .map(|job| container_state(job, &pods.items, now, self.options.start_timeout))
            .filter(|state| !filter || state.labels.get(label).map(String::as_str) == Some(value))
            .collect())
    }

    /// The pod's log: Kubernetes keeps stdout and stderr as one stream, so
    /// every chunk is [`LogChunk::Stdout`] (the result record is found by its
    /// place on the last line, not by its stream). Unfollowed, a Job without
    /// a pod yet, or whose container has not started, has no output;
    /// followed, a started Job's log opens once its worker runs (or ends).
    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream {
        let engine = self.clone();
        let name = id.as_str().to_owned();
        let opened = async move {
            let empty = || -> LogStream { Box::pin(stream::empty()) };
            let failed =
                |err: DispatchError| -> LogStream { Box::pin(stream::once(async move { Err(err) })) };
            if follow && let Err(err) = engine.until_worker_ran(&name).await {
                return failed(err);
            }
            let pod = match engine.pod_of(&name).await {
                Ok(Some(pod)) => pod,
                Ok(None) => {
                    // No pod: not started yet, or no such Job.
                    return match engine.jobs().get_opt(&name).await {
                        Ok(Some(_)) => empty(),
                        Ok(None) => failed(DispatchError::ContainerNotFound {
                            container: name,
                            operation: "read logs of",
                        }),
                        Err(err) => failed(call_failed("read logs of", &name, &err)),
                    };
                }
                Err(err) => return failed(err),
            };
            let pod_name = pod.metadata.name.unwrap_or_default();
            let params = LogParams {
                container: Some(CONTAINER.to_owned()),
                follow,
                tail_lines: tail.map(|lines| i64::try_from(lines).unwrap_or(i64::MAX)),
                ..Default::default()
            };
            let reader = match engine.pods().log_stream(&pod_name, &params).await {
                Ok(reader) => reader,
                // 400: the container is still waiting to start; no output yet.
                Err(err) if status_code(&err) == Some(400) => return empty(),
                Err(err) => return failed(call_failed("read logs of", &name, &err)),
            };
            let chunks = stream::unfold(Some(Box::pin(reader)), move |reader| {
                let name = name.clone();
                async move {
                    let mut reader = reader?;
                    let mut buffer = vec![0; LOG_CHUNK];
                    match reader.read(&mut buffer).await {
                        Ok(0) => None,
                        Ok(read) => {
                            buffer.truncate(read);
                            Some((Ok(LogChunk::Stdout(Bytes::from(buffer))), Some(reader)))
                        }
                        Err(err) => Some((
                            Err(DispatchError::EngineCall {
                                operation: "read logs of",
                                container: name,
                                source: EngineError::other(err.to_string(), true),
                            }),
                            None,
                        )),
                    }
                }
            });
            Box::pin(chunks) as LogStream
        };
        Box::pin(stream::once(opened).flatten())
    }

    /// Job and pod watches by label selector (`label=value`, narrowed to
    /// [`KubernetesOptions::watch_instance`] when set), through kube-rs'
    /// watcher, which relists after a 410 Gone. The listing at each
    /// (re)start is not reported: it is the state, which the caller gets by
    /// listing; changes during a relist are missed, as [`ChangeStream`] allows.
    fn changes(&self, label: &str, value: &str) -> ChangeStream {
        let (mut selector, _) = Self::selector(label, value);
        if let Some(instance) =
            self.options.watch_instance.as_deref().filter(|instance| spec::is_label_value(instance))
        {
            selector.push_str(&format!(",{}={instance}", label::INSTANCE));
        }
        let config = watcher::Config::default().labels(&selector);
        let watch_failed = |err: watcher::Error| DispatchError::WatchFailed {
            source: EngineError::other(format!("kubernetes watch failed: {err}"), true),
        };
        let jobs =
            watcher(self.jobs(), config.clone()).default_backoff().filter_map(move |event| async move {
                match event {
                    Ok(event) => status::job_change(&event).map(Ok),
                    Err(err) => Some(Err(watch_failed(err))),
                }
            });
        let pods = watcher(self.pods(), config).default_backoff().filter_map(move |event| async move {
            match event {
                Ok(event) => status::pod_change(&event).map(Ok),
                Err(err) => Some(Err(watch_failed(err))),
            }
        });
        Box::pin(stream::select(jobs, pods))
    }

    /// Ends the worker while keeping its pod, so that its exit code and logs
    /// stay readable: the pod's `activeDeadlineSeconds` is set to have passed,
    /// and the kubelet sends SIGTERM, then SIGKILL after the pod's
    /// `terminationGracePeriodSeconds` ([`KubernetesOptions::stop_grace`]).
    /// `grace` is not used: Kubernetes does not change a running pod's grace
    /// period. Deleting the pod instead would honour `grace` but lose both.
    /// A Job not started, or already ended, is left as it is.
    async fn stop(&self, id: &ContainerId, _grace: Duration) -> Result<(), DispatchError> {
        let name = id.as_str();
        let Some(pod) = self.pod_of(name).await? else {
            return match self.jobs().get_opt(name).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => {
                    Err(DispatchError::ContainerNotFound { container: name.to_owned(), operation: "stop" })
                }
                Err(err) => Err(call_failed("stop", name, &err)),
            };
        };
        let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        // The deadline counts from the pod's start; "as long as it has run"
        // has passed (at least one second, the least Kubernetes accepts).
        let started =
            pod.status.as_ref().and_then(|status| status.start_time.as_ref()).map(status::to_system_time);
        let elapsed =
            started.and_then(|started| SystemTime::now().duration_since(started).ok()).unwrap_or_default();
        let deadline = i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX).max(1);
        // A deadline may only shrink: one already as short means a stop is under way.
        if pod.spec.as_ref().and_then(|spec| spec.active_deadline_seconds).is_some_and(|set| set <= deadline)
        {
            return Ok(());
        }
        let pod_name = pod.metadata.name.unwrap_or_default();
        let patch = serde_json::json!({ "spec": { "activeDeadlineSeconds": deadline } });
        match self.pods().patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            // The pod went away meanwhile: nothing left to stop.
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            Err(err) => Err(call_failed("stop", name, &err)),
        }
    }

    /// Deletes the pod with no grace (SIGKILL from the kubelet). The pod and
    /// its logs go with it; the Job then fails and reads as exited with
    /// [`EXIT_KILLED`](crate::EXIT_KILLED).
    async fn kill(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let name = id.as_str();
        let Some(pod) = self.pod_of(name).await? else {
            return match self.jobs().get_opt(name).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => {
                    Err(DispatchError::ContainerNotFound { container: name.to_owned(), operation: "kill" })
                }
                Err(err) => Err(call_failed("kill", name, &err)),
            };
        };
        let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(());
        }
        let pod_name = pod.metadata.name.unwrap_or_default();
        let params = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        match self.pods().delete(&pod_name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            Err(err) => Err(call_failed("kill", name, &err)),
        }
    }

    /// Deletes the Job in the background (its pod and Secret follow through
    /// their owner references) and the Secret at once, so that the worker's
    /// token does not wait for the garbage collector. Gone already is fine.
    async fn remove(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let name = id.as_str();
        self.delete_job(name).await?;
        let failed = |err: &kube::Error| call_failed("remove the environment secret of", name, err);
        // Only a Secret of ours, and only the one looked at.
        let secret = self.secrets().get_opt(name).await.map_err(|err| failed(&err))?;
        let Some(uid) = secret.filter(is_managed).and_then(|secret| secret.metadata.uid) else {
            return Ok(());
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match self.secrets().delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone already, or replaced by another: not ours to delete.
            Err(err) if matches!(status_code(&err), Some(404 | 409)) => Ok(()),
            Err(err) => Err(failed(&err)),
        }
    }
}
