//! The clone cache's containers and volumes (ADR 23): one named volume per
//! repository holding a bare mirror, keyed by GitHub's repository id and
//! this deployment's instance, and the short-lived refresh container that
//! fetches into it.
//!
//! A mirror reaches a worker only as a [`CacheVolume`], which only
//! [`Dispatcher::cache_volume`] makes, after checking that the volume's own
//! labels name the same repository id and instance: a volume of another
//! repository (or a foreign one of the same name) is never mounted.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use core_types::{KIND_CACHE, KIND_CACHE_REFRESH, SCHEMA_VERSION, label};
use tracing::{debug, warn};

use crate::engine::{ContainerEngine, ContainerId, ContainerSpec, ContainerStatus, Volume, VolumeMount};
use crate::{DispatchError, Dispatcher, VolumeRemoval};

/// Where a mirror is mounted, in a worker (read-only) and in a refresh
/// container (writable). The worker image has this directory, owned by the
/// worker's user, so that a new volume takes its owner from it.
pub const CACHE_MOUNT: &str = "/srv/clone-cache";

/// The name of a repository's mirror volume: `berth-cache-<instance>-<id>`.
pub fn cache_volume_name(instance: &str, repo_id: u64) -> String {
    format!("berth-cache-{}-{repo_id}", name_part(instance))
}

/// The name of a repository's refresh container: `berth-refresh-<instance>-<id>`.
/// One name per repository, so two refreshes of one repository cannot run at once.
pub fn refresh_container_name(instance: &str, repo_id: u64) -> String {
    format!("berth-refresh-{}-{repo_id}", name_part(instance))
}

/// `text` with only what Docker allows in a name (`[a-zA-Z0-9_.-]`).
fn name_part(text: &str) -> String {
    let part: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' })
        .collect();
    if part.is_empty() { "default".to_owned() } else { part }
}

/// A repository's mirror volume, checked to be this instance's and this
/// repository's: the only way to a mount of a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheVolume {
    name: String,
    repo_id: u64,
}

impl CacheVolume {
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The repository it belongs to.
    pub fn repo_id(&self) -> u64 {
        self.repo_id
    }

    /// The read-only mount a worker of this same repository gets.
    pub fn worker_mount(&self) -> VolumeMount {
        VolumeMount { volume: self.name.clone(), target: CACHE_MOUNT.to_owned(), read_only: true }
    }

    fn refresh_mount(&self) -> VolumeMount {
        VolumeMount { volume: self.name.clone(), target: CACHE_MOUNT.to_owned(), read_only: false }
    }
}

/// A mirror volume as listed: for `berth ps --caches`, the status API and eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The volume's name.
    pub volume: String,
    /// GitHub's id of the repository.
    pub repo_id: u64,
    /// `owner/name` when the volume was made (for people; never the key).
    pub repo: String,
    /// The deployment that owns it.
    pub instance: String,
    /// When the volume was made.
    pub created_at: Option<SystemTime>,
}

impl CacheEntry {
    fn from_volume(volume: Volume) -> Option<Self> {
        let labels = &volume.labels;
        if labels.get(label::MANAGED).map(String::as_str) != Some("true")
            || labels.get(label::KIND).map(String::as_str) != Some(KIND_CACHE)
        {
            return None;
        }
        Some(Self {
            repo_id: labels.get(label::REPO_ID)?.parse().ok()?,
            repo: labels.get(label::REPO).cloned().unwrap_or_default(),
            instance: labels
                .get(label::INSTANCE)
                .cloned()
                .unwrap_or_else(|| core_types::DEFAULT_INSTANCE.to_owned()),
            created_at: volume.created_at,
            volume: volume.name,
        })
    }
}

/// How a refresh container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshEnd {
    /// It exited; `output` is the end of what it printed.
    Exited {
        /// Its exit code.
        code: i64,
        /// The last lines of its output.
        output: String,
    },
    /// It ran past its time and was removed.
    TimedOut,
}

/// Why a repository's mirror volume was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefused {
    /// A volume of that name exists and its labels name something else.
    #[error("volume {volume} is not this repository's mirror ({reason}); it is left alone")]
    Foreign {
        /// The volume.
        volume: String,
        /// Which label disagrees.
        reason: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] DispatchError),
}

/// Bytes of a refresh container's output read back when it fails.
const REFRESH_TAIL_BYTES: usize = 8 * 1024;

