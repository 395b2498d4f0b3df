//! The fake engine under paused tokio time: what the runner's tests will
//! lean on must behave as the Docker Engine does.

use std::time::Duration;

use core_types::{TaskId, TaskKind, TaskLabels, label};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{
    Capabilities, ChangeKind, ContainerEngine, ContainerStatus, DispatchError, Dispatcher, DispatcherConfig,
    FakeEngine, HardenedProfile, ImageStatus, LogChunk, Program, Protection, container_name,
};

const HOUR: Duration = Duration::from_secs(3600);

fn labels(id: &str) -> TaskLabels {
    TaskLabels {
        task_id: TaskId::new(id).unwrap(),
        kind: TaskKind::Review,
        repo: "octo/repo".into(),
        number: 1,
        head_sha: None,
        delivery: None,
        deadline_unix: 10,
        check_run: None,
        installation: None,
    }
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        image: "worker:test".into(),
        network: "none".into(),
        profile: HardenedProfile::strict(),
        entrypoint: None,
        instance: "default".into(),
    }
}

fn dispatcher() -> (FakeEngine, Dispatcher<FakeEngine>) {
    let engine = FakeEngine::new();
    (engine.clone(), Dispatcher::new(engine, config()))
}

#[tokio::test(start_paused = true)]
async fn a_scripted_program_exits_on_tokio_time_with_its_output() {
    let (engine, dispatcher) = dispatcher();
    let task = labels("t-1");
    let name = container_name(&task.task_id);
    engine.set_program(&name, Program::exit_after(HOUR, 3).with_stdout("working\n{\"result\":1}\n"));
    let begun = Instant::now();
    let launched = dispatcher.launch(&task, &[], None).await.unwrap();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    assert_eq!(exit.code, 3);
    assert!(!exit.oom_killed);
    assert_eq!(begun.elapsed(), HOUR, "an hour of tokio time, no more");
    let ran = exit.finished_at.unwrap().duration_since(exit.started_at.unwrap()).unwrap();
    assert_eq!(ran, HOUR);
    assert_eq!(dispatcher.stdout_tail(&launched.id, 1, 1024).await.unwrap(), "{\"result\":1}\n");
    assert_eq!(dispatcher.logs_text(&launched.id).await.unwrap(), "working\n{\"result\":1}\n");
}

