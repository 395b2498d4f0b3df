//! The dispatcher against the real engine: lifecycle, exit codes, OOM, the
//! hardened profile seen from inside, listing, adoption, stop, errors, and
//! the engine seam's Docker side (capabilities, description, images, waits
//! from every state, change events, bounded names).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{CreateContainerOptionsBuilder, InspectContainerOptions};
use dispatcher::{
    ChangeKind, ContainerEngine, ContainerStatus, DispatchError, Dispatcher, DispatcherConfig, DockerEngine,
    HardenedProfile, ImageStatus, Protection,
};
use futures_util::StreamExt;
use tests::{Cleanup, STUB, dispatcher, dispatcher_with, task_labels, test_image, unique_task_id};

fn args(parts: &[&str]) -> Option<Vec<String>> {
    Some(parts.iter().map(|part| (*part).to_owned()).collect())
}

#[tokio::test]
async fn tasks_exit_with_their_codes_and_sigkill_is_137() {
    let dispatcher = dispatcher().await;
    let ids: Vec<_> = ["zero", "one", "killed"].iter().map(|name| unique_task_id(name)).collect();
    let _cleanup = Cleanup::tasks(&ids.iter().collect::<Vec<_>>());

    for (id, cmd, expected) in [(&ids[0], ["exit", "0"], 0), (&ids[1], ["exit", "1"], 1)] {
        let launched = dispatcher.launch(&task_labels(id), &[], args(&cmd)).await.unwrap();
        assert!(!launched.adopted);
        let exit = dispatcher.wait_started(&launched.id).await.unwrap();
        assert_eq!(exit.code, expected, "{id}");
        assert!(!exit.oom_killed);
        assert!(exit.started_at.is_some() && exit.finished_at >= exit.started_at, "{id}: {exit:?}");
        dispatcher.remove(&launched.id).await.unwrap();
        assert_eq!(dispatcher.status(&launched.id).await.unwrap(), ContainerStatus::Missing);
    }

    let launched = dispatcher.launch(&task_labels(&ids[2]), &[], args(&["sleep", "300"])).await.unwrap();
    dispatcher.kill(&launched.id).await.unwrap();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    assert_eq!(exit.code, 137);
    assert!(!exit.oom_killed, "a plain SIGKILL is not an OOM");
    dispatcher.remove(&launched.id).await.unwrap();
}

