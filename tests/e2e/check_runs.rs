//! What GitHub shows of a task before it ends, end to end against the fake
//! GitHub and real workers: a check run opened queued (with its place) for a
//! task that waits behind a cap of one, in progress when its worker starts,
//! the worker's latest lines while it runs, and completed once, with the
//! last lines of its log; the run's `details_url` and the result comment
//! link to the task's page on Berth.

use std::time::Duration;

use fake_github::Recorded;
use serde_json::Value;
use tests::rig::Rig;

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

/// Every write Berth made to `task`'s check run, in order: the creation's
/// body, then each edit's.
fn writes_of(rig: &Rig, task: &str) -> Vec<Value> {
    rig.fake.with(|state| {
        let Some(id) =
            state.check_runs.values().find(|run| run["external_id"] == task).map(|run| run["id"].clone())
        else {
            return Vec::new();
        };
        let edit = format!("/check-runs/{id}");
        state
            .requests
            .iter()
            .filter(|request: &&Recorded| {
                (request.method == "POST"
                    && request.path.ends_with("/check-runs")
                    && request.body["external_id"] == task)
                    || (request.method == "PATCH" && request.path.ends_with(&edit))
            })
            .map(|request| request.body.clone())
            .collect()
    })
}

#[tokio::test]
async fn a_waiting_task_is_queued_then_in_progress_shows_its_lines_and_completes_once() {
    let rig = Rig::start(
        "lifecycle",
        &[
            ("BERTH_MAX_WORKERS", "1".to_owned()),
            ("BERTH_PUBLIC_URL", "https://berth.example.com".to_owned()),
            ("BERTH_PROGRESS_INTERVAL", "5s".to_owned()),
        ],
    )
    .await;
    rig.fake.set_pull(&rig.repo, 8, &rig.head_sha, "feature", Some(&rig.repo));
    let ticks: Vec<String> = (1..=14).map(|n| format!("print life-tick-{n} then sleep 1")).collect();
    let prompt = format!("/berth review {}", ticks.join(" then "));
    let first = task_of(&rig.deliver("issue_comment", "life-1", &rig.comment(7, true, &prompt, 91)).await);
    rig.wait_task_running(&first, Duration::from_secs(60)).await;
    let second =
        task_of(&rig.deliver("issue_comment", "life-2", &rig.comment(8, true, "/berth review", 92)).await);

    // The second waits: GitHub shows it queued, next in line, linked to its page.
    rig.until("the waiting task's check run", Duration::from_secs(30), |state| {
        state.check_runs.values().any(|run| run["external_id"] == second.as_str())
    })
    .await;
    let opened = writes_of(&rig, &second);
    assert_eq!(opened[0]["status"], "queued", "{opened:#?}");
    assert_eq!(opened[0]["output"]["title"], "Review queued");
    assert!(opened[0]["output"]["summary"].as_str().unwrap().contains("next in line"), "{opened:#?}");
    assert_eq!(opened[0]["details_url"], format!("https://berth.example.com/tasks/{second}"));

    let finished = rig.outcome(&first, Duration::from_secs(120)).await;
    assert_eq!(finished["conclusion"], "success", "{finished:#}\n{}", rig.daemon.log_text());
    let writes = writes_of(&rig, &first);
    assert_eq!(writes[0]["status"], "queued", "opened before the worker starts: {writes:#?}");
    assert_eq!(writes[0]["details_url"], format!("https://berth.example.com/tasks/{first}"));
    assert_eq!(writes[1]["status"], "in_progress", "in progress when the worker starts: {writes:#?}");
    let progress: Vec<&Value> =
        writes[1..writes.len() - 1].iter().filter(|write| write["output"]["text"].is_string()).collect();
    assert!(!progress.is_empty(), "at least one progress edit in 14 s at 5 s: {writes:#?}");
    assert!(progress.iter().all(|write| write.get("status").is_none()), "progress never sets the status");
    let shown = progress[0]["output"]["text"].as_str().unwrap();
    assert!(shown.contains("life-tick-"), "{shown}");
    let last = writes.last().unwrap();
    assert_eq!(last["status"], "completed", "completed last, and once: {writes:#?}");
    assert_eq!(writes.iter().filter(|write| write["status"] == "completed").count(), 1);
    let text = last["output"]["text"].as_str().expect("the completed run shows the log's last lines");
    assert!(text.contains("life-tick-14"), "{text}");
    assert!(
        last["output"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("https://berth.example.com/tasks/{first}")),
        "{last:#}"
    );
    let comments = rig.comments_of(&first);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]["body"]
            .as_str()
            .unwrap()
            .contains(&format!("Details and log: https://berth.example.com/tasks/{first}")),
        "{comments:#?}"
    );

    // The second gets the place: the same run turns in progress, then completes.
    let second_run = rig.outcome(&second, Duration::from_secs(90)).await;
    assert_eq!(second_run["conclusion"], "success", "{second_run:#}");
    let writes = writes_of(&rig, &second);
    let statuses: Vec<&str> = writes.iter().filter_map(|write| write["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{writes:#?}");
    assert!(statuses.contains(&"in_progress"), "{writes:#?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{writes:#?}");
    let runs_of_second = rig
        .fake
        .with(|state| state.check_runs.values().filter(|run| run["external_id"] == second.as_str()).count());
    assert_eq!(runs_of_second, 1, "one check run per task");
}
