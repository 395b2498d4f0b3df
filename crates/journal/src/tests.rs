use core_types::TaskKind;

use crate::{Accepted, Cutoffs, Finished, Journal, Pruned};
use domain::request::{CancelCause, CancelRequest};
use domain::request::{RetryRequest, RetryTarget, TaskRequest};
use domain::tasks::{Conclusion, Outcome, PullRequestRef, TaskState};
use domain::triggers::Decision;

/// A review of `number` asked for in a comment of its own.
fn review(number: u64) -> Decision {
    static COMMENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
    review_by_comment(number, Some(COMMENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

fn review_by_comment(number: u64, comment_id: Option<u64>) -> Decision {
    Decision::Queue(TaskRequest {
        kind: TaskKind::Review,
        repo: "octo/repo".into(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: "https://example.invalid/octo/repo.git".into(),
        repo_id: None,
        prompt: "/berth review".into(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".into(),
        installation: Some(7),
        comment_id,
        follow_up: false,
    })
}

/// Prunes deliveries (and what goes with them) only.
fn deliveries_before(cutoff: u64) -> Cutoffs {
    Cutoffs { deliveries: cutoff, tasks: 0 }
}

fn queued_task(accepted: &Accepted) -> core_types::TaskId {
    match accepted {
        Accepted::Queued { task } => task.clone(),
        other => panic!("expected queued, got {other:?}"),
    }
}

#[tokio::test]
async fn a_delivery_is_a_duplicate_also_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let task = {
        let journal = Journal::open(dir.path()).unwrap();
        let task = queued_task(&journal.accept("d-1", "issue_comment", review(1)).await.unwrap());
        let again = journal.accept("d-1", "issue_comment", review(1)).await.unwrap();
        assert!(matches!(again, Accepted::Duplicate { task: Some(ref t), .. } if *t == task), "{again:?}");
        task
    };
    // Let the first journal's writer thread notice it is gone and release the file.
    let journal = reopen(dir.path()).await;
    let again = journal.accept("d-1", "issue_comment", review(1)).await.unwrap();
    assert!(journal.write_failure().is_none());
    assert!(matches!(again, Accepted::Duplicate { task: Some(ref t), .. } if *t == task), "{again:?}");
    let record = journal.task(&task).unwrap().unwrap();
    assert_eq!(record.state, TaskState::Queued);
    assert_eq!(record.installation, Some(7));
}

async fn reopen(path: &std::path::Path) -> Journal {
    for _ in 0..100 {
        match Journal::open(path) {
            Ok(journal) => return journal,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    Journal::open(path).unwrap()
}

#[tokio::test]
async fn a_second_trigger_for_an_active_task_is_a_duplicate_until_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let first = queued_task(&journal.accept("d-1", "issue_comment", review(5)).await.unwrap());
    let second = journal.accept("d-2", "issue_comment", review(5)).await.unwrap();
    assert!(matches!(second, Accepted::Duplicate { task: Some(ref t), .. } if *t == first), "{second:?}");
    let other = journal.accept("d-3", "issue_comment", review(6)).await.unwrap();
    assert!(matches!(other, Accepted::Queued { .. }));

    journal
        .update_task(
            &first,
            Box::new(|task| {
                task.state = TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Done", "", 0) }
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let after = journal.accept("d-4", "issue_comment", review(5)).await.unwrap();
    assert!(matches!(after, Accepted::Queued { .. }), "{after:?}");
    let tasks = journal.tasks().unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks.windows(2).all(|pair| pair[0].seq < pair[1].seq), "tasks come back in the order accepted");
}

#[tokio::test]
async fn cancel_marks_the_active_tasks_of_that_number_only() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let five = queued_task(&journal.accept("d-1", "issue_comment", review(5)).await.unwrap());
    let six = queued_task(&journal.accept("d-2", "issue_comment", review(6)).await.unwrap());
    let cancel = CancelRequest {
        repo: "octo/repo".into(),
        number: 5,
        cause: CancelCause::Command,
        by: "octocat".into(),
        kind: None,
        except_head: None,
        reason: "cancelled by @octocat".into(),
    };
    let answer = journal.accept("d-3", "issue_comment", Decision::Cancel(cancel.clone())).await.unwrap();
    assert_eq!(
        answer,
        Accepted::CancelRequested { tasks: vec![five.clone()], reason: cancel.reason.clone(), queued: None }
    );
    assert_eq!(journal.task(&five).unwrap().unwrap().cancel, Some(cancel.clone()));
    assert_eq!(journal.task(&six).unwrap().unwrap().cancel, None);
    let nothing = journal
        .accept("d-4", "issue_comment", Decision::Cancel(CancelRequest { number: 99, ..cancel }))
        .await
        .unwrap();
    assert!(matches!(nothing, Accepted::Ignored { .. }));
}

#[tokio::test]
async fn old_deliveries_are_pruned_and_tasks_kept() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let task = queued_task(&journal.accept("d-old", "issue_comment", review(1)).await.unwrap());
    assert_eq!(journal.prune(Cutoffs { deliveries: 0, tasks: 0 }).await.unwrap(), Pruned::default());
    let pruned = journal.prune(Cutoffs { deliveries: u64::MAX, tasks: u64::MAX }).await.unwrap();
    assert_eq!(pruned, Pruned { deliveries: 1, ..Pruned::default() });
    assert!(journal.delivery("d-old").unwrap().is_none());
    assert!(journal.task(&task).unwrap().is_some(), "a queued task is kept however old");
}

#[tokio::test]
async fn concurrent_deliveries_share_commits_and_each_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut handles = Vec::new();
    for n in 0..200_u64 {
        let journal = journal.clone();
        handles.push(tokio::spawn(async move {
            journal.accept(&format!("d-{n}"), "issue_comment", review(n)).await
        }));
    }
    for handle in handles {
        assert!(matches!(handle.await.unwrap().unwrap(), Accepted::Queued { .. }));
    }
    assert_eq!(journal.tasks().unwrap().len(), 200);
}

#[test]
fn a_corrupt_journal_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal.redb"), b"this is not a redb file, it is garbage ".repeat(200))
        .unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("journal.redb") && message.contains("cannot be opened"), "{message}");
    assert!(message.contains("damaged") && message.contains("move it aside"), "{message}");
}

#[test]
fn only_a_missing_journal_is_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = Journal::open(&state).unwrap();
    assert!(journal.tasks().unwrap().is_empty());
    assert!(state.join("journal.redb").metadata().unwrap().len() > 0);
    let mut names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    // The journal and its intake log's folder (ADR 24), which is empty.
    assert_eq!(names, ["journal.intake", "journal.redb"], "nothing half-made is left beside it");
    assert_eq!(std::fs::read_dir(state.join("journal.intake")).unwrap().count(), 0);
}

#[test]
fn a_leftover_half_made_journal_beside_a_missing_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal.redb.new"), b"").unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert!(journal.tasks().unwrap().is_empty());
    assert!(!dir.path().join("journal.redb.new").exists());
}