#[tokio::test]
async fn wait_on_a_created_container_waits_for_its_real_exit() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("created-wait");
    let _cleanup = Cleanup::tasks(&[&id]);
    let created = dispatcher.create(&task_labels(&id), &[], args(&["exit", "3"])).await.unwrap();
    assert_eq!(created.status, ContainerStatus::Created);
    // Not-running would answer 0 at once for a created container; ours must not.
    let waiter = {
        let dispatcher = dispatcher.clone();
        let container = created.id.clone();
        tokio::spawn(async move { dispatcher.wait(&container).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    dispatcher.start(&created.id).await.unwrap();
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 3);
    // Waiting again on the exited container returns the same exit at once.
    assert_eq!(dispatcher.wait(&created.id).await.unwrap().code, 3);
    dispatcher.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn a_worker_past_its_memory_limit_comes_back_oom_killed() {
    let image = test_image().await.to_owned();
    let dispatcher = dispatcher_with(DispatcherConfig {
        image,
        network: "none".into(),
        profile: HardenedProfile::strict().with_memory(32 * 1024 * 1024),
        entrypoint: Some(vec![STUB.into()]),
        instance: tests::test_instance(),
    })
    .await;
    let id = unique_task_id("oom");
    let _cleanup = Cleanup::tasks(&[&id]);
    let launched = dispatcher.launch(&task_labels(&id), &[], args(&["alloc", "512"])).await.unwrap();
    let exit = dispatcher.wait_started(&launched.id).await.unwrap();
    assert_eq!(exit.code, 137);
    assert!(exit.oom_killed, "exit 137 under a 32 MiB limit must carry the OOM flag");
    dispatcher.remove(&launched.id).await.unwrap();
}

fn parse_probe(output: &str) -> BTreeMap<String, String> {
    let line = output
        .lines()
        .find(|line| line.starts_with("pid="))
        .unwrap_or_else(|| panic!("no probe line in {output:?}"));
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_hardened_profile_holds_inside_the_running_container() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("profile");
    let _cleanup = Cleanup::tasks(&[&id]);
    let launched = dispatcher.launch(&task_labels(&id), &[], args(&["probe"])).await.unwrap();
    let exit = dispatcher.wait_started(&launched.id).await.unwrap();
    assert_eq!(exit.code, 0);
    let probe = parse_probe(&dispatcher.logs_text(&launched.id).await.unwrap());

    assert_eq!(probe["cap_eff"], "0000000000000000", "no effective capabilities: {probe:?}");
    assert_eq!(probe["cap_prm"], "0000000000000000");
    assert_eq!(probe["no_new_privs"], "1");
    assert_eq!(probe["uid"], "65532", "not root");
    assert_eq!(probe["gid"], "65532");
    assert_eq!(probe["memory_limit"], "2147483648");
    assert_eq!(probe["memsw_limit"], "2147483648", "swap equal to memory: no extra swap");
    assert_eq!(probe["pids_limit"], "512");
    assert_eq!(probe["cpu_quota"], "200000", "2 CPUs at a 100 ms period");
    assert_eq!(probe["cpu_period"], "100000");
    assert_eq!(probe["docker_sock"], "false");
    assert_eq!(probe["pid1"], "docker-init", "init runs as PID 1");
    assert_ne!(probe["pid"], "1", "the worker is not PID 1");
    assert_eq!(probe["root_writable"], "false:ReadOnlyFilesystem", "the root filesystem is read-only");
    assert_eq!(probe["root_owner"], "0", "/ belongs to root, not to the worker's user");
    assert_eq!(probe["tmp_writable"], "true", "/tmp stays writable");
    assert_eq!(probe["home_writable"], "true", "HOME stays writable");

    // And the same from the engine's side.
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let inspect =
        docker.inspect_container(launched.id.as_str(), None::<InspectContainerOptions>).await.unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.memory, Some(2_147_483_648));
    assert_eq!(host.memory_swap, Some(2_147_483_648));
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.cap_add, None);
    assert!(host.security_opt.unwrap().contains(&"no-new-privileges".to_owned()));
    assert_eq!(host.pids_limit, Some(512));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.readonly_rootfs, Some(true));
    let tmpfs = host.tmpfs.clone().unwrap_or_default();
    assert!(tmpfs.get("/tmp").is_some_and(|options| options.contains("size=1073741824")), "{tmpfs:?}");
    assert!(tmpfs.get("/home/berth").is_some_and(|options| options.contains("uid=65532")), "{tmpfs:?}");
    assert!(host.binds.unwrap_or_default().is_empty() && host.mounts.unwrap_or_default().is_empty());
    assert_eq!(inspect.config.unwrap().user.as_deref(), Some("65532:65532"));
    dispatcher.remove(&launched.id).await.unwrap();
}

