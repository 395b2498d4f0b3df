//! The one decision of what happens next to a task, given its record and
//! what the engine shows of its worker. Reconcile (at start and as the
//! sweep) acts only on what this returns, and the monitor's ending goes to
//! the same `finish`, so a task has one way to end. Pure: tested as a table.

use std::time::Duration;

use dispatcher::{ContainerStatus, ExitInfo};
use domain::tasks::{TaskRecord, TaskState};

/// Containers younger than this are left to whoever is creating or ending them.
pub const SWEEP_GRACE: Duration = Duration::from_secs(30);

/// A task's worker as the engine shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its state.
    pub status: ContainerStatus,
    /// How long ago it was created.
    pub age: Duration,
    /// The deadline its labels carry.
    pub deadline_unix: u64,
}

/// What the runner's settings and state add to the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The current time.
    pub now_unix: u64,
    /// Whether the start-up reconcile is done (before it, nothing is young).
    pub started: bool,
    /// SIGTERM-to-SIGKILL grace of a stop.
    pub stop_grace: Duration,
    /// How long after the worker's own deadline and grace Berth stops it itself.
    pub backstop_margin: Duration,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing, now.
    Leave,
    /// The task already ended: its worker, in any state, is a leftover.
    RemoveLeftover,
    /// Running: watch it to its exit; `overdue` when its backstop has passed
    /// (the watch then stops it at once).
    Watch {
        /// Past the deadline, grace and margin.
        overdue: bool,
    },
    /// Exited: read its result and end the task.
    Collect(ExitInfo),
    /// Created and never started: back to the queue; the scheduler starts it in turn.
    Requeue,
    /// Dispatched, and no worker anywhere: removed from outside.
    Vanished,
}

/// What happens next to `record`, whose worker the engine shows as `worker`.
pub fn next_step(record: &TaskRecord, worker: Option<&Worker>, context: &Context) -> Step {
    let settled = |age: Duration| age >= SWEEP_GRACE || !context.started;
    match (worker, &record.state) {
        // The task already ended (cancelled while the engine was away, or a
        // create whose answer was lost): its outcome stands. A young worker
        // may be about to be removed by the path that ended it.
        (Some(worker), TaskState::Finished { .. }) if settled(worker.age) => Step::RemoveLeftover,
        (_, TaskState::Finished { .. }) => Step::Leave,
        (Some(worker), _) => match &worker.status {
            ContainerStatus::Running { .. } => {
                let backstop =
                    worker.deadline_unix + context.stop_grace.as_secs() + context.backstop_margin.as_secs();
                Step::Watch { overdue: backstop <= context.now_unix }
            }
            ContainerStatus::Exited(exit) => Step::Collect(exit.clone()),
            ContainerStatus::Created if settled(worker.age) => Step::Requeue,
            ContainerStatus::Created | ContainerStatus::Removing | ContainerStatus::Missing => Step::Leave,
        },
        (None, TaskState::Dispatched) => {
            // A worker made a moment ago may not be listed yet.
            let fresh = record
                .started_unix
                .is_some_and(|started| context.now_unix.saturating_sub(started) < SWEEP_GRACE.as_secs());
            if fresh && context.started { Step::Leave } else { Step::Vanished }
        }
        (None, TaskState::Queued) => Step::Leave,
    }
}

#[cfg(test)]
mod tests {
    use core_types::TaskKind;
    use domain::tasks::{Conclusion, Outcome};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn record(state: TaskState, started_unix: Option<u64>) -> TaskRecord {
        let mut record =
            TaskRecord::queued(crate::tests::harness::request(TaskKind::Review, "o/r", 1), "d", 1, NOW);
        record.state = state;
        record.started_unix = started_unix;
        record
    }

    fn finished() -> TaskState {
        TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Review done", "", NOW) }
    }

    fn worker(status: ContainerStatus, age_secs: u64, deadline_unix: u64) -> Worker {
        Worker { status, age: Duration::from_secs(age_secs), deadline_unix }
    }

    fn exited(code: i64) -> ContainerStatus {
        ContainerStatus::Exited(ExitInfo { code, oom_killed: false, started_at: None, finished_at: None })
    }

    fn context(started: bool) -> Context {
        Context {
            now_unix: NOW,
            started,
            stop_grace: Duration::from_secs(10),
            backstop_margin: Duration::from_secs(5),
        }
    }

    #[test]
    fn every_pairing_of_record_and_worker_has_one_next_step() {
        let running = ContainerStatus::Running { started_at: None };
        let cases: Vec<(&str, TaskRecord, Option<Worker>, bool, Step)> = vec![
            (
                "finished, old worker",
                record(finished(), None),
                Some(worker(exited(0), 60, NOW)),
                true,
                Step::RemoveLeftover,
            ),
            (
                "finished, young worker",
                record(finished(), None),
                Some(worker(running.clone(), 5, NOW)),
                true,
                Step::Leave,
            ),
            (
                "finished, young worker at start",
                record(finished(), None),
                Some(worker(running.clone(), 5, NOW)),
                false,
                Step::RemoveLeftover,
            ),
            ("finished, no worker", record(finished(), None), None, true, Step::Leave),
            (
                "running in time",
                record(TaskState::Dispatched, Some(NOW)),
                Some(worker(running.clone(), 60, NOW + 600)),
                true,
                Step::Watch { overdue: false },
            ),
            (
                "running past the backstop",
                record(TaskState::Dispatched, Some(NOW)),
                Some(worker(running.clone(), 60, NOW - 16)),
                true,
                Step::Watch { overdue: true },
            ),
            (
                "running inside the grace",
                record(TaskState::Dispatched, Some(NOW)),
                Some(worker(running, 60, NOW - 14)),
                true,
                Step::Watch { overdue: false },
            ),
            (
                "exited",
                record(TaskState::Dispatched, Some(NOW)),
                Some(worker(exited(3), 60, NOW)),
                true,
                Step::Collect(ExitInfo { code: 3, oom_killed: false, started_at: None, finished_at: None }),
            ),
            (
                "created long ago",
                record(TaskState::Dispatched, None),
                Some(worker(ContainerStatus::Created, 60, NOW)),
                true,
                Step::Requeue,
            ),
            (
                "created just now",
                record(TaskState::Dispatched, None),
                Some(worker(ContainerStatus::Created, 5, NOW)),
                true,
                Step::Leave,
            ),
            (
                "created, found at start",
                record(TaskState::Dispatched, None),
                Some(worker(ContainerStatus::Created, 5, NOW)),
                false,
                Step::Requeue,
            ),
            (
                "being removed",
                record(TaskState::Dispatched, None),
                Some(worker(ContainerStatus::Removing, 60, NOW)),
                true,
                Step::Leave,
            ),
            (
                "dispatched, worker gone",
                record(TaskState::Dispatched, Some(NOW - 60)),
                None,
                true,
                Step::Vanished,
            ),
            (
                "dispatched a moment ago, not listed yet",
                record(TaskState::Dispatched, Some(NOW - 5)),
                None,
                true,
                Step::Leave,
            ),
            (
                "dispatched a moment ago, at start",
                record(TaskState::Dispatched, Some(NOW - 5)),
                None,
                false,
                Step::Vanished,
            ),
            ("queued, no worker", record(TaskState::Queued, None), None, true, Step::Leave),
        ];
        for (name, record, worker, started, expected) in cases {
            assert_eq!(next_step(&record, worker.as_ref(), &context(started)), expected, "{name}");
        }
    }
}
