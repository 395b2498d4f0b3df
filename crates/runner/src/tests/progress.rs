//! A task's check run over its life: queued with its place while it waits,
//! in progress when its worker starts, its latest lines while it runs (only
//! when they changed, never after it completed), and completed once.

use std::time::Duration;

use bytes::Bytes;
use core_types::TaskKind;
use dispatcher::LogChunk;
use domain::tasks::TaskState;
use github::CheckRunStatus;

use super::harness::{Rig, config, record_line};
use crate::RunnerConfig;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_waiting_task_is_queued_then_in_progress_then_shows_its_lines_then_completes() {
    let mut rig = Rig::new(RunnerConfig { max_workers: 1, ..config() }).await;
    rig.engine.set_default_program(dispatcher::Program::run_until_stopped());
    let first = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    let second = rig.submit(TaskKind::Review, "octo/repo", 2).await;
    let third = rig.submit(TaskKind::Review, "octo/repo", 3).await;
    rig.until("the first started", |rig| rig.task(&first).state == TaskState::Dispatched).await;
    rig.until("the waiting ones have check runs", |rig| {
        rig.task(&second).check_run.is_some() && rig.task(&third).check_run.is_some()
    })
    .await;
    let run_of = |rig: &Rig, task| rig.task(task).check_run.unwrap();
    let (second_run, third_run) = (run_of(&rig, &second), run_of(&rig, &third));
    rig.github.seen(|seen| {
        assert!(seen.opened.contains(&(second_run, CheckRunStatus::Queued)), "{:?}", seen.opened);
        assert!(seen.opened.contains(&(third_run, CheckRunStatus::Queued)), "{:?}", seen.opened);
    });
    assert_eq!(rig.task(&second).state, TaskState::Queued, "opened early, not dispatched");

    // The first runs: in progress at once, then its new lines every 30 s.
    let first_run = run_of(&rig, &first);
    let container = Rig::container_name(&first);
    let updates_of = |rig: &Rig, run: u64| {
        rig.github.seen(|seen| seen.updates.iter().filter(|(id, ..)| *id == run).cloned().collect::<Vec<_>>())
    };
    rig.until("marked in progress", |rig| !updates_of(rig, first_run).is_empty()).await;
    let marked = updates_of(&rig, first_run);
    assert_eq!(marked[0].1, Some(CheckRunStatus::InProgress));
    assert_eq!(marked[0].2.title, "Review running");

    assert!(rig.engine.write_output(&container, LogChunk::Stdout(Bytes::from("reading src/lib.rs\n"))));
    rig.pass(31 * SECOND).await;
    let shown = updates_of(&rig, first_run);
    assert_eq!(shown.len(), 2, "{shown:?}");
    let text = shown[1].2.text.clone().unwrap();
    assert!(text.contains("reading src/lib.rs"), "{text}");
    assert_eq!(shown[1].1, None, "a progress edit never sets the status");

    // Nothing new: no edit.
    rig.pass(60 * SECOND).await;
    assert_eq!(updates_of(&rig, first_run).len(), 2);

    assert!(rig.engine.write_output(&container, LogChunk::Stderr(Bytes::from("running the tests\n"))));
    rig.pass(30 * SECOND).await;
    let shown = updates_of(&rig, first_run);
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[2].2.text.as_deref().unwrap().contains("running the tests"));

    // It ends: completed once, and no edit after (the fake GitHub panics on one).
    assert!(rig.engine.exit_with(&container, 0, record_line("Looks good.")));
    let record = rig.reported(&first).await;
    assert_eq!(rig.completions(&first).len(), 1);
    rig.pass(90 * SECOND).await;
    assert_eq!(updates_of(&rig, first_run).len(), 3, "no edit after the end");
    assert_eq!(record.check_run, Some(first_run));

    // The second gets the place: in progress now, on the run opened while it waited.
    rig.until("the second started", |rig| rig.task(&second).state == TaskState::Dispatched).await;
    rig.until("the second in progress", |rig| !updates_of(rig, second_run).is_empty()).await;
    assert_eq!(rig.task(&second).check_run, Some(second_run), "the same run, not a second one");
    let opened_for_second =
        rig.github.seen(|seen| seen.check_runs.iter().filter(|(.., task)| *task == second).count());
    assert_eq!(opened_for_second, 1);
}

#[tokio::test(start_paused = true)]
async fn the_check_run_links_to_the_task_page_and_a_restart_keeps_one_run() {
    let mut rig = Rig::new(RunnerConfig { max_workers: 1, ..config() }).await;
    rig.engine.set_default_program(dispatcher::Program::run_until_stopped());
    let first = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    rig.until("the first started", |rig| rig.task(&first).state == TaskState::Dispatched).await;
    let run = rig.task(&first).check_run.unwrap();
    rig.until("marked in progress", |rig| rig.github.seen(|seen| !seen.updates.is_empty())).await;
    let summary = rig.github.seen(|seen| seen.updates[0].2.summary.clone());
    assert!(summary.contains(&format!("https://berth.example.com/tasks/{first}")), "{summary}");

    // A restart mid-task: the reattached monitor shows progress on the same run.
    let rig = rig.restart().await;
    let container = Rig::container_name(&first);
    assert!(rig.engine.write_output(&container, LogChunk::Stdout(Bytes::from("after the restart\n"))));
    rig.pass(31 * SECOND).await;
    let texts: Vec<String> = rig.github.seen(|seen| {
        seen.updates
            .iter()
            .filter(|(id, ..)| *id == run)
            .filter_map(|(_, _, output)| output.text.clone())
            .collect()
    });
    assert!(texts.iter().any(|text| text.contains("after the restart")), "{texts:?}");
    assert!(rig.engine.exit_with(&container, 0, record_line("Done.")));
    rig.reported(&first).await;
    assert_eq!(rig.completions(&first).len(), 1);
    assert_eq!(rig.github.seen(|seen| seen.check_runs.len()), 1, "one check run for the task");
    let comment = rig.github.seen(|seen| seen.comments[0].1.clone());
    assert!(
        comment.contains(&format!("Details and log: https://berth.example.com/tasks/{first}")),
        "{comment}"
    );
}