#[tokio::test]
async fn listing_sees_only_managed_containers_and_leaves_foreign_ones_alone() {
    let dispatcher = dispatcher().await;
    let ours = unique_task_id("listed");
    let foreign_name = format!("berth-{}", unique_task_id("foreign"));
    let _cleanup = Cleanup::names(&[&dispatcher::container_name(&ours), &foreign_name]);

    // A foreign container with a Berth-like name and a berth-looking label, but not managed.
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let body = bollard::models::ContainerCreateBody {
        image: Some(test_image().await.to_owned()),
        entrypoint: Some(vec![STUB.into()]),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some([("berth.task-id".to_owned(), "foreign".to_owned())].into()),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&foreign_name).build();
    docker.create_container(Some(options), body).await.unwrap();

    let created = dispatcher.create(&task_labels(&ours), &[], args(&["sleep", "300"])).await.unwrap();
    let listed = dispatcher.list().await.unwrap();
    assert!(listed.iter().any(|container| container.id == created.id));
    assert!(listed.iter().all(|container| container.name != foreign_name), "foreign container listed");
    let mine = listed.iter().find(|container| container.id == created.id).unwrap();
    assert_eq!(mine.task.as_ref().unwrap().task_id, ours);
    assert_eq!(mine.status, ContainerStatus::Created);

    // Creating a task whose name the foreign container holds is refused.
    let foreign_task = core_types::TaskId::new(foreign_name.trim_start_matches("berth-")).unwrap();
    let err = dispatcher.create(&task_labels(&foreign_task), &[], None).await.unwrap_err();
    assert!(matches!(err, DispatchError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains("not managed by berth"), "{err}");
    assert!(dispatcher.find(&foreign_task).await.unwrap().is_none());
    // The foreign container is untouched.
    let still_there = docker.inspect_container(&foreign_name, None::<InspectContainerOptions>).await.unwrap();
    assert_eq!(still_there.state.unwrap().status, Some(bollard::models::ContainerStateStatusEnum::CREATED));
    dispatcher.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn a_second_create_of_the_same_task_adopts_and_does_not_duplicate() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("adopt");
    let other = unique_task_id("adopt-other");
    let _cleanup = Cleanup::tasks(&[&id, &other]);
    let first = dispatcher.launch(&task_labels(&id), &[], args(&["sleep", "300"])).await.unwrap();
    let second = dispatcher.launch(&task_labels(&id), &[], args(&["sleep", "300"])).await.unwrap();
    assert!(!first.adopted);
    assert!(second.adopted);
    assert_eq!(first.id, second.id);
    assert!(matches!(second.status, ContainerStatus::Running { .. }));
    let count = dispatcher
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|container| container.task.as_ref().is_ok_and(|task| task.task_id == id))
        .count();
    assert_eq!(count, 1);

    // A managed container holding the name with another task's labels is refused, not adopted.
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let body = bollard::models::ContainerCreateBody {
        image: Some(test_image().await.to_owned()),
        entrypoint: Some(vec![STUB.into()]),
        cmd: Some(vec!["exit".into(), "0".into()]),
        labels: Some(task_labels(&id).to_labels().into_iter().collect()),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&dispatcher::container_name(&other)).build();
    docker.create_container(Some(options), body).await.unwrap();
    let err = dispatcher.create(&task_labels(&other), &[], None).await.unwrap_err();
    assert!(matches!(err, DispatchError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains(&format!("belongs to task {id}")), "{err}");
    dispatcher.remove(&first.id).await.unwrap();
}

#[tokio::test]
async fn stop_is_fast_for_sigterm_and_kills_after_the_grace_otherwise() {
    let dispatcher = dispatcher().await;
    let polite = unique_task_id("stop-polite");
    let stubborn = unique_task_id("stop-stubborn");
    let _cleanup = Cleanup::tasks(&[&polite, &stubborn]);
    let grace = Duration::from_secs(3);

    let launched = dispatcher.launch(&task_labels(&polite), &[], args(&["sleep", "300"])).await.unwrap();
    let started = Instant::now();
    dispatcher.stop(&launched.id, grace).await.unwrap();
    let polite_took = started.elapsed();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    assert_eq!(exit.code, 143, "SIGTERM, forwarded by init, ends it");
    assert!(
        polite_took < grace,
        "a process that dies on SIGTERM does not wait out the grace ({polite_took:?})"
    );

    let launched =
        dispatcher.launch(&task_labels(&stubborn), &[], args(&["ignore-term", "300"])).await.unwrap();
    // Let it install its SIG_IGN before we signal it.
    let mut logs = dispatcher.logs(&launched.id, true);
    let first = logs.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.bytes()).contains("ignoring SIGTERM"));
    let started = Instant::now();
    dispatcher.stop(&launched.id, grace).await.unwrap();
    let stubborn_took = started.elapsed();
    let exit = dispatcher.wait(&launched.id).await.unwrap();
    assert_eq!(exit.code, 137, "killed after the grace");
    assert!(stubborn_took >= grace, "SIGKILL came only after the grace ({stubborn_took:?})");
    // Stopping again changes nothing.
    dispatcher.stop(&launched.id, grace).await.unwrap();
    dispatcher.remove(&launched.id).await.unwrap();
}

