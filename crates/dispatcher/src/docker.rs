//! The Docker Engine behind the [`ContainerEngine`] seam, over bollard.
//!
//! This is the only module that names `bollard::`. It translates the
//! engine's Option-heavy models into ours at the boundary and turns the
//! engine's status codes into [`DispatchError`]s that say what was being done.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig, Mount, MountType,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::engine::{
    Capabilities, Change, ChangeKind, ChangeStream, ContainerEngine, ContainerId, ContainerSpec,
    ContainerState, ContainerStatus, EngineInfo, ExitInfo, ImageStatus, LogChunk, LogStream, Volume,
    VolumeRemoval,
};
use crate::{DispatchError, EngineError};

/// How many inspects a listing runs at once.
const LIST_INSPECT_CONCURRENCY: usize = 16;

/// How often a wait on a created container looks again by inspect, covering
/// the moment between a `next-exit` wait being sent and being registered (a
/// container started and ended in that moment is otherwise never seen to exit).
const CREATED_WAIT_RECHECK: Duration = Duration::from_secs(2);

/// A SIGKILLed worker read without the OOM flag is looked at again this
/// often, this many times, before the kill is taken as one from outside:
/// Docker sets `State.OOMKilled` from containerd's OOM event, applied in the
/// order containerd delivers it, which can be after the exit that ended the
/// wait (seen once in CI, on Engine 20.10).
const OOM_FLAG_RECHECK: Duration = Duration::from_millis(100);
const OOM_FLAG_LOOKS: usize = 5;

/// The Docker Engine API on a unix socket.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    capabilities: Capabilities,
}