#[test]
fn an_empty_journal_stops_start_up_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    std::fs::write(&path, b"").unwrap();
    let message = Journal::open(dir.path()).unwrap_err().to_string();
    assert!(message.contains("journal.redb") && message.contains("is empty (0 bytes)"), "{message}");
    assert!(message.contains("move it aside"), "{message}");
    assert_eq!(path.metadata().unwrap().len(), 0, "not made into a new journal");
}

#[tokio::test]
async fn a_cut_short_journal_stops_start_up_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    {
        let journal = Journal::open(dir.path()).unwrap();
        for n in 0..50 {
            journal.accept(&format!("d-{n}"), "issue_comment", review(n)).await.unwrap();
        }
    }
    // Wait for the writer thread to let go of the file.
    drop(reopen(dir.path()).await);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let bytes = std::fs::read(&path).unwrap();
    for cut in [16, 300] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let message = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains("damaged") && message.contains("move it aside"), "cut at {cut}: {message}");
    }
}

#[test]
fn a_journal_held_by_another_daemon_is_in_use_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Journal::open(dir.path()).unwrap();
    let message = Journal::open(dir.path()).unwrap_err().to_string();
    assert!(message.contains("another process holds it"), "{message}");
    for wrong in ["damaged", "corrupt", "move it aside"] {
        assert!(!message.contains(wrong), "{wrong:?} in {message}");
    }
}

