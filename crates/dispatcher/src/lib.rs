//! The container side of Berth: run, watch, find and clean up hardened worker
//! containers.
//!
//! [`Dispatcher`] speaks in tasks (`TaskId`, `TaskLabels`) over a
//! [`ContainerEngine`]; [`DockerEngine`] is the engine over the Docker Engine
//! API (the only module that names bollard besides the error's opaque
//! wrapper), and `FakeEngine` (feature `fake`) an in-memory one for tests. This crate knows nothing of HTTP
//! or GitHub, and never touches a container that lacks `berth.managed=true`:
//! a [`ContainerId`] can only come from our own create or from a listing or
//! inspect that checked the label.

pub mod cache;
mod dispatcher;
mod docker;
mod engine;
mod error;
#[cfg(feature = "fake")]
mod fake;
pub mod image;
mod name;
mod profile;

pub use cache::{CACHE_MOUNT, CacheEntry, CacheRefused, CacheVolume, RefreshEnd};
pub use dispatcher::{Dispatcher, DispatcherConfig, Launched, ManagedContainer};
pub use docker::DockerEngine;
pub use engine::{
    Capabilities, Change, ChangeKind, ChangeStream, ContainerEngine, ContainerId, ContainerSpec,
    ContainerState, ContainerStatus, EngineInfo, ExitInfo, ImageStatus, LogChunk, LogStream, Protection,
    Volume, VolumeMount, VolumeRemoval,
};
pub use error::{DispatchError, DockerError, EngineError};
#[cfg(feature = "fake")]
pub use fake::{FakeCalls, FakeEngine, Program};
pub use name::{MAX_CONTAINER_NAME_LEN, container_name};
pub use profile::HardenedProfile;

#[cfg(test)]
mod tests;