fn status_code(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerEngine {
    /// Connects to the local engine: `DOCKER_HOST` when it names a unix
    /// socket, else `/var/run/docker.sock`; negotiates the API version.
    ///
    /// # Errors
    /// [`DispatchError::EngineUnreachable`] when the socket does not answer.
    pub async fn connect_local() -> Result<Self, DispatchError> {
        let endpoint = "the local docker socket (DOCKER_HOST or /var/run/docker.sock)".to_owned();
        let docker =
            Docker::connect_with_unix_defaults().map_err(|source| DispatchError::EngineUnreachable {
                endpoint: endpoint.clone(),
                source: EngineError::docker(source),
            })?;
        Self::negotiate(docker, endpoint).await
    }

    /// Connects to the engine on the unix socket at `path`.
    ///
    /// # Errors
    /// [`DispatchError::EngineUnreachable`] when the socket does not answer.
    pub async fn connect_unix(path: &str) -> Result<Self, DispatchError> {
        let endpoint = path.to_owned();
        let docker =
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION).map_err(|source| {
                DispatchError::EngineUnreachable {
                    endpoint: endpoint.clone(),
                    source: EngineError::docker(source),
                }
            })?;
        Self::negotiate(docker, endpoint).await
    }

    async fn negotiate(docker: Docker, endpoint: String) -> Result<Self, DispatchError> {
        let unreachable = |source| DispatchError::EngineUnreachable {
            endpoint: endpoint.clone(),
            source: EngineError::docker(source),
        };
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        // The kernel features the engine found at its start: without swap
        // accounting (cgroup v1 without `swapaccount=1`), for one, Docker
        // accepts a swap limit, warns, and does not enforce it.
        let info = docker.info().await.map_err(unreachable)?;
        let capabilities = Capabilities {
            memory_limit: info.memory_limit.unwrap_or(true),
            swap_limit: info.swap_limit.unwrap_or(true),
            cpu_limit: info.cpu_cfs_quota.unwrap_or(true),
            pids_limit: info.pids_limit.unwrap_or(true),
            ..Capabilities::all()
        };
        Ok(Self { docker, endpoint, capabilities })
    }

    /// Where this engine was reached.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The engine's version and API version, e.g. `("20.10.24", "1.41")`.
    ///
    /// # Errors
    /// [`DispatchError::EngineUnreachable`] when the engine does not answer.
    pub async fn version(&self) -> Result<(String, String), DispatchError> {
        let version = self.docker.version().await.map_err(|source| DispatchError::EngineUnreachable {
            endpoint: self.endpoint.clone(),
            source: EngineError::docker(source),
        })?;
        Ok((version.version.unwrap_or_default(), version.api_version.unwrap_or_default()))
    }

    /// The engine's storage driver (`overlay2`, `fuse-overlayfs`, ...).
    ///
    /// # Errors
    /// [`DispatchError::EngineUnreachable`] when the engine does not answer.
    pub async fn storage_driver(&self) -> Result<String, DispatchError> {
        let info = self.docker.info().await.map_err(|source| DispatchError::EngineUnreachable {
            endpoint: self.endpoint.clone(),
            source: EngineError::docker(source),
        })?;
        Ok(info.driver.unwrap_or_default())
    }

    /// The `HOME` an image's configuration sets, if any: a read-only root
    /// gets a tmpfs there. Asked at every create (one local call), so a
    /// rebuilt image is read afresh.
    async fn image_home(&self, image: &str) -> Result<Option<String>, DispatchError> {
        let inspected = match self.docker.inspect_image(image).await {
            Ok(inspected) => inspected,
            Err(err) if status_code(&err) == Some(404) => {
                return Err(DispatchError::ImageMissing { image: image.to_owned() });
            }
            Err(source) => {
                return Err(DispatchError::EngineCall {
                    operation: "inspect image of",
                    container: image.to_owned(),
                    source: EngineError::docker(source),
                });
            }
        };
        let env = inspected.config.and_then(|config| config.env).unwrap_or_default();
        Ok(env
            .iter()
            .find_map(|pair| pair.strip_prefix("HOME="))
            .filter(|home| !home.is_empty())
            .map(str::to_owned))
    }

    /// Whether an image is present locally ([`ContainerEngine::image_status`]
    /// without the id).
    ///
    /// # Errors
    /// When the engine cannot be asked.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DispatchError> {
        Ok(matches!(self.image_status(image).await?, ImageStatus::Present { .. }))
    }

    /// Builds `tag` from an in-memory tar context with the classic builder
    /// (no registry needed for `FROM scratch`). `progress` gets each line the
    /// build prints.
    ///
    /// # Errors
    /// [`DispatchError::BuildFailed`] with the builder's message.
    pub async fn build_image(
        &self,
        tag: &str,
        context_tar: Vec<u8>,
        mut progress: impl FnMut(&str) + Send,
    ) -> Result<(), DispatchError> {
        let options = BuildImageOptionsBuilder::new().t(tag).rm(true).forcerm(true).build();
        let failed = |reason: String| DispatchError::BuildFailed { image: tag.to_owned(), reason };
        let mut build = self.docker.build_image(options, None, Some(bollard::body_full(context_tar.into())));
        while let Some(step) = build.next().await {
            let info = step.map_err(|err| failed(EngineError::docker(err).to_string()))?;
            if let Some(detail) = info.error_detail {
                return Err(failed(detail.message.unwrap_or_else(|| "unknown build error".to_owned())));
            }
            if let Some(line) = info.stream.as_deref().map(str::trim_end).filter(|line| !line.is_empty()) {
                progress(line);
            }
        }
        Ok(())
    }

    /// Removes an image; a missing one is not an error.
    ///
    /// # Errors
    /// When the engine refuses (for example, a container still uses it).
    pub async fn remove_image(&self, image: &str) -> Result<(), DispatchError> {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            Err(source) => Err(DispatchError::EngineCall {
                operation: "remove image of",
                container: image.to_owned(),
                source: EngineError::docker(source),
            }),
        }
    }

    /// The gateway address of a network: this host, as containers on that
    /// network reach it. When the engine reports only the subnet, the gateway
    /// is its first address (Docker's rule).
    ///
    /// # Errors
    /// When the network does not exist or has no IPv4 subnet.
    pub async fn network_gateway(&self, network: &str) -> Result<std::net::IpAddr, DispatchError> {
        let found = self
            .docker
            .inspect_network(network, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
            .map_err(|source| Self::call_failed("inspect network", network, source))?;
        let configs = found.ipam.and_then(|ipam| ipam.config).unwrap_or_default();
        if let Some(gateway) = configs.iter().find_map(|config| config.gateway.as_deref()?.parse().ok()) {
            return Ok(gateway);
        }
        configs
            .iter()
            .find_map(|config| {
                let (address, _) = config.subnet.as_deref()?.split_once('/')?;
                address.parse::<std::net::Ipv4Addr>().ok()
            })
            .map(|subnet| std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(subnet) + 1)))
            .ok_or_else(|| DispatchError::ContainerNotFound {
                container: network.to_owned(),
                operation: "find the gateway of network",
            })
    }

    /// Resolves when the engine reports that a managed container died or was
    /// removed, or when its event stream breaks. Events are
    /// hints only: the engine drops them for slow readers and forgets them
    /// when it restarts, so the caller resyncs by listing either way. The
    /// same as [`Dispatcher::next_change`](crate::Dispatcher::next_change),
    /// kept for callers that hold the engine.
    pub async fn next_change(&self) {
        crate::dispatcher::next_change(self).await;
    }

    /// Waits for the wait `condition` of the engine and returns when it is met.
    async fn wait_for(&self, id: &ContainerId, condition: &str) -> Result<(), DispatchError> {
        let options = WaitContainerOptionsBuilder::new().condition(condition).build();
        let mut wait = self.docker.wait_container(id.as_str(), Some(options));
        match wait.next().await {
            // A non-zero exit is an outcome, not a failure of ours; the exit
            // itself is read by inspect.
            Some(Ok(_) | Err(BollardError::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(source)) => Err(Self::call_failed("wait for", id.as_str(), source)),
            None => Err(DispatchError::WaitEnded { container: id.to_string() }),
        }
    }

    /// `exit`, or the same exit with the OOM flag once Docker has set it: a
    /// 137 without the flag is looked at again for up to half a second.
    async fn oom_flag_settled(&self, id: &ContainerId, exit: ExitInfo) -> ExitInfo {
        if exit.code != 137 || exit.oom_killed {
            return exit;
        }
        for _ in 0..OOM_FLAG_LOOKS {
            tokio::time::sleep(OOM_FLAG_RECHECK).await;
            match self.inspect(id.as_str()).await {
                Ok(Some(ContainerState { status: ContainerStatus::Exited(later), .. }))
                    if later.oom_killed =>
                {
                    return later;
                }
                Ok(Some(ContainerState { status: ContainerStatus::Exited(_), .. })) => {}
                // Gone, restarted or unreadable: what was read stands.
                _ => break,
            }
        }
        exit
    }

    fn call_failed(operation: &'static str, container: &str, source: BollardError) -> DispatchError {
        if status_code(&source) == Some(404) {
            DispatchError::ContainerNotFound { container: container.to_owned(), operation }
        } else {
            DispatchError::EngineCall {
                operation,
                container: container.to_owned(),
                source: EngineError::docker(source),
            }
        }
    }
}

