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
