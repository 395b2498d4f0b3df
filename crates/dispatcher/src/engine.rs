//! The container engine seam: the few operations Berth needs, in our own
//! types. `DockerEngine` implements it, and `FakeEngine` (feature `fake`) for
//! tests; a second backend (Swarm jobs, Kubernetes Jobs) is another
//! implementation, not a rewrite.
//!
//! Nothing here is Docker's: each backend owns its own races (a wait
//! registered before a start, an event missed while disconnected) and says
//! which protections of a [`HardenedProfile`] it enforces.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;

use crate::{DispatchError, HardenedProfile};

/// An engine-assigned container id. Only the engine and the dispatcher can
/// make one, so holding one means the container was ours when it was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    pub(crate) fn new(id: String) -> Self {
        Self(id)
    }

    /// An id as an engine implementation outside this crate assigns it (the
    /// Kubernetes backend's Job names). For engine implementations only,
    /// for what they created or found, as `DockerEngine` does with its ids.
    pub fn from_engine(id: String) -> Self {
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ContainerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A Docker id (64 hex digits) in the short form `docker ps` prints;
        // any other engine's id (a Kubernetes Job's name) whole, since its
        // first 12 characters (`berth-review`) tell no two workers apart.
        let docker_id = self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit());
        f.write_str(if docker_id { self.0.get(..12).unwrap_or(&self.0) } else { &self.0 })
    }
}

/// Everything needed to create one worker container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name: at most 63 of `[a-z0-9-]`, starting and ending with a
    /// letter or digit (see [`container_name`](crate::container_name)).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Labels, all under `berth.`.
    pub labels: BTreeMap<String, String>,
    /// Environment as `NAME=value`.
    pub env: Vec<String>,
    /// Overrides the image's entrypoint, if set.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the image's CMD when `None`).
    pub cmd: Option<Vec<String>>,
    /// The network the worker joins, by name; what a name means is the
    /// backend's (for Docker, a network such as `berth-workers`, or `none`).
    /// It stays in the spec rather than in one engine's configuration because
    /// it varies per container: `berth doctor` runs one probe with no network
    /// and one on the workers' network. A backend that cannot honour a name
    /// refuses the create rather than attaching the worker elsewhere.
    pub network: String,
    /// Limits and privileges.
    pub profile: HardenedProfile,
    /// Named volumes mounted into the container (a clone cache's mirror);
    /// empty for most. An engine without named volumes refuses a spec with any.
    pub mounts: Vec<VolumeMount>,
}

/// A named volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name.
    pub volume: String,
    /// Where it appears in the container (absolute).
    pub target: String,
    /// Whether the container may only read it.
    pub read_only: bool,
}

/// A named volume as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: Option<SystemTime>,
}

/// What removing a volume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRemoval {
    /// It is gone now.
    Removed,
    /// A container (running or not) still uses it, so the engine kept it.
    InUse,
    /// There was no such volume.
    Missing,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, never started: a queued task.
    Created,
    /// Running (or paused or restarting).
    Running {
        /// When it started.
        started_at: Option<SystemTime>,
    },
    /// Exited (or dead).
    Exited(ExitInfo),
    /// Being removed.
    Removing,
    /// No such container (any more).
    Missing,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code (137 after SIGKILL, 143 after SIGTERM handled by init).
    pub code: i64,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// When it ended; never before `started_at` (see [`ExitInfo::with_times`]).
    pub finished_at: Option<SystemTime>,
}

impl ExitInfo {
    /// An exit with the start and end times an engine reported, kept in order.
    ///
    /// Docker stamps `StartedAt` after containerd has started the process and
    /// `FinishedAt` from containerd's exit event, so a process that exits
    /// within a millisecond can "finish" before it "started" (seen on Engine
    /// 20.10: finished 0.7 ms before started). Durations are computed from
    /// these, so the end is moved up to the start rather than reported first.
    #[must_use]
    pub fn with_times(
        code: i64,
        oom_killed: bool,
        started_at: Option<SystemTime>,
        finished_at: Option<SystemTime>,
    ) -> Self {
        let finished_at = match (started_at, finished_at) {
            (Some(started), Some(finished)) if finished < started => Some(started),
            _ => finished_at,
        };
        Self { code, oom_killed, started_at, finished_at }
    }
}

