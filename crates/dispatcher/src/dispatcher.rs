//! [`Dispatcher`]: task-level container operations over a [`ContainerEngine`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use core_types::{LabelError, TaskId, TaskLabels, label};
use futures_util::StreamExt;
use tracing::{debug, info, instrument};

use crate::engine::{
    Change, ChangeKind, ContainerEngine, ContainerId, ContainerSpec, ContainerState, ContainerStatus,
    ExitInfo, LogChunk, LogStream,
};
use crate::name::{container_name, legacy_container_name};
use crate::{DispatchError, HardenedProfile};

/// How long [`next_change`] waits when the engine's event stream is broken,
/// so that a watcher looping on it does not spin while the engine is away.
const BROKEN_CHANGES_PAUSE: Duration = Duration::from_secs(1);

/// What every worker container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// The worker image.
    pub image: String,
    /// The network workers join, by name (backend-defined; see
    /// [`ContainerSpec::network`]).
    pub network: String,
    /// Limits and privileges.
    pub profile: HardenedProfile,
    /// Overrides the image's entrypoint (e.g. `["/usr/local/bin/berth-worker"]`).
    pub entrypoint: Option<Vec<String>>,
    /// This deployment's name (`berth.instance`); listings see only its containers.
    pub instance: String,
}

/// A container that carries `berth.managed=true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Its id.
    pub id: ContainerId,
    /// Its name.
    pub name: String,
    /// The task its labels describe, or why they do not read.
    pub task: Result<TaskLabels, LabelError>,
    /// All its labels, as found.
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub status: ContainerStatus,
    /// When it was created.
    pub created_at: Option<SystemTime>,
}

impl ManagedContainer {
    /// The deployment that owns it (`default` when unlabelled).
    pub fn instance(&self) -> &str {
        self.labels.get(label::INSTANCE).map_or(core_types::DEFAULT_INSTANCE, String::as_str)
    }

    fn from_state(state: ContainerState) -> Option<Self> {
        if state.labels.get(label::MANAGED).map(String::as_str) != Some("true") {
            return None;
        }
        Some(Self {
            task: TaskLabels::from_btree(&state.labels),
            id: state.id,
            name: state.name,
            labels: state.labels,
            status: state.status,
            created_at: state.created_at,
        })
    }
}

/// The result of [`Dispatcher::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The task's container.
    pub id: ContainerId,
    /// True when the container already existed for this task (a repeated create).
    pub adopted: bool,
    /// Its state right after create (or as found, when adopted).
    pub status: ContainerStatus,
}

/// Runs, watches, finds and cleans up worker containers.
#[derive(Debug, Clone)]
pub struct Dispatcher<E> {
    engine: E,
    config: DispatcherConfig,
}

impl<E: ContainerEngine> Dispatcher<E> {
    /// A dispatcher over `engine`. It does not check that the engine
    /// enforces the profile; [`Dispatcher::checked`] does.
    pub fn new(engine: E, config: DispatcherConfig) -> Self {
        Self { engine, config }
    }

    /// A dispatcher over `engine`, refused when the engine does not enforce
    /// every protection the configured profile asks for.
    ///
    /// # Errors
    /// [`DispatchError::ProfileUnsupported`] naming what is missing.
    pub fn checked(engine: E, config: DispatcherConfig) -> Result<Self, DispatchError> {
        let dispatcher = Self::new(engine, config);
        dispatcher.check_profile()?;
        Ok(dispatcher)
    }

    /// Whether the engine enforces every protection the configured profile
    /// asks for: a worker must never run with less than it was promised.
    ///
    /// # Errors
    /// [`DispatchError::ProfileUnsupported`] naming what is missing.
    pub fn check_profile(&self) -> Result<(), DispatchError> {
        let missing = self.engine.capabilities().missing_for(&self.config.profile);
        if missing.is_empty() {
            return Ok(());
        }
        Err(DispatchError::ProfileUnsupported { engine: engine_kind::<E>(), missing })
    }

    /// The engine underneath.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The configuration in force.
    pub fn config(&self) -> &DispatcherConfig {
        &self.config
    }

    /// The container a task gets: name, labels, environment, and the profile.
    pub fn container_spec(
        &self,
        task: &TaskLabels,
        env: &[(&str, String)],
        cmd: Option<Vec<String>>,
    ) -> ContainerSpec {
        spec_for(&self.config, task, env, cmd)
    }

