//! The engine seam's contract, one generic function per promise of
//! `ContainerEngine`, each run against every backend: the real Docker
//! Engine, `FakeEngine`, and `KubernetesEngine` over the fake Kubernetes API
//! server (whose kubelet runs each pod as a real Docker container).
//!
//! A contract speaks only through a [`Backend`]: it asks for a spec that
//! behaves a certain way ([`Behaviour`]), which real backends get from
//! `berth-stub` and the fake from a scripted `Program`. Where the backends
//! legitimately differ (a stop's exit code without an init, a missing image,
//! what a profile may ask), each says what it documents in its
//! [`Expectations`], and the contract asserts exactly that.
//!
//! Every container carries a `berth.instance` unique to its test, and every
//! test removes what it made and checks that nothing is left; a failing test
//! removes it too (the Docker backend's guard, `FakeKube`'s `Drop`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use core_types::label;
use dispatcher::{
    ContainerEngine, ContainerId, ContainerSpec, ContainerStatus, DispatchError, Dispatcher,
    DispatcherConfig, DockerEngine, ExitInfo, FakeEngine, HardenedProfile, Program, Protection,
};
use futures_util::StreamExt;
use kubernetes::{EXIT_COULD_NOT_START, ImagePull, KubernetesEngine, KubernetesOptions};
use tests::fake_kube::FakeKube;
use tests::{STUB, test_image};

/// The longest any one step may take before the contract counts it failed.
const LIMIT: Duration = Duration::from_secs(90);

/// The network name the Kubernetes backend is configured for (its specs
/// must ask for exactly this one).
const KUBE_NETWORK: &str = "berth-workers";

/// The code a worker that traps SIGTERM exits with (`trap-term`).
const TRAPPED_EXIT: i64 = 42;

/// How long the Kubernetes backend's pods get between SIGTERM and SIGKILL
/// (`terminationGracePeriodSeconds`, fixed per pod).
const KUBE_STOP_GRACE: Duration = Duration::from_secs(2);

/// The grace the contracts pass to `stop`.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a container does once started, in terms every backend can follow.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Runs until stopped or killed.
    RunUntilStopped,
    /// Exits with `code` after about `after`.
    ExitAfter { after: Duration, code: i64 },
    /// Prints `first`, later `last`, then exits 0.
    PrintTwice { first: &'static str, last: &'static str },
    /// Says `trapping SIGTERM`, then exits [`TRAPPED_EXIT`] at SIGTERM.
    TrapTerm,
    /// Allocates far more memory than any limit the contracts set.
    Allocate,
}

impl Behaviour {
    /// `berth-stub` arguments for it.
    fn stub_args(&self) -> Vec<String> {
        match self {
            Behaviour::RunUntilStopped => vec!["sleep".into(), "300".into()],
            Behaviour::ExitAfter { after, code } => {
                vec![
                    "sleep".into(),
                    after.as_secs().to_string(),
                    "then".into(),
                    "exit".into(),
                    code.to_string(),
                ]
            }
            Behaviour::PrintTwice { first, last } => vec![
                "print".into(),
                (*first).into(),
                "then".into(),
                "sleep".into(),
                "1".into(),
                "then".into(),
                "print".into(),
                (*last).into(),
            ],
            Behaviour::TrapTerm => vec!["trap-term".into(), TRAPPED_EXIT.to_string(), "300".into()],
            Behaviour::Allocate => vec!["alloc".into(), "512".into()],
        }
    }

    /// The fake engine's script for it.
    fn program(&self) -> Program {
        match self {
            Behaviour::RunUntilStopped => Program::run_until_stopped(),
            Behaviour::ExitAfter { after, code } => Program::exit_after(*after, *code),
            Behaviour::PrintTwice { first, last } => {
                // The fake writes its output at start; the exit comes later.
                Program::exit_after(Duration::from_millis(300), 0).with_stdout(format!("{first}\n{last}\n"))
            }
            // The fake cannot run a handler: a stop ends it with 143.
            Behaviour::TrapTerm => Program::run_until_stopped().with_stdout("trapping SIGTERM\n"),
            Behaviour::Allocate => Program::oom_after(Duration::from_millis(200)),
        }
    }
}