#[tokio::test]
async fn a_comment_that_made_a_task_makes_no_second_one_under_a_new_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let first =
        queued_task(&journal.accept("d-1", "issue_comment", review_by_comment(5, Some(77))).await.unwrap());
    // The task ended, so the active-task key no longer stands in the way.
    journal
        .update_task(
            &first,
            Box::new(|task| {
                task.state = TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Done", "", 0) }
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let replayed = journal.accept("d-2", "issue_comment", review_by_comment(5, Some(77))).await.unwrap();
    match &replayed {
        Accepted::Duplicate { task: Some(task), reason } => {
            assert_eq!(*task, first);
            assert!(reason.contains("comment 77 already made task"), "{reason}");
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // Also after a restart.
    drop(journal);
    let journal = reopen(dir.path()).await;
    let replayed = journal.accept("d-3", "issue_comment", review_by_comment(5, Some(77))).await.unwrap();
    assert!(matches!(replayed, Accepted::Duplicate { task: Some(ref t), .. } if *t == first), "{replayed:?}");
    // Another comment is another request.
    let other = journal.accept("d-4", "issue_comment", review_by_comment(5, Some(78))).await.unwrap();
    assert!(matches!(other, Accepted::Queued { .. }), "{other:?}");
    // Past the retention, the comment is forgotten with the deliveries.
    let second = queued_task(&other);
    journal
        .update_task(
            &second,
            Box::new(|task| {
                task.state = TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Done", "", 0) }
            }),
        )
        .await
        .unwrap()
        .unwrap();
    journal.prune(deliveries_before(u64::MAX)).await.unwrap();
    let later = journal.accept("d-5", "issue_comment", review_by_comment(5, Some(77))).await.unwrap();
    assert!(matches!(later, Accepted::Queued { .. }), "{later:?}");
}

#[tokio::test]
async fn triggers_without_a_comment_are_deduped_by_delivery_and_active_task_only() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let first = queued_task(&journal.accept("l-1", "issues", review_by_comment(6, None)).await.unwrap());
    let again = journal.accept("l-1", "issues", review_by_comment(6, None)).await.unwrap();
    assert!(
        matches!(again, Accepted::Duplicate { task: Some(ref t), ref reason } if *t == first && reason.contains("already received")),
        "{again:?}"
    );
    let active = journal.accept("l-2", "issues", review_by_comment(6, None)).await.unwrap();
    assert!(
        matches!(active, Accepted::Duplicate { ref reason, .. } if reason.contains("already queued or running")),
        "{active:?}"
    );
    journal
        .update_task(
            &first,
            Box::new(|task| {
                task.state = TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Done", "", 0) }
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let after = journal.accept("l-3", "issues", review_by_comment(6, None)).await.unwrap();
    assert!(matches!(after, Accepted::Queued { .. }), "{after:?}");
}

#[tokio::test]
async fn a_review_asked_for_while_the_superseded_one_is_stopping_is_not_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let old = queued_task(&journal.accept("d-1", "issue_comment", review(5)).await.unwrap());
    journal.update_task(&old, Box::new(|task| task.head_sha = Some("aaaaaaa1".to_owned()))).await.unwrap();
    // A push supersedes the running review of the old head...
    let push = CancelRequest {
        repo: "octo/repo".into(),
        number: 5,
        cause: CancelCause::Superseded,
        by: "octocat".into(),
        kind: Some(TaskKind::Review),
        except_head: Some("bbbbbbb2".to_owned()),
        reason: "superseded by a push of bbbbbbb".into(),
    };
    let answer = journal.accept("d-2", "pull_request", Decision::Cancel(push)).await.unwrap();
    assert!(matches!(answer, Accepted::CancelRequested { ref tasks, .. } if *tasks == vec![old.clone()]));
    // ...and a review asked for at once, while the old one still stops, runs.
    let new = queued_task(&journal.accept("d-3", "issue_comment", review(5)).await.unwrap());
    assert_ne!(new, old);
    let active: Vec<_> = journal.active_tasks().unwrap().into_iter().map(|task| task.task_id).collect();
    assert!(active.contains(&old) && active.contains(&new), "both stay active until they end: {active:?}");
    // The old one ending frees only its own key: the new one is still what a third request duplicates.
    journal
        .update_task(
            &old,
            Box::new(|task| {
                task.state = TaskState::Finished { outcome: Outcome::new(Conclusion::Success, "Done", "", 0) }
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let third = journal.accept("d-4", "issue_comment", review(5)).await.unwrap();
    assert!(matches!(third, Accepted::Duplicate { task: Some(ref t), .. } if *t == new), "{third:?}");
}

/// A copy of the schema-1 journal in `tests/fixtures`, in a directory of its own.
fn v1_journal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1.redb");
    std::fs::copy(fixture, dir.path().join("journal.redb")).unwrap();
    dir
}

fn id(text: &str) -> core_types::TaskId {
    core_types::TaskId::new(text).unwrap()
}

#[tokio::test]
async fn a_journal_written_by_schema_1_opens_migrated_with_every_task_intact() {
    let dir = v1_journal();
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.tasks().unwrap().len(), 8);
    assert_eq!(journal.task(&id("review-repo-1-ac04c826")).unwrap().unwrap().state, TaskState::Queued);
    let dispatched = journal.task(&id("review-repo-2-e14148a1")).unwrap().unwrap();
    assert_eq!((dispatched.state.clone(), dispatched.check_run), (TaskState::Dispatched, Some(41)));
    let outcome = |task: &str| journal.task(&id(task)).unwrap().unwrap().outcome().cloned().unwrap();
    let reviewed = outcome("review-repo-3-e3ba5ea1");
    assert_eq!(reviewed.conclusion, Conclusion::Success);
    assert_eq!((reviewed.title.as_str(), reviewed.summary.as_str()), ("Review done", "Review done: summary"));
    assert_eq!(
        (reviewed.finished_unix, reviewed.exit_code, reviewed.pull_request),
        (1_790_000_600, Some(0), None)
    );
    assert_eq!(
        outcome("implement-repo-4-727d1e49").pull_request,
        Some(PullRequestRef::Opened { number: 9, url: Some("https://github.com/octo/repo/pull/9".into()) })
    );
    assert_eq!(
        outcome("implement-repo-5-2fd1ee5f").pull_request,
        Some(PullRequestRef::Opened { number: 12, url: None })
    );
    assert_eq!(
        outcome("implement-repo-6-0dd46dfc").pull_request,
        Some(PullRequestRef::Branch("berth/issue-6".into()))
    );
    assert_eq!(outcome("review-repo-7-678dd655").conclusion, Conclusion::TimedOut);
    assert_eq!(outcome("review-repo-8-26582c97").exit_code, None);
    // The indexes came through too: the active tasks, and the one report still owed.
    let active: Vec<String> =
        journal.active_tasks().unwrap().into_iter().map(|task| task.task_id.to_string()).collect();
    assert_eq!(active, ["review-repo-1-ac04c826", "review-repo-2-e14148a1"]);
    let unreported: Vec<String> =
        journal.unreported_tasks().unwrap().into_iter().map(|task| task.task_id.to_string()).collect();
    assert_eq!(unreported, ["implement-repo-6-0dd46dfc"]);
    // A delivery seen before is still a duplicate after the migration.
    let again = journal.accept("v1-queued", "issue_comment", review(1)).await.unwrap();
    assert!(matches!(again, Accepted::Duplicate { .. }), "{again:?}");
}

#[tokio::test]
async fn a_migrated_journal_opens_again_without_migrating_and_a_newer_one_is_refused() {
    let dir = v1_journal();
    drop(Journal::open(dir.path()).unwrap());
    let journal = reopen(dir.path()).await;
    assert_eq!(journal.tasks().unwrap().len(), 8);
    drop(journal);
    // A schema from the future: refused with a message naming it, never rewritten.
    {
        let mut db = redb::Database::open(dir.path().join("journal.redb"));
        for _ in 0..100 {
            if db.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            db = redb::Database::open(dir.path().join("journal.redb"));
        }
        let db = db.unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Journal::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema 99") && err.contains("newer berth"), "{err}");
}

#[tokio::test]
async fn a_task_ends_once_and_a_second_ending_leaves_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let task = queued_task(&journal.accept("d-end", "issue_comment", review(40)).await.unwrap());
    let first =
        journal.finish_task(&task, Outcome::new(Conclusion::Success, "Review done", "", 1)).await.unwrap();
    assert!(
        matches!(first, Finished::Recorded(ref record) if record.conclusion() == Some(Conclusion::Success))
    );
    let second = journal.finish_task(&task, Outcome::new(Conclusion::Failure, "Late", "", 2)).await.unwrap();
    assert!(
        matches!(second, Finished::Already(ref record) if record.conclusion() == Some(Conclusion::Success))
    );
    let unknown =
        journal.finish_task(&id("review-none-00000000"), Outcome::new(Conclusion::Failure, "x", "", 3)).await;
    assert_eq!(unknown.unwrap(), Finished::Unknown);
}

fn retry(target: RetryTarget, comment_id: Option<u64>) -> Decision {
    Decision::Retry(RetryRequest {
        repo: "octo/repo".into(),
        repo_id: None,
        target,
        sender: "hubot".into(),
        installation: None,
        comment_id,
    })
}

#[tokio::test]
async fn a_retry_repeats_the_newest_task_of_its_number_with_a_fresh_id() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();

    let nothing =
        journal.accept("r-0", "issue_comment", retry(RetryTarget::Latest { number: 5 }, Some(1))).await;
    assert_eq!(
        nothing.unwrap(),
        Accepted::Ignored { reason: "nothing to retry: octo/repo#5 has no task".into() }
    );

    let first = queued_task(&journal.accept("r-1", "issue_comment", review(5)).await.unwrap());
    journal.accept("r-other", "issue_comment", review(6)).await.unwrap();
    // While the first is still queued, a retry is a duplicate of it.
    let busy =
        journal.accept("r-2", "issue_comment", retry(RetryTarget::Latest { number: 5 }, Some(2))).await;
    assert!(matches!(busy.unwrap(), Accepted::Duplicate { task: Some(ref task), .. } if *task == first));

    journal.finish_task(&first, Outcome::new(Conclusion::Failure, "Failed", "", 1)).await.unwrap();
    let again =
        journal.accept("r-3", "issue_comment", retry(RetryTarget::Latest { number: 5 }, Some(3))).await;
    let second = queued_task(&again.unwrap());
    assert_ne!(second, first);
    let (old, new) = (journal.task(&first).unwrap().unwrap(), journal.task(&second).unwrap().unwrap());
    assert_eq!((new.kind, new.number, new.prompt.as_str()), (old.kind, 5, old.prompt.as_str()));
    assert_eq!((new.sender.as_str(), new.comment_id, new.installation), ("hubot", Some(3), Some(7)));
    assert_eq!(new.head_sha, None);
    assert_eq!(old.state, TaskState::Finished { outcome: old.outcome().unwrap().clone() });

    // The same comment delivered again under a new id makes no third task.
    let replay =
        journal.accept("r-4", "issue_comment", retry(RetryTarget::Latest { number: 5 }, Some(3))).await;
    assert!(matches!(replay.unwrap(), Accepted::Duplicate { task: Some(ref task), .. } if *task == second));

    // A re-run of a check run names its task; an unknown one is ignored.
    journal.finish_task(&second, Outcome::new(Conclusion::Success, "Review done", "", 2)).await.unwrap();
    let by_id = journal.accept("r-5", "check_run", retry(RetryTarget::Task(first.to_string()), None)).await;
    let third = queued_task(&by_id.unwrap());
    assert_eq!(journal.task(&third).unwrap().unwrap().number, 5);
    let unknown =
        journal.accept("r-6", "check_run", retry(RetryTarget::Task("review-x-1-0".into()), None)).await;
    assert!(
        matches!(unknown.unwrap(), Accepted::Ignored { ref reason } if reason.contains("not in the journal"))
    );
}

#[tokio::test]
async fn queue_each_queues_every_request_and_answers_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let requests = [review_by_comment(1, None), review_by_comment(2, None)]
        .map(|decision| match decision {
            Decision::Queue(request) => request,
            other => panic!("{other:?}"),
        })
        .to_vec();
    let first =
        queued_task(&journal.accept("s-1", "check_suite", Decision::QueueEach(requests)).await.unwrap());
    let tasks = journal.tasks().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().any(|task| task.task_id == first && task.number == 1));
    assert!(tasks.iter().any(|task| task.number == 2));
}

fn refusal(comment_id: u64, reason: &str) -> Decision {
    Decision::Refuse(domain::request::Refusal {
        repo: "octo/repo".into(),
        number: 9,
        sender: "octocat".into(),
        installation: Some(7),
        comment_id,
        reason: reason.into(),
    })
}

#[tokio::test]
async fn a_refusal_is_stored_with_its_delivery_once_per_comment_until_sent() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let accepted = journal.accept("r-1", "issue_comment", refusal(501, "unknown command")).await.unwrap();
    assert_eq!(accepted, Accepted::Ignored { reason: "unknown command".into() });
    let pending = journal.pending_notices().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].refusal.comment_id, 501);
    assert_eq!(pending[0].refusal.reason, "unknown command");
    // Redelivered: a duplicate delivery, no second notice.
    let again = journal.accept("r-1", "issue_comment", refusal(501, "unknown command")).await.unwrap();
    assert!(matches!(again, Accepted::Duplicate { task: None, .. }), "{again:?}");
    // The same comment under a new delivery id: still one notice for it.
    journal.accept("r-2", "issue_comment", refusal(501, "unknown command")).await.unwrap();
    assert_eq!(journal.pending_notices().unwrap().len(), 1);
    // It survives a restart until it is marked sent.
    drop(journal);
    let journal = reopen(dir.path()).await;
    assert_eq!(journal.pending_notices().unwrap().len(), 1);
    assert!(journal.notice_sent(501).await.unwrap());
    assert!(!journal.notice_sent(501).await.unwrap());
    assert!(journal.pending_notices().unwrap().is_empty());
    // Pruned with the deliveries when never sent.
    journal.accept("r-3", "issue_comment", refusal(502, "x")).await.unwrap();
    journal.prune(deliveries_before(crate::now_unix() + 10)).await.unwrap();
    assert!(journal.pending_notices().unwrap().is_empty());
}

