//! `berth ps`: tasks as Docker's labels describe them, straight from the
//! engine, so it works while the daemon is down. Labels hold no secrets.

use std::time::SystemTime;

use anyhow::Context;
use dispatcher::{ContainerStatus, Dispatcher, ManagedContainer};
use serde::Serialize;

/// One row of `berth ps`.
#[derive(Debug, Serialize)]
pub struct PsRow {
    /// Task id (or the container name when the labels do not read).
    pub task: String,
    /// Kind.
    pub kind: String,
    /// `owner/name#number`.
    pub target: String,
    /// `created`, `running`, `exited (N)`, `oom-killed`.
    pub state: String,
    /// Seconds since the container was created.
    pub age_seconds: u64,
    /// Short container id.
    pub container: String,
    /// The deployment that owns it.
    pub instance: String,
    /// Problem with the labels, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn state_text(status: &ContainerStatus) -> String {
    match status {
        ContainerStatus::Created => "queued".to_owned(),
        ContainerStatus::Running { .. } => "running".to_owned(),
        ContainerStatus::Exited(exit) if exit.oom_killed => format!("oom-killed ({})", exit.code),
        ContainerStatus::Exited(exit) => format!("exited ({})", exit.code),
        ContainerStatus::Removing => "removing".to_owned(),
        ContainerStatus::Missing => "gone".to_owned(),
    }
}

fn row(container: &ManagedContainer) -> PsRow {
    let age_seconds = container
        .created_at
        .and_then(|created| SystemTime::now().duration_since(created).ok())
        .map_or(0, |age| age.as_secs());
    let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
    if label(core_types::label::KIND) == core_types::KIND_CACHE_REFRESH {
        return PsRow {
            task: container.name.clone(),
            kind: core_types::KIND_CACHE_REFRESH.to_owned(),
            target: format!("{} (id {})", label(core_types::label::REPO), label(core_types::label::REPO_ID)),
            state: state_text(&container.status),
            age_seconds,
            container: container.id.to_string(),
            instance: container.instance().to_owned(),
            problem: None,
        };
    }
    match &container.task {
        Ok(task) => PsRow {
            task: task.task_id.to_string(),
            kind: task.kind.to_string(),
            target: format!("{}#{}", task.repo, task.number),
            state: state_text(&container.status),
            age_seconds,
            container: container.id.to_string(),
            instance: container.instance().to_owned(),
            problem: None,
        },
        Err(err) => PsRow {
            task: container.name.clone(),
            kind: "?".to_owned(),
            target: "?".to_owned(),
            state: state_text(&container.status),
            age_seconds,
            container: container.id.to_string(),
            instance: container.instance().to_owned(),
            problem: Some(err.to_string()),
        },
    }
}

/// The rows of `berth ps`.
///
/// # Errors
/// When the engine cannot be reached or listed.
pub async fn rows<E: dispatcher::ContainerEngine>(
    dispatcher: &Dispatcher<E>,
    all: bool,
) -> anyhow::Result<Vec<PsRow>> {
    let containers = dispatcher.list_all_instances().await.context("cannot list berth's containers")?;
    let mut rows: Vec<PsRow> = containers
        .iter()
        .filter(|container| all || !matches!(container.status, ContainerStatus::Exited(_)))
        .map(row)
        .collect();
    rows.sort_by(|a, b| b.age_seconds.cmp(&a.age_seconds).then_with(|| a.task.cmp(&b.task)));
    Ok(rows)
}

/// The rows as a table.
pub fn render_table(rows: &[PsRow]) -> String {
    let mut out = format!(
        "{:<48} {:<10} {:<32} {:<16} {:>8}  {}\n",
        "TASK", "KIND", "TARGET", "STATE", "AGE", "CONTAINER"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<48} {:<10} {:<32} {:<16} {:>7}s  {}{}\n",
            row.task,
            row.kind,
            row.target,
            row.state,
            row.age_seconds,
            row.container,
            row.problem.as_deref().map(|problem| format!("  ({problem})")).unwrap_or_default()
        ));
    }
    out
}

/// One row of `berth ps --caches`.
pub type CacheRow = runner::cache::CacheRow;

/// The clone cache's mirrors on the engine (every instance), with the size
/// and last use the book in `state_dir` records, when it can be read.
///
/// # Errors
/// When the engine cannot be reached or listed.
pub async fn cache_rows<E: dispatcher::ContainerEngine>(
    dispatcher: &Dispatcher<E>,
    state_dir: &std::path::Path,
) -> anyhow::Result<Vec<CacheRow>> {
    let entries =
        dispatcher.caches_of_all_instances().await.context("cannot list the clone cache's volumes")?;
    Ok(runner::cache::cache_rows(entries, &runner::cache::read_book(state_dir)))
}

fn ago(unix: Option<u64>) -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |now| now.as_secs());
    unix.map_or_else(|| "-".to_owned(), |at| format!("{}s ago", now.saturating_sub(at)))
}

fn size_text(bytes: Option<u64>) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a size shown to one decimal")]
    bytes.map_or_else(|| "?".to_owned(), |bytes| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
}

/// The mirrors as a table.
pub fn render_cache_table(rows: &[CacheRow]) -> String {
    let mut out = format!(
        "{:<40} {:>12} {:<14} {:>12}  {:<16} {}\n",
        "REPOSITORY", "REPO ID", "LAST USE", "SIZE", "INSTANCE", "VOLUME"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<40} {:>12} {:<14} {:>12}  {:<16} {}\n",
            row.repo,
            row.repo_id,
            ago(row.last_used_unix),
            size_text(row.size_bytes),
            row.instance,
            row.volume
        ));
    }
    out
}