/// How a backend answers a missing image, as it documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissingImage {
    /// `create` fails with `DispatchError::ImageMissing`.
    CreateFails,
    /// Create and start succeed; the container ends with this code.
    ExitsWith(i64),
}

/// What a backend documents where backends legitimately differ.
#[derive(Debug, Clone)]
struct Expectations {
    /// Exit code after a stop of a worker that traps SIGTERM and exits
    /// [`TRAPPED_EXIT`].
    stop_trapped: i64,
    /// Exit code after a stop of a worker that leaves SIGTERM at its default.
    stop_default: i64,
    /// What happens to a worker whose image is missing.
    missing_image: MissingImage,
    /// What `HardenedProfile::strict()` asks that the engine does not enforce.
    strict_missing: Vec<Protection>,
}

/// One backend under test: its engine, how it makes a spec behave, and what
/// it documents.
trait Backend {
    type E: ContainerEngine + Clone;

    /// The engine.
    fn engine(&self) -> &Self::E;

    /// This test's `berth.instance`.
    fn instance(&self) -> &str;

    /// The image every spec uses.
    fn image(&self) -> &str;

    /// `profile` as this backend runs it (Kubernetes drops what a pod
    /// cannot be given).
    fn fit(&self, profile: HardenedProfile) -> HardenedProfile;

    /// The network name its specs ask for.
    fn network(&self) -> &str;

    /// Makes container `name` behave as `behaviour` once started: a no-op
    /// for real backends (the command does it), the program for the fake.
    fn script(&self, name: &str, behaviour: &Behaviour);

    /// An image reference the engine does not have.
    fn missing_image(&self) -> String;

    /// What it documents.
    fn expectations(&self) -> Expectations;

    /// Checks that nothing this test made is left, then lets go of the
    /// backend (a fake Kubernetes server shuts down).
    async fn finish(self);

    /// A spec for container `name` of this test that behaves as `behaviour`.
    fn spec(&self, name: &str, behaviour: &Behaviour) -> ContainerSpec {
        self.script(name, behaviour);
        let labels = BTreeMap::from([
            (label::MANAGED.to_owned(), "true".to_owned()),
            (label::INSTANCE.to_owned(), self.instance().to_owned()),
            (label::TASK_ID.to_owned(), name.to_owned()),
        ]);
        ContainerSpec {
            name: name.to_owned(),
            image: self.image().to_owned(),
            labels,
            env: vec!["BERTH_CONTRACT=1".to_owned()],
            entrypoint: Some(vec![STUB.to_owned()]),
            cmd: Some(behaviour.stub_args()),
            network: self.network().to_owned(),
            profile: self.fit(HardenedProfile::strict()),
            mounts: Vec::new(),
        }
    }

    /// A container name unique to this test: `<instance>-<what>`.
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.instance())
    }
}

static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A `berth.instance` unique to this process and call, short enough for
/// container names built on it.
fn unique_instance(backend: &str) -> String {
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ec-{backend}-{}-{n}", std::process::id())
}

/// Force-removes every Docker container carrying `berth.instance=<instance>`
/// when dropped, also when the test panics.
struct DockerCleanup {
    instance: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let instance = self.instance.clone();
        // Drop cannot await; a short-lived runtime on its own thread can.
        let handle = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime builds");
            runtime.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_unix_defaults() else { return };
                for id in docker_containers(&docker, &instance).await {
                    let options =
                        bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// Ids of the Docker containers (any state) with `berth.instance=<instance>`.
async fn docker_containers(docker: &bollard::Docker, instance: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("{}={instance}", label::INSTANCE)])]);
    let options =
        bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let listed = docker.list_containers(Some(options)).await.expect("the Docker Engine lists containers");
    listed.into_iter().filter_map(|container| container.id).collect()
}

/// The real Docker Engine.
struct DockerBackend {
    engine: DockerEngine,
    image: &'static str,
    instance: String,
    _cleanup: DockerCleanup,
}

impl DockerBackend {
    async fn new() -> Self {
        let image = test_image().await;
        let instance = unique_instance("d");
        Self {
            engine: tests::engine().await,
            image,
            _cleanup: DockerCleanup { instance: instance.clone() },
            instance,
        }
    }
}

impl Backend for DockerBackend {
    type E = DockerEngine;