    /// Creates the task's container, or adopts the one a previous create made.
    ///
    /// # Errors
    /// [`DispatchError::NameTaken`] when `berth-<task id>` belongs to anything
    /// but this task; [`DispatchError::ImageMissing`]; engine failures.
    pub async fn create(
        &self,
        task: &TaskLabels,
        env: &[(&str, String)],
        cmd: Option<Vec<String>>,
    ) -> Result<Launched, DispatchError> {
        self.create_mounted(task, env, cmd, Vec::new()).await
    }

    /// [`Dispatcher::create`] with volumes mounted (crate-private: a mirror
    /// is mounted only through [`Dispatcher::create_with_cache`]).
    #[instrument(skip_all, fields(task_id = %task.task_id))]
    pub(crate) async fn create_mounted(
        &self,
        task: &TaskLabels,
        env: &[(&str, String)],
        cmd: Option<Vec<String>>,
        mounts: Vec<crate::VolumeMount>,
    ) -> Result<Launched, DispatchError> {
        let mut spec = self.container_spec(task, env, cmd);
        spec.mounts = mounts;
        if let Some(id) = self.engine.create(&spec).await? {
            debug!(container_id = %id, "container created");
            return Ok(Launched { id, adopted: false, status: ContainerStatus::Created });
        }
        // 409: the name is taken. Adopt it only if it is this very task.
        let name_taken = |reason: String| DispatchError::NameTaken {
            task_id: task.task_id.clone(),
            name: spec.name.clone(),
            reason,
        };
        let Some(existing) = self.engine.inspect(&spec.name).await? else {
            // Removed between our create and inspect: try once more.
            return match self.engine.create(&spec).await? {
                Some(id) => Ok(Launched { id, adopted: false, status: ContainerStatus::Created }),
                None => Err(name_taken("it was recreated concurrently".to_owned())),
            };
        };
        let Some(existing) = ManagedContainer::from_state(existing) else {
            return Err(name_taken("it is not managed by berth".to_owned()));
        };
        match &existing.task {
            Ok(labels) if labels.task_id == task.task_id => {
                info!(container_id = %existing.id, "adopted existing container");
                Ok(Launched { id: existing.id, adopted: true, status: existing.status })
            }
            Ok(labels) => Err(name_taken(format!("it belongs to task {}", labels.task_id))),
            Err(err) => Err(name_taken(err.to_string())),
        }
    }

    /// Starts a created container. Starting a running one changes nothing.
    ///
    /// # Errors
    /// Engine failures; [`DispatchError::ContainerNotFound`].
    pub async fn start(&self, id: &ContainerId) -> Result<(), DispatchError> {
        self.engine.start(id).await?;
        debug!(container_id = %id, "container started");
        Ok(())
    }

    /// Creates (or adopts) and starts the task's container.
    ///
    /// # Errors
    /// As [`Dispatcher::create`] and [`Dispatcher::start`].
    pub async fn launch(
        &self,
        task: &TaskLabels,
        env: &[(&str, String)],
        cmd: Option<Vec<String>>,
    ) -> Result<Launched, DispatchError> {
        let launched = self.create(task, env, cmd).await?;
        if launched.status == ContainerStatus::Created {
            self.start(&launched.id).await?;
        }
        Ok(launched)
    }

