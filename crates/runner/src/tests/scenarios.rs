//! Whole-runner scenarios over the fakes, under paused tokio time.

use std::time::Duration;

use core_types::TaskKind;
use dispatcher::Program;
use domain::request::{CancelCause, CancelRequest};
use domain::tasks::{Conclusion, TaskState};
use domain::triggers::Decision;
use journal::Accepted;

use super::harness::{Rig, config, request, succeeds_after};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn a_task_runs_and_is_reported_once_with_its_summary() {
    let mut rig = Rig::new(config()).await;
    let task = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Success));
    assert_eq!(rig.completions(&task), [("success".to_owned(), "Review done".to_owned())]);
    let comments = rig.github.seen(|seen| seen.comments.clone());
    assert_eq!(comments.len(), 1);
    assert!(comments[0].1.contains("All good."), "{}", comments[0].1);
    // The container is gone, and the worker's token was revoked.
    assert!(rig.engine.containers().is_empty());
    rig.until("the token revoked", |rig| rig.github.seen(|seen| seen.tokens_revoked == 1)).await;
    // The triggering comment got its reaction.
    assert_eq!(rig.github.seen(|seen| seen.reactions.clone()), [(1, "eyes".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn the_cap_holds_and_the_queue_is_taken_in_the_order_accepted() {
    let mut rig = Rig::new(super::harness::Rig::capped(2)).await;
    rig.engine.set_default_program(succeeds_after(MINUTE));
    let mut tasks = Vec::new();
    for number in 1..=5 {
        tasks.push(rig.submit(TaskKind::Review, "octo/repo", number).await);
    }
    let mut most = 0;
    rig.until("all five reported", |rig| {
        let running = rig
            .engine
            .containers()
            .iter()
            .filter(|container| matches!(container.status, dispatcher::ContainerStatus::Running { .. }))
            .count();
        most = most.max(running);
        tasks.iter().all(|task| rig.task(task).reported)
    })
    .await;
    assert_eq!(most, 2, "two workers at most at once");
    let created = rig.engine.calls().created;
    let expected: Vec<String> = tasks.iter().map(Rig::container_name).collect();
    assert_eq!(created, expected, "created in the order accepted");
}

#[tokio::test(start_paused = true)]
async fn a_task_cancelled_while_queued_never_gets_a_container() {
    let mut rig = Rig::new(Rig::capped(1)).await;
    rig.engine.set_default_program(succeeds_after(10 * MINUTE / 2));
    let first = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    let second = rig.submit(TaskKind::Review, "octo/repo", 2).await;
    rig.until("the first started", |rig| rig.task(&first).state == TaskState::Dispatched).await;
    rig.held(rig.runner.request_cancel(&second, "operator")).await.unwrap();
    let record = rig.reported(&second).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Cancelled));
    assert_eq!(record.outcome().map(|outcome| outcome.title.as_str()), Some("Cancelled before it started"));
    // It waited, so GitHub showed it queued; its run ends cancelled, and the comment says it.
    let completions = rig.completions(&second);
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0].0, "cancelled");
    let comment = rig.github.seen(|seen| seen.comments.iter().find(|(task, _)| *task == second).cloned());
    assert!(comment.expect("a comment").1.contains("Cancelled before it started"));
    assert!(!rig.engine.calls().created.contains(&Rig::container_name(&second)));
    assert_eq!(rig.reported(&first).await.conclusion(), Some(Conclusion::Success));
}