    fn engine(&self) -> &DockerEngine {
        &self.engine
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn image(&self) -> &str {
        self.image
    }

    fn fit(&self, profile: HardenedProfile) -> HardenedProfile {
        profile
    }

    fn network(&self) -> &str {
        "none"
    }

    fn script(&self, _name: &str, _behaviour: &Behaviour) {}

    fn missing_image(&self) -> String {
        format!("berth-contract-missing:{}", self.instance)
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            // Docker's init (tini) forwards SIGTERM to the worker.
            stop_trapped: TRAPPED_EXIT,
            // SIGTERM at its default ends the worker: 128 + 15.
            stop_default: 143,
            // Berth never pulls: the create is refused.
            missing_image: MissingImage::CreateFails,
            strict_missing: Vec::new(),
        }
    }

    async fn finish(self) {
        let docker = bollard::Docker::connect_with_unix_defaults().expect("the Docker Engine is reachable");
        let left = docker_containers(&docker, &self.instance).await;
        assert!(left.is_empty(), "containers of {} left behind: {left:?}", self.instance);
    }
}

/// `FakeEngine`, scripted per container name.
struct FakeBackend {
    engine: FakeEngine,
    instance: String,
}

impl FakeBackend {
    fn new() -> Self {
        Self { engine: FakeEngine::new(), instance: unique_instance("f") }
    }
}

impl Backend for FakeBackend {
    type E = FakeEngine;

    fn engine(&self) -> &FakeEngine {
        &self.engine
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn image(&self) -> &str {
        tests::TEST_IMAGE
    }

    fn fit(&self, profile: HardenedProfile) -> HardenedProfile {
        profile
    }

    fn network(&self) -> &str {
        "none"
    }

    fn script(&self, name: &str, behaviour: &Behaviour) {
        self.engine.set_program(name, behaviour.program());
    }

    fn missing_image(&self) -> String {
        let image = format!("berth-contract-missing:{}", self.instance);
        self.engine.set_image_present(&image, false);
        image
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            // The fake runs no handler: any stop of a program that does not
            // ignore SIGTERM is 143 (FakeEngine's `Program` docs).
            stop_trapped: 143,
            stop_default: 143,
            missing_image: MissingImage::CreateFails,
            strict_missing: Vec::new(),
        }
    }

    async fn finish(self) {
        let left = self.engine.containers();
        assert!(left.is_empty(), "containers left in the fake engine: {left:?}");
    }
}

/// `KubernetesEngine` over the fake Kubernetes API server.
struct KubeBackend {
    engine: KubernetesEngine,
    image: &'static str,
    instance: String,
    /// Dropped last: its `Drop` removes every container its kubelet made.
    fake: FakeKube,
}

impl KubeBackend {
    async fn new() -> Self {
        let image = test_image().await;
        let fake = FakeKube::start().await;
        let mut options = KubernetesOptions::new(KUBE_NETWORK);
        // Berth never pulls, on Kubernetes either: a missing image is
        // `ErrImageNeverPull`, an exit that waiting cannot mend.
        options.image_pull = ImagePull::Never;
        options.stop_grace = KUBE_STOP_GRACE;
        let engine = KubernetesEngine::new(fake.client(), fake.namespace(), options);
        Self { engine, image, instance: unique_instance("k"), fake }
    }
}

impl Backend for KubeBackend {
    type E = KubernetesEngine;

    fn engine(&self) -> &KubernetesEngine {
        &self.engine
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn image(&self) -> &str {
        self.image
    }

    fn fit(&self, profile: HardenedProfile) -> HardenedProfile {
        KubernetesEngine::fit_profile(profile)
    }

    fn network(&self) -> &str {
        KUBE_NETWORK
    }

    fn script(&self, _name: &str, _behaviour: &Behaviour) {}

    fn missing_image(&self) -> String {
        format!("berth-contract-missing:{}", self.instance)
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            // The pod's own process gets the kubelet's SIGTERM.
            stop_trapped: TRAPPED_EXIT,
            // No init on Kubernetes (`KubernetesEngine::CAPABILITIES`): the
            // worker is PID 1, which the kernel spares a SIGTERM it has no
            // handler for, so the kubelet's SIGKILL ends it after the grace.
            stop_default: 137,
            // Kubernetes cannot refuse at create (it cannot see the node's
            // images): the pod cannot start, read as `EXIT_COULD_NOT_START`.
            missing_image: MissingImage::ExitsWith(EXIT_COULD_NOT_START),
            strict_missing: vec![Protection::PidsLimit, Protection::Init, Protection::LogLimits],
        }
    }