impl<E: ContainerEngine> Dispatcher<E> {
    /// The labels of a repository's mirror volume.
    fn cache_labels(&self, repo_id: u64, repo: &str, kind: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (label::MANAGED.to_owned(), "true".to_owned()),
            (label::SCHEMA.to_owned(), SCHEMA_VERSION.to_string()),
            (label::INSTANCE.to_owned(), self.config().instance.clone()),
            (label::KIND.to_owned(), kind.to_owned()),
            (label::REPO_ID.to_owned(), repo_id.to_string()),
            (label::REPO.to_owned(), repo.to_owned()),
        ])
    }

    /// The mirror volume of repository `repo_id`, made when missing. Refused
    /// when a volume of that name exists whose labels are not this
    /// instance's mirror of this very repository.
    ///
    /// # Errors
    /// [`CacheRefused::Foreign`]; engine failures.
    pub async fn cache_volume(&self, repo_id: u64, repo: &str) -> Result<CacheVolume, CacheRefused> {
        let name = cache_volume_name(&self.config().instance, repo_id);
        let volume =
            self.engine().create_volume(&name, &self.cache_labels(repo_id, repo, KIND_CACHE)).await?;
        let expect = [
            (label::MANAGED, "true".to_owned()),
            (label::KIND, KIND_CACHE.to_owned()),
            (label::INSTANCE, self.config().instance.clone()),
            (label::REPO_ID, repo_id.to_string()),
        ];
        for (key, value) in expect {
            let found = volume.labels.get(key);
            if found != Some(&value) {
                return Err(CacheRefused::Foreign {
                    volume: name,
                    reason: format!("{key} is {found:?}, not {value:?}"),
                });
            }
        }
        Ok(CacheVolume { name, repo_id })
    }

    /// This instance's mirror volumes.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn caches(&self) -> Result<Vec<CacheEntry>, DispatchError> {
        let all = self.caches_of_all_instances().await?;
        Ok(all.into_iter().filter(|entry| entry.instance == self.config().instance).collect())
    }

    /// Every Berth mirror volume on the engine (`berth ps --caches`).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn caches_of_all_instances(&self) -> Result<Vec<CacheEntry>, DispatchError> {
        let volumes = self.engine().list_volumes(label::KIND, KIND_CACHE).await?;
        Ok(volumes.into_iter().filter_map(CacheEntry::from_volume).collect())
    }

    /// Removes a mirror volume unless a container uses it (the engine refuses then).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn remove_cache(&self, volume: &str) -> Result<VolumeRemoval, DispatchError> {
        self.engine().remove_volume(volume).await
    }

    /// Runs one refresh of `volume`: a hardened container of the worker
    /// image, running `berth-worker refresh-cache` with `env` and the mirror
    /// mounted writable, removed afterwards. Past `limit` it is removed
    /// (killed) and the refresh counts as timed out. A refresh container of
    /// the same repository left over (a daemon killed mid-refresh) is
    /// removed first: only one runs per repository, by its name.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn run_refresh(
        &self,
        volume: &CacheVolume,
        repo: &str,
        env: &[(&str, String)],
        limit: Duration,
    ) -> Result<RefreshEnd, DispatchError> {
        let config = self.config();
        let spec = ContainerSpec {
            name: refresh_container_name(&config.instance, volume.repo_id),
            image: config.image.clone(),
            labels: self.cache_labels(volume.repo_id, repo, KIND_CACHE_REFRESH),
            env: env.iter().map(|(name, value)| format!("{name}={value}")).collect(),
            entrypoint: config.entrypoint.clone(),
            cmd: Some(vec!["refresh-cache".to_owned()]),
            network: config.network.clone(),
            profile: config.profile.clone(),
            mounts: vec![volume.refresh_mount()],
        };
        let id = match self.engine().create(&spec).await? {
            Some(id) => id,
            None => {
                self.remove_leftover_refresh(&spec.name).await?;
                match self.engine().create(&spec).await? {
                    Some(id) => id,
                    None => return Err(DispatchError::RefreshBusy { name: spec.name.clone() }),
                }
            }
        };
        let ended = async {
            self.engine().start(&id).await?;
            self.engine().wait(&id).await
        };
        let end = match tokio::time::timeout(limit, ended).await {
            Ok(Ok(exit)) => {
                // Its size line on success, why it failed otherwise.
                let output = self.logs_tail(&id, 40, REFRESH_TAIL_BYTES).await.unwrap_or_default();
                Ok(RefreshEnd::Exited { code: exit.code, output })
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Ok(RefreshEnd::TimedOut),
        };
        if let Err(err) = self.engine().remove(&id).await {
            warn!(container_id = %id, error = %err, "could not remove a refresh container; the sweep will");
        }
        end
    }

    /// Removes the refresh container named `name` if it is a managed refresh container.
    async fn remove_leftover_refresh(&self, name: &str) -> Result<(), DispatchError> {
        let Some(state) = self.engine().inspect(name).await? else { return Ok(()) };
        if state.labels.get(label::MANAGED).map(String::as_str) != Some("true")
            || state.labels.get(label::KIND).map(String::as_str) != Some(KIND_CACHE_REFRESH)
        {
            return Ok(());
        }
        debug!(container = name, "removing a refresh container left over");
        self.engine().remove(&state.id).await
    }

    /// This instance's refresh containers: their id, repository id, status
    /// and creation time (for the sweep).
    ///
    /// # Errors
    /// Engine failures.
    pub async fn refresh_containers(
        &self,
    ) -> Result<Vec<(ContainerId, u64, ContainerStatus, Option<SystemTime>)>, DispatchError> {
        let states = self.engine().list_by_label(label::KIND, KIND_CACHE_REFRESH).await?;
        Ok(states
            .into_iter()
            .filter(|state| {
                state.labels.get(label::MANAGED).map(String::as_str) == Some("true")
                    && state.labels.get(label::INSTANCE) == Some(&self.config().instance)
            })
            .filter_map(|state| {
                let repo_id = state.labels.get(label::REPO_ID)?.parse().ok()?;
                Some((state.id, repo_id, state.status, state.created_at))
            })
            .collect())
    }

    /// Creates (or adopts) the task's container with `mounts` (a mirror of
    /// the task's own repository, from [`Dispatcher::cache_volume`]).
    ///
    /// # Errors
    /// As [`Dispatcher::create`].
    pub async fn create_with_cache(
        &self,
        task: &core_types::TaskLabels,
        env: &[(&str, String)],
        cmd: Option<Vec<String>>,
        cache: Option<&CacheVolume>,
    ) -> Result<crate::Launched, DispatchError> {
        let mounts: Vec<VolumeMount> = cache.map(CacheVolume::worker_mount).into_iter().collect();
        self.create_mounted(task, env, cmd, mounts).await
    }
}
