//! The engine the daemon runs workers on, chosen by `BERTH_ENGINE`: Docker
//! on this host, or Kubernetes Jobs in one namespace. An enum that delegates,
//! since the seam's `impl Future` methods cannot be called through `dyn`.

use std::time::Duration;

use dispatcher::{
    Capabilities, ChangeStream, ContainerEngine, ContainerId, ContainerSpec, ContainerState, DispatchError,
    DockerEngine, EngineInfo, ExitInfo, HardenedProfile, ImageStatus, LogStream,
};
use kubernetes::{KubernetesEngine, KubernetesOptions};

/// Which engine, as `BERTH_ENGINE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// The Docker Engine on this host, over its unix socket.
    #[default]
    Docker,
    /// Kubernetes: one Job per task in `BERTH_KUBE_NAMESPACE`.
    Kubernetes,
}

/// The engine chosen by the settings, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    /// Which.
    pub kind: EngineKind,
    /// The Kubernetes namespace (unused on Docker).
    pub namespace: String,
}

impl EngineChoice {
    /// Connects to the engine once.
    ///
    /// # Errors
    /// When it does not answer (Docker's socket, or no kubeconfig or
    /// service account, or an API server that does not answer).
    pub async fn connect(&self, options: KubernetesOptions) -> Result<Engine, DispatchError> {
        match self.kind {
            EngineKind::Docker => DockerEngine::connect_local().await.map(Engine::Docker),
            EngineKind::Kubernetes => {
                KubernetesEngine::connect(self.namespace.clone(), options).await.map(Engine::Kubernetes)
            }
        }
    }

    /// The worker profile as this engine can enforce it. A pod cannot be
    /// given a pids limit, an init or log limits; on Kubernetes those come
    /// from the cluster (kubelet `podPidsLimit`, an init such as tini in the
    /// image, the kubelet's log rotation), and the daemon says so at start.
    pub fn fit(&self, profile: HardenedProfile) -> HardenedProfile {
        match self.kind {
            EngineKind::Docker => profile,
            EngineKind::Kubernetes => KubernetesEngine::fit_profile(profile),
        }
    }

    /// The engine's name, for logs and doctor.
    pub fn name(&self) -> &'static str {
        match self.kind {
            EngineKind::Docker => "docker",
            EngineKind::Kubernetes => "kubernetes",
        }
    }
}

/// One of the engines.
#[derive(Clone)]
pub enum Engine {
    /// Docker.
    Docker(DockerEngine),
    /// Kubernetes.
    Kubernetes(KubernetesEngine),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Docker(_) => "Engine::Docker",
            Engine::Kubernetes(_) => "Engine::Kubernetes",
        })
    }
}

macro_rules! delegate {
    ($self:ident, $engine:ident => $call:expr) => {
        match $self {
            Engine::Docker($engine) => $call,
            Engine::Kubernetes($engine) => $call,
        }
    };
}

impl ContainerEngine for Engine {
    fn capabilities(&self) -> Capabilities {
        delegate!(self, engine => engine.capabilities())
    }

    async fn describe(&self) -> Result<EngineInfo, DispatchError> {
        delegate!(self, engine => engine.describe().await)
    }

    async fn image_status(&self, image: &str) -> Result<ImageStatus, DispatchError> {
        delegate!(self, engine => engine.image_status(image).await)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Option<ContainerId>, DispatchError> {
        delegate!(self, engine => engine.create(spec).await)
    }

    async fn start(&self, id: &ContainerId) -> Result<(), DispatchError> {
        delegate!(self, engine => engine.start(id).await)
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerState>, DispatchError> {
        delegate!(self, engine => engine.inspect(id_or_name).await)
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        delegate!(self, engine => engine.wait(id).await)
    }

    async fn list_by_label(&self, label: &str, value: &str) -> Result<Vec<ContainerState>, DispatchError> {
        delegate!(self, engine => engine.list_by_label(label, value).await)
    }

    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream {
        delegate!(self, engine => engine.logs(id, follow, tail))
    }

    fn changes(&self, label: &str, value: &str) -> ChangeStream {
        delegate!(self, engine => engine.changes(label, value))
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), DispatchError> {
        delegate!(self, engine => engine.stop(id, grace).await)
    }

    async fn kill(&self, id: &ContainerId) -> Result<(), DispatchError> {
        delegate!(self, engine => engine.kill(id).await)
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), DispatchError> {
        delegate!(self, engine => engine.remove(id).await)
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<dispatcher::Volume, DispatchError> {
        delegate!(self, engine => engine.create_volume(name, labels).await)
    }

    async fn list_volumes(&self, label: &str, value: &str) -> Result<Vec<dispatcher::Volume>, DispatchError> {
        delegate!(self, engine => engine.list_volumes(label, value).await)
    }

    async fn remove_volume(&self, name: &str) -> Result<dispatcher::VolumeRemoval, DispatchError> {
        delegate!(self, engine => engine.remove_volume(name).await)
    }
}
