//! The running daemon end to end: deliveries become check runs, hardened
//! workers (the real berth-worker, cloning from a local git server, with the
//! stub as its agent) and reports on a fake GitHub that records every call.

use std::time::Duration;

use serde_json::{Value, json};
pub(crate) use tests::rig::{ADMIN_TOKEN, Rig, SECRET};

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_review_comment_runs_a_hardened_worker_and_is_reported_once() {
    let rig = Rig::start("review", &[]).await;
    let task =
        task_of(&rig.deliver("issue_comment", "r-1", &rig.comment(7, true, "/berth review", 555)).await);
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["name"], "berth/review");
    assert_eq!(run["head_sha"], rig.head_sha.as_str(), "the check run is on the pull request's head");
    assert!(run["output"]["summary"].as_str().unwrap().contains("stub agent looked at the change"), "{run}");

    // Exactly one check run and one comment for the task; a reaction on the trigger.
    rig.until("the report to be recorded", Duration::from_secs(10), |state| {
        let edits = |status: &str| {
            state
                .requests
                .iter()
                .filter(|r| {
                    r.method == "PATCH" && r.path.contains("/check-runs/") && r.body["status"] == status
                })
                .count()
        };
        edits("completed") == 1 && edits("in_progress") == 1
    })
    .await;
    let (runs, reactions, tokens) = rig.fake.with(|state| {
        (
            state.check_runs.values().filter(|r| r["external_id"] == task.as_str()).count(),
            state.reactions.clone(),
            state.tokens.clone(),
        )
    });
    assert_eq!(runs, 1);
    assert_eq!(rig.comments_of(&task).len(), 1);
    assert_eq!(reactions, vec![(rig.repo.clone(), 555, "eyes".to_owned())]);
    // The worker's token is scoped to the one repository and the review's permissions.
    let worker_token = tokens
        .iter()
        .find(|(request, _)| request["repositories"].is_array())
        .expect("a scoped token was made");
    assert_eq!(worker_token.0["repositories"], json!([rig.repo_name]));
    assert_eq!(worker_token.0["permissions"]["contents"], "read");
    // Revoked once the task ended.
    let token = worker_token.1.clone();
    rig.until("the worker token to be revoked", Duration::from_secs(30), |state| {
        state.revoked.contains(&token)
    })
    .await;
    // The container is gone once reported.
    rig.until("container removal", Duration::from_secs(10), |_| true).await;
    let mut left = rig.containers().await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = rig.containers().await;
    }
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[tokio::test]
async fn an_implement_task_pushes_a_branch_and_gets_a_pull_request() {
    let rig = Rig::start("implement", &[]).await;
    let answer = rig
        .deliver("issue_comment", "i-1", &rig.comment(12, false, "/berth implement write NOTES.md done", 600))
        .await;
    let task = task_of(&answer);
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(run["head_sha"], rig.main_sha.as_str());
    assert!(rig.seed.head_of("berth/issue-12").is_some(), "the branch was pushed to the git server");
    rig.until("the pull request", Duration::from_secs(20), |state| !state.pulls_created.is_empty()).await;
    let pulls = rig.fake.with(|state| state.pulls_created.clone());
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0]["head"]["ref"], "berth/issue-12");
    assert_eq!(pulls[0]["base"]["ref"], "main");
    rig.until("the comment", Duration::from_secs(10), |_| true).await;
    let comments = rig.comments_of(&task);
    assert_eq!(comments.len(), 1);
    assert!(comments[0]["body"].as_str().unwrap().contains("Pull request:"), "{}", comments[0]);
}