#[tokio::test]
async fn logs_are_read_and_followed_to_the_end() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("logs");
    let _cleanup = Cleanup::tasks(&[&id]);
    let created = dispatcher
        .create(&task_labels(&id), &[], args(&["print", "hello", "from", "the", "worker"]))
        .await
        .unwrap();
    let mut follow = dispatcher.logs(&created.id, true);
    dispatcher.start(&created.id).await.unwrap();
    let mut followed = Vec::new();
    while let Some(chunk) = follow.next().await {
        followed.extend_from_slice(chunk.unwrap().bytes());
    }
    assert_eq!(String::from_utf8_lossy(&followed), "hello from the worker\n");
    dispatcher.wait(&created.id).await.unwrap();
    assert_eq!(dispatcher.stdout_text(&created.id).await.unwrap(), "hello from the worker\n");
    dispatcher.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn engine_errors_say_what_was_being_done() {
    // Socket unreachable.
    let err = DockerEngine::connect_unix("/nonexistent/berth-test.sock").await.unwrap_err();
    assert!(matches!(err, DispatchError::EngineUnreachable { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/berth-test.sock"), "{err}");

    // Image missing: never pulled, clear message.
    let missing = dispatcher_with(DispatcherConfig {
        image: "berth-test-no-such-image:none".into(),
        network: "none".into(),
        profile: HardenedProfile::strict(),
        entrypoint: None,
        instance: tests::test_instance(),
    })
    .await;
    let id = unique_task_id("no-image");
    let _cleanup = Cleanup::tasks(&[&id]);
    let err = missing.create(&task_labels(&id), &[], None).await.unwrap_err();
    assert!(matches!(err, DispatchError::ImageMissing { .. }), "{err}");
    assert!(err.to_string().contains("berth-test-no-such-image:none"), "{err}");

    // 404 on a removed container.
    let dispatcher = dispatcher().await;
    let id = unique_task_id("removed");
    let _cleanup = Cleanup::tasks(&[&id]);
    let created = dispatcher.create(&task_labels(&id), &[], args(&["exit", "0"])).await.unwrap();
    dispatcher.remove(&created.id).await.unwrap();
    dispatcher.remove(&created.id).await.expect("removing twice is not an error");
    let err = dispatcher.start(&created.id).await.unwrap_err();
    assert!(matches!(err, DispatchError::ContainerNotFound { operation: "start", .. }), "{err}");
    let err = dispatcher.wait(&created.id).await.unwrap_err();
    assert!(matches!(err, DispatchError::ContainerNotFound { .. }), "{err}");
    assert!(err.to_string().contains("not found while trying to wait for"), "{err}");
}

#[tokio::test]
async fn the_docker_engine_describes_itself_and_enforces_the_strict_profile() {
    let engine = tests::engine().await;
    let info = engine.describe().await.unwrap();
    assert_eq!(info.kind, "docker");
    assert!(!info.version.is_empty(), "{info:?}");
    assert!(info.api_version.starts_with("1."), "{info:?}");
    assert!(info.storage_driver.as_deref().is_some_and(|driver| !driver.is_empty()), "{info:?}");
    assert_eq!(info.endpoint, engine.endpoint());
    // This host's kernel gives the engine every limit the strict profile needs.
    let capabilities = engine.capabilities();
    assert!(capabilities.missing_for(&HardenedProfile::strict()).is_empty(), "{capabilities:?}");
    assert!(Protection::ALL.iter().all(|protection| capabilities.enforces(*protection)));
    let config = DispatcherConfig {
        image: test_image().await.to_owned(),
        network: "none".into(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![STUB.into()]),
        instance: tests::test_instance(),
    };
    Dispatcher::checked(engine, config).expect("docker enforces the strict profile");
}

#[tokio::test]
async fn image_status_tells_a_present_image_from_a_missing_one() {
    let engine = tests::engine().await;
    match engine.image_status(test_image().await).await.unwrap() {
        ImageStatus::Present { id } => assert!(id.starts_with("sha256:"), "{id}"),
        ImageStatus::Missing => panic!("the test image was just built"),
    }
    let missing = engine.image_status("berth-test-no-such-image:none").await.unwrap();
    assert_eq!(missing, ImageStatus::Missing);
}

#[tokio::test]
async fn the_engine_waits_from_every_state_and_closes_the_start_race() {
    let dispatcher = dispatcher().await;
    let engine = dispatcher.engine();
    let ids: Vec<_> =
        ["wait-created", "wait-running", "wait-quick"].iter().map(|name| unique_task_id(name)).collect();
    let _cleanup = Cleanup::tasks(&ids.iter().collect::<Vec<_>>());

    // Created: the wait outlasts the created state and returns the real exit.
    let created = dispatcher.create(&task_labels(&ids[0]), &[], args(&["exit", "4"])).await.unwrap();
    let waiter = {
        let engine = engine.clone();
        let id = created.id.clone();
        tokio::spawn(async move { engine.wait(&id).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    dispatcher.start(&created.id).await.unwrap();
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 4);
    assert!(exit.finished_at >= exit.started_at && exit.started_at.is_some());
    // Exited: at once, the same exit.
    assert_eq!(engine.wait(&created.id).await.unwrap(), exit);

    // Running: until it ends.
    let running = dispatcher.launch(&task_labels(&ids[1]), &[], args(&["sleep", "300"])).await.unwrap();
    let waiter = {
        let engine = engine.clone();
        let id = running.id.clone();
        tokio::spawn(async move { engine.wait(&id).await })
    };
    dispatcher.kill(&running.id).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().code, 137);

    // Started and exited before the wait is asked: answered from what it was.
    let quick = dispatcher.create(&task_labels(&ids[2]), &[], args(&["exit", "5"])).await.unwrap();
    dispatcher.start(&quick.id).await.unwrap();
    assert_eq!(engine.wait(&quick.id).await.unwrap().code, 5);

    for id in [&created.id, &running.id, &quick.id] {
        dispatcher.remove(id).await.unwrap();
    }
    let err = engine.wait(&quick.id).await.unwrap_err();
    assert!(matches!(err, DispatchError::ContainerNotFound { .. }), "{err}");
}

#[tokio::test]
async fn changes_tell_of_the_start_death_and_removal_of_labelled_containers() {
    let dispatcher = dispatcher().await;
    let id = unique_task_id("changes");
    let _cleanup = Cleanup::tasks(&[&id]);
    // Asked before anything happens; the stream starts from this moment even
    // though the engine sees the request only when it is first polled.
    let mut changes = dispatcher.engine().changes(core_types::label::TASK_ID, id.as_str());
    let launched = dispatcher.launch(&task_labels(&id), &[], args(&["exit", "0"])).await.unwrap();
    dispatcher.wait(&launched.id).await.unwrap();
    dispatcher.remove(&launched.id).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let change = tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("the engine reports the change")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!(change.id, launched.id);
        seen.push(change.kind);
    }
    assert_eq!(seen, [ChangeKind::Started, ChangeKind::Died, ChangeKind::Removed]);
}

#[tokio::test]
async fn a_task_with_the_longest_id_runs_under_a_63_character_name() {
    let dispatcher = dispatcher().await;
    let short = unique_task_id("long");
    let long =
        core_types::TaskId::new(format!("{short}-{}", "x".repeat(63 - short.as_str().len() - 1))).unwrap();
    assert_eq!(long.as_str().len(), 63);
    let name = dispatcher::container_name(&long);
    let _cleanup = Cleanup::names(&[&name]);
    assert_eq!(name.len(), 63);
    let launched = dispatcher.launch(&task_labels(&long), &[], args(&["exit", "0"])).await.unwrap();
    assert_eq!(dispatcher.wait(&launched.id).await.unwrap().code, 0);
    let found = dispatcher.find(&long).await.unwrap().expect("found by its name");
    assert_eq!((found.id, found.name), (launched.id.clone(), name));
    // A second launch adopts it rather than making another.
    assert!(dispatcher.launch(&task_labels(&long), &[], args(&["exit", "0"])).await.unwrap().adopted);
    dispatcher.remove(&launched.id).await.unwrap();
}
