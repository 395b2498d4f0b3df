//! The container engine seam: the few operations Berth needs, in our own
//! types. `DockerEngine` implements it; a second backend (Swarm jobs,
//! Kubernetes Jobs) is another implementation, not a rewrite.

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

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The short form, as `docker ps` prints it.
        f.write_str(self.0.get(..12).unwrap_or(&self.0))
    }
}

/// Everything needed to create one worker container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (`berth-<task id>`).
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
    /// Docker network to attach to.
    pub network: String,
    /// Limits and privileges.
    pub profile: HardenedProfile,
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
    /// When it ended.
    pub finished_at: Option<SystemTime>,
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

/// Which exit a wait waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// Returns once the container is not running; at once for a created or
    /// exited container.
    NotRunning,
    /// Returns at the next exit; correct for a created container, never
    /// returns for one that already exited.
    NextExit,
}

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
    /// Waits for an exit and returns its code.
    fn wait(
        &self,
        id: &ContainerId,
        condition: WaitCondition,
    ) -> impl Future<Output = Result<i64, DispatchError>> + Send;
    /// Every container (any state) carrying `label=value`.
    fn list_by_label(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<ContainerState>, DispatchError>> + Send;
    /// Output so far (`follow == false`) or as it comes until exit (`follow == true`).
    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream;
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
}
