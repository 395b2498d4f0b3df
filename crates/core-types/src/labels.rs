//! The label schema: everything needed to resume a task after a restart of
//! the daemon, written on the container at create time.
//!
//! Docker labels are immutable after create, so these are the truth about a
//! live worker. No secret ever goes into a label. The schema is versioned by
//! `berth.schema`; a version this build does not know is reported, never
//! guessed at.

use std::collections::BTreeMap;

use crate::{TaskId, TaskKind};

/// Label keys. Every key lives under `berth.`.
pub mod label {
    /// `true` on every container Berth manages; nothing else is touched.
    pub const MANAGED: &str = "berth.managed";
    /// Version of this schema.
    pub const SCHEMA: &str = "berth.schema";
    /// The task id.
    pub const TASK_ID: &str = "berth.task-id";
    /// `review` or `implement`.
    pub const KIND: &str = "berth.kind";
    /// `owner/name` of the repository.
    pub const REPO: &str = "berth.repo";
    /// Issue or pull request number.
    pub const NUMBER: &str = "berth.number";
    /// Commit the task works on, when known at create time.
    pub const HEAD_SHA: &str = "berth.head-sha";
    /// `X-GitHub-Delivery` of the triggering delivery.
    pub const DELIVERY: &str = "berth.delivery";
    /// Hard deadline, seconds since the Unix epoch.
    pub const DEADLINE: &str = "berth.deadline";
    /// Id of the check run that reports the task.
    pub const CHECK_RUN: &str = "berth.check-run";
    /// GitHub App installation that owns the repository.
    pub const INSTALLATION: &str = "berth.installation";
    /// Which Berth deployment owns the container (`default` when absent), so
    /// two deployments can share one engine without touching each other's workers.
    pub const INSTANCE: &str = "berth.instance";
    /// GitHub's numeric id of the repository a clone cache volume (or its
    /// refresh container) belongs to: the key of a mirror, never the name
    /// alone (a deleted repository's name can be taken by another).
    pub const REPO_ID: &str = "berth.repo-id";
}

/// `berth.kind` of a clone cache volume.
pub const KIND_CACHE: &str = "cache";
/// `berth.kind` of a container refreshing a clone cache volume.
pub const KIND_CACHE_REFRESH: &str = "cache-refresh";

/// The instance name of a container without `berth.instance`.
pub const DEFAULT_INSTANCE: &str = "default";

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A task as its container's labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLabels {
    /// The task id.
    pub task_id: TaskId,
    /// The kind of task.
    pub kind: TaskKind,
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// Commit the task works on, when known.
    pub head_sha: Option<String>,
    /// The triggering delivery, when there was one.
    pub delivery: Option<String>,
    /// Hard deadline, seconds since the Unix epoch.
    pub deadline_unix: u64,
    /// Check run id, when one was created before the worker started.
    pub check_run: Option<u64>,
    /// GitHub App installation id, when known.
    pub installation: Option<u64>,
}

/// Why a container's labels could not be read as a Berth task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// `berth.managed=true` is absent: not ours.
    #[error("container is not managed by berth (no berth.managed=true label)")]
    NotManaged,
    /// Written by a build with a schema this one does not know.
    #[error("unknown label schema version {found:?} (this build reads version {SCHEMA_VERSION})")]
    UnknownSchema {
        /// The value of `berth.schema`, if any.
        found: Option<String>,
    },
    /// A required key is missing.
    #[error("label {key} is missing")]
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// A key holds a value that does not parse.
    #[error("label {key} has invalid value {value:?}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

impl TaskLabels {
    /// Encodes the task as container labels (including `berth.managed` and `berth.schema`).
    pub fn to_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            labels.insert(key.to_owned(), value);
        };
        put(label::MANAGED, "true".to_owned());
        put(label::SCHEMA, SCHEMA_VERSION.to_string());
        put(label::TASK_ID, self.task_id.to_string());
        put(label::KIND, self.kind.to_string());
        put(label::REPO, self.repo.clone());
        put(label::NUMBER, self.number.to_string());
        put(label::DEADLINE, self.deadline_unix.to_string());
        if let Some(sha) = &self.head_sha {
            put(label::HEAD_SHA, sha.clone());
        }
        if let Some(delivery) = &self.delivery {
            put(label::DELIVERY, delivery.clone());
        }
        if let Some(check_run) = self.check_run {
            put(label::CHECK_RUN, check_run.to_string());
        }
        if let Some(installation) = self.installation {
            put(label::INSTALLATION, installation.to_string());
        }
        labels
    }

    /// Decodes a container's labels.
    ///
    /// # Errors
    /// [`LabelError::NotManaged`] for a foreign container,
    /// [`LabelError::UnknownSchema`] for a schema this build does not read,
    /// and `Missing`/`Invalid` for a damaged set.
    pub fn from_labels<S: std::hash::BuildHasher>(
        labels: &std::collections::HashMap<String, String, S>,
    ) -> Result<Self, LabelError> {
        Self::decode(|key| labels.get(key).map(String::as_str))
    }

    /// Like [`TaskLabels::from_labels`], for an ordered map.
    ///
    /// # Errors
    /// As [`TaskLabels::from_labels`].
    pub fn from_btree(labels: &BTreeMap<String, String>) -> Result<Self, LabelError> {
        Self::decode(|key| labels.get(key).map(String::as_str))
    }

    fn decode<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, LabelError> {
        if get(label::MANAGED) != Some("true") {
            return Err(LabelError::NotManaged);
        }
        match get(label::SCHEMA) {
            Some(version) if version == SCHEMA_VERSION.to_string() => {}
            found => return Err(LabelError::UnknownSchema { found: found.map(str::to_owned) }),
        }
        let required = |key: &'static str| get(key).ok_or(LabelError::Missing { key });
        let invalid = |key: &'static str, value: &str| LabelError::Invalid { key, value: value.to_owned() };
        let number = |key: &'static str, value: &str| value.parse::<u64>().map_err(|_| invalid(key, value));
        let optional_number = |key: &'static str| get(key).map(|value| number(key, value)).transpose();

        let task_id = required(label::TASK_ID)?;
        let task_id = TaskId::new(task_id).map_err(|_| invalid(label::TASK_ID, task_id))?;
        let kind = required(label::KIND)?;
        let kind = kind.parse().map_err(|_| invalid(label::KIND, kind))?;
        let repo = required(label::REPO)?;
        if !is_repo_name(repo) {
            return Err(invalid(label::REPO, repo));
        }
        Ok(Self {
            task_id,
            kind,
            repo: repo.to_owned(),
            number: number(label::NUMBER, required(label::NUMBER)?)?,
            head_sha: get(label::HEAD_SHA).map(str::to_owned),
            delivery: get(label::DELIVERY).map(str::to_owned),
            deadline_unix: number(label::DEADLINE, required(label::DEADLINE)?)?,
            check_run: optional_number(label::CHECK_RUN)?,
            installation: optional_number(label::INSTALLATION)?,
        })
    }
}

/// Whether `value` looks like GitHub's `owner/name`.
pub fn is_repo_name(value: &str) -> bool {
    let allowed = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match value.split_once('/') {
        Some((owner, name)) => allowed(owner) && allowed(name),
        None => false,
    }
}
