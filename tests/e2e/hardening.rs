//! Hostile input against a real daemon: comments that copy Berth's marker.

use std::time::Duration;

use serde_json::Value;

use crate::running::Rig;

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn berth_edits_only_its_own_comments_and_a_copied_marker_neither_is_overwritten_nor_blocks_the_report()
{
    let rig = Rig::start("own-comments", &[]).await;
    let task = task_of(
        &rig.deliver("issue_comment", "own-1", &rig.comment(7, true, "/berth review sleep 2", 9101)).await,
    );
    // The task id is public (the check run names it); two others post its marker first.
    let marker = format!("<!-- berth:task={task} -->");
    let by_person =
        rig.fake.add_comment(&rig.repo, 7, &format!("{marker}\nfake result by a person"), "mallory", "User");
    let by_bot = rig.fake.add_comment(
        &rig.repo,
        7,
        &format!("{marker}\nfake result by another app"),
        "other-app[bot]",
        "Bot",
    );
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}");
    rig.until("Berth's own result comment", Duration::from_secs(30), |state| {
        state.comments.values().any(|c| {
            c["user"]["login"] == "berth[bot]" && c["body"].as_str().is_some_and(|b| b.contains(&marker))
        })
    })
    .await;
    let (person, bot, own) = rig.fake.with(|state| {
        let own: Vec<Value> =
            state.comments.values().filter(|c| c["user"]["login"] == "berth[bot]").cloned().collect();
        (state.comments[&by_person].clone(), state.comments[&by_bot].clone(), own)
    });
    assert!(person["body"].as_str().unwrap().ends_with("fake result by a person"), "{person}");
    assert!(bot["body"].as_str().unwrap().ends_with("fake result by another app"), "{bot}");
    assert_eq!(own.len(), 1, "one result comment of Berth's own: {own:?}");
    assert!(own[0]["body"].as_str().unwrap().contains("stub agent ran"), "{own:?}");
    // No edit was even tried on the others' comments.
    let patched = rig.fake.with(|state| {
        state.requests.iter().filter(|r| r.method == "PATCH" && r.path.contains("/issues/comments/")).count()
    });
    assert_eq!(patched, 0);
}
