//! How endings are put into words, and which result record counts.

use std::time::Duration;

use core_types::{ResultRecord, ResultStatus, TaskKind};
use dispatcher::ExitInfo;

use crate::{Ending, StopCause, conclude};
use domain::tasks::Conclusion;

fn exit(code: i64) -> ExitInfo {
    ExitInfo { code, oom_killed: false, started_at: None, finished_at: None }
}

fn record(branch: Option<&str>) -> ResultRecord {
    ResultRecord {
        berth_result: ResultRecord::VERSION,
        task: "t-1".into(),
        status: ResultStatus::Success,
        summary: "Done well.".into(),
        branch: branch.map(str::to_owned),
        commit: None,
    }
}

fn words(ending: &Ending) -> crate::Report {
    conclude(ending, TaskKind::Implement, Duration::from_secs(600), 256 << 20)
}

#[test]
fn a_worker_code_without_a_well_formed_record_is_a_damaged_record_and_no_branch() {
    for code in 0..=4 {
        let report = words(&Ending::Exited { exit: exit(code), result: None, stopped: None });
        assert_eq!(report.conclusion, Conclusion::Failure, "exit {code}");
        assert_eq!(report.title, "Result record missing or damaged", "exit {code}");
        assert!(report.summary.contains("result record was missing or damaged"), "{}", report.summary);
        assert_eq!(report.branch, None);
    }
    // The record a forging agent wrote is not found, so no branch is ever taken from it.
    let stdout = format!("{}{}\n", record(Some("feature")).to_line(), record(None).to_line());
    let result = ResultRecord::find_last(&stdout);
    let report = words(&Ending::Exited { exit: exit(0), result, stopped: None });
    assert_eq!((report.conclusion, report.branch), (Conclusion::Failure, None));
}

#[test]
fn a_well_formed_record_still_succeeds_and_other_endings_read_as_before() {
    let report =
        words(&Ending::Exited { exit: exit(0), result: Some(record(Some("berth/issue-1"))), stopped: None });
    assert_eq!((report.conclusion, report.title.as_str()), (Conclusion::Success, "Implementation done"));
    assert_eq!(report.branch.as_deref(), Some("berth/issue-1"));
    // Codes that are not the worker's own never carry a record.
    let killed = words(&Ending::Exited { exit: exit(137), result: None, stopped: None });
    assert_eq!(killed.title, "Killed from outside");
    let oom = words(&Ending::Exited {
        exit: ExitInfo { oom_killed: true, ..exit(137) },
        result: None,
        stopped: None,
    });
    assert_eq!(oom.title, "Out of memory");
    // Stopped by Berth: the stop is the ending, record or not.
    let late = words(&Ending::Exited { exit: exit(4), result: None, stopped: Some(StopCause::Deadline) });
    assert_eq!(late.conclusion, Conclusion::TimedOut);
}

fn queued(repo: &str, number: u64, seq: u64) -> domain::tasks::TaskRecord {
    let request = domain::request::TaskRequest {
        kind: TaskKind::Review,
        repo: repo.to_owned(),
        number,
        head_sha: None,
        head_ref: None,
        clone_url: "https://example.invalid/x.git".to_owned(),
        repo_id: None,
        prompt: String::new(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".to_owned(),
        installation: None,
        comment_id: Some(seq),
        follow_up: false,
    };
    domain::tasks::TaskRecord::queued(request, &format!("d-{seq}"), seq, 0)
}

#[test]
fn the_queue_is_taken_round_robin_across_repositories() {
    // Twenty from a busy repository first, then two from a quiet one.
    let mut waiting: Vec<_> = (1..=20).map(|n| queued("busy/repo", n, n)).collect();
    waiting.push(queued("quiet/repo", 1, 21));
    waiting.push(queued("quiet/repo", 2, 22));
    let order: Vec<(String, u64)> = crate::fair_order(waiting.clone(), &std::collections::HashMap::new())
        .into_iter()
        .map(|task| (task.repo, task.number))
        .collect();
    assert_eq!(
        order[..5],
        [
            ("busy/repo".to_owned(), 1),
            ("quiet/repo".to_owned(), 1),
            ("busy/repo".to_owned(), 2),
            ("quiet/repo".to_owned(), 2),
            ("busy/repo".to_owned(), 3)
        ]
    );
    // With two of the busy repository's already running, the quiet one goes first.
    let running = std::collections::HashMap::from([("busy/repo".to_owned(), 2)]);
    let order = crate::fair_order(waiting, &running);
    assert_eq!((order[0].repo.as_str(), order[1].repo.as_str()), ("quiet/repo", "quiet/repo"));
    // Within a repository, the order accepted holds.
    let busy: Vec<u64> =
        order.iter().filter(|task| task.repo == "busy/repo").map(|task| task.number).collect();
    assert_eq!(busy, (1..=20).collect::<Vec<_>>());
}
