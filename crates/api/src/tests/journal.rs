use core_types::TaskKind;

use crate::journal::{Accepted, Journal};
use crate::tasks::{CancelCause, CancelRequest, TaskState};
use crate::triggers::{Decision, TaskRequest};

fn review(number: u64) -> Decision {
    Decision::Queue(TaskRequest {
        kind: TaskKind::Review,
        repo: "octo/repo".into(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: "https://example.invalid/octo/repo.git".into(),
        prompt: "/berth review".into(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".into(),
        installation: Some(7),
        comment_id: Some(9),
    })
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

    journal.update_task(&first, Box::new(|task| task.state = TaskState::Finished)).await.unwrap().unwrap();
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
    assert_eq!(journal.prune(0).await.unwrap(), 0);
    assert_eq!(journal.prune(u64::MAX).await.unwrap(), 1);
    assert!(journal.delivery("d-old").unwrap().is_none());
    assert!(journal.task(&task).unwrap().is_some());
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
}