#[tokio::test(start_paused = true)]
async fn engine_calls_answer_as_dockers_do() {
    let (engine, dispatcher) = dispatcher();
    let spec = dispatcher.container_spec(&labels("t-2"), &[], None);
    let id = engine.create(&spec).await.unwrap().expect("a new name");
    assert_eq!(engine.create(&spec).await.unwrap(), None, "a name in use is Ok(None)");
    assert_eq!(engine.calls().created, std::slice::from_ref(&spec.name));

    engine.start(&id).await.unwrap();
    engine.start(&id).await.unwrap();
    assert!(matches!(
        dispatcher.status(&id).await.unwrap(),
        ContainerStatus::Running { started_at: Some(_) }
    ));
    let by_name = engine.inspect(&spec.name).await.unwrap().unwrap();
    assert_eq!(by_name.id, id);
    assert_eq!(by_name.labels, spec.labels);
    assert_eq!(engine.spec(&id), Some(spec.clone()));

    assert!(engine.finish(&id, 0));
    assert!(!engine.finish(&id, 1), "only a running container can finish");
    assert_eq!(engine.wait(&id).await.unwrap().code, 0, "an exited container answers at once");

    let listed = engine.list_by_label(label::TASK_ID, "t-2").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(engine.list_by_label(label::TASK_ID, "other").await.unwrap().is_empty());

    engine.remove(&id).await.unwrap();
    engine.remove(&id).await.unwrap();
    assert_eq!(engine.calls().removed, [id.clone(), id.clone()]);
    assert_eq!(dispatcher.status(&id).await.unwrap(), ContainerStatus::Missing);
    let err = engine.start(&id).await.unwrap_err();
    assert!(matches!(err, DispatchError::ContainerNotFound { operation: "start", .. }), "{err}");
    let err = engine.wait(&id).await.unwrap_err();
    assert!(matches!(err, DispatchError::ContainerNotFound { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_repeated_create_adopts_the_tasks_container() {
    let (_engine, dispatcher) = dispatcher();
    let first = dispatcher.launch(&labels("t-3"), &[], None).await.unwrap();
    let again = dispatcher.launch(&labels("t-3"), &[], None).await.unwrap();
    assert!(!first.adopted && again.adopted);
    assert_eq!(first.id, again.id);
    assert!(dispatcher.find(&TaskId::new("t-3").unwrap()).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn wait_on_a_created_container_waits_until_it_started_and_exited() {
    let (engine, dispatcher) = dispatcher();
    engine.set_default_program(Program::exit_after(Duration::from_secs(5), 7));
    let created = dispatcher.create(&labels("t-4"), &[], None).await.unwrap();
    let waiter = {
        let dispatcher = dispatcher.clone();
        let id = created.id.clone();
        tokio::spawn(async move { dispatcher.wait(&id).await })
    };
    tokio::time::sleep(HOUR).await;
    assert!(!waiter.is_finished(), "a created container has not exited");
    let started = Instant::now();
    dispatcher.start(&created.id).await.unwrap();
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 7);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(dispatcher.wait_started(&created.id).await.unwrap(), exit);
}

#[tokio::test(start_paused = true)]
async fn stop_is_sigterm_and_a_program_ignoring_it_is_killed_after_the_grace() {
    let (engine, dispatcher) = dispatcher();
    let polite = dispatcher.launch(&labels("t-5"), &[], None).await.unwrap();
    dispatcher.stop(&polite.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(dispatcher.wait(&polite.id).await.unwrap().code, 143);

    engine.set_program(
        &container_name(&TaskId::new("t-6").unwrap()),
        Program::run_until_stopped().ignoring_sigterm(),
    );
    let stubborn = dispatcher.launch(&labels("t-6"), &[], None).await.unwrap();
    let begun = Instant::now();
    dispatcher.stop(&stubborn.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(begun.elapsed(), Duration::from_secs(30));
    assert_eq!(dispatcher.wait(&stubborn.id).await.unwrap().code, 137);
    // Stopping a stopped container changes nothing.
    dispatcher.stop(&stubborn.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(engine.calls().stopped.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn oom_and_outside_kills_are_137_told_apart_by_the_flag() {
    let (engine, dispatcher) = dispatcher();
    let oom = dispatcher.launch(&labels("t-7"), &[], None).await.unwrap();
    let outside = dispatcher.launch(&labels("t-8"), &[], None).await.unwrap();
    let ours = dispatcher.launch(&labels("t-9"), &[], None).await.unwrap();
    assert!(engine.oom_kill(&oom.id));
    assert!(engine.kill_from_outside(&outside.id));
    dispatcher.kill(&ours.id).await.unwrap();
    let oom = dispatcher.wait(&oom.id).await.unwrap();
    assert_eq!((oom.code, oom.oom_killed), (137, true));
    let outside = dispatcher.wait(&outside.id).await.unwrap();
    assert_eq!((outside.code, outside.oom_killed), (137, false));
    assert_eq!(dispatcher.wait(&ours.id).await.unwrap().code, 137);
    assert_eq!(engine.calls().killed, [ours.id], "only Berth's own kill is counted");

    engine.set_default_program(Program::oom_after(Duration::from_secs(90)));
    let scripted = dispatcher.launch(&labels("t-10"), &[], None).await.unwrap();
    assert!(dispatcher.wait(&scripted.id).await.unwrap().oom_killed);
}

#[tokio::test(start_paused = true)]
async fn exit_with_writes_stdout_before_the_exit() {
    let (engine, dispatcher) = dispatcher();
    let launched = dispatcher.launch(&labels("t-11"), &[], None).await.unwrap();
    assert!(engine.exit_with(&launched.id, 2, "line\n{\"done\":true}\n"));
    assert_eq!(dispatcher.wait(&launched.id).await.unwrap().code, 2);
    assert_eq!(dispatcher.stdout_tail(&launched.id, 1, 100).await.unwrap(), "{\"done\":true}\n");
}

#[tokio::test(start_paused = true)]
async fn an_outage_fails_every_call_transiently_until_it_ends() {
    let (engine, dispatcher) = dispatcher();
    let launched = dispatcher.launch(&labels("t-12"), &[], None).await.unwrap();
    let waiter = {
        let dispatcher = dispatcher.clone();
        let id = launched.id.clone();
        tokio::spawn(async move { dispatcher.wait(&id).await })
    };
    let mut changes = engine.changes(label::MANAGED, "true");
    tokio::task::yield_now().await;
    engine.set_outage(true);
    let err = waiter.await.unwrap().unwrap_err();
    assert!(err.is_transient(), "{err}");
    let err = changes.next().await.unwrap().unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(changes.next().await.is_none(), "a broken change stream ends");

    let spec = dispatcher.container_spec(&labels("t-13"), &[], None);
    let id = &launched.id;
    let errors = [
        engine.describe().await.unwrap_err(),
        engine.image_status("worker:test").await.unwrap_err(),
        engine.create(&spec).await.unwrap_err(),
        engine.start(id).await.unwrap_err(),
        engine.inspect(id.as_str()).await.unwrap_err(),
        engine.wait(id).await.unwrap_err(),
        engine.list_by_label(label::MANAGED, "true").await.unwrap_err(),
        engine.logs(id, false, None).next().await.unwrap().unwrap_err(),
        engine.changes(label::MANAGED, "true").next().await.unwrap().unwrap_err(),
        engine.stop(id, Duration::ZERO).await.unwrap_err(),
        engine.kill(id).await.unwrap_err(),
        engine.remove(id).await.unwrap_err(),
    ];
    for err in errors {
        assert!(err.is_transient(), "{err}");
    }

    engine.set_outage(false);
    assert!(
        matches!(dispatcher.status(id).await.unwrap(), ContainerStatus::Running { .. }),
        "it kept running"
    );
    engine.finish(id, 0);
    assert_eq!(dispatcher.wait(id).await.unwrap().code, 0);
}

#[tokio::test(start_paused = true)]
async fn changes_tell_of_starts_deaths_and_removals_of_labelled_containers_only() {
    let (engine, dispatcher) = dispatcher();
    let mut changes = engine.changes(label::TASK_ID, "t-14");
    let other = dispatcher.launch(&labels("t-15"), &[], None).await.unwrap();
    let launched = dispatcher.launch(&labels("t-14"), &[], None).await.unwrap();
    engine.finish(&other.id, 0);
    engine.finish(&launched.id, 0);
    dispatcher.remove(&launched.id).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = changes.next().await.unwrap().unwrap();
        assert_eq!(change.id, launched.id);
        seen.push(change.kind);
    }
    assert_eq!(seen, [ChangeKind::Started, ChangeKind::Died, ChangeKind::Removed]);

    // The dispatcher's wake-up hint resolves on the next managed change.
    let hint = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.next_change().await })
    };
    tokio::task::yield_now().await;
    let third = dispatcher.launch(&labels("t-19"), &[], None).await.unwrap();
    tokio::task::yield_now().await;
    assert!(!hint.is_finished(), "a start is not news: Berth starts its workers itself");
    dispatcher.remove(&other.id).await.unwrap();
    hint.await.unwrap();
    assert!(engine.remove_from_outside(&third.id));
    assert_eq!(dispatcher.status(&third.id).await.unwrap(), ContainerStatus::Missing);
}

#[tokio::test(start_paused = true)]
async fn followed_logs_carry_output_until_the_exit() {
    let (engine, dispatcher) = dispatcher();
    engine.set_default_program(Program::run_until_stopped().with_stdout("one\n").with_stderr("warn\n"));
    let launched = dispatcher.launch(&labels("t-16"), &[], None).await.unwrap();
    let mut logs = dispatcher.logs(&launched.id, true);
    assert_eq!(logs.next().await.unwrap().unwrap(), LogChunk::Stdout("one\n".into()));
    assert_eq!(logs.next().await.unwrap().unwrap(), LogChunk::Stderr("warn\n".into()));
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(chunk) = logs.next().await {
            rest.push(chunk.unwrap());
        }
        rest
    });
    tokio::time::sleep(HOUR).await;
    assert!(!reader.is_finished(), "following waits for more");
    engine.write_output(&launched.id, LogChunk::Stdout("two\nthree\n".into()));
    engine.finish(&launched.id, 0);
    assert_eq!(reader.await.unwrap(), [LogChunk::Stdout("two\n".into()), LogChunk::Stdout("three\n".into())]);
    assert_eq!(dispatcher.logs_tail(&launched.id, 2, 100).await.unwrap(), "two\nthree\n");
}

#[tokio::test(start_paused = true)]
async fn an_engine_lacking_a_protection_the_profile_asks_for_is_refused() {
    let engine = FakeEngine::new();
    assert!(Dispatcher::checked(engine.clone(), config()).is_ok());
    engine.set_capabilities(Capabilities::all().without(Protection::ReadOnlyRoot));
    let Err(err) = Dispatcher::checked(engine.clone(), config()) else {
        panic!("the profile asks for a read-only root")
    };
    assert!(
        matches!(&err, DispatchError::ProfileUnsupported { engine, missing } if engine == "fake" && missing == &[Protection::ReadOnlyRoot]),
        "{err}"
    );
    assert!(err.to_string().contains("a read-only root filesystem"), "{err}");
    // A profile that does not ask for it runs.
    let writable = DispatcherConfig { profile: HardenedProfile::strict().with_scratch(false, 0), ..config() };
    assert!(Dispatcher::checked(engine, writable).is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_fake_describes_itself_and_its_images() {
    let engine = FakeEngine::new();
    let info = engine.describe().await.unwrap();
    assert_eq!(info.kind, "fake");
    assert!(matches!(engine.image_status("worker:test").await.unwrap(), ImageStatus::Present { .. }));
    engine.set_image_present("worker:test", false);
    assert_eq!(engine.image_status("worker:test").await.unwrap(), ImageStatus::Missing);
    let dispatcher = Dispatcher::new(engine, config());
    let err = dispatcher.launch(&labels("t-17"), &[], None).await.unwrap_err();
    assert!(matches!(err, DispatchError::ImageMissing { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_task_with_a_long_id_is_created_and_found_under_its_short_name() {
    let (engine, dispatcher) = dispatcher();
    let task = labels(&"review-".repeat(9));
    let launched = dispatcher.launch(&task, &[], None).await.unwrap();
    let found = dispatcher.find(&task.task_id).await.unwrap().expect("found by name");
    assert_eq!(found.id, launched.id);
    assert_eq!(found.name.len(), 63);
    assert_eq!(engine.calls().created, [found.name]);
}

#[tokio::test(start_paused = true)]
async fn a_removed_engine_stops_its_timers() {
    let engine = FakeEngine::new();
    engine.set_default_program(Program::exit_after(HOUR, 0));
    let dispatcher = Dispatcher::new(engine, config());
    dispatcher.launch(&labels("t-18"), &[], None).await.unwrap();
    drop(dispatcher);
    // Nothing is left to fire: the paused clock jumps straight past the hour.
    tokio::time::sleep(2 * HOUR).await;
}
