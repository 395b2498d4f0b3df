//! Recovery: every accepted task ends exactly once, reported once, through
//! SIGKILLs of the daemon at any moment, exits while it was away, overdue
//! workers, and deliveries GitHub could not hand over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::running::Rig;

pub(crate) fn queued(answer: &serde_json::Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

/// Every task succeeded, with exactly one completed check run and exactly
/// one comment, and no container of the rig is left.
pub(crate) async fn assert_each_reported_once(rig: &Rig, tasks: &[String], limit: Duration) {
    for task in tasks {
        let run = rig.outcome(task, limit).await;
        assert_eq!(run["conclusion"], "success", "{task}: {run}");
    }
    assert_reported_once(rig, tasks).await;
}

/// Every task (already completed) has exactly one check run and exactly one
/// comment, and no container of the rig is left (on Kubernetes, nor any
/// Job, Pod or Secret).
pub(crate) async fn assert_reported_once(rig: &Rig, tasks: &[String]) {
    // Let in-flight report writes land before counting.
    rig.until("comments for every task", Duration::from_secs(60), |state| {
        tasks.iter().all(|task| {
            let marker = format!("<!-- berth:task={task} -->");
            state.comments.values().any(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
        })
    })
    .await;
    for task in tasks {
        let runs = rig.fake.with(|state| {
            state.check_runs.values().filter(|run| run["external_id"] == task.as_str()).count()
        });
        assert_eq!(runs, 1, "{task} has {runs} check runs");
        assert_eq!(rig.comments_of(task).len(), 1, "{task} has several comments");
    }
    for _ in 0..100 {
        if rig.containers().await.is_empty() && rig.kube_leftovers().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "managed containers left: {:?}\nleft in the fake Kubernetes: {:?}",
        rig.containers().await,
        rig.kube_leftovers().await
    );
}

#[tokio::test]
async fn a_sigkilled_daemon_finds_its_workers_again_and_reports_each_once() {
    let mut rig = Rig::start("recover", &[("BERTH_MAX_WORKERS", "2".to_owned())]).await;
    for number in 40..45 {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let long = queued(
        &rig.deliver("issue_comment", "k-40", &rig.comment(40, true, "/berth review sleep 8", 40)).await,
    );
    let short = queued(
        &rig.deliver("issue_comment", "k-41", &rig.comment(41, true, "/berth review sleep 1", 41)).await,
    );
    let waiting =
        queued(&rig.deliver("issue_comment", "k-42", &rig.comment(42, true, "/berth review", 42)).await);
    rig.wait_running(2, Duration::from_secs(60)).await;
    // Accepted just before the kill.
    let last =
        queued(&rig.deliver("issue_comment", "k-43", &rig.comment(43, true, "/berth review", 43)).await);
    rig.kill_daemon().await;
    // The short worker exits while the daemon is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        rig.containers()
            .await
            .iter()
            .any(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::EXITED))
    );
    rig.start_daemon().await;
    assert_each_reported_once(&rig, &[long, short, waiting, last], Duration::from_secs(120)).await;
    let log = rig.daemon.log_text();
    assert!(log.contains("re-attached to a running worker"), "the long worker was re-attached:\n{log}");
}

#[tokio::test]
async fn chaos_random_sigkills_still_end_every_task_exactly_once() {
    let mut rig = Rig::start("chaos", &[("BERTH_MAX_WORKERS", "3".to_owned())]).await;
    let tasks = chaos(&mut rig, 5, 6).await;
    assert_eq!(tasks.len(), 30);
    assert_each_reported_once(&rig, &tasks, Duration::from_secs(300)).await;
}

/// `rounds` batches of `per_round` reviews (some sleeping a second), each
/// on its own pull request, with the daemon SIGKILLed at a random moment
/// after each batch and started again after a random pause; the tasks.
pub(crate) async fn chaos(rig: &mut Rig, rounds: u64, per_round: u64) -> Vec<String> {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("chaos seed {seed}");
    let mut random = seed | 1;
    let mut next = move |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    for number in 100..100 + rounds * per_round {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let mut tasks = Vec::new();
    let mut number = 100;
    for round in 0..rounds {
        // A batch of deliveries, then a kill at a random moment.
        for _ in 0..per_round {
            let step = if next(2) == 0 { "/berth review sleep 1" } else { "/berth review" };
            let comment = rig.comment(number, true, step, number);
            tasks.push(queued(&rig.deliver("issue_comment", &format!("chaos-{number}"), &comment).await));
            number += 1;
        }
        tokio::time::sleep(Duration::from_millis(200 + next(3000))).await;
        eprintln!("chaos: SIGKILL {round}");
        rig.kill_daemon().await;
        tokio::time::sleep(Duration::from_millis(next(1500))).await;
        rig.start_daemon().await;
    }
    tasks
}

#[tokio::test]
async fn a_worker_past_its_deadline_while_the_daemon_was_down_is_stopped_at_start() {
    let mut rig = Rig::start("overdue", &[]).await;
    rig.kill_daemon().await;
    // A worker a previous daemon left behind, whose deadline has passed.
    let check_run = rig.fake.with(|state| {
        let id = 90_001;
        state.check_runs.insert(
            id,
            json!({"id": id, "name": "berth/review", "status": "in_progress", "external_id": "review-overdue-1", "head_sha": rig.head_sha, "repo": rig.repo}),
        );
        id
    });
    let task_id = core_types::TaskId::new("review-overdue-1").unwrap();
    let labels = core_types::TaskLabels {
        task_id: task_id.clone(),
        kind: core_types::TaskKind::Review,
        repo: rig.repo.clone(),
        number: 7,
        head_sha: Some(rig.head_sha.clone()),
        delivery: Some("overdue-delivery".to_owned()),
        deadline_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 3600,
        check_run: Some(check_run),
        installation: Some(77),
    };
    let image = tests::test_image().await.to_owned();
    let dispatcher = tests::dispatcher_with(dispatcher::DispatcherConfig {
        image,
        network: "none".to_owned(),
        profile: dispatcher::HardenedProfile::strict(),
        entrypoint: Some(vec![tests::STUB.to_owned()]),
        instance: rig.repo_name.clone(),
    })
    .await;
    dispatcher.launch(&labels, &[], Some(vec!["sleep".to_owned(), "600".to_owned()])).await.unwrap();
    rig.start_daemon().await;
    let run = rig.outcome(task_id.as_str(), Duration::from_secs(60)).await;
    assert_eq!(run["conclusion"], "timed_out", "{run}");
    assert_eq!(rig.comments_of(task_id.as_str()).len(), 1);
    for _ in 0..50 {
        if rig.containers().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the overdue worker was not removed");
}

fn github_time(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[tokio::test]
async fn missed_deliveries_are_redelivered_once() {
    let mut rig = Rig::start("backfill", &[]).await;
    let seen = rig.deliver("issue_comment", "seen-guid", &rig.comment(7, true, "hello", 1)).await;
    assert_eq!(seen["outcome"], "ignored");
    let now = SystemTime::now();
    let old = now - Duration::from_secs(5 * 24 * 3600);
    rig.fake.with(|state| {
        state.deliveries = vec![
            json!({"id": 11, "guid": "missed-guid", "status_code": 502, "status": "Bad Gateway", "delivered_at": github_time(now), "event": "issue_comment", "redelivery": false}),
            json!({"id": 12, "guid": "seen-guid", "status_code": 503, "status": "Service Unavailable", "delivered_at": github_time(now), "event": "issue_comment", "redelivery": false}),
            json!({"id": 13, "guid": "ok-guid", "status_code": 202, "status": "OK", "delivered_at": github_time(now), "event": "issue_comment", "redelivery": false}),
            json!({"id": 14, "guid": "old-guid", "status_code": 0, "status": "timed out", "delivered_at": github_time(old), "event": "issue_comment", "redelivery": false}),
            json!({"id": 15, "guid": "retried-guid", "status_code": 500, "delivered_at": github_time(now), "event": "issue_comment", "redelivery": false}),
            json!({"id": 16, "guid": "retried-guid", "status_code": 202, "delivered_at": github_time(now), "event": "issue_comment", "redelivery": true}),
        ];
        // A busy hour while Berth was away: 150 more missed ones, newer, so
        // that the first of them are on the log's second page.
        state.deliveries.extend((100..250).map(|id| {
            json!({"id": id, "guid": format!("busy-{id}"), "status_code": 502, "status": "Bad Gateway", "delivered_at": github_time(now), "event": "issue_comment", "redelivery": false})
        }));
    });
    // The backfill runs at start: restart to trigger it with the list in place.
    rig.kill_daemon().await;
    rig.start_daemon().await;
    rig.until("the redelivery requests", Duration::from_secs(30), |state| state.redeliveries.len() >= 151)
        .await;
    // Each ask is noted once GitHub took it; the pass logs its count after
    // the last note. A kill before that would ask again (a duplicate the
    // journal answers), which is not what this test counts.
    rig.daemon
        .wait_for_log(
            "asked GitHub to redeliver missed deliveries",
            "the pass ended",
            Duration::from_secs(30),
        )
        .await;
    rig.kill_daemon().await;
    let listings = |state: &fake_github::FakeState| {
        state.requests.iter().filter(|r| r.path.starts_with("/app/hook/deliveries?")).count()
    };
    let before = rig.fake.with(|state| listings(state));
    rig.start_daemon().await;
    rig.until("the backfill after the restart", Duration::from_secs(30), |state| listings(state) > before)
        .await;
    let mut asked = rig.fake.with(|state| state.redeliveries.clone());
    asked.sort_unstable();
    let missed: Vec<u64> = std::iter::once(11).chain(100..250).collect();
    assert_eq!(asked, missed, "only the missed ones, each once");
    let pages = rig.fake.with(|state| {
        state
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/app/hook/deliveries?"))
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    });
    assert!(pages.iter().any(|path| path.contains("cursor=v1_")), "the second page was read: {pages:?}");
    let listing = rig.fake.with(|state| {
        state.requests.iter().find(|r| r.path.starts_with("/app/hook/deliveries")).unwrap().auth.clone()
    });
    assert_eq!(listing, "Bearer jwt", "listed with the App's JWT");
}

#[tokio::test]
async fn a_graceful_stop_leaves_workers_running_and_a_restart_reports_them() {
    let mut rig = Rig::start("graceful", &[]).await;
    let task =
        queued(&rig.deliver("issue_comment", "g-1", &rig.comment(7, true, "/berth review sleep 6", 1)).await);
    rig.wait_running(1, Duration::from_secs(60)).await;
    let pid = nix::unistd::Pid::from_raw(rig.daemon.child.id().unwrap() as i32);
    let stopping = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), rig.daemon.child.wait())
        .await
        .expect("stopped in time")
        .unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(took < Duration::from_secs(11), "SIGTERM stopped the daemon in {took:?}");
    let running = rig
        .containers()
        .await
        .iter()
        .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
        .count();
    assert_eq!(running, 1, "the worker outlives the daemon");
    assert!(rig.completed(&task).is_none());
    rig.start_daemon().await;
    assert_each_reported_once(&rig, &[task], Duration::from_secs(60)).await;
}

#[tokio::test]
async fn containers_of_an_unknown_label_schema_are_reported_and_left_alone() {
    let mut rig = Rig::start("schema", &[]).await;
    rig.kill_daemon().await;
    let image = tests::test_image().await.to_owned();
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let name = format!("berth-future-{}", rig.repo_name);
    let labels = std::collections::HashMap::from([
        ("berth.managed".to_owned(), "true".to_owned()),
        ("berth.schema".to_owned(), "2".to_owned()),
        ("berth.task-id".to_owned(), format!("future-{}", rig.repo_name)),
        ("berth.repo".to_owned(), rig.repo.clone()),
        ("berth.instance".to_owned(), rig.repo_name.clone()),
    ]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(image),
        entrypoint: Some(vec![tests::STUB.to_owned()]),
        cmd: Some(vec!["exit".to_owned(), "0".to_owned()]),
        labels: Some(labels),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&name).build();
    docker.create_container(Some(options), body).await.unwrap();
    rig.start_daemon().await;
    rig.daemon.wait_for_log("written by another berth version", "reported", Duration::from_secs(30)).await;
    let inspect = docker
        .inspect_container(&name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(
        inspect.state.unwrap().status,
        Some(bollard::models::ContainerStateStatusEnum::CREATED),
        "left as it was"
    );
    assert!(rig.fake.with(|state| state.check_runs.is_empty() && state.comments.is_empty()));
}

#[tokio::test]
async fn a_restart_of_dockerd_loses_no_task_and_reports_the_workers_it_stopped() {
    // An engine of this test's own: restarting the machine's would stop every
    // other test's containers.
    let mut engine = tests::private_engine::PrivateEngine::start().await;
    engine.load_image(tests::test_image().await).await;
    let rig = Rig::start_on_engine("dockerd", &[("BERTH_MAX_WORKERS", "4".to_owned())], &engine).await;
    for number in 60..63 {
        rig.fake.set_pull(&rig.repo, number, &rig.head_sha, "feature", Some(&rig.repo));
    }
    let first = queued(
        &rig.deliver("issue_comment", "d-60", &rig.comment(60, true, "/berth review sleep 120", 60)).await,
    );
    let second = queued(
        &rig.deliver("issue_comment", "d-61", &rig.comment(61, true, "/berth review sleep 120", 61)).await,
    );
    rig.wait_running(2, Duration::from_secs(90)).await;
    // Stop the engine (with live-restore off it stops its containers), accept
    // a task while it is down, then start it again under the same daemon.
    engine.stop().await;
    let while_down =
        queued(&rig.deliver("issue_comment", "d-62", &rig.comment(62, true, "/berth review", 62)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.restart().await;

    for task in [&first, &second] {
        let run = rig.outcome(task, Duration::from_secs(120)).await;
        assert_ne!(run["conclusion"], "success", "{task}: a worker the engine stopped is no success: {run}");
        let summary = run["output"]["summary"].as_str().unwrap_or_default();
        assert!(summary.contains("from outside Berth"), "{task}: {run}\n{}", rig.daemon.log_text());
    }
    let run = rig.outcome(&while_down, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    let log = rig.daemon.log_text();
    assert!(
        log.contains("the engine is away; the task waits for it"),
        "the task waited for the engine:\n{log}"
    );
    assert_reported_once(&rig, &[first, second, while_down]).await;
    drop(rig);
    drop(engine);
}

#[tokio::test]
async fn with_live_restore_a_dockerd_restart_leaves_workers_running_and_they_finish() {
    let mut engine =
        tests::private_engine::PrivateEngine::start_with_config(r#"{"live-restore": true}"#).await;
    engine.load_image(tests::test_image().await).await;
    let rig = Rig::start_on_engine("restore", &[], &engine).await;
    let task = queued(
        &rig.deliver("issue_comment", "lr-7", &rig.comment(7, true, "/berth review sleep 30", 7)).await,
    );
    let running = rig.wait_running(1, Duration::from_secs(90)).await;
    let before = running[0].id.clone().unwrap();
    engine.restart().await;
    let after = rig.containers().await;
    assert!(
        after.iter().any(|c| c.id.as_deref() == Some(before.as_str())
            && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)),
        "live-restore kept the worker running through the restart: {after:?}\n{}",
        engine.log()
    );
    let run = rig.outcome(&task, Duration::from_secs(120)).await;
    assert_eq!(run["conclusion"], "success", "{run}\n{}", rig.daemon.log_text());
    assert_eq!(rig.comments_of(&task).len(), 1);
    drop(rig);
    drop(engine);
}

#[tokio::test]
async fn a_kill_after_the_check_run_was_made_but_before_berth_heard_back_makes_no_second_one() {
    let mut rig = Rig::start("checkrun", &[]).await;
    rig.fake.with(|state| state.stall_check_run_answers = true);
    let task = queued(&rig.deliver("issue_comment", "cr-7", &rig.comment(7, true, "/berth review", 7)).await);
    rig.until("the check run to be made", Duration::from_secs(60), |state| {
        state.check_runs.values().any(|run| run["external_id"] == task.as_str())
    })
    .await;
    // GitHub made it; Berth never heard back. Kill it there.
    rig.kill_daemon().await;
    rig.fake.with(|state| state.stall_check_run_answers = false);
    rig.start_daemon().await;
    assert_each_reported_once(&rig, &[task], Duration::from_secs(90)).await;
}