    async fn finish(self) {
        let left = self.engine.list_by_label(label::INSTANCE, &self.instance).await.unwrap();
        assert!(left.is_empty(), "jobs of {} left behind: {left:?}", self.instance);
        let Self { fake, .. } = self;
        let id = fake.id().to_owned();
        fake.shutdown().await;
        let docker = bollard::Docker::connect_with_unix_defaults().expect("the Docker Engine is reachable");
        let filters = HashMap::from([("label", vec![format!("{}={id}", tests::fake_kube::SERVER_LABEL)])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let left = docker.list_containers(Some(options)).await.unwrap();
        assert!(left.is_empty(), "pod containers left behind: {left:?}");
    }
}

/// `future`, or a failed test naming `what` after [`LIMIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future).await.unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

/// Creates `spec`, which must be new.
async fn create<E: ContainerEngine>(engine: &E, spec: &ContainerSpec) -> ContainerId {
    engine
        .create(spec)
        .await
        .unwrap_or_else(|err| panic!("create {}: {err}", spec.name))
        .unwrap_or_else(|| panic!("{} was new, yet create found its name taken", spec.name))
}

/// Waits for the container's exit.
async fn wait<E: ContainerEngine>(engine: &E, id: &ContainerId) -> ExitInfo {
    within(&format!("wait for {id}"), engine.wait(id)).await.unwrap_or_else(|err| panic!("wait {id}: {err}"))
}

/// Follows the container's output until `text` appears in it.
async fn await_output<E: ContainerEngine>(engine: &E, id: &ContainerId, text: &str) {
    let mut seen = String::new();
    within(&format!("{text:?} from {id}"), async {
        let mut logs = engine.logs(id, true, None);
        while let Some(chunk) = logs.next().await {
            seen.push_str(&String::from_utf8_lossy(chunk.unwrap().bytes()));
            if seen.contains(text) {
                return;
            }
        }
        panic!("the followed log of {id} ended without {text:?}: {seen:?}");
    })
    .await;
}

/// Removes every container of this test and checks the listing is empty.
async fn remove_all<B: Backend>(backend: &B) {
    let engine = backend.engine();
    for container in engine.list_by_label(label::INSTANCE, backend.instance()).await.unwrap() {
        engine.remove(&container.id).await.unwrap();
    }
    let left = engine.list_by_label(label::INSTANCE, backend.instance()).await.unwrap();
    assert!(left.is_empty(), "still listed after remove: {left:?}");
}

// ---- The contracts -------------------------------------------------------

/// Create makes a created (not started) container; a create of a name in
/// use is `Ok(None)`, and the holder is the first container, untouched.
async fn create_and_adopt_on_a_name_conflict<B: Backend>(backend: B) {
    let engine = backend.engine();
    let name = backend.name("adopt");
    let spec = backend.spec(&name, &Behaviour::RunUntilStopped);
    let id = create(engine, &spec).await;

    let state = engine.inspect(&name).await.unwrap().expect("inspect by name finds the container");
    assert_eq!(state.id, id);
    assert_eq!(state.name, name);
    assert_eq!(state.status, ContainerStatus::Created, "created, not started");
    assert_eq!(state.labels.get(label::INSTANCE).map(String::as_str), Some(backend.instance()));
    assert_eq!(engine.inspect(id.as_str()).await.unwrap().map(|state| state.id), Some(id.clone()));

    // The same name again, even with another command: the caller adopts.
    let again = backend.spec(&name, &Behaviour::ExitAfter { after: Duration::ZERO, code: 9 });
    assert_eq!(engine.create(&again).await.unwrap(), None, "a name in use is Ok(None)");
    let listed = engine.list_by_label(label::INSTANCE, backend.instance()).await.unwrap();
    assert_eq!(listed.len(), 1, "no second container: {listed:?}");
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].status, ContainerStatus::Created);