    /// The container's state now ([`ContainerStatus::Missing`] when it is gone).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn status(&self, id: &ContainerId) -> Result<ContainerStatus, DispatchError> {
        Ok(self.engine.inspect(id.as_str()).await?.map_or(ContainerStatus::Missing, |state| state.status))
    }

    /// Finds a task's container by its name, if it exists and is ours.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn find(&self, task_id: &TaskId) -> Result<Option<ManagedContainer>, DispatchError> {
        let name = container_name(task_id);
        let legacy = legacy_container_name(task_id);
        // A container an earlier version made may carry the older, longer name.
        let names = if legacy == name { vec![name] } else { vec![name, legacy] };
        for name in names {
            let found = self.engine.inspect(&name).await?.and_then(ManagedContainer::from_state);
            let found = found.filter(|container| {
                container.labels.get(label::TASK_ID).map(String::as_str) == Some(task_id.as_str())
            });
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Every managed container of this instance, in any state. Nothing
    /// without `berth.managed=true` is ever returned.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn list(&self) -> Result<Vec<ManagedContainer>, DispatchError> {
        let all = self.list_all_instances().await?;
        Ok(all.into_iter().filter(|container| container.instance() == self.config.instance).collect())
    }

    /// Every managed container of every instance on the engine (`berth ps`).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn list_all_instances(&self) -> Result<Vec<ManagedContainer>, DispatchError> {
        let states = self.engine.list_by_label(label::MANAGED, "true").await?;
        Ok(states.into_iter().filter_map(ManagedContainer::from_state).collect())
    }

    /// Waits until the container has exited and returns how, whatever state
    /// it is in now (created, running or already exited).
    ///
    /// # Errors
    /// Engine failures; [`DispatchError::ContainerNotFound`] when it is gone.
    pub async fn wait(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        self.engine.wait(id).await
    }

    /// Waits for a container this process has just started, then returns how
    /// it ended. The same as [`Dispatcher::wait`], which now handles every
    /// state; kept for its callers.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn wait_started(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        self.engine.wait(id).await
    }

    /// Resolves when the engine reports that a managed container died or was
    /// removed or, after a short pause, when its change stream fails or
    /// ends. A hint to reconcile early, never a record: the caller resyncs by
    /// listing either way.
    pub async fn next_change(&self) {
        next_change(&self.engine).await;
    }

    /// The container's output, stdout and stderr interleaved as they came.
    pub fn logs(&self, id: &ContainerId, follow: bool) -> LogStream {
        self.engine.logs(id, follow, None)
    }

    /// All output so far as text (stdout and stderr interleaved).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn logs_text(&self, id: &ContainerId) -> Result<String, DispatchError> {
        let mut logs = self.engine.logs(id, false, None);
        let mut text = Vec::new();
        while let Some(chunk) = logs.next().await {
            text.extend_from_slice(chunk?.bytes());
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// The end of the output so far (stdout and stderr interleaved): the last
    /// `lines` lines, of which at most the last `max_bytes` are kept while
    /// reading. What an operator reads through the status API, bounded
    /// whatever a worker printed.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn logs_tail(
        &self,
        id: &ContainerId,
        lines: u64,
        max_bytes: usize,
    ) -> Result<String, DispatchError> {
        self.tail_of(id, lines, max_bytes, |_| true).await
    }

    /// Only stdout so far, as text, all of it: memory grows with the
    /// output (tests and benchmarks; the daemon reads
    /// [`Dispatcher::stdout_tail`]).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn stdout_text(&self, id: &ContainerId) -> Result<String, DispatchError> {
        let mut logs = self.engine.logs(id, false, None);
        let mut text = Vec::new();
        while let Some(chunk) = logs.next().await {
            if let LogChunk::Stdout(bytes) = chunk? {
                text.extend_from_slice(&bytes);
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// The end of the container's stdout so far, for the result record on
    /// its last line: only the last `lines` lines are asked of the engine
    /// (both streams count, as the engine keeps them), and only the last
    /// `max_bytes` of their stdout are kept while reading, however long a
    /// line is. Memory stays bounded whatever a worker printed.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn stdout_tail(
        &self,
        id: &ContainerId,
        lines: u64,
        max_bytes: usize,
    ) -> Result<String, DispatchError> {
        self.tail_of(id, lines, max_bytes, |chunk| matches!(chunk, LogChunk::Stdout(_))).await
    }

    /// All of the output so far (stdout and stderr interleaved), of which
    /// only the last `max_bytes` are kept while reading; also how many bytes
    /// before them were dropped. What the daemon keeps of a worker's log
    /// before its container is removed, bounded whatever it printed.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn output_tail(
        &self,
        id: &ContainerId,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, u64), DispatchError> {
        let mut logs = self.engine.logs(id, false, None);
        let mut tail = TailBuffer::new(max_bytes);
        while let Some(chunk) = logs.next().await {
            tail.push(chunk?.bytes());
        }
        let dropped = tail.dropped();
        Ok((tail.into_bytes(), dropped))
    }

    /// The last `lines` lines of output, of which the chunks `keep` accepts
    /// are kept, at most their last `max_bytes`.
    async fn tail_of(
        &self,
        id: &ContainerId,
        lines: u64,
        max_bytes: usize,
        keep: impl Fn(&LogChunk) -> bool,
    ) -> Result<String, DispatchError> {
        let mut logs = self.engine.logs(id, false, Some(lines));
        let mut tail = TailBuffer::new(max_bytes);
        while let Some(chunk) = logs.next().await {
            let chunk = chunk?;
            if keep(&chunk) {
                tail.push(chunk.bytes());
            }
        }
        Ok(String::from_utf8_lossy(&tail.into_bytes()).into_owned())
    }

    /// SIGTERM, then SIGKILL after `grace`. Stopping a stopped container
    /// changes nothing.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), DispatchError> {
        self.engine.stop(id, grace).await?;
        info!(container_id = %id, "container stopped");
        Ok(())
    }

    /// SIGKILL at once.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn kill(&self, id: &ContainerId) -> Result<(), DispatchError> {
        self.engine.kill(id).await
    }

    /// Removes the container; a container already gone is not an error.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn remove(&self, id: &ContainerId) -> Result<(), DispatchError> {
        self.engine.remove(id).await?;
        debug!(container_id = %id, "container removed");
        Ok(())
    }
}