#[tokio::test]
async fn a_duplicate_command_is_answered_but_a_duplicate_without_a_comment_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let first =
        queued_task(&journal.accept("d-1", "issue_comment", review_by_comment(5, Some(71))).await.unwrap());
    let second = journal.accept("d-2", "issue_comment", review_by_comment(5, Some(72))).await.unwrap();
    assert!(matches!(second, Accepted::Duplicate { task: Some(ref t), .. } if *t == first), "{second:?}");
    let pending = journal.pending_notices().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].refusal.comment_id, 72);
    assert_eq!(pending[0].refusal.number, 5);
    assert_eq!(
        pending[0].refusal.reason,
        format!("a review task for octo/repo#5 is already queued or running (task `{first}`)")
    );
    // The first comment sent again under a new delivery id made its task already: no answer.
    let replay = journal.accept("d-3", "issue_comment", review_by_comment(5, Some(71))).await.unwrap();
    assert!(matches!(replay, Accepted::Duplicate { .. }), "{replay:?}");
    // A duplicate nobody commented (an automatic review, a re-run) gets none.
    let automatic = journal.accept("d-4", "pull_request", review_by_comment(5, None)).await.unwrap();
    assert!(matches!(automatic, Accepted::Duplicate { .. }), "{automatic:?}");
    assert_eq!(journal.pending_notices().unwrap().len(), 1);
}

