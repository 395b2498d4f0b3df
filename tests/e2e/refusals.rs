//! Refusals people can see: a trusted sender's refused command (an unknown
//! subcommand, review on an issue, a duplicate) is answered on GitHub with
//! the reason, once, however often the delivery comes; an untrusted
//! sender's gets nothing.

use std::time::Duration;

use serde_json::Value;
use tests::rig::Rig;

fn notices(state: &fake_github::FakeState, comment_id: u64) -> Vec<Value> {
    let marker = format!("<!-- berth:notice=comment-{comment_id} -->");
    state
        .comments
        .values()
        .filter(|comment| comment["body"].as_str().is_some_and(|body| body.contains(&marker)))
        .cloned()
        .collect()
}

/// How often the daemon listed the comments of `number` (each answer looks first).
fn listings(state: &fake_github::FakeState, repo: &str, number: u64) -> usize {
    let path = format!("/repos/{repo}/issues/{number}/comments?");
    state.requests.iter().filter(|request| request.method == "GET" && request.path.starts_with(&path)).count()
}

async fn answered(rig: &Rig, comment_id: u64) -> Value {
    rig.until(&format!("the answer to comment {comment_id}"), Duration::from_secs(30), |state| {
        !notices(state, comment_id).is_empty()
    })
    .await;
    let found = rig.fake.with(|state| notices(state, comment_id));
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[tokio::test]
async fn trusted_refusals_are_answered_once_and_untrusted_ones_not_at_all() {
    let rig = Rig::start("refusals", &[]).await;

    // An unknown subcommand on a pull request.
    let payload = rig.comment(7, true, "/berth frobnicate now", 1301);
    let answer = rig.deliver("issue_comment", "rf-1", &payload).await;
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    let notice = answered(&rig, 1301).await;
    assert_eq!(notice["number"], 7);
    assert_eq!(notice["user"]["login"], "berth[bot]");
    let body = notice["body"].as_str().unwrap();
    assert!(
        body.contains("@alice, Berth did not act on your command: unknown command `/berth frobnicate`"),
        "{body}"
    );
    // GitHub redelivers it: a duplicate delivery, and no second answer.
    let again = rig.deliver("issue_comment", "rf-1", &payload).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    // The same comment under a new delivery id is answered in place.
    let listed = rig.fake.with(|state| listings(state, &rig.repo, 7));
    assert_eq!(rig.deliver("issue_comment", "rf-1-copy", &payload).await["outcome"], "ignored");
    rig.until("the answer looked for again", Duration::from_secs(30), |state| {
        listings(state, &rig.repo, 7) > listed
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.fake.with(|state| notices(state, 1301)).len(), 1, "still one answer");

    // Review asked for on an issue, and its delivery sent twice.
    let on_issue = rig.comment(5, false, "/berth review", 1302);
    let answer = rig.deliver("issue_comment", "rf-2", &on_issue).await;
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    assert_eq!(rig.deliver("issue_comment", "rf-2", &on_issue).await["outcome"], "duplicate");
    let notice = answered(&rig, 1302).await;
    assert_eq!(notice["number"], 5);
    assert!(
        notice["body"].as_str().unwrap().contains("`/berth review` needs a pull request; #5 is an issue"),
        "{notice}"
    );

    // An untrusted sender's unknown command: ignored, and nothing is posted.
    let mut untrusted = rig.comment(7, true, "/berth frobnicate", 1303);
    untrusted["comment"]["author_association"] = "NONE".into();
    untrusted["sender"]["login"] = "mallory".into();
    untrusted["comment"]["user"]["login"] = "mallory".into();
    let answer = rig.deliver("issue_comment", "rf-3", &untrusted).await;
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("is not trusted"), "{answer}");

    // A second review of the same head while the first runs: a duplicate, answered.
    let first =
        rig.deliver("issue_comment", "rf-4", &rig.comment(7, true, "/berth review sleep 60", 1304)).await;
    assert_eq!(first["outcome"], "queued", "{first}");
    let task = first["task"].as_str().unwrap().to_owned();
    let second = rig.deliver("issue_comment", "rf-5", &rig.comment(7, true, "/berth review", 1305)).await;
    assert_eq!(second["outcome"], "duplicate", "{second}");
    let notice = answered(&rig, 1305).await;
    let body = notice["body"].as_str().unwrap();
    assert!(body.contains(&format!("is already queued or running (task `{task}`)")), "{body}");
    assert!(body.starts_with("<!-- berth:notice=comment-1305 -->\n@alice, "), "{body}");

    // By now every answer due is posted; the untrusted command got none,
    // and Berth wrote no comment but these answers.
    assert!(rig.fake.with(|state| notices(state, 1303)).is_empty());
    let written: Vec<Value> = rig.fake.with(|state| {
        state.comments.values().filter(|comment| comment["user"]["login"] == "berth[bot]").cloned().collect()
    });
    assert_eq!(written.len(), 3, "{written:#?}");
    let answer = rig.deliver("issue_comment", "rf-6", &rig.comment(7, true, "/berth cancel", 1306)).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "cancelled", "{run}");
}