/// A container as inspected or listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Its id.
    pub id: ContainerId,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its status.
    pub status: ContainerStatus,
    /// When it was created.
    pub created_at: Option<SystemTime>,
}

/// One protection a [`HardenedProfile`] can ask of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protection {
    /// A memory limit.
    MemoryLimit,
    /// No swap beyond the memory limit.
    SwapLimit,
    /// A CPU quota.
    CpuLimit,
    /// A limit on processes and threads.
    PidsLimit,
    /// Running as a given non-root user.
    NonRootUser,
    /// Every Linux capability dropped (some may be added back).
    DropAllCapabilities,
    /// `no-new-privileges`.
    NoNewPrivileges,
    /// An init as PID 1 that forwards signals and reaps zombies.
    Init,
    /// Bounded logs on the host's disk.
    LogLimits,
    /// A read-only root filesystem.
    ReadOnlyRoot,
    /// Memory-backed, size-capped scratch mounts (tmpfs) at `/tmp` and `HOME`.
    ScratchTmpfs,
}

impl Protection {
    /// Every protection, in a stable order.
    pub const ALL: [Protection; 11] = [
        Protection::MemoryLimit,
        Protection::SwapLimit,
        Protection::CpuLimit,
        Protection::PidsLimit,
        Protection::NonRootUser,
        Protection::DropAllCapabilities,
        Protection::NoNewPrivileges,
        Protection::Init,
        Protection::LogLimits,
        Protection::ReadOnlyRoot,
        Protection::ScratchTmpfs,
    ];
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protection::MemoryLimit => "a memory limit",
            Protection::SwapLimit => "a swap limit",
            Protection::CpuLimit => "a cpu limit",
            Protection::PidsLimit => "a pids limit",
            Protection::NonRootUser => "a non-root user",
            Protection::DropAllCapabilities => "dropping all capabilities",
            Protection::NoNewPrivileges => "no-new-privileges",
            Protection::Init => "an init process",
            Protection::LogLimits => "log limits",
            Protection::ReadOnlyRoot => "a read-only root filesystem",
            Protection::ScratchTmpfs => "tmpfs scratch mounts",
        })
    }
}

