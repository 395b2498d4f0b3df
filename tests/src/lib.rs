//! Shared support for Berth's end-to-end tests and benchmarks: the real
//! Docker Engine, the offline test image, unique task ids, and cleanup that
//! runs even when a test fails.
//!
//! Every test here needs a Docker Engine. When none answers, the tests fail at
//! once with one line saying so; they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use core_types::{TaskId, TaskKind, TaskLabels};
use dispatcher::image::ImageContext;
use dispatcher::{Dispatcher, DispatcherConfig, DockerEngine, HardenedProfile};
use tokio::sync::OnceCell;

/// Tag of the offline test image.
pub const TEST_IMAGE: &str = "berth-test-worker:e2e";

/// Where the stub lives in the test image.
pub const STUB: &str = "/usr/local/bin/berth-stub";

/// Where the worker lives in the test image.
pub const WORKER: &str = "/usr/local/bin/berth-worker";

/// Connects to the local engine, or fails the test with one clear line.
pub async fn engine() -> DockerEngine {
    match DockerEngine::connect_local().await {
        Ok(engine) => engine,
        Err(err) => panic!(
            "Docker Engine unreachable: {err:#?}\nthese tests need a running engine; without one, run `cargo test --workspace --exclude tests`"
        ),
    }
}

/// The cargo target directory this test binary was built into.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).and_then(Path::parent).expect("test binary under target/<profile>/deps").to_owned()
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.parent().and_then(Path::parent).expect("test binary under target/<profile>/deps").to_owned()
}

/// Builds the workspace binaries the images carry (same profile as the tests)
/// and returns the directory holding them.
pub fn workspace_binaries() -> PathBuf {
    let profile_dir = profile_dir();
    let release = profile_dir.file_name().is_some_and(|name| name == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "-p", "stub", "-p", "worker", "-p", "api", "--bins", "--target-dir"]);
    command.arg(target_dir());
    if release {
        command.arg("--release");
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the workspace binaries for the test image failed");
    profile_dir
}

static IMAGE: OnceCell<String> = OnceCell::const_new();

/// The offline test image (`FROM scratch` with berth-worker and berth-stub),
/// built once per test run.
pub async fn test_image() -> &'static str {
    IMAGE
        .get_or_init(|| async {
            let binaries = tokio::task::spawn_blocking(workspace_binaries).await.expect("build task runs");
            let mut context = ImageContext::new();
            context
                .add_executable(&binaries.join("berth-stub"), STUB)
                .expect("stub binary is built")
                .add_executable(&binaries.join("berth-worker"), WORKER)
                .expect("worker binary is built")
                .entrypoint(&[WORKER]);
            let tar = context.to_tar().expect("context builds");
            let engine = engine().await;
            engine.build_image(TEST_IMAGE, tar, |_| {}).await.expect("test image builds");
            TEST_IMAGE.to_owned()
        })
        .await
}

/// A dispatcher over the real engine with the strict profile and the test image.
pub async fn dispatcher() -> Dispatcher<DockerEngine> {
    let image = test_image().await.to_owned();
    dispatcher_with(DispatcherConfig {
        image,
        network: "none".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![STUB.to_owned()]),
    })
    .await
}

/// A dispatcher over the real engine with a given configuration.
pub async fn dispatcher_with(config: DispatcherConfig) -> Dispatcher<DockerEngine> {
    Dispatcher::new(engine().await, config)
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A task id unique to this run and call: `e2e-<name>-<pid>-<n>`.
pub fn unique_task_id(name: &str) -> TaskId {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    TaskId::new(format!("e2e-{name}-{}-{n}", std::process::id())).expect("test ids are valid")
}

/// Labels for a test task, with a deadline an hour away.
pub fn task_labels(task_id: &TaskId) -> TaskLabels {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    TaskLabels {
        task_id: task_id.clone(),
        kind: TaskKind::Review,
        repo: "e2e/berth".to_owned(),
        number: 1,
        head_sha: None,
        delivery: Some(format!("e2e-{}", std::process::id())),
        deadline_unix: now + 3600,
        check_run: None,
        installation: None,
    }
}

/// Removes the named containers when dropped, also when the test panics.
pub struct Cleanup {
    names: Vec<String>,
}

impl Cleanup {
    /// Cleans up the containers of these tasks.
    pub fn tasks(task_ids: &[&TaskId]) -> Self {
        Self { names: task_ids.iter().map(|id| id.container_name()).collect() }
    }

    /// Cleans up containers by name.
    pub fn names(names: &[&str]) -> Self {
        Self { names: names.iter().map(|name| (*name).to_owned()).collect() }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        // Drop cannot await; a short-lived runtime on its own thread can.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime builds");
            runtime.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_unix_defaults() else { return };
                for name in names {
                    let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&name, Some(options)).await;
                }
            });
        });
        let _ = handle.join();
    }
}