    // Starting twice is fine.
    engine.start(&id).await.unwrap();
    engine.start(&id).await.unwrap();
    remove_all(&backend).await;
    backend.finish().await;
}

/// Wait returns the exit from every state: created (only after a start and
/// the exit), running, and exited (at once, the same again).
async fn wait_from_every_state<B: Backend>(backend: B) {
    let engine = backend.engine();

    // Created: the wait must not answer before the container ran.
    let created = create(
        engine,
        &backend
            .spec(&backend.name("created"), &Behaviour::ExitAfter { after: Duration::from_secs(1), code: 3 }),
    )
    .await;
    let exit = {
        let mut waiting = std::pin::pin!(engine.wait(&created));
        let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
        assert!(early.is_err(), "a wait on a created container answered before any start: {early:?}");
        let (exit, started) = tokio::join!(within("wait from created", waiting), engine.start(&created));
        started.unwrap();
        exit.unwrap()
    };
    assert_eq!(exit.code, 3, "{exit:?}");
    assert!(!exit.oom_killed);

    // Running.
    let running = create(
        engine,
        &backend
            .spec(&backend.name("running"), &Behaviour::ExitAfter { after: Duration::from_secs(2), code: 4 }),
    )
    .await;
    engine.start(&running).await.unwrap();
    let status = engine.inspect(running.as_str()).await.unwrap().unwrap().status;
    assert!(matches!(status, ContainerStatus::Running { .. }), "just started: {status:?}");
    let exit = wait(engine, &running).await;
    assert_eq!(exit.code, 4, "{exit:?}");

    // Exited: at once, and the same each time.
    let again = tokio::time::timeout(Duration::from_secs(10), engine.wait(&running))
        .await
        .expect("a wait on an exited container answers at once")
        .unwrap();
    assert_eq!(again.code, exit.code);
    assert_eq!(again.oom_killed, exit.oom_killed);
    match engine.inspect(running.as_str()).await.unwrap().unwrap().status {
        ContainerStatus::Exited(inspected) => assert_eq!(inspected.code, 4),
        other => panic!("exited, yet inspect says {other:?}"),
    }

    remove_all(&backend).await;
    backend.finish().await;
}

/// `list_by_label("berth.instance", ours)` lists every container of ours,
/// in any state, and none of another instance.
async fn listing_by_instance_sees_only_ours<B: Backend>(backend: B) {
    let engine = backend.engine();
    let first = create(engine, &backend.spec(&backend.name("one"), &Behaviour::RunUntilStopped)).await;
    let second = create(engine, &backend.spec(&backend.name("two"), &Behaviour::RunUntilStopped)).await;
    engine.start(&second).await.unwrap();
    // Another deployment's worker on the same engine.
    let other_instance = format!("{}-other", backend.instance());
    let mut foreign = backend.spec(&backend.name("other"), &Behaviour::RunUntilStopped);
    foreign.labels.insert(label::INSTANCE.to_owned(), other_instance.clone());
    let foreign = create(engine, &foreign).await;

    let mut listed: Vec<ContainerId> = engine
        .list_by_label(label::INSTANCE, backend.instance())
        .await
        .unwrap()
        .into_iter()
        .map(|state| state.id)
        .collect();
    listed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(listed, expected, "ours, created and started, and nothing else");
    let others = engine.list_by_label(label::INSTANCE, &other_instance).await.unwrap();
    assert_eq!(others.iter().map(|state| &state.id).collect::<Vec<_>>(), vec![&foreign]);
    assert!(
        engine
            .list_by_label(label::INSTANCE, &format!("{}-nobody", backend.instance()))
            .await
            .unwrap()
            .is_empty()
    );

    engine.remove(&foreign).await.unwrap();
    remove_all(&backend).await;
    backend.finish().await;
}