/// "a, b and c", for error messages.
pub(crate) fn join_protections(protections: &[Protection]) -> String {
    let names: Vec<String> = protections.iter().map(ToString::to_string).collect();
    match names.split_last() {
        None => "nothing".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// Which protections an engine enforces (not merely accepts) on the
/// containers it runs. A plain record: an engine fills it in from what it
/// knows of itself, e.g. the kernel features the Docker Engine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "one independent yes/no per protection, by design")]
pub struct Capabilities {
    /// Memory limits.
    pub memory_limit: bool,
    /// Swap limits (memory plus swap).
    pub swap_limit: bool,
    /// CPU quotas.
    pub cpu_limit: bool,
    /// Process and thread limits.
    pub pids_limit: bool,
    /// Running as a given user.
    pub non_root_user: bool,
    /// Dropping all capabilities.
    pub drop_all_capabilities: bool,
    /// `no-new-privileges`.
    pub no_new_privileges: bool,
    /// An init as PID 1.
    pub init: bool,
    /// Per-container log limits.
    pub log_limits: bool,
    /// A read-only root filesystem.
    pub read_only_root: bool,
    /// Size-capped tmpfs mounts.
    pub scratch_tmpfs: bool,
    /// Named volumes that outlive a container and can be mounted into the
    /// next (the clone cache needs them). Not a protection: an engine
    /// without them still runs every worker, with no clone cache.
    pub named_volumes: bool,
}

impl Capabilities {
    /// Every protection enforced.
    pub fn all() -> Self {
        Self::only(&Protection::ALL)
    }

    /// Exactly the given protections enforced, on an engine with named
    /// volumes (set [`Capabilities::named_volumes`] false for one without).
    pub fn only(protections: &[Protection]) -> Self {
        let has = |protection| protections.contains(&protection);
        Self {
            memory_limit: has(Protection::MemoryLimit),
            swap_limit: has(Protection::SwapLimit),
            cpu_limit: has(Protection::CpuLimit),
            pids_limit: has(Protection::PidsLimit),
            non_root_user: has(Protection::NonRootUser),
            drop_all_capabilities: has(Protection::DropAllCapabilities),
            no_new_privileges: has(Protection::NoNewPrivileges),
            init: has(Protection::Init),
            log_limits: has(Protection::LogLimits),
            read_only_root: has(Protection::ReadOnlyRoot),
            scratch_tmpfs: has(Protection::ScratchTmpfs),
            named_volumes: true,
        }
    }

    /// These capabilities without `protection`.
    pub fn without(self, protection: Protection) -> Self {
        let kept: Vec<Protection> =
            Protection::ALL.into_iter().filter(|have| *have != protection && self.enforces(*have)).collect();
        Self { named_volumes: self.named_volumes, ..Self::only(&kept) }
    }

    /// Whether `protection` is enforced.
    pub fn enforces(&self, protection: Protection) -> bool {
        match protection {
            Protection::MemoryLimit => self.memory_limit,
            Protection::SwapLimit => self.swap_limit,
            Protection::CpuLimit => self.cpu_limit,
            Protection::PidsLimit => self.pids_limit,
            Protection::NonRootUser => self.non_root_user,
            Protection::DropAllCapabilities => self.drop_all_capabilities,
            Protection::NoNewPrivileges => self.no_new_privileges,
            Protection::Init => self.init,
            Protection::LogLimits => self.log_limits,
            Protection::ReadOnlyRoot => self.read_only_root,
            Protection::ScratchTmpfs => self.scratch_tmpfs,
        }
    }

    /// What `profile` asks for that these capabilities do not enforce, in
    /// [`Protection::ALL`] order; empty when the engine can run it.
    pub fn missing_for(&self, profile: &HardenedProfile) -> Vec<Protection> {
        profile.protections().into_iter().filter(|protection| !self.enforces(*protection)).collect()
    }
}

/// What an engine says about itself, for `berth doctor` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// Which backend: `docker`, `fake`, ...
    pub kind: String,
    /// Where it was reached.
    pub endpoint: String,
    /// The engine's version, e.g. `20.10.24`.
    pub version: String,
    /// The API version spoken, e.g. `1.41` (empty when the backend has none).
    pub api_version: String,
    /// The storage driver (`overlay2`, `fuse-overlayfs`, ...), when the
    /// backend has such a thing.
    pub storage_driver: Option<String>,
}

/// Whether an image is on the engine (Berth never pulls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageStatus {
    /// Present, with the engine's id for it.
    Present {
        /// The image id (`sha256:...` on Docker).
        id: String,
    },
    /// Not present.
    Missing,
}

/// What happened to a container, as an engine's event stream tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It started.
    Started,
    /// Its process ended (exit, kill or OOM); inspect for how.
    Died,
    /// It was removed.
    Removed,
}

/// One change to a container: a hint to look again, never a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The container.
    pub id: ContainerId,
    /// What happened.
    pub kind: ChangeKind,
}

/// A stream of changes. It may miss changes and may end or fail at any time
/// (an engine restart, a slow reader); the caller then resyncs by listing.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Change, DispatchError>> + Send>>;

/// One piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChunk {
    /// From stdout.
    Stdout(Bytes),
    /// From stderr.
    Stderr(Bytes),
}

impl LogChunk {
    /// The bytes of the chunk.
    pub fn bytes(&self) -> &Bytes {
        match self {
            LogChunk::Stdout(bytes) | LogChunk::Stderr(bytes) => bytes,
        }
    }
}

/// A stream of output.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, DispatchError>> + Send>>;