#[tokio::test(start_paused = true)]
async fn a_running_task_cancelled_is_stopped_and_reported_cancelled() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(Program::run_until_stopped());
    let task = rig.submit(TaskKind::Implement, "octo/repo", 3).await;
    rig.until("running", |rig| {
        rig.task(&task).state == TaskState::Dispatched && !rig.engine.calls().started.is_empty()
    })
    .await;
    rig.held(rig.runner.request_cancel(&task, "operator")).await.unwrap();
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Cancelled));
    assert_eq!(rig.engine.calls().stopped.len(), 1, "stopped once, with the grace");
    assert_eq!(rig.engine.calls().stopped[0].1, rig.config.stop_grace);
    assert!(rig.engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_push_supersedes_the_running_review_and_queues_the_new_head() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(Program::run_until_stopped());
    let mut old = request(TaskKind::Review, "octo/repo", 4);
    old.head_sha = Some("a".repeat(40));
    let Accepted::Queued { task: old } = rig.accept(Decision::Queue(old)).await else { panic!("not queued") };
    rig.until("running", |rig| !rig.engine.calls().started.is_empty()).await;
    // The automatic review of a push comes from no comment.
    let mut new = request(TaskKind::Review, "octo/repo", 4);
    new.head_sha = Some("c".repeat(40));
    new.comment_id = None;
    let cancel = CancelRequest {
        repo: "octo/repo".into(),
        number: 4,
        cause: CancelCause::Superseded,
        by: "octocat".into(),
        kind: Some(TaskKind::Review),
        except_head: Some("c".repeat(40)),
        reason: "superseded by a push of ccccccc".into(),
    };
    let accepted = rig.accept(Decision::Supersede { cancel, queue: Some(new) }).await;
    let Accepted::CancelRequested { queued: Some(new), .. } = accepted else {
        panic!("not superseded: {accepted:?}")
    };
    let record = rig.reported(&old).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Cancelled));
    assert_eq!(rig.completions(&old)[0].1, "Superseded");
    rig.until("the new head's review runs", |rig| rig.task(&new).state == TaskState::Dispatched).await;
    assert_eq!(rig.task(&new).head_sha.as_deref(), Some("c".repeat(40).as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_outlives_its_deadline_is_stopped_by_the_backstop() {
    let mut rig = Rig::new(config()).await;
    // A worker that misses its own deadline and ignores SIGTERM.
    rig.engine.set_default_program(Program::run_until_stopped().ignoring_sigterm());
    let task = rig.submit(TaskKind::Review, "octo/repo", 5).await;
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::TimedOut));
    let calls = rig.engine.calls();
    assert_eq!(calls.stopped.len(), 1);
    assert_eq!(record.outcome().and_then(|outcome| outcome.exit_code), Some(137), "killed after the grace");
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_and_killed_from_outside_read_as_such() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(Program::oom_after(MINUTE));
    let oom = rig.submit(TaskKind::Review, "octo/repo", 6).await;
    rig.reported(&oom).await;
    assert_eq!(rig.completions(&oom), [("failure".to_owned(), "Out of memory".to_owned())]);

    rig.engine.set_default_program(Program::run_until_stopped());
    let killed = rig.submit(TaskKind::Review, "octo/repo", 7).await;
    let name = Rig::container_name(&killed);
    rig.until("running", |rig| rig.engine.calls().started.len() == 2).await;
    assert!(rig.engine.kill_from_outside(&name));
    rig.reported(&killed).await;
    assert_eq!(rig.completions(&killed), [("failure".to_owned(), "Killed from outside".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_task_accepted_while_the_engine_is_away_waits_and_then_runs() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_outage(true);
    let task = rig.submit(TaskKind::Review, "octo/repo", 8).await;
    // Ten minutes of outage: the task waits, it does not fail.
    rig.pass(10 * MINUTE).await;
    let waiting = rig.task(&task);
    assert!(!waiting.state.is_finished(), "failed during the outage: {:?}", waiting.outcome());
    rig.engine.set_outage(false);
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Success));
    assert_eq!(rig.engine.calls().created.len(), 1, "created once");
}

#[tokio::test(start_paused = true)]
async fn a_report_github_refused_is_sent_again_until_it_lands_once() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(succeeds_after(MINUTE));
    let task = rig.submit(TaskKind::Review, "octo/repo", 9).await;
    rig.until("running", |rig| !rig.engine.calls().started.is_empty()).await;
    rig.github.set_down(true);
    rig.until("finished", |rig| rig.task(&task).state.is_finished()).await;
    rig.pass(5 * MINUTE).await;
    assert!(!rig.task(&task).reported, "reported while GitHub was down");
    rig.github.set_down(false);
    rig.reported(&task).await;
    assert_eq!(rig.completions(&task).len(), 1, "one completion");
    assert_eq!(rig.github.seen(|seen| seen.comments.len()), 1, "one comment");
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_a_running_worker_is_reattached_and_one_that_exited_is_collected() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(Program::run_until_stopped());
    let running = rig.submit(TaskKind::Review, "octo/repo", 10).await;
    let exits = rig.submit(TaskKind::Review, "octo/repo", 11).await;
    rig.until("both running", |rig| rig.engine.calls().started.len() == 2).await;
    rig.stop().await;
    // While the daemon is away one worker ends.
    rig.engine.exit_with(
        Rig::container_name(&exits),
        0,
        format!("{}\n", super::harness::record_line("Done while away.")),
    );
    let rig = rig.restart().await;
    let collected = rig.reported(&exits).await;
    assert_eq!(collected.conclusion(), Some(Conclusion::Success));
    assert!(rig.github.seen(|seen| seen.comments.iter().any(|(_, body)| body.contains("Done while away."))));
    // The other is watched again: its exit now is reported.
    let record = rig.task(&running);
    assert!(!record.reported, "{record:?}");
    rig.engine.exit_with(
        Rig::container_name(&running),
        0,
        format!("{}\n", super::harness::record_line("Reattached.")),
    );
    assert_eq!(rig.reported(&running).await.conclusion(), Some(Conclusion::Success));
    assert_eq!(rig.engine.calls().created.len(), 2, "nothing ran twice");
    for task in [&running, &exits] {
        assert_eq!(rig.completions(task).len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_ends_once_even_when_the_sweep_races_its_monitor() {
    let mut rig = Rig::new(config()).await;
    rig.engine.set_default_program(succeeds_after(Duration::from_secs(2)));
    let mut tasks = Vec::new();
    for number in 1..=6 {
        tasks.push(rig.submit(TaskKind::Review, "octo/repo", number).await);
    }
    // The sweep runs over and over while the monitors collect the same exits.
    let until = tokio::time::Instant::now() + 3 * MINUTE;
    while tokio::time::Instant::now() < until {
        rig.held(rig.runner.reconcile()).await.unwrap();
        rig.tick().await;
    }
    for task in &tasks {
        rig.reported(task).await;
        assert_eq!(rig.completions(task).len(), 1, "one completion for {task}");
    }
    assert_eq!(rig.github.seen(|seen| seen.comments.len()), 6);
}

#[tokio::test(start_paused = true)]
async fn a_fork_or_a_closed_pull_request_is_refused_without_a_container() {
    let mut rig = Rig::new(config()).await;
    rig.github.script.lock().unwrap().pull_repo = Some("stranger/fork".into());
    let mut fork = request(TaskKind::Review, "octo/repo", 12);
    fork.head_sha = None;
    let Accepted::Queued { task } = rig.accept(Decision::Queue(fork)).await else { panic!("not queued") };
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Neutral));
    assert!(rig.engine.calls().created.is_empty());
}