#[tokio::test]
async fn every_ending_is_reported_with_its_own_conclusion() {
    let rig = Rig::start(
        "endings",
        &[("BERTH_TASK_TIMEOUT", "15s".to_owned()), ("BERTH_MAX_WORKERS", "8".to_owned())],
    )
    .await;
    // Each on its own pull request so none dedupes another.
    for number in [21, 22, 23, 24, 25, 26] {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let timeout = task_of(
        &rig.deliver("issue_comment", "e-1", &rig.comment(21, true, "/berth review sleep 120", 1)).await,
    );
    let by_comment = task_of(
        &rig.deliver("issue_comment", "e-2", &rig.comment(22, true, "/berth review sleep 120", 2)).await,
    );
    let by_close = task_of(
        &rig.deliver("issue_comment", "e-3", &rig.comment(23, true, "/berth review sleep 120", 3)).await,
    );
    let oom = task_of(
        &rig.deliver("issue_comment", "e-4", &rig.comment(24, true, "/berth review alloc 2048", 4)).await,
    );
    let killed = task_of(
        &rig.deliver("issue_comment", "e-5", &rig.comment(25, true, "/berth review sleep 120", 5)).await,
    );
    let failed = task_of(
        &rig.deliver("issue_comment", "e-6", &rig.comment(26, true, "/berth review exit 1", 6)).await,
    );

    // Wait for the sleepers to be running before cancelling or killing them.
    for task in [&by_comment, &by_close, &killed] {
        rig.wait_task_running(task, Duration::from_secs(60)).await;
    }
    let answer = rig.deliver("issue_comment", "e-7", &rig.comment(22, true, "/berth cancel", 7)).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    let closed = json!({
        "action": "closed",
        "pull_request": {"number": 23, "head": {"sha": rig.head_sha, "ref": "feature", "repo": {"full_name": rig.repo}}, "base": {"sha": rig.main_sha, "ref": "main", "repo": {"full_name": rig.repo}}},
        "repository": rig.repository(),
        "sender": {"login": "bob", "type": "User"},
        "installation": {"id": 77}
    });
    assert_eq!(rig.deliver("pull_request", "e-8", &closed).await["outcome"], "cancel_requested");
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    docker
        .kill_container(&format!("berth-{killed}"), None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();

    let expect = [
        (&timeout, "timed_out", "deadline of 15s"),
        (&by_comment, "cancelled", "Cancelled by @alice"),
        (&by_close, "cancelled", "Pull request closed by @bob"),
        (&oom, "failure", "ran out of memory (limit 256 MiB)"),
        (&killed, "failure", "killed from outside Berth (SIGKILL"),
        (&failed, "failure", "The agent exited with an error"),
    ];
    for (task, conclusion, summary) in expect {
        let run = rig.outcome(task, Duration::from_secs(120)).await;
        assert_eq!(run["conclusion"], conclusion, "{task}: {run}");
        let text = run["output"]["summary"].as_str().unwrap();
        assert!(text.contains(summary), "{task}: {text:?} lacks {summary:?}\n{}", rig.daemon.log_text());
        assert_eq!(rig.comments_of(task).len(), 1, "{task}");
    }
}

#[tokio::test]
async fn a_push_supersedes_the_running_review() {
    let rig = Rig::start("supersede", &[]).await;
    let first = task_of(
        &rig.deliver("issue_comment", "s-1", &rig.comment(7, true, "/berth review sleep 120", 1)).await,
    );
    rig.until("the first check run", Duration::from_secs(60), |state| {
        state.check_runs.values().any(|run| run["external_id"] == first.as_str())
    })
    .await;
    let new_head = rig.seed.commit("feature", "feature.txt", "a second change\n");
    let pushed = json!({
        "action": "synchronize",
        "pull_request": {"number": 7, "head": {"sha": new_head, "ref": "feature", "repo": {"full_name": rig.repo}}, "base": {"sha": rig.main_sha, "ref": "main", "repo": {"full_name": rig.repo}}, "user": {"login": "alice"}, "author_association": "OWNER"},
        "repository": rig.repository(),
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 77}
    });
    let answer = rig.deliver("pull_request", "s-2", &pushed).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    let run = rig.outcome(&first, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled");
    assert_eq!(run["output"]["title"], "Superseded");
    assert!(
        run["output"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("Superseded by a push of {}", &new_head[..7])),
        "{run}"
    );
}

#[tokio::test]
async fn a_review_asked_for_just_after_a_push_runs_on_the_new_head() {
    let rig = Rig::start("after-push", &[]).await;
    let first = task_of(
        &rig.deliver("issue_comment", "ap-1", &rig.comment(7, true, "/berth review sleep 120", 1)).await,
    );
    rig.wait_task_running(&first, Duration::from_secs(60)).await;
    let new_head = rig.seed.commit("feature", "feature.txt", "a second change\n");
    rig.fake.set_pull(&rig.repo, 7, &new_head, "feature", Some(&rig.repo));
    let pushed = json!({
        "action": "synchronize",
        "pull_request": {"number": 7, "head": {"sha": new_head, "ref": "feature", "repo": {"full_name": rig.repo}}, "base": {"sha": rig.main_sha, "ref": "main", "repo": {"full_name": rig.repo}}, "user": {"login": "alice"}, "author_association": "OWNER"},
        "repository": rig.repository(),
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 77}
    });
    assert_eq!(rig.deliver("pull_request", "ap-2", &pushed).await["outcome"], "cancel_requested");
    // At once, while the superseded review is still stopping (its grace is 4 s).
    let again = rig.deliver("issue_comment", "ap-3", &rig.comment(7, true, "/berth review", 2)).await;
    assert_eq!(again["outcome"], "queued", "not a duplicate of the review being superseded: {again}");
    let second = again["task"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(rig.outcome(&first, Duration::from_secs(60)).await["conclusion"], "cancelled");
    let run = rig.outcome(&second, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run:#}");
    assert_eq!(run["head_sha"], new_head.as_str(), "the new request runs against the new head");
}

#[tokio::test]
async fn the_cap_holds_and_every_task_runs_in_order() {
    let rig = Rig::start("cap", &[("BERTH_MAX_WORKERS", "2".to_owned())]).await;
    let mut tasks = Vec::new();
    for number in 30..36 {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
        let comment = rig.comment(number, true, "/berth review sleep 2", number);
        tasks.push(task_of(&rig.deliver("issue_comment", &format!("c-{number}"), &comment).await));
    }
    let mut most = 0;
    let started = std::time::Instant::now();
    while tasks.iter().any(|task| rig.completed(task).is_none()) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not every task finished\n{}",
            rig.daemon.log_text()
        );
        let live = rig.containers().await.len();
        most = most.max(live);
        assert!(live <= 2, "{live} workers at once with a cap of 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most >= 1);
    // Workers started in the order the tasks were accepted.
    let order = rig.started_order();
    // Two prepare at once, so neighbours may swap; nothing starts ahead of its window.
    assert_eq!(order.len(), tasks.len());
    for (position, task) in order.iter().enumerate() {
        let accepted = tasks.iter().position(|t| t == task).unwrap();
        assert!(
            accepted.abs_diff(position) < 2,
            "{task} started at {position}, accepted at {accepted}: {order:?}"
        );
    }
}

#[tokio::test]
async fn github_failing_for_a_while_delays_reports_but_sends_them_once() {
    let rig = Rig::start("flaky", &[]).await;
    rig.fake.with(|state| state.fail_next = Some((502, 5)));
    let task = task_of(&rig.deliver("issue_comment", "f-1", &rig.comment(7, true, "/berth review", 9)).await);
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}");
    let (runs, bad) = rig.fake.with(|state| {
        (
            state.check_runs.values().filter(|r| r["external_id"] == task.as_str()).count(),
            state.requests.iter().filter(|r| r.status == 502).count(),
        )
    });
    assert_eq!(bad, 5, "the failures were really served");
    assert_eq!(runs, 1, "no duplicate check run");
    assert_eq!(rig.comments_of(&task).len(), 1, "no duplicate comment");
}

#[tokio::test]
async fn refused_app_credentials_are_a_clear_error_naming_them() {
    let rig = Rig::start("credentials", &[]).await;
    rig.fake.with(|state| state.reject_credentials = true);
    let task = task_of(&rig.deliver("issue_comment", "a-1", &rig.comment(7, true, "/berth review", 9)).await);
    rig.daemon
        .wait_for_log("BERTH_GITHUB_PRIVATE_KEY_FILE", "a clear error in the log", Duration::from_secs(30))
        .await;
    let log = rig.daemon.log_text();
    assert!(
        log.contains("GitHub refused the App's credentials") && log.contains("BERTH_GITHUB_APP_ID"),
        "{log}"
    );
    assert!(rig.containers().await.is_empty(), "no worker without credentials");
    let _ = task;
}

#[tokio::test]
async fn the_worker_gets_only_the_scoped_token_and_no_secret_is_logged() {
    let rig = Rig::start("secrets", &[]).await;
    let task = task_of(
        &rig.deliver("issue_comment", "x-1", &rig.comment(7, true, "/berth review sleep 120", 9)).await,
    );
    let name = format!("berth-{task}");
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let mut env = Vec::new();
    for _ in 0..600 {
        if let Ok(inspect) =
            docker.inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>).await
        {
            env = inspect.config.and_then(|config| config.env).unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!env.is_empty(), "the worker never appeared\n{}", rig.daemon.log_text());
    let token = rig.fake.with(|state| {
        state.tokens.iter().find(|(request, _)| request["repositories"].is_array()).unwrap().1.clone()
    });
    assert!(env.contains(&format!("BERTH_GITHUB_TOKEN={token}")), "the scoped token is handed over: {env:?}");
    let joined = env.join("\n");
    for forbidden in [
        SECRET,
        ADMIN_TOKEN,
        "BEGIN RSA PRIVATE KEY",
        "BERTH_WEBHOOK_SECRET",
        "BERTH_ADMIN_TOKEN",
        "BERTH_GITHUB_PRIVATE_KEY",
        "app-key.pem",
    ] {
        assert!(!joined.contains(forbidden), "the worker's environment holds {forbidden:?}");
    }
    let labels = rig.containers().await.into_iter().map(|c| format!("{:?}", c.labels)).collect::<String>();
    assert!(!labels.contains(&token) && !labels.contains(SECRET), "labels leak a secret: {labels}");

    assert_eq!(
        rig.deliver("issue_comment", "x-2", &rig.comment(7, true, "/berth cancel", 10)).await["outcome"],
        "cancel_requested"
    );
    let run = rig.outcome(&task, Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "cancelled");
    let log = rig.daemon.log_text();
    for secret in [SECRET, ADMIN_TOKEN, token.as_str(), "BEGIN RSA PRIVATE KEY"] {
        assert!(!log.contains(secret), "daemon log leaks {secret:?}");
    }
}

#[tokio::test]
async fn a_busy_repository_cannot_starve_a_quiet_one() {
    // At most 2 workers per repository (and 4 in all): the busy repository
    // fills its own 2 slots, the quiet one still gets the others.
    let rig = Rig::start(
        "fair",
        &[("BERTH_MAX_WORKERS", "4".to_owned()), ("BERTH_MAX_WORKERS_PER_REPO", "2".to_owned())],
    )
    .await;
    // A second repository on the same git server.
    let quiet_name = format!("{}-quiet", rig.repo_name);
    let quiet_repo = format!("e2e/{quiet_name}");
    let quiet_seed = rig.server.repo(&format!("{quiet_name}.git"));
    quiet_seed.commit("main", "README.md", "quiet\n");
    let quiet_head = quiet_seed.commit("feature", "change.txt", "a quiet change\n");
    for number in 1..=20 {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    for number in [1, 2] {
        rig.fake.set_pull(&quiet_repo, number, &quiet_head, "feature", Some(&quiet_repo));
    }
    // Twenty slow reviews from the busy repository, then two from the quiet one.
    let mut busy = Vec::new();
    for number in 1..=20 {
        // Long enough that all 22 are accepted before the first ends.
        let comment = rig.comment(number, true, "/berth review sleep 6", 2000 + number);
        busy.push(task_of(&rig.deliver("issue_comment", &format!("busy-{number}"), &comment).await));
    }
    let mut quiet = Vec::new();
    for number in [1, 2] {
        let mut comment = rig.comment(number, true, "/berth review", 3000 + number);
        comment["repository"] = json!({
            "full_name": quiet_repo,
            "clone_url": rig.server.url(&format!("{quiet_name}.git")),
            "default_branch": "main"
        });
        quiet.push(task_of(&rig.deliver("issue_comment", &format!("quiet-{number}"), &comment).await));
    }
    assert!(
        busy.iter().all(|task| rig.completed(task).is_none()),
        "a busy review ended before the quiet ones were accepted; the order below would not say anything"
    );
    rig.until("the quiet repository's reviews", Duration::from_secs(120), |state| {
        quiet.iter().all(|task| {
            state
                .check_runs
                .values()
                .any(|run| run["external_id"] == task.as_str() && run["status"] == "completed")
        })
    })
    .await;
    // Each run turns in progress when its worker starts: the quiet ones are among the first four.
    let dispatched = rig.started_order();
    for task in &quiet {
        let place = dispatched.iter().position(|id| id == task).expect("dispatched");
        assert!(place < 4, "{task} was dispatched {}th: {dispatched:?}", place + 1);
    }
    // The busy repository never runs more than its 2 at once.
    let mut most = 0;
    let started = std::time::Instant::now();
    while !busy.iter().all(|task| rig.completed(task).is_some()) {
        assert!(started.elapsed() < Duration::from_secs(180), "the busy reviews did not end");
        let running = rig
            .containers()
            .await
            .into_iter()
            .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .count();
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 2, "{most} workers of one repository ran at once");
    assert!(most >= 1);
    // Everything still ends, each once.
    for task in busy.iter().chain(&quiet) {
        assert_eq!(rig.outcome(task, Duration::from_secs(180)).await["conclusion"], "success");
    }
}