#[tokio::test]
async fn a_retry_with_nothing_to_retry_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let retry = Decision::Retry(RetryRequest {
        repo: "octo/repo".into(),
        target: RetryTarget::Latest { number: 4 },
        sender: "octocat".into(),
        installation: Some(7),
        comment_id: Some(81),
        repo_id: None,
    });
    let accepted = journal.accept("t-1", "issue_comment", retry).await.unwrap();
    assert!(
        matches!(accepted, Accepted::Ignored { ref reason } if reason.contains("nothing to retry")),
        "{accepted:?}"
    );
    let pending = journal.pending_notices().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].refusal.comment_id, pending[0].refusal.number), (81, 4));
}

/// The intake log's segment files.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let intake = dir.join(crate::intake::DIR_NAME);
    let mut found: Vec<_> = std::fs::read_dir(intake).unwrap().map(|entry| entry.unwrap().path()).collect();
    found.sort();
    found
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn records_in_the_intake_log_are_read_back_at_start_and_folded_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    {
        let journal = Journal::open(dir.path()).unwrap();
        for n in 0..20 {
            tasks.push(queued_task(
                &journal.accept(&format!("d-{n}"), "issue_comment", review(n)).await.unwrap(),
            ));
        }
        let ignored = journal.accept("d-ping", "ping", Decision::Ignore("ping".into())).await.unwrap();
        assert!(matches!(ignored, Accepted::Ignored { .. }), "{ignored:?}");
        // Readers see what is only in the log yet.
        assert_eq!(journal.active_tasks().unwrap().len(), 20);
        assert_eq!(
            journal.tasks().unwrap().iter().map(|task| task.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert!(journal.delivery("d-ping").unwrap().is_some());
    }
    // A batch torn by a crash at the end of the newest segment.
    let newest = segments(dir.path()).pop().expect("the deliveries are in the intake log");
    let mut torn = std::fs::OpenOptions::new().append(true).open(&newest).unwrap();
    std::io::Write::write_all(&mut torn, &[0x40, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']).unwrap();
    drop(torn);

    let journal = reopen(dir.path()).await;
    for (n, task) in tasks.iter().enumerate() {
        let again = journal.accept(&format!("d-{n}"), "issue_comment", review(n as u64)).await.unwrap();
        assert!(matches!(again, Accepted::Duplicate { task: Some(ref t), .. } if t == task), "{again:?}");
    }
    // Folded in and the segments read at start deleted.
    until("the segments read at start are deleted once folded", || segments(dir.path()).is_empty()).await;
    let after = queued_task(&journal.accept("d-new", "issue_comment", review(100)).await.unwrap());
    let records = journal.tasks().unwrap();
    assert_eq!(records.len(), 21, "each task once");
    assert_eq!(records.last().unwrap().task_id, after);
    assert_eq!(records.last().unwrap().seq, 21, "the sequence goes on after the log's");
}

#[tokio::test]
async fn a_task_changed_after_it_was_folded_is_not_undone_by_a_later_fold() {
    let dir = tempfile::tempdir().unwrap();
    let task = {
        let journal = Journal::open(dir.path()).unwrap();
        let task = queued_task(&journal.accept("d-1", "issue_comment", review(1)).await.unwrap());
        // The change folds the log into its own transaction first.
        journal.update_task(&task, Box::new(|record| record.state = TaskState::Dispatched)).await.unwrap();
        // The fold thread comes by with the record it saw in the log.
        tokio::time::sleep(crate::FOLD_EVERY * 2).await;
        assert_eq!(journal.task(&task).unwrap().unwrap().state, TaskState::Dispatched);
        assert!(journal.active_tasks().unwrap().iter().all(|record| record.state == TaskState::Dispatched));
        task
    };
    // The segment still holds the queued record; read at start, it is skipped.
    assert!(!segments(dir.path()).is_empty());
    let journal = reopen(dir.path()).await;
    tokio::time::sleep(crate::FOLD_EVERY * 2).await;
    assert_eq!(journal.task(&task).unwrap().unwrap().state, TaskState::Dispatched);
    assert_eq!(journal.tasks().unwrap().len(), 1);
}

#[tokio::test]
async fn a_cancel_sees_a_task_that_is_only_in_the_intake_log() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let task = queued_task(&journal.accept("d-1", "issue_comment", review(9)).await.unwrap());
    let cancel = Decision::Cancel(CancelRequest {
        repo: "octo/repo".into(),
        number: 9,
        cause: CancelCause::Closed,
        by: "octocat".into(),
        kind: None,
        except_head: None,
        reason: "closed".into(),
    });
    let cancelled = journal.accept("d-2", "issues", cancel).await.unwrap();
    assert!(
        matches!(cancelled, Accepted::CancelRequested { ref tasks, .. } if tasks == std::slice::from_ref(&task)),
        "{cancelled:?}"
    );
    assert!(journal.task(&task).unwrap().unwrap().cancel.is_some());
}

/// Ends `task` at `finished_unix` and, when `reported`, marks its report sent.
async fn finish(journal: &Journal, task: &core_types::TaskId, finished_unix: u64, reported: bool) {
    let outcome = Outcome::new(Conclusion::Success, "Review done", "", finished_unix);
    assert!(matches!(journal.finish_task(task, outcome).await.unwrap(), Finished::Recorded(_)));
    if reported {
        journal.update_task(task, Box::new(|record| record.reported = true)).await.unwrap().unwrap();
    }
}

/// The ids of `records`, in their order.
fn ids(records: &[domain::tasks::TaskRecord]) -> Vec<&core_types::TaskId> {
    records.iter().map(|record| &record.task_id).collect()
}

#[tokio::test]
async fn finished_and_reported_tasks_past_the_cutoff_are_pruned_and_every_other_task_kept() {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let accept = |delivery: &'static str, number, comment| {
        let journal = journal.clone();
        async move {
            queued_task(
                &journal
                    .accept(delivery, "issue_comment", review_by_comment(number, Some(comment)))
                    .await
                    .unwrap(),
            )
        }
    };
    let old_done = accept("d-old-done", 1, 901).await;
    let old_unreported = accept("d-old-unreported", 2, 902).await;
    let recent_done = accept("d-recent-done", 3, 903).await;
    let queued = accept("d-queued", 4, 904).await;
    let dispatched = accept("d-dispatched", 5, 905).await;
    finish(&journal, &old_done, 1_000, true).await;
    finish(&journal, &old_unreported, 1_000, false).await;
    finish(&journal, &recent_done, 5_000, true).await;
    journal.update_task(&dispatched, Box::new(|task| task.state = TaskState::Dispatched)).await.unwrap();
    // Entries that should never name a finished and reported task (it left
    // them when it ended and when it was reported): pruned with it all the same.
    {
        let db = journal.db().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(crate::ACTIVE).unwrap().insert("stale-key", old_done.as_str()).unwrap();
        txn.open_table(crate::UNREPORTED).unwrap().insert(old_done.as_str(), "").unwrap();
        txn.commit().unwrap();
    }

    let pruned = journal.prune(Cutoffs { deliveries: 0, tasks: 2_000 }).await.unwrap();
    assert_eq!(pruned, Pruned { tasks: 1, ..Pruned::default() });
    assert_eq!(journal.task(&old_done).unwrap(), None);
    assert_eq!(ids(&journal.tasks().unwrap()), [&old_unreported, &recent_done, &queued, &dispatched]);
    assert_eq!(ids(&journal.active_tasks().unwrap()), [&queued, &dispatched]);
    assert_eq!(ids(&journal.unreported_tasks().unwrap()), [&old_unreported]);
    for kept in [&old_unreported, &recent_done, &queued, &dispatched] {
        assert!(journal.task(kept).unwrap().is_some(), "{kept} is kept");
    }
    {
        let db = journal.db().unwrap();
        let txn = db.begin_read().unwrap();
        let active = txn.open_table(crate::ACTIVE).unwrap();
        assert!(active.get("stale-key").unwrap().is_none(), "no active entry names the pruned task");
        assert_eq!(active.len().unwrap(), 2);
        let unreported = txn.open_table(crate::UNREPORTED).unwrap();
        assert!(unreported.get(old_done.as_str()).unwrap().is_none());
        let comments = txn.open_table(crate::COMMENTS).unwrap();
        assert!(comments.get(901).unwrap().is_none(), "the comment that made it goes with it");
        assert_eq!(comments.len().unwrap(), 4, "the other tasks' comments stay");
    }
    // Its delivery stays for its own retention, and still answers a redelivery.
    let again = journal.accept("d-old-done", "issue_comment", review_by_comment(1, Some(901))).await.unwrap();
    assert!(matches!(again, Accepted::Duplicate { task: Some(ref t), .. } if *t == old_done), "{again:?}");

    // Once reported, the old one goes too; the recent one stays until its time.
    journal.update_task(&old_unreported, Box::new(|record| record.reported = true)).await.unwrap();
    let pruned = journal.prune(Cutoffs { deliveries: 0, tasks: 2_000 }).await.unwrap();
    assert_eq!(pruned.tasks, 1);
    assert_eq!(ids(&journal.tasks().unwrap()), [&recent_done, &queued, &dispatched]);
    assert!(journal.unreported_tasks().unwrap().is_empty());
    let pruned = journal.prune(Cutoffs { deliveries: 0, tasks: u64::MAX }).await.unwrap();
    assert_eq!(pruned.tasks, 1);
    assert_eq!(ids(&journal.tasks().unwrap()), [&queued, &dispatched]);
    assert_eq!(ids(&journal.active_tasks().unwrap()), [&queued, &dispatched]);
}

/// A review whose record is about as large as a real one (2.3 KB, most of
/// it the pull request's body).
fn bulky_review(number: u64) -> Decision {
    match review(number) {
        Decision::Queue(request) => {
            Decision::Queue(TaskRequest { subject_body: "lorem ipsum ".repeat(150), ..request })
        }
        other => other,
    }
}

#[tokio::test]
async fn a_prune_in_steps_of_a_few_records_misses_none_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut expired = Vec::new();
    let mut kept = Vec::new();
    for number in 0..12 {
        let task = queued_task(
            &journal.accept(&format!("d-{number}"), "issue_comment", review(number)).await.unwrap(),
        );
        // Every third task is still queued; the others ended long ago and were reported.
        if number % 3 == 0 {
            kept.push(task);
        } else {
            finish(&journal, &task, 1_000, true).await;
            expired.push(task);
        }
    }
    for comment_id in [601, 602, 603] {
        journal.accept(&format!("r-{comment_id}"), "issue_comment", refusal(comment_id, "no")).await.unwrap();
    }
    for guid in ["asked-1", "asked-2", "asked-3", "asked-4", "asked-5"] {
        assert!(journal.mark_redelivery(guid).await.unwrap());
    }
    // Not yet old: the notes of redeliveries asked for stay.
    let early = Cutoffs { deliveries: 0, tasks: 0 };
    assert_eq!(journal.prune_in_steps_of(2, early).await.unwrap(), Pruned::default());
    assert!(!journal.mark_redelivery("asked-1").await.unwrap(), "still noted");
    let now = crate::now_unix() + 10;
    // Steps of two: each table takes several, and each step goes on where the last stopped.
    let pruned = journal.prune_in_steps_of(2, Cutoffs { deliveries: now, tasks: now }).await.unwrap();
    assert_eq!(pruned, Pruned { deliveries: 15, tasks: 8, notices: 3, redeliveries: 5 });
    assert_eq!(ids(&journal.tasks().unwrap()), kept.iter().collect::<Vec<_>>());
    assert_eq!(ids(&journal.active_tasks().unwrap()), kept.iter().collect::<Vec<_>>());
    for task in &expired {
        assert_eq!(journal.task(task).unwrap(), None);
    }
    assert!(journal.pending_notices().unwrap().is_empty());
    assert_eq!(
        journal.prune_in_steps_of(2, Cutoffs { deliveries: now, tasks: now }).await.unwrap(),
        Pruned::default()
    );
    assert!(journal.mark_redelivery("asked-1").await.unwrap(), "forgotten with the deliveries");
}