/// A followed log opened at start carries all the output and ends when the
/// container exits.
async fn followed_log_ends_at_exit<B: Backend>(backend: B) {
    let engine = backend.engine();
    let behaviour = Behaviour::PrintTwice { first: "contract-first", last: "contract-last" };
    let id = create(engine, &backend.spec(&backend.name("logs"), &behaviour)).await;
    engine.start(&id).await.unwrap();
    let mut output = String::new();
    within("the followed log to end", async {
        let mut logs = engine.logs(&id, true, None);
        while let Some(chunk) = logs.next().await {
            output.push_str(&String::from_utf8_lossy(chunk.unwrap().bytes()));
        }
    })
    .await;
    assert!(output.contains("contract-first"), "{output:?}");
    assert!(output.contains("contract-last"), "the follow ended before the last line: {output:?}");
    // Ended because the container did.
    let exit = tokio::time::timeout(Duration::from_secs(30), engine.wait(&id))
        .await
        .expect("the follow ended at exit, so the wait answers soon")
        .unwrap();
    assert_eq!(exit.code, 0);
    // Read again unfollowed: the same output, then the end.
    let mut again = String::new();
    let mut logs = engine.logs(&id, false, None);
    while let Some(chunk) = within("an unfollowed log", logs.next()).await {
        again.push_str(&String::from_utf8_lossy(chunk.unwrap().bytes()));
    }
    assert!(again.contains("contract-first") && again.contains("contract-last"), "{again:?}");

    remove_all(&backend).await;
    backend.finish().await;
}

