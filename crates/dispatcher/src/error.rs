//! The dispatcher's one error type.

use std::fmt;

use core_types::TaskId;

/// A failure of the container engine, kept opaque so callers cannot match on
/// the engine client's internals (bollard's for Docker, another client's for
/// a second backend).
#[derive(Debug)]
pub struct EngineError(pub(crate) Repr);

/// The former name of [`EngineError`], from when Docker was the only engine.
pub type DockerError = EngineError;

#[derive(Debug)]
pub(crate) enum Repr {
    /// What the Docker Engine (or the way to it) said.
    Docker(bollard::errors::Error),
    /// Any other backend's failure, already put in words.
    Other {
        /// What went wrong.
        message: String,
        /// Whether the engine was away rather than refusing.
        transient: bool,
    },
}

impl EngineError {
    pub(crate) fn docker(source: bollard::errors::Error) -> Self {
        Self(Repr::Docker(source))
    }

    /// A failure of a backend other than Docker: `transient` when the engine
    /// was not there to answer (worth retrying once it is back), false when
    /// it answered with a refusal.
    pub fn other(message: impl Into<String>, transient: bool) -> Self {
        Self(Repr::Other { message: message.into(), transient })
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            // bollard's own text repeats "Docker responded with status code"; keep the message.
            Repr::Docker(bollard::errors::Error::DockerResponseServerError { status_code, message }) => {
                write!(f, "engine answered {status_code}: {message}")
            }
            Repr::Docker(other) => write!(f, "{other}"),
            Repr::Other { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for EngineError {}

/// What went wrong while driving containers, named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The engine could not be reached at all.
    #[error("cannot reach the container engine at {endpoint}")]
    EngineUnreachable {
        /// The socket or URL tried.
        endpoint: String,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The worker image is not present on the engine (and is never pulled).
    #[error("worker image {image} is not present on the engine (build or load it first; berth never pulls)")]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// Creating the task's container failed.
    #[error("failed to create container for task {task_id}")]
    CreateFailed {
        /// The task.
        task_id: TaskId,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The name `berth-<task id>` is held by a container that is not this task.
    #[error("container name {name} is taken by a container that is not task {task_id} ({reason})")]
    NameTaken {
        /// The task.
        task_id: TaskId,
        /// The container name.
        name: String,
        /// Why the holder is not this task.
        reason: String,
    },
    /// The container is gone (or never existed).
    #[error("container {container} not found while trying to {operation}")]
    ContainerNotFound {
        /// Name or id.
        container: String,
        /// What we were doing.
        operation: &'static str,
    },
    /// Starting failed.
    #[error("failed to start container {container}")]
    StartFailed {
        /// Name or id.
        container: String,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// Any other engine call failed.
    #[error("failed to {operation} container {container}")]
    EngineCall {
        /// What we were doing.
        operation: &'static str,
        /// Name or id.
        container: String,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// Listing containers failed.
    #[error("failed to list managed containers")]
    ListFailed {
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The wait stream ended without an exit status.
    #[error("wait for container {container} ended without an exit status")]
    WaitEnded {
        /// Name or id.
        container: String,
    },
    /// A container carries `berth.managed=true` but its labels do not read.
    #[error("container {container} has unreadable berth labels")]
    BadLabels {
        /// Name or id.
        container: String,
        /// Why.
        #[source]
        source: core_types::LabelError,
    },
    /// Following the engine's container events failed or broke off.
    #[error("failed to follow the engine's container events")]
    WatchFailed {
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The worker profile asks for protections this engine does not enforce.
    #[error(
        "the {engine} engine does not enforce {} that the worker profile asks for; \
         use an engine that does, or relax the profile",
        crate::engine::join_protections(.missing)
    )]
    ProfileUnsupported {
        /// The engine's kind (`docker`, ...).
        engine: String,
        /// Every protection asked for and not enforced.
        missing: Vec<crate::Protection>,
    },
    /// Building an image failed.
    #[error("failed to build image {image}: {reason}")]
    BuildFailed {
        /// The tag being built.
        image: String,
        /// What the build said.
        reason: String,
    },
    /// A call about a named volume (a clone cache) failed.
    #[error("failed to {operation} volume {volume}")]
    VolumeCall {
        /// What we were doing.
        operation: &'static str,
        /// The volume's name.
        volume: String,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// A refresh of the repository's mirror is already under way elsewhere.
    #[error("the refresh container {name} is held by another refresh of the same repository")]
    RefreshBusy {
        /// The refresh container's name.
        name: String,
    },
    /// The engine has no named volumes (see [`Capabilities::named_volumes`](crate::Capabilities)).
    #[error("the engine ({engine}) has no named volumes")]
    VolumesUnsupported {
        /// The engine's kind.
        engine: String,
    },
    /// Preparing an image's files on the host failed.
    #[error("failed to prepare image context: {what}")]
    ContextFailed {
        /// What was being prepared.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Whether the engine was not there to answer (socket missing, connection
    /// refused or dropped, timed out), as while dockerd restarts, rather than
    /// answering with a refusal. Worth retrying once it is back.
    pub fn is_transient(&self) -> bool {
        use bollard::errors::Error;
        let error = match &self.0 {
            Repr::Docker(error) => error,
            Repr::Other { transient, .. } => return *transient,
        };
        // A socket we may not open stays closed to us: that is for an operator.
        if let Error::IOError { err } = error
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            return false;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::PermissionDenied
            {
                return false;
            }
            source = error.source();
        }
        match error {
            Error::DockerResponseServerError { status_code, message } => {
                // What dockerd says while it shuts down or before it is ready.
                *status_code == 503
                    || (*status_code >= 500
                        && (message.contains("shutting down") || message.contains("daemon is not running")))
            }
            Error::IOError { .. }
            | Error::HyperResponseError { .. }
            | Error::HyperLegacyError { .. }
            | Error::RequestTimeoutError
            | Error::SocketNotFoundError(_) => true,
            _ => false,
        }
    }
}

impl DispatchError {
    /// Whether this failed because the engine could not be reached, so the
    /// same call may succeed once it is back (see [`EngineError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::EngineUnreachable { .. } => true,
            Self::CreateFailed { source, .. }
            | Self::StartFailed { source, .. }
            | Self::EngineCall { source, .. }
            | Self::ListFailed { source }
            | Self::VolumeCall { source, .. }
            | Self::WatchFailed { source } => source.is_transient(),
            Self::WaitEnded { .. } => true,
            _ => false,
        }
    }
}