/// The tmpfs mounts of a read-only root: `/tmp` for everyone, and the
/// image's `HOME` (if it has one outside `/tmp`) owned by the worker's user.
fn scratch_mounts(profile: &crate::HardenedProfile, home: Option<&str>) -> HashMap<String, String> {
    let size = profile.scratch_bytes;
    let mut mounts = HashMap::from([("/tmp".to_owned(), format!("rw,nosuid,nodev,size={size},mode=1777"))]);
    if let Some(home) = home.filter(|home| home.starts_with('/') && *home != "/" && !home.starts_with("/tmp"))
    {
        let (uid, gid) = profile.user.split_once(':').unwrap_or((&profile.user, &profile.user));
        let owner = if uid.bytes().all(|b| b.is_ascii_digit()) && gid.bytes().all(|b| b.is_ascii_digit()) {
            format!(",uid={uid},gid={gid},mode=0700")
        } else {
            ",mode=1777".to_owned()
        };
        mounts.insert(home.to_owned(), format!("rw,nosuid,nodev,size={size}{owner}"));
    }
    mounts
}

fn create_body(spec: &ContainerSpec, home: Option<&str>) -> ContainerCreateBody {
    let profile = &spec.profile;
    let mut security_opt = Vec::new();
    if profile.no_new_privileges {
        security_opt.push("no-new-privileges".to_owned());
    }
    let host_config = HostConfig {
        memory: Some(profile.memory_bytes),
        memory_swap: Some(profile.memory_swap_bytes),
        nano_cpus: Some(profile.nano_cpus),
        pids_limit: Some(profile.pids_limit),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: (!profile.cap_add.is_empty()).then(|| profile.cap_add.clone()),
        security_opt: Some(security_opt),
        init: Some(profile.init),
        privileged: Some(false),
        network_mode: Some(spec.network.clone()),
        readonly_rootfs: Some(profile.read_only_root),
        tmpfs: profile.read_only_root.then(|| scratch_mounts(profile, home)),
        mounts: (!spec.mounts.is_empty()).then(|| {
            spec.mounts
                .iter()
                .map(|mount| Mount {
                    target: Some(mount.target.clone()),
                    source: Some(mount.volume.clone()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(mount.read_only),
                    ..Default::default()
                })
                .collect()
        }),
        // Keep the exited container: its exit code, OOM flag and logs are
        // read after it ends (an auto-removed container loses all three).
        auto_remove: Some(false),
        // Bounded on disk whatever the engine's defaults (a fresh engine has
        // none), and in a driver whose logs the daemon can read back.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), profile.log_max_bytes.to_string()),
                ("max-file".to_owned(), profile.log_max_files.to_string()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(profile.user.clone()),
        env: Some(spec.env.clone()),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        labels: Some(spec.labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

impl ContainerEngine for DockerEngine {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn describe(&self) -> Result<EngineInfo, DispatchError> {
        let (version, api_version) = self.version().await?;
        let storage_driver = self.storage_driver().await?;
        Ok(EngineInfo {
            kind: "docker".to_owned(),
            endpoint: self.endpoint.clone(),
            version,
            api_version,
            storage_driver: Some(storage_driver).filter(|driver| !driver.is_empty()),
        })
    }

    async fn image_status(&self, image: &str) -> Result<ImageStatus, DispatchError> {
        match self.docker.inspect_image(image).await {
            Ok(inspected) => Ok(ImageStatus::Present { id: inspected.id.unwrap_or_default() }),
            Err(err) if status_code(&err) == Some(404) => Ok(ImageStatus::Missing),
            Err(source) => Err(DispatchError::EngineCall {
                operation: "inspect image of",
                container: image.to_owned(),
                source: EngineError::docker(source),
            }),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Option<ContainerId>, DispatchError> {
        let home = if spec.profile.read_only_root { self.image_home(&spec.image).await? } else { None };
        let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        match self.docker.create_container(Some(options), create_body(spec, home.as_deref())).await {
            Ok(created) => Ok(Some(ContainerId::new(created.id))),
            Err(err) if status_code(&err) == Some(409) => Ok(None),
            Err(err) if status_code(&err) == Some(404) => {
                Err(DispatchError::ImageMissing { image: spec.image.clone() })
            }
            Err(source) => Err(DispatchError::EngineCall {
                operation: "create",
                container: spec.name.clone(),
                source: EngineError::docker(source),
            }),
        }
    }

    async fn start(&self, id: &ContainerId) -> Result<(), DispatchError> {
        self.docker.start_container(id.as_str(), None).await.map_err(|source| {
            if status_code(&source) == Some(404) {
                DispatchError::ContainerNotFound { container: id.to_string(), operation: "start" }
            } else {
                DispatchError::StartFailed { container: id.to_string(), source: EngineError::docker(source) }
            }
        })
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerState>, DispatchError> {
        let response = match self.docker.inspect_container(id_or_name, None::<InspectContainerOptions>).await
        {
            Ok(response) => response,
            Err(err) if status_code(&err) == Some(404) => return Ok(None),
            Err(source) => return Err(Self::call_failed("inspect", id_or_name, source)),
        };
        let state = response.state.unwrap_or_default();
        let started_at = state.started_at.as_deref().and_then(parse_time);
        let status = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                ContainerStatus::Exited(ExitInfo::with_times(
                    state.exit_code.unwrap_or(-1),
                    state.oom_killed.unwrap_or(false),
                    started_at,
                    state.finished_at.as_deref().and_then(parse_time),
                ))
            }
            Some(ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
            _ => ContainerStatus::Running { started_at },
        };
        Ok(Some(ContainerState {
            id: ContainerId::new(response.id.unwrap_or_default()),
            name: response.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            labels: response
                .config
                .and_then(|config| config.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            status,
            created_at: response.created.as_deref().and_then(parse_time),
        }))
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        // The common case first, with no look before it: a started worker's
        // `not-running` returns at its exit (at once if it already exited),
        // and the look after it says how it ended. A created one also returns
        // at once; the loop below then waits for it properly.
        self.wait_for(id, "not-running").await?;
        // Look, wait as the state asks, and look again: the state read after
        // a wait is the truth (the wait only says "something ended").
        loop {
            let status =
                self.inspect(id.as_str()).await?.map_or(ContainerStatus::Missing, |state| state.status);
            match status {
                ContainerStatus::Exited(exit) => return Ok(self.oom_flag_settled(id, exit).await),
                ContainerStatus::Missing => {
                    return Err(DispatchError::ContainerNotFound {
                        container: id.to_string(),
                        operation: "wait for",
                    });
                }
                // `not-running` returns at once for a created container: wait
                // for its next exit instead, and look again now and then in
                // case it started and exited before that wait was registered.
                ContainerStatus::Created => {
                    tokio::select! {
                        result = self.wait_for(id, "next-exit") => result?,
                        () = tokio::time::sleep(CREATED_WAIT_RECHECK) => {}
                    }
                }
                ContainerStatus::Running { .. } | ContainerStatus::Removing => {
                    self.wait_for(id, "not-running").await?;
                }
            }
        }
    }

    async fn list_by_label(&self, label: &str, value: &str) -> Result<Vec<ContainerState>, DispatchError> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DispatchError::ListFailed { source: EngineError::docker(source) })?;
        let ids: Vec<String> = summaries.into_iter().filter_map(|summary| summary.id).collect();
        // A container removed between the list and its inspect is simply gone.
        let states: Vec<Option<ContainerState>> = stream::iter(ids)
            .map(|id| async move { self.inspect(&id).await })
            .buffered(LIST_INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(states.into_iter().flatten().collect())
    }

    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream {
        let tail = tail.map_or_else(|| "all".to_owned(), |lines| lines.to_string());
        let options = LogsOptionsBuilder::new().follow(follow).stdout(true).stderr(true).tail(&tail).build();
        let container = id.to_string();
        let stream = self.docker.logs(id.as_str(), Some(options)).filter_map(move |item| {
            let container = container.clone();
            async move {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message }) => {
                        Some(Ok(LogChunk::Stdout(message)))
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        Some(Ok(LogChunk::Stderr(message)))
                    }
                    Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                    Err(source) => Some(Err(Self::call_failed("read logs of", &container, source))),
                }
            }
        });
        Box::pin(stream)
    }

    fn changes(&self, label: &str, value: &str) -> ChangeStream {
        // From now, not from when the stream is first polled: a change that
        // comes between this call and the request reaching the engine is
        // replayed from the engine's recent events rather than lost.
        let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![format!("{label}={value}")]),
            ("event", vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()]),
        ]);
        let options =
            bollard::query_parameters::EventsOptionsBuilder::new().since(&since).filters(&filters).build();
        let stream = self.docker.events(Some(options)).filter_map(|item| async move {
            match item {
                Ok(event) => {
                    let kind = match event.action.as_deref()? {
                        "start" => ChangeKind::Started,
                        "die" => ChangeKind::Died,
                        "destroy" => ChangeKind::Removed,
                        _ => return None,
                    };
                    let id = event.actor.and_then(|actor| actor.id).filter(|id| !id.is_empty())?;
                    Some(Ok(Change { id: ContainerId::new(id), kind }))
                }
                Err(source) => Some(Err(DispatchError::WatchFailed { source: EngineError::docker(source) })),
            }
        });
        Box::pin(stream)
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), DispatchError> {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        self.docker
            .stop_container(id.as_str(), Some(options))
            .await
            .map_err(|source| Self::call_failed("stop", id.as_str(), source))
    }

    async fn kill(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let options = KillContainerOptionsBuilder::new().signal("KILL").build();
        match self.docker.kill_container(id.as_str(), Some(options)).await {
            Ok(()) => Ok(()),
            // 409: not running, which is what a kill wants anyway.
            Err(err) if status_code(&err) == Some(409) => Ok(()),
            Err(source) => Err(Self::call_failed("kill", id.as_str(), source)),
        }
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Volume, DispatchError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect()),
            ..Default::default()
        };
        // The engine answers an existing volume of that name as it is, its
        // own labels included: the caller checks them.
        let volume =
            self.docker.create_volume(request).await.map_err(|source| DispatchError::VolumeCall {
                operation: "create",
                volume: name.to_owned(),
                source: EngineError::docker(source),
            })?;
        Ok(volume_of(volume))
    }

    async fn list_volumes(&self, label: &str, value: &str) -> Result<Vec<Volume>, DispatchError> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::new().filters(&filters).build();
        let listed =
            self.docker.list_volumes(Some(options)).await.map_err(|source| DispatchError::VolumeCall {
                operation: "list",
                volume: format!("{label}={value}"),
                source: EngineError::docker(source),
            })?;
        Ok(listed.volumes.unwrap_or_default().into_iter().map(volume_of).collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<VolumeRemoval, DispatchError> {
        // Never forced: the engine refuses (409) while any container has it.
        let options = bollard::query_parameters::RemoveVolumeOptionsBuilder::new().force(false).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(VolumeRemoval::Removed),
            Err(err) if status_code(&err) == Some(404) => Ok(VolumeRemoval::Missing),
            Err(err) if status_code(&err) == Some(409) => Ok(VolumeRemoval::InUse),
            Err(source) => Err(DispatchError::VolumeCall {
                operation: "remove",
                volume: name.to_owned(),
                source: EngineError::docker(source),
            }),
        }
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(id.as_str(), Some(options)).await {
            Ok(()) => Ok(()),
            // 404: already gone; 409: a removal is already in progress.
            Err(err) if matches!(status_code(&err), Some(404 | 409)) => Ok(()),
            Err(source) => Err(Self::call_failed("remove", id.as_str(), source)),
        }
    }
}

