//! The container side of Berth: run, watch, find and clean up hardened worker
//! containers.
//!
//! [`Dispatcher`] speaks in tasks (`TaskId`, `TaskLabels`) over a
//! [`ContainerEngine`]; [`DockerEngine`] is the engine over the Docker Engine
//! API (the only module that names bollard). This crate knows nothing of HTTP
//! or GitHub, and never touches a container that lacks `berth.managed=true`:
//! a [`ContainerId`] can only come from our own create or from a listing or
//! inspect that checked the label.

mod dispatcher;
mod docker;
mod engine;
mod error;
pub mod image;
mod profile;

pub use dispatcher::{Dispatcher, DispatcherConfig, Launched, ManagedContainer};
pub use docker::DockerEngine;
pub use engine::{
    ContainerEngine, ContainerId, ContainerSpec, ContainerState, ContainerStatus, ExitInfo, LogChunk,
    LogStream, WaitCondition,
};
pub use error::{DispatchError, DockerError};
pub use profile::HardenedProfile;

#[cfg(test)]
mod tests;
