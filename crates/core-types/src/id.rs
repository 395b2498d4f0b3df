//! Task identity: the validated `TaskId` and the `TaskKind`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest task id accepted; keeps `berth-<id>` well inside Docker's name limits.
const MAX_TASK_ID_LEN: usize = 63;

/// A task's identity: lowercase ASCII letters, digits and `-`, starting with a
/// letter or digit, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

/// Why a string is not a valid [`TaskId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task id {value:?}: {reason}")]
pub struct InvalidTaskId {
    value: String,
    reason: &'static str,
}

impl TaskId {
    /// Validates `value` as a task id.
    ///
    /// # Errors
    /// When it is empty, too long, or holds anything but `[a-z0-9-]`, or starts with `-`.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidTaskId> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("it is empty")
        } else if value.len() > MAX_TASK_ID_LEN {
            Some("it is longer than 63 characters")
        } else if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            Some("only lowercase letters, digits and '-' are allowed")
        } else if value.starts_with('-') {
            Some("it must not start with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidTaskId { value, reason }),
            None => Ok(Self(value)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TaskId {
    type Err = InvalidTaskId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TaskId {
    type Error = InvalidTaskId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Review a pull request at its head.
    Review,
    /// Implement an issue on a new branch.
    Implement,
}

/// A task kind this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task kind {0:?} (expected review or implement)")]
pub struct UnknownTaskKind(pub String);

impl TaskKind {
    /// Every kind, in a stable order.
    pub const ALL: [TaskKind; 2] = [TaskKind::Review, TaskKind::Implement];

    /// The kind as text, as used in labels and the worker's environment.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Review => "review",
            TaskKind::Implement => "implement",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskKind {
    type Err = UnknownTaskKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "review" => Ok(TaskKind::Review),
            "implement" => Ok(TaskKind::Implement),
            other => Err(UnknownTaskKind(other.to_owned())),
        }
    }
}
