//! Following up on Berth's own pull request, and the answers to refused
//! commands, over the fakes under paused tokio time.

use std::time::Duration;

use core_types::follow_up::ReviewComment;
use core_types::{ResultRecord, ResultStatus, TaskKind};
use dispatcher::Program;
use domain::request::Refusal;
use domain::tasks::Conclusion;
use domain::triggers::Decision;
use journal::Accepted;

use super::harness::{Rig, config, request};

const MINUTE: Duration = Duration::from_secs(60);

fn follow_up(number: u64) -> Decision {
    let mut request = request(TaskKind::Implement, "octo/repo", number);
    request.follow_up = true;
    request.prompt = "rename it as bob says".to_owned();
    Decision::Queue(request)
}

fn env_of(rig: &Rig, task: &core_types::TaskId, name: &str) -> Option<String> {
    let spec = rig.engine.spec(Rig::container_name(task)).expect("the worker exists");
    let prefix = format!("{name}=");
    spec.env.iter().find_map(|entry| entry.strip_prefix(&prefix).map(str::to_owned))
}

#[tokio::test(start_paused = true)]
async fn a_follow_up_continues_berths_branch_with_the_review_comments_and_reports_on_the_pull_request() {
    let mut rig = Rig::new(config()).await;
    {
        let mut script = rig.github.script.lock().unwrap();
        script.pull_branch = Some("berth/issue-3".to_owned());
        script.review_comments = vec![ReviewComment {
            author: "bob".to_owned(),
            path: "src/lib.rs".to_owned(),
            line: Some(4),
            body: "Rename this to `greeting`.".to_owned(),
        }];
    }
    let pushed = ResultRecord {
        berth_result: ResultRecord::VERSION,
        task: "any".into(),
        status: ResultStatus::Success,
        summary: "Renamed.".into(),
        branch: Some("berth/issue-3".into()),
        commit: Some("c".repeat(40)),
    };
    rig.engine
        .set_default_program(Program::exit_after(MINUTE, 0).with_stdout(format!("{}\n", pushed.to_line())));
    let Accepted::Queued { task } = rig.accept(follow_up(12)).await else { panic!("queued") };
    rig.until("the worker", |rig| rig.engine.spec(Rig::container_name(&task)).is_some()).await;
    assert_eq!(env_of(&rig, &task, "BERTH_FOLLOW_UP").as_deref(), Some("1"));
    assert_eq!(env_of(&rig, &task, "BERTH_HEAD_REF").as_deref(), Some("berth/issue-3"));
    assert_eq!(env_of(&rig, &task, "BERTH_HEAD_SHA"), Some(format!("{:040x}", 12)));
    let prompt = env_of(&rig, &task, "BERTH_PROMPT").unwrap();
    for needle in [
        "following up on pull request #12",
        "branch berth/issue-3",
        "<github-review-comments>\n@bob on src/lib.rs, line 4:\n> Rename this to `greeting`.\n</github-review-comments>",
        "rename it as bob says",
    ] {
        assert!(prompt.contains(needle), "{needle:?} missing from:\n{prompt}");
    }
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Success));
    // The pull request is found by its branch, against its own base; the
    // result comment is on the pull request.
    assert_eq!(
        rig.github.seen(|seen| seen.pull_requests.clone()),
        [("berth/issue-3".to_owned(), "main".to_owned())]
    );
    assert_eq!(record.number, 12);
    assert_eq!(rig.github.seen(|seen| seen.comments.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_follow_up_on_a_pull_request_berth_did_not_open_is_refused_visibly_without_a_worker() {
    let mut rig = Rig::new(config()).await;
    rig.github.script.lock().unwrap().pull_branch = Some("feature".to_owned());
    let Accepted::Queued { task } = rig.accept(follow_up(13)).await else { panic!("queued") };
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Neutral));
    assert!(rig.engine.calls().created.is_empty(), "no worker");
    let comments = rig.github.seen(|seen| seen.comments.clone());
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].1.contains("pull request #13 is not one Berth opened: its head branch is `feature`"),
        "{}",
        comments[0].1
    );
}

fn refusal(comment_id: u64) -> Decision {
    Decision::Refuse(Refusal {
        repo: "octo/repo".into(),
        number: 5,
        sender: "octocat".into(),
        installation: Some(7),
        comment_id,
        reason: "unknown command `/berth deploy`".into(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_refused_command_is_answered_once_also_after_github_failed_and_the_comment_came_again() {
    let mut rig = Rig::new(config()).await;
    rig.github.set_down(true);
    rig.accept(refusal(41)).await;
    rig.pass(Duration::from_secs(5)).await;
    assert!(rig.github.seen(|seen| seen.notices.is_empty()));
    assert_eq!(rig.journal.pending_notices().unwrap().len(), 1, "kept until it lands");
    rig.github.set_down(false);
    rig.until("the answer", |rig| rig.journal.pending_notices().unwrap().is_empty()).await;
    let notices = rig.github.seen(|seen| seen.notices.clone());
    assert_eq!(
        notices,
        [(
            "comment-41".to_owned(),
            5,
            "@octocat, Berth did not act on your command: unknown command `/berth deploy`.".to_owned()
        )]
    );
    // The same comment again under a new delivery id (as after a kill
    // between posting and marking it sent): answered in place, still one.
    rig.accept(refusal(41)).await;
    rig.until("the second answer", |rig| rig.journal.pending_notices().unwrap().is_empty()).await;
    assert_eq!(rig.github.seen(|seen| (seen.notices.len(), seen.notice_writes)), (1, 2));
}
