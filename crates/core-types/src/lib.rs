//! Berth's domain nouns and the contract between the daemon and its workers.
//!
//! This crate owns task identity (`TaskId`, `TaskKind`), the label schema that
//! makes a container self-describing (`TaskLabels`), the worker's environment
//! contract (`worker_env`), its exit codes (`WorkerExit`) and its result record
//! (`ResultRecord`), every `BERTH_*` variable name (`env_names`), and the retry
//! delays every retrying loop uses (`Backoff`). It does no I/O and knows
//! nothing of Docker, HTTP or GitHub.

mod id;
mod kinds;
mod labels;
mod result;

pub mod backoff;
pub mod env_names;
pub mod follow_up;
pub mod web;
pub mod worker_env;

pub use worker_env::{Secret, WorkerEnvError, WorkerOptions, WorkerTask};

pub use id::{InvalidTaskId, TaskId, TaskKind, UnknownTaskKind};
pub use kinds::{KINDS, KindSpec, Subject};
pub use labels::{
    DEFAULT_INSTANCE, KIND_CACHE, KIND_CACHE_REFRESH, LabelError, SCHEMA_VERSION, TaskLabels, is_repo_name,
    label,
};
pub use result::{ResultRecord, ResultStatus, WorkerExit};

#[cfg(test)]
mod tests;