#[tokio::test]
#[expect(clippy::print_stderr, reason = "the file's size after each round is this test's report")]
async fn the_journal_file_stops_growing_when_finished_tasks_are_pruned() {
    const TASKS_PER_ROUND: u64 = 300;
    const ROUNDS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut sizes = Vec::with_capacity(ROUNDS);
    let mut written = 0;
    for round in 0..ROUNDS {
        let mut accepted = tokio::task::JoinSet::new();
        for number in 0..TASKS_PER_ROUND {
            let journal = journal.clone();
            accepted.spawn(async move {
                let delivery = format!("r{round}-d{number}");
                queued_task(&journal.accept(&delivery, "issue_comment", bulky_review(number)).await.unwrap())
            });
        }
        let tasks = accepted.join_all().await;
        let record = journal.task(&tasks[0]).unwrap().unwrap();
        written += serde_json::to_vec(&record).unwrap().len() * tasks.len();
        let mut ended = tokio::task::JoinSet::new();
        for task in tasks {
            let journal = journal.clone();
            ended.spawn(async move { finish(&journal, &task, crate::now_unix(), true).await });
        }
        ended.join_all().await;
        // Time passes: everything of this round is past its retention.
        let later = crate::now_unix() + 3_600;
        let pruned = journal.prune(Cutoffs { deliveries: later, tasks: later }).await.unwrap();
        let expected = TASKS_PER_ROUND as usize;
        assert_eq!((pruned.tasks, pruned.deliveries), (expected, expected), "round {round}");
        assert!(journal.tasks().unwrap().is_empty(), "round {round}");
        sizes.push(std::fs::metadata(journal.path()).unwrap().len());
    }
    eprintln!(
        "journal.redb after each round of {TASKS_PER_ROUND} tasks: {sizes:?}; task records written: {written}"
    );
    // redb reuses the pages a prune frees, and trims free pages off the
    // file's end at a commit, so the size after a round goes up and down
    // with where the round's pages fell; it grows in steps of up to double.
    // Bounded: no round after the third takes it a step past the largest
    // of the first three, and it never held what went through it.
    let largest_early = sizes[..3].iter().copied().max().unwrap();
    let largest = sizes.iter().copied().max().unwrap();
    assert!(largest <= 2 * largest_early, "the file kept growing: {sizes:?}");
    assert!(
        largest < written as u64,
        "{written} bytes of task records went through a file of at most {largest}"
    );
}

