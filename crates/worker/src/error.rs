//! The worker's one error type, and [`Halt`]: why a step did not finish.
//!
//! A failing *agent* is not an error here; it is an outcome (exit 1). These
//! are the worker's own failures (bad input, clone, commit, push), which end
//! the task with exit 2, and the two interruptions (deadline, cancel).

use std::error::Error as _;
use std::io;
use std::path::PathBuf;

use core_types::env_names::BERTH_AGENT_COMMAND;

use crate::command::CommandError;

/// What went wrong in the worker itself, named after what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A task variable is missing or unusable for this kind of task.
    #[error("{variable} is invalid: {reason}")]
    InvalidVariable {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `BERTH_AGENT_COMMAND` cannot be split or names an unknown placeholder.
    #[error("{} is invalid", BERTH_AGENT_COMMAND)]
    AgentCommand(#[source] CommandError),
    /// The work directory (clone, prompt, summary) could not be prepared.
    #[error("cannot prepare {path}")]
    WorkDir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `git` itself could not be started.
    #[error("cannot run git (is it installed and on PATH?)")]
    GitSpawn(#[source] io::Error),
    /// A git step failed; `detail` is the end of git's own output.
    #[error("{step} failed ({status}): {detail}")]
    Git {
        /// What the worker was doing.
        step: &'static str,
        /// How git ended.
        status: String,
        /// The last lines git printed (redacted).
        detail: String,
    },
    /// A follow-up's branch moved while the task ran, so its push (never
    /// forced) was refused and the branch left as it is.
    #[error(
        "the branch {branch} moved while the task ran (cloned at {cloned}, now at {now}); Berth never overwrites a pull request's branch, so nothing was pushed: ask again with /berth implement to work from its new head"
    )]
    BranchMoved {
        /// The branch.
        branch: String,
        /// The commit the task cloned.
        cloned: String,
        /// Where the branch is now.
        now: String,
    },
    /// The agent program is not in the image.
    #[error(
        "the agent's program {program:?} is not in the worker image ({searched}); install it in the image (README: Running a real agent) or fix {}",
        BERTH_AGENT_COMMAND
    )]
    AgentMissing {
        /// argv\[0\] of the agent command.
        program: String,
        /// Where it was looked for.
        searched: String,
    },
    /// The agent program could not be started.
    #[error("cannot start the agent {program:?}")]
    AgentSpawn {
        /// argv\[0\] of the agent command.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl WorkerError {
    /// The message with every cause, `outer: inner: ...`, on one line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// Why a step stopped short.
#[derive(Debug)]
pub(crate) enum Halt {
    /// The worker's own failure: exit 2.
    Failed(WorkerError),
    /// The deadline passed during `during`: exit 3.
    DeadlinePassed { during: &'static str },
    /// The worker got SIGTERM: exit 4.
    Cancelled,
}

impl From<WorkerError> for Halt {
    fn from(err: WorkerError) -> Self {
        Halt::Failed(err)
    }
}
