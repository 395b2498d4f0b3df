//! The clone cache as the runner drives it, over an engine without volumes
//! (the in-memory one, like Kubernetes): every task still runs, with no
//! mirror and a note for the worker's log saying why.

use core_types::{TaskKind, env_names};
use domain::tasks::Conclusion;
use domain::triggers::Decision;
use journal::Accepted;

use super::harness::{Rig, config, request};
use crate::RunnerConfig;
use crate::cache::CacheSettings;

/// The worker's `BERTH_CACHE_NOTE` and whether it got a mirror, read while its container exists.
async fn cache_env(rig: &Rig, task: &core_types::TaskId) -> (Option<String>, bool) {
    let name = Rig::container_name(task);
    rig.until("the worker is created", |rig| rig.engine.spec(&name).is_some()).await;
    let spec = rig.engine.spec(&name).unwrap();
    let note = spec
        .env
        .iter()
        .find_map(|pair| pair.strip_prefix(&format!("{}=", env_names::BERTH_CACHE_NOTE)).map(str::to_owned));
    let mirror = !spec.mounts.is_empty()
        || spec.env.iter().any(|pair| pair.starts_with(&format!("{}=", env_names::BERTH_CACHE_DIR)));
    (note, mirror)
}

#[tokio::test(start_paused = true)]
async fn with_the_cache_on_an_engine_without_volumes_runs_every_task_plainly_and_says_why() {
    let state = tempfile::tempdir().unwrap();
    let settings = CacheSettings { size_cap: None, state_dir: state.path().to_owned() };
    let mut rig = Rig::new(RunnerConfig { clone_cache: Some(settings), ..config() }).await;

    let mut keyed = request(TaskKind::Review, "octo/repo", 1);
    keyed.repo_id = Some(42);
    let Accepted::Queued { task } = rig.accept(Decision::Queue(keyed)).await else { panic!("queued") };
    let (note, mirror) = cache_env(&rig, &task).await;
    assert!(!mirror, "no mirror without volumes");
    let note = note.expect("the worker is told why");
    assert!(
        note.contains("the mirror's volume could not be had") && note.contains("no named volumes"),
        "{note}"
    );
    assert_eq!(rig.reported(&task).await.conclusion(), Some(Conclusion::Success));

    // A task whose delivery carried no repository id is never keyed by its name.
    let task = rig.submit(TaskKind::Review, "octo/repo", 2).await;
    let (note, mirror) = cache_env(&rig, &task).await;
    assert!(!mirror);
    assert!(note.expect("a note").contains("named no repository id"));
    assert_eq!(rig.reported(&task).await.conclusion(), Some(Conclusion::Success));

    // An implement task never waits for a first fill.
    let mut implement = request(TaskKind::Implement, "octo/repo", 3);
    implement.repo_id = Some(42);
    let Accepted::Queued { task } = rig.accept(Decision::Queue(implement)).await else { panic!("queued") };
    let (note, mirror) = cache_env(&rig, &task).await;
    assert!(!mirror);
    assert!(note.expect("a note").contains("not filled yet"));
    assert_eq!(rig.reported(&task).await.conclusion(), Some(Conclusion::Success));
}

#[tokio::test(start_paused = true)]
async fn with_the_cache_off_the_worker_gets_neither_a_mirror_nor_a_note() {
    let mut rig = Rig::new(config()).await;
    let mut keyed = request(TaskKind::Review, "octo/repo", 1);
    keyed.repo_id = Some(42);
    let Accepted::Queued { task } = rig.accept(Decision::Queue(keyed)).await else { panic!("queued") };
    assert_eq!(cache_env(&rig, &task).await, (None, false));
    assert_eq!(rig.reported(&task).await.conclusion(), Some(Conclusion::Success));
}