/// The writer copies a task's JSON around its `seq` instead of encoding the
/// record: the copy must be the record as serde writes it, whatever the
/// `seq` and whatever the record holds, and the cut must be found (else
/// every task is encoded twice).
#[test]
fn a_prepared_task_is_its_record_as_serde_writes_it_with_its_seq() {
    let Decision::Queue(request) = review_by_comment(7, Some(70)) else { unreachable!() };
    let requests = [
        request.clone(),
        TaskRequest {
            kind: TaskKind::Implement,
            prompt: "quotes \" and \\ and \u{1f600} and\nlines".into(),
            subject_body: "x".repeat(5000),
            head_sha: Some("f".repeat(40)),
            comment_id: None,
            ..request
        },
    ];
    for request in requests {
        for seq in [1, 9, 10, 12_345, u64::MAX] {
            let prepared = crate::Prepared::new(request.clone(), "d-prepared", 1_700_000_000);
            assert!(prepared.seq_at.is_some(), "the cut around `seq` is found");
            let (record, json) = prepared.with_seq(seq);
            assert_eq!(record.seq, seq);
            assert_eq!(
                String::from_utf8(json).unwrap(),
                serde_json::to_string(&record).unwrap(),
                "seq {seq}"
            );
        }
    }
    // Where the cut is not found, the record is encoded whole.
    let Decision::Queue(request) = review(8) else { unreachable!() };
    let mut prepared = crate::Prepared::new(request, "d-prepared", 1);
    prepared.seq_at = None;
    let (record, json) = prepared.with_seq(3);
    assert_eq!(json, serde_json::to_vec(&record).unwrap());
}

