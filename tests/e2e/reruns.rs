//! GitHub's Re-run button and `/berth retry` end to end: each makes a new
//! task of the same kind for the same pull request, with a check run of its
//! own, and the earlier check run stays as it was.

use std::time::Duration;

use serde_json::{Value, json};
use tests::rig::Rig;

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rerun_and_retry_each_review_the_pull_request_again_with_their_own_check_run() {
    let rig = Rig::start("rerun", &[]).await;
    let first =
        task_of(&rig.deliver("issue_comment", "rr-1", &rig.comment(7, true, "/berth review", 31)).await);
    let first_run = rig.outcome(&first, Duration::from_secs(90)).await;
    assert_eq!(first_run["conclusion"], "success", "{first_run}\n{}", rig.daemon.log_text());

    // Re-run pressed on Berth's check run (the rig's App id is 4242).
    let rerequested = json!({
        "action": "rerequested",
        "check_run": {
            "id": first_run["id"],
            "name": "berth/review",
            "head_sha": first_run["head_sha"],
            "external_id": first,
            "app": {"id": 4242, "slug": "berth"},
            "pull_requests": [{"number": 7}]
        },
        "repository": rig.repository(),
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 77}
    });
    let second = task_of(&rig.deliver("check_run", "rr-2", &rerequested).await);
    assert_ne!(second, first);
    let second_run = rig.outcome(&second, Duration::from_secs(90)).await;
    assert_eq!(second_run["conclusion"], "success", "{second_run}\n{}", rig.daemon.log_text());
    assert_eq!(second_run["name"], "berth/review");
    assert_eq!(second_run["head_sha"], rig.head_sha.as_str(), "the re-run is of the pull request's head");
    assert_ne!(second_run["id"], first_run["id"]);

    // Another App's check run is not Berth's to re-run.
    let mut theirs = rerequested.clone();
    theirs["check_run"]["app"]["id"] = json!(1);
    let answer = rig.deliver("check_run", "rr-3", &theirs).await;
    assert_eq!(answer["outcome"], "ignored", "{answer}");

    // `/berth retry` repeats the last task.
    let third =
        task_of(&rig.deliver("issue_comment", "rr-4", &rig.comment(7, true, "/berth retry", 32)).await);
    assert!(third != first && third != second);
    let third_run = rig.outcome(&third, Duration::from_secs(90)).await;
    assert_eq!(third_run["conclusion"], "success", "{third_run}\n{}", rig.daemon.log_text());
    assert_eq!(third_run["name"], "berth/review");

    // Three check runs, one per task; the first is as it was.
    let (runs, first_now) = rig.fake.with(|state| {
        let runs: Vec<String> = state
            .check_runs
            .values()
            .filter(|run| run["name"] == "berth/review")
            .filter_map(|run| run["external_id"].as_str().map(str::to_owned))
            .collect();
        (runs, state.check_runs.values().find(|run| run["external_id"] == first.as_str()).cloned())
    });
    assert_eq!(runs.len(), 3, "{runs:?}");
    for task in [&first, &second, &third] {
        assert!(runs.contains(task), "{task} has no check run: {runs:?}");
    }
    assert_eq!(first_now.unwrap(), first_run);
}