/// Stop sends SIGTERM with a grace: a worker that traps it exits with its
/// own code, one that does not ends as the backend documents.
async fn stop_with_grace_gives_the_documented_exit<B: Backend>(backend: B) {
    let engine = backend.engine();
    let expected = backend.expectations();

    let trapped = create(engine, &backend.spec(&backend.name("trap"), &Behaviour::TrapTerm)).await;
    let plain = create(engine, &backend.spec(&backend.name("plain"), &Behaviour::RunUntilStopped)).await;
    engine.start(&trapped).await.unwrap();
    engine.start(&plain).await.unwrap();
    // The signal must come after the trap is set.
    await_output(engine, &trapped, "trapping SIGTERM").await;
    within("stop", engine.stop(&trapped, STOP_GRACE)).await.unwrap();
    let exit = wait(engine, &trapped).await;
    assert_eq!(exit.code, expected.stop_trapped, "a worker that traps SIGTERM: {exit:?}");
    assert!(!exit.oom_killed);

    // A process that is running; the stub is, once its container runs.
    within("the plain worker to run", async {
        while !matches!(
            engine.inspect(plain.as_str()).await.unwrap().unwrap().status,
            ContainerStatus::Running { started_at: Some(_) }
        ) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    within("stop", engine.stop(&plain, STOP_GRACE)).await.unwrap();
    let exit = wait(engine, &plain).await;
    assert_eq!(exit.code, expected.stop_default, "a worker with SIGTERM at its default: {exit:?}");
    assert!(!exit.oom_killed);

    // Stopping an exited container is not an error.
    engine.stop(&plain, STOP_GRACE).await.unwrap();
    remove_all(&backend).await;
    backend.finish().await;
}

/// Remove takes a container away, running or not; removing it again is Ok,
/// and then it is missing for inspect and wait.
async fn remove_twice_is_fine<B: Backend>(backend: B) {
    let engine = backend.engine();
    let running =
        create(engine, &backend.spec(&backend.name("rm-running"), &Behaviour::RunUntilStopped)).await;
    let created =
        create(engine, &backend.spec(&backend.name("rm-created"), &Behaviour::RunUntilStopped)).await;
    engine.start(&running).await.unwrap();
    for id in [&running, &created] {
        engine.remove(id).await.unwrap();
        engine.remove(id).await.unwrap_or_else(|err| panic!("a second remove of {id}: {err}"));
        assert_eq!(engine.inspect(id.as_str()).await.unwrap(), None, "{id} is gone");
        let waited = within("wait on a removed container", engine.wait(id)).await;
        assert!(matches!(waited, Err(DispatchError::ContainerNotFound { .. })), "{waited:?}");
    }
    let left = engine.list_by_label(label::INSTANCE, backend.instance()).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    backend.finish().await;
}

/// A worker whose image is missing fails clearly, as its backend documents.
async fn a_missing_image_fails_as_documented<B: Backend>(backend: B) {
    let engine = backend.engine();
    let mut spec =
        backend.spec(&backend.name("noimage"), &Behaviour::ExitAfter { after: Duration::ZERO, code: 0 });
    spec.image = backend.missing_image();
    match backend.expectations().missing_image {
        MissingImage::CreateFails => {
            let err = engine.create(&spec).await.expect_err("a create with a missing image fails");
            assert!(matches!(&err, DispatchError::ImageMissing { image } if *image == spec.image), "{err}");
            assert!(err.to_string().contains(&spec.image), "the error names the image: {err}");
            assert_eq!(engine.inspect(&spec.name).await.unwrap(), None, "nothing was made");
        }
        MissingImage::ExitsWith(code) => {
            let id = create(engine, &spec).await;
            engine.start(&id).await.unwrap();
            let exit = wait(engine, &id).await;
            assert_eq!(exit.code, code, "{exit:?}");
            assert!(!exit.oom_killed);
            assert_eq!(exit.started_at, None, "it never ran");
        }
    }
    remove_all(&backend).await;
    backend.finish().await;
}

/// A worker past its memory limit comes back OOM-killed.
async fn a_worker_past_its_memory_limit_is_oom_killed<B: Backend>(backend: B) {
    let engine = backend.engine();
    let mut spec = backend.spec(&backend.name("oom"), &Behaviour::Allocate);
    spec.profile = spec.profile.with_memory(32 * 1024 * 1024);
    let id = create(engine, &spec).await;
    engine.start(&id).await.unwrap();
    let exit = wait(engine, &id).await;
    assert!(exit.oom_killed, "a 512 MiB allocation under a 32 MiB limit: {exit:?}");
    assert_eq!(exit.code, 137, "{exit:?}");
    remove_all(&backend).await;
    backend.finish().await;
}

/// The engine reports what it enforces: the strict profile passes
/// `Dispatcher::checked` where the engine enforces all of it, and the
/// profile as the backend fits it passes everywhere.
async fn the_profile_as_the_engine_reports_it<B: Backend>(backend: B) {
    let engine = backend.engine();
    let expected = backend.expectations();
    let strict = HardenedProfile::strict();
    assert_eq!(engine.capabilities().missing_for(&strict), expected.strict_missing);
    let config = |profile: HardenedProfile| DispatcherConfig {
        image: backend.image().to_owned(),
        network: backend.network().to_owned(),
        profile,
        entrypoint: Some(vec![STUB.to_owned()]),
        instance: backend.instance().to_owned(),
    };
    match Dispatcher::checked(engine.clone(), config(strict.clone())) {
        Ok(_) => assert!(
            expected.strict_missing.is_empty(),
            "the strict profile passed, yet the engine lacks some of it"
        ),
        Err(DispatchError::ProfileUnsupported { missing, .. }) => {
            assert_eq!(missing, expected.strict_missing)
        }
        Err(other) => panic!("checked failed otherwise: {other}"),
    }
    let fitted = backend.fit(strict.clone());
    assert!(engine.capabilities().missing_for(&fitted).is_empty(), "{fitted:?}");
    Dispatcher::checked(engine.clone(), config(fitted.clone())).expect("the fitted profile passes");
    // Fitting drops only what the engine lacks: the limits stay.
    for protection in
        [Protection::MemoryLimit, Protection::CpuLimit, Protection::NonRootUser, Protection::ReadOnlyRoot]
    {
        assert!(fitted.protections().contains(&protection), "{protection} kept");
    }
    backend.finish().await;
}

/// Three tests per contract, one per backend, in a module named after it.
macro_rules! contract {
    ($($contract:ident),* $(,)?) => {$(
        mod $contract {
            #[tokio::test]
            async fn docker() {
                super::$contract(super::DockerBackend::new().await).await;
            }

            #[tokio::test]
            async fn fake() {
                super::$contract(super::FakeBackend::new()).await;
            }

            #[tokio::test]
            async fn kubernetes() {
                super::$contract(super::KubeBackend::new().await).await;
            }
        }
    )*};
}

contract!(
    create_and_adopt_on_a_name_conflict,
    wait_from_every_state,
    listing_by_instance_sees_only_ours,
    followed_log_ends_at_exit,
    stop_with_grace_gives_the_documented_exit,
    remove_twice_is_fine,
    a_missing_image_fails_as_documented,
    a_worker_past_its_memory_limit_is_oom_killed,
    the_profile_as_the_engine_reports_it,
);