/// The last `max` bytes of what was pushed, in a ring of at most `max`
/// bytes: reading a worker's whole output (30 MiB on the engine's disk) to
/// keep its last 5 MiB holds 5 MiB, whatever the allocator does with a
/// growing buffer.
#[derive(Debug)]
pub(crate) struct TailBuffer {
    bytes: VecDeque<u8>,
    max: usize,
    /// Bytes pushed and dropped so far.
    dropped: u64,
}

impl TailBuffer {
    /// An empty buffer keeping `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        Self { bytes: VecDeque::new(), max, dropped: 0 }
    }

    /// Appends `chunk`, dropping the oldest bytes past the limit.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let skipped = chunk.len().saturating_sub(self.max);
        let chunk = &chunk[skipped..];
        let over = (self.bytes.len() + chunk.len()).saturating_sub(self.max);
        self.bytes.drain(..over);
        self.dropped += (skipped + over) as u64;
        // Grows by doubling, as a `Vec` would, but never past `max`.
        let wanted = self.bytes.len() + chunk.len();
        if wanted > self.bytes.capacity() {
            let room = self.bytes.capacity().saturating_mul(2).clamp(wanted, self.max);
            self.bytes.reserve_exact(room - self.bytes.len());
        }
        self.bytes.extend(chunk);
    }

    /// The last `max` bytes pushed.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes.into()
    }

    /// How many bytes pushed are not among the last `max`.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The room it holds.
    #[cfg(test)]
    pub(crate) fn bytes_held_room(&self) -> usize {
        self.bytes.capacity()
    }
}

/// The container a task gets under `config`.
pub(crate) fn spec_for(
    config: &DispatcherConfig,
    task: &TaskLabels,
    env: &[(&str, String)],
    cmd: Option<Vec<String>>,
) -> ContainerSpec {
    let mut labels = task.to_labels();
    labels.insert(label::INSTANCE.to_owned(), config.instance.clone());
    ContainerSpec {
        name: container_name(&task.task_id),
        image: config.image.clone(),
        labels,
        env: env.iter().map(|(name, value)| format!("{name}={value}")).collect(),
        entrypoint: config.entrypoint.clone(),
        cmd,
        network: config.network.clone(),
        profile: config.profile.clone(),
        mounts: Vec::new(),
    }
}

/// See [`Dispatcher::next_change`].
pub(crate) async fn next_change<E: ContainerEngine>(engine: &E) {
    let mut changes = engine.changes(label::MANAGED, "true");
    loop {
        match changes.next().await {
            // Berth starts its workers itself; only an ending is news.
            Some(Ok(Change { kind: ChangeKind::Started, .. })) => {}
            Some(Ok(_)) => return,
            // Broken or ended: the engine is restarting or gone. Do not spin.
            Some(Err(_)) | None => {
                tokio::time::sleep(BROKEN_CHANGES_PAUSE).await;
                return;
            }
        }
    }
}

/// A short name for the engine type, for messages (`DockerEngine` -> `docker`).
fn engine_kind<E>() -> String {
    let type_name = std::any::type_name::<E>();
    let type_name = type_name.split('<').next().unwrap_or(type_name);
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    short.strip_suffix("Engine").unwrap_or(short).to_ascii_lowercase()
}