/// The operations Berth needs from a container engine.
pub trait ContainerEngine: Send + Sync + 'static {
    /// Which protections this engine enforces.
    fn capabilities(&self) -> Capabilities;
    /// What the engine is: kind, version, storage.
    fn describe(&self) -> impl Future<Output = Result<EngineInfo, DispatchError>> + Send;
    /// Whether `image` is present (it is never pulled).
    fn image_status(&self, image: &str) -> impl Future<Output = Result<ImageStatus, DispatchError>> + Send;
    /// Creates a container. A name already in use is `Ok(None)`: the caller
    /// decides whether the holder is the same task.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<Option<ContainerId>, DispatchError>> + Send;
    /// Starts a created container; starting a running one is not an error.
    fn start(&self, id: &ContainerId) -> impl Future<Output = Result<(), DispatchError>> + Send;
    /// Inspects a container by id or name; `Ok(None)` when there is none.
    fn inspect(
        &self,
        id_or_name: &str,
    ) -> impl Future<Output = Result<Option<ContainerState>, DispatchError>> + Send;
    /// Waits until the container has exited and returns how, from any state:
    /// at once when it already exited; when it is created, until it has been
    /// started and has exited. The backend closes its own races (a start or
    /// an exit between a look and a wait).
    ///
    /// # Errors
    /// [`DispatchError::ContainerNotFound`] when it is gone; engine failures.
    fn wait(&self, id: &ContainerId) -> impl Future<Output = Result<ExitInfo, DispatchError>> + Send;
    /// Every container (any state) carrying `label=value`.
    fn list_by_label(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<ContainerState>, DispatchError>> + Send;
    /// Output so far (`follow == false`) or as it comes until exit (`follow == true`).
    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream;
    /// Changes (start, death, removal) to containers carrying `label=value`,
    /// from about now on: hints that let a watcher look again early. See
    /// [`ChangeStream`] for what they do not promise.
    fn changes(&self, label: &str, value: &str) -> ChangeStream;
    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(
        &self,
        id: &ContainerId,
        grace: Duration,
    ) -> impl Future<Output = Result<(), DispatchError>> + Send;
    /// SIGKILL at once.
    fn kill(&self, id: &ContainerId) -> impl Future<Output = Result<(), DispatchError>> + Send;
    /// Removes a container (forcing, so a running one is killed first).
    /// Removing one that is already gone is not an error.
    fn remove(&self, id: &ContainerId) -> impl Future<Output = Result<(), DispatchError>> + Send;
    /// Creates the named volume, or answers the one of that name that
    /// exists already (with its own labels, which the caller checks).
    /// An engine without named volumes answers [`DispatchError::VolumesUnsupported`].
    fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Volume, DispatchError>> + Send {
        let _ = (name, labels);
        let engine = std::any::type_name::<Self>().rsplit("::").next().unwrap_or("this").to_owned();
        async { Err(DispatchError::VolumesUnsupported { engine }) }
    }
    /// Every volume carrying `label=value` (none on an engine without volumes).
    fn list_volumes(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<Volume>, DispatchError>> + Send {
        let _ = (label, value);
        async { Ok(Vec::new()) }
    }
    /// Removes a volume unless a container uses it: never forced, so the
    /// engine itself refuses while any container (running or not) has it.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<VolumeRemoval, DispatchError>> + Send {
        let _ = name;
        async { Ok(VolumeRemoval::Missing) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::ExitInfo;

    #[test]
    fn an_exit_never_ends_before_it_started() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_796_055_073_246_856_392);
        // The times Engine 20.10 reported for `exit 1` in CI.
        let reported = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_796_055_073_246_183_613);
        let exit = ExitInfo::with_times(1, false, Some(started), Some(reported));
        assert_eq!(exit.finished_at, Some(started));

        let later = started + Duration::from_millis(5);
        assert_eq!(ExitInfo::with_times(0, false, Some(started), Some(later)).finished_at, Some(later));
        assert_eq!(ExitInfo::with_times(0, false, None, Some(reported)).finished_at, Some(reported));
        assert_eq!(ExitInfo::with_times(0, false, Some(started), None).finished_at, None);
    }
}
