//! How a worker ends: its exit code and the result record on its last line.

use serde::{Deserialize, Serialize};

/// The worker's documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerExit {
    /// 0: the task succeeded.
    Success,
    /// 1: the agent failed.
    AgentFailed,
    /// 2: bad task or setup failure (clone, token).
    SetupFailed,
    /// 3: the agent ran past its deadline.
    DeadlineExceeded,
    /// 4: cancelled (SIGTERM).
    Cancelled,
}

impl WorkerExit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            WorkerExit::Success => 0,
            WorkerExit::AgentFailed => 1,
            WorkerExit::SetupFailed => 2,
            WorkerExit::DeadlineExceeded => 3,
            WorkerExit::Cancelled => 4,
        }
    }

    /// The documented meaning of an exit code, if it is one of ours.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(WorkerExit::Success),
            1 => Some(WorkerExit::AgentFailed),
            2 => Some(WorkerExit::SetupFailed),
            3 => Some(WorkerExit::DeadlineExceeded),
            4 => Some(WorkerExit::Cancelled),
            _ => None,
        }
    }

    /// The result status a worker reports with this exit.
    pub fn status(self) -> ResultStatus {
        match self {
            WorkerExit::Success => ResultStatus::Success,
            WorkerExit::AgentFailed => ResultStatus::Failure,
            WorkerExit::SetupFailed => ResultStatus::SetupFailed,
            WorkerExit::DeadlineExceeded => ResultStatus::TimedOut,
            WorkerExit::Cancelled => ResultStatus::Cancelled,
        }
    }
}

/// The `status` field of the result record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// The agent succeeded.
    Success,
    /// The agent failed.
    Failure,
    /// The task could not be set up.
    SetupFailed,
    /// The agent ran past its deadline.
    TimedOut,
    /// The task was cancelled.
    Cancelled,
}

/// The one JSON record a worker prints as its last stdout line:
/// `{"berth_result": 1, "task": ..., "status": ..., "summary": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// Record format version; always 1 for now.
    pub berth_result: u32,
    /// The task id (kept as text so a damaged record still parses).
    pub task: String,
    /// How the task ended.
    pub status: ResultStatus,
    /// Human-readable summary (Markdown).
    pub summary: String,
    /// For an implement task: the branch pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// For an implement task: the commit pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl ResultRecord {
    /// The current record format version.
    pub const VERSION: u32 = 1;

    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a result record always serializes")
    }

    /// The result record on the very last line of a worker's output, and
    /// nothing else: `None` when that line is not one well-formed record of
    /// this version (no record, a record cut short, or other output written
    /// onto the same line, as an agent that writes to the worker's own
    /// stdout without a newline does). An earlier line never counts, so a
    /// record an agent printed before the worker's own cannot stand in for it.
    pub fn find_last(output: &str) -> Option<Self> {
        let output = output.strip_suffix('\n').unwrap_or(output);
        let line = output.rsplit('\n').next().unwrap_or(output);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.starts_with('{') || !line.ends_with('}') {
            return None;
        }
        serde_json::from_str::<Self>(line).ok().filter(|record| record.berth_result == Self::VERSION)
    }
}