#[tokio::test]
async fn a_redelivery_is_noted_once_and_read_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert!(!journal.redelivery_asked("g").unwrap());
    assert!(journal.mark_redelivery("g").await.unwrap(), "first note");
    assert!(!journal.mark_redelivery("g").await.unwrap(), "already noted");
    assert!(journal.redelivery_asked("g").unwrap());
    drop(journal);
    let journal = reopen(dir.path()).await;
    assert!(journal.redelivery_asked("g").unwrap(), "the note survives a restart");
    assert!(!journal.redelivery_asked("other").unwrap());
}

/// A record damaged in the middle of an intake log segment costs only that
/// delivery: the journal opens, and the deliveries after it are known and
/// folded (ADR 30).
#[tokio::test]
async fn a_journal_opens_past_a_damaged_intake_record_and_keeps_the_ones_after_it() {
    use crate::intake::{IntakeRecord, Logged, frame, segment_name};
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path()).unwrap());
    let record = |lsn: u64| IntakeRecord {
        lsn,
        delivery: format!("d-{lsn}"),
        event: "ping".to_owned(),
        received_unix: crate::now_unix(),
        outcome: Accepted::Ignored { reason: "ping".to_owned() },
        tasks: Vec::new(),
        notices: Vec::new(),
    };
    let mut bytes = Vec::new();
    let mut second = 0;
    for lsn in 1..=4 {
        if lsn == 2 {
            second = bytes.len();
        }
        frame(&Logged::new(record(lsn)), &mut bytes);
    }
    bytes[second + 20] ^= 0x08;
    let intake = dir.path().join(crate::intake::DIR_NAME);
    std::fs::create_dir_all(&intake).unwrap();
    std::fs::write(intake.join(segment_name(1)), &bytes).unwrap();

    let journal = reopen(dir.path()).await;
    let known: Vec<bool> =
        (1..=4).map(|lsn| journal.delivery(&format!("d-{lsn}")).unwrap().is_some()).collect();
    assert_eq!(known, [true, false, true, true], "only the damaged record is lost");
    // Still known after another restart.
    drop(journal);
    let journal = reopen(dir.path()).await;
    assert!(journal.delivery("d-4").unwrap().is_some());
    // The next delivery takes a place after the last one read.
    let next = journal.accept("d-5", "ping", Decision::Ignore("ping".to_owned())).await.unwrap();
    assert!(matches!(next, Accepted::Ignored { .. }), "{next:?}");
    assert!(journal.delivery("d-5").unwrap().is_some());
}