fn volume_of(volume: bollard::models::Volume) -> Volume {
    Volume {
        created_at: volume.created_at.as_deref().and_then(parse_time_any_zone),
        name: volume.name,
        labels: volume.labels.into_iter().collect(),
    }
}

/// A volume's `CreatedAt`, which the engine writes with the host's offset
/// (`2026-11-30T16:20:00+01:00`) rather than in UTC.
fn parse_time_any_zone(text: &str) -> Option<SystemTime> {
    if text.ends_with('Z') {
        return parse_time(text);
    }
    let (stamp, sign, offset) = match text.rfind(['+', '-']) {
        Some(at) if at > 10 => (&text[..at], &text[at..=at], &text[at + 1..]),
        _ => return None,
    };
    let (hours, minutes) = offset.split_once(':')?;
    let shift = Duration::from_secs(hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60);
    let local = parse_time(&format!("{stamp}Z"))?;
    if sign == "+" { local.checked_sub(shift) } else { local.checked_add(shift) }
}

/// Parses the engine's RFC 3339 UTC timestamps (`2026-11-29T03:19:31.123456789Z`).
/// The zero time the engine reports for "never" is `None`.
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date_parts.next()??, date_parts.next()??, date_parts.next()??);
    if year < 1970 {
        return None;
    }
    let time = time.strip_suffix('Z')?;
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock_parts = clock.splitn(3, ':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock_parts.next()??, clock_parts.next()??, clock_parts.next()??);
    let nanos: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = nanos.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos))
}
