//! [`FakeEngine`]: an in-memory [`ContainerEngine`] for fast, deterministic
//! tests of what sits above the seam (the runner, recovery, the status API),
//! behind the `fake` feature.
//!
//! It behaves as the Docker Engine does where Berth relies on it: a name in
//! use makes create answer `Ok(None)`, starting a running container is fine,
//! removing a missing one is fine, a wait on an exited container returns at
//! once, a wait on a created one returns only after it was started and
//! exited. Time is tokio's only (`tokio::time::sleep`, `Instant`), so a test
//! under `tokio::time::pause()` runs hours of scripted containers in
//! milliseconds; the wall clock is read once, when the engine is made, to
//! anchor the `SystemTime`s it reports.
//!
//! It does not run anything: a container follows its [`Program`] and the
//! test's controls ([`FakeEngine::finish`], [`FakeEngine::oom_kill`], ...).
//! Clones share one engine, so a test keeps a handle while a `Dispatcher`
//! owns another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::{
    Capabilities, Change, ChangeKind, ChangeStream, ContainerEngine, ContainerId, ContainerSpec,
    ContainerState, ContainerStatus, EngineInfo, ExitInfo, ImageStatus, LogChunk, LogStream,
};
use crate::{DispatchError, EngineError};

/// Where the fake says it is.
const ENDPOINT: &str = "memory";

/// Exit code after SIGKILL.
const SIGKILL_EXIT: i64 = 137;

/// Exit code after SIGTERM forwarded by an init.
const SIGTERM_EXIT: i64 = 143;

/// How many changes a reader may fall behind before its stream ends (the
/// engine drops slow readers too).
const CHANGE_BUFFER: usize = 1024;

/// What a fake container does once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    exit: Option<ScriptedExit>,
    stdout: Bytes,
    stderr: Bytes,
    ignores_sigterm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScriptedExit {
    after: Duration,
    code: i64,
    oom_killed: bool,
}

impl Program {
    /// Runs until a test control, a stop, a kill or a remove ends it.
    pub fn run_until_stopped() -> Self {
        Self { exit: None, stdout: Bytes::new(), stderr: Bytes::new(), ignores_sigterm: false }
    }

    /// Exits with `code` once `after` of (tokio) time has passed since its start.
    pub fn exit_after(after: Duration, code: i64) -> Self {
        Self { exit: Some(ScriptedExit { after, code, oom_killed: false }), ..Self::run_until_stopped() }
    }

    /// Is killed by the OOM killer (137, flagged) once `after` has passed.
    pub fn oom_after(after: Duration) -> Self {
        Self {
            exit: Some(ScriptedExit { after, code: SIGKILL_EXIT, oom_killed: true }),
            ..Self::run_until_stopped()
        }
    }

    /// Writes `bytes` to stdout as it starts.
    pub fn with_stdout(mut self, bytes: impl Into<Bytes>) -> Self {
        self.stdout = bytes.into();
        self
    }

    /// Writes `bytes` to stderr as it starts.
    pub fn with_stderr(mut self, bytes: impl Into<Bytes>) -> Self {
        self.stderr = bytes.into();
        self
    }

    /// Ignores SIGTERM, as a worker running as PID 1 without an init does:
    /// a stop then waits the whole grace period and kills (137). By default a
    /// stop ends it at once with 143.
    pub fn ignoring_sigterm(mut self) -> Self {
        self.ignores_sigterm = true;
        self
    }
}

/// What the fake was asked to do, in order, for assertions. Calls refused
/// during an outage are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeCalls {
    /// Names of the containers created (a create refused for a name in use
    /// is not counted).
    pub created: Vec<String>,
    /// Every start asked for, including of a running container.
    pub started: Vec<ContainerId>,
    /// Every stop asked for, with its grace period.
    pub stopped: Vec<(ContainerId, Duration)>,
    /// Every kill asked for.
    pub killed: Vec<ContainerId>,
    /// Every remove asked for, including of a missing container.
    pub removed: Vec<ContainerId>,
}

/// An in-memory container engine; see the module documentation.
#[derive(Debug, Clone)]
pub struct FakeEngine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken at every change of any container, and when an outage starts.
    changed: Notify,
    events: broadcast::Sender<Event>,
    /// The wall clock and tokio's clock when the engine was made: reported
    /// times are the first plus tokio time elapsed since the second.
    epoch: (SystemTime, Instant),
}

#[derive(Debug)]
struct State {
    containers: Vec<Container>,
    next_id: u64,
    outage: bool,
    capabilities: Capabilities,
    programs: HashMap<String, Program>,
    default_program: Program,
    missing_images: HashSet<String>,
    calls: FakeCalls,
}

#[derive(Debug)]
struct Container {
    id: ContainerId,
    spec: ContainerSpec,
    status: ContainerStatus,
    created_at: SystemTime,
    program: Program,
    /// Output as line-sized chunks, so a tail counts lines as the engine does.
    output: Vec<LogChunk>,
    /// Bumped at every start: a program's timer ends only the run it was set for.
    run: u64,
    timer: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone)]
enum Event {
    Change {
        change: Change,
        labels: BTreeMap<String, String>,
    },
    /// An outage began: open change streams fail, as the engine's would.
    Broken,
}

impl Container {
    fn matches(&self, id_or_name: &str) -> bool {
        self.id.as_str() == id_or_name || self.spec.name == id_or_name
    }

    fn to_state(&self) -> ContainerState {
        ContainerState {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            labels: self.spec.labels.clone(),
            status: self.status.clone(),
            created_at: Some(self.created_at),
        }
    }

    fn write(&mut self, chunk: &LogChunk) {
        let stdout = matches!(chunk, LogChunk::Stdout(_));
        let bytes = chunk.bytes();
        let mut start = 0;
        while start < bytes.len() {
            let end =
                bytes[start..].iter().position(|b| *b == b'\n').map_or(bytes.len(), |at| start + at + 1);
            let line = bytes.slice(start..end);
            self.output.push(if stdout { LogChunk::Stdout(line) } else { LogChunk::Stderr(line) });
            start = end;
        }
    }
}

impl State {
    fn find(&self, id_or_name: &str) -> Option<&Container> {
        self.containers.iter().find(|container| container.matches(id_or_name))
    }

    fn find_mut(&mut self, id_or_name: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|container| container.matches(id_or_name))
    }

    fn check_outage(&self) -> Result<(), DispatchError> {
        if self.outage { Err(outage()) } else { Ok(()) }
    }
}

fn outage() -> DispatchError {
    DispatchError::EngineUnreachable {
        endpoint: ENDPOINT.to_owned(),
        source: EngineError::other("the fake engine is in an outage", true),
    }
}

fn not_found(container: &str, operation: &'static str) -> DispatchError {
    DispatchError::ContainerNotFound { container: container.to_owned(), operation }
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for container in &mut state.containers {
            if let Some(timer) = container.timer.take() {
                timer.abort();
            }
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already;
        // the state is still worth reading for the rest of it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> SystemTime {
        let (wall, tokio) = self.epoch;
        wall + Instant::now().saturating_duration_since(tokio)
    }

    fn emit(&self, container: &Container, kind: ChangeKind) {
        let change = Change { id: container.id.clone(), kind };
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(Event::Change { change, labels: container.spec.labels.clone() });
    }

    /// Ends the running container `id_or_name` with `code`; only its run
    /// `run` when given (a program's timer). Whether it was running.
    fn end(&self, id_or_name: &str, run: Option<u64>, code: i64, oom_killed: bool) -> bool {
        let now = self.now();
        let mut state = self.state();
        let Some(container) = state.find_mut(id_or_name) else { return false };
        let ContainerStatus::Running { started_at } = container.status else { return false };
        if run.is_some_and(|run| run != container.run) {
            return false;
        }
        container.status =
            ContainerStatus::Exited(ExitInfo { code, oom_killed, started_at, finished_at: Some(now) });
        // Aborting the timer from its own task is harmless: it ends here anyway.
        if let Some(timer) = container.timer.take() {
            timer.abort();
        }
        self.emit(container, ChangeKind::Died);
        drop(state);
        self.changed.notify_waiters();
        true
    }
}

impl FakeEngine {
    /// An empty engine that enforces every protection, has every image, and
    /// runs [`Program::run_until_stopped`] unless told otherwise.
    pub fn new() -> Self {
        let state = State {
            containers: Vec::new(),
            next_id: 1,
            outage: false,
            capabilities: Capabilities::all(),
            programs: HashMap::new(),
            default_program: Program::run_until_stopped(),
            missing_images: HashSet::new(),
            calls: FakeCalls::default(),
        };
        let (events, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed: Notify::new(),
                events,
                epoch: (SystemTime::now(), Instant::now()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Sets which protections the engine claims to enforce.
    pub fn set_capabilities(&self, capabilities: Capabilities) {
        self.state().capabilities = capabilities;
    }

    /// Makes `image` present or missing (every image is present at first).
    pub fn set_image_present(&self, image: &str, present: bool) {
        let mut state = self.state();
        if present {
            state.missing_images.remove(image);
        } else {
            state.missing_images.insert(image.to_owned());
        }
    }

    /// The program containers named `name` run from their next create on.
    pub fn set_program(&self, name: &str, program: Program) {
        self.state().programs.insert(name.to_owned(), program);
    }

    /// The program of containers without one of their own.
    pub fn set_default_program(&self, program: Program) {
        self.state().default_program = program;
    }

    /// Starts or ends an outage: while it lasts every call fails with a
    /// transient error ([`DispatchError::is_transient`]), and open change
    /// streams and waits fail as it begins. Containers keep running.
    pub fn set_outage(&self, outage: bool) {
        self.state().outage = outage;
        if outage {
            let _ = self.shared.events.send(Event::Broken);
            self.shared.changed.notify_waiters();
        }
    }

    /// Ends a running container with `code`. Whether it was running.
    pub fn finish(&self, id_or_name: impl AsRef<str>, code: i64) -> bool {
        self.shared.end(id_or_name.as_ref(), None, code, false)
    }

    /// Writes `stdout` and ends a running container with `code`. Whether it
    /// was running (nothing is written when it was not).
    pub fn exit_with(&self, id_or_name: impl AsRef<str>, code: i64, stdout: impl Into<Bytes>) -> bool {
        let id_or_name = id_or_name.as_ref();
        {
            let mut state = self.state();
            let Some(container) = state.find_mut(id_or_name) else { return false };
            if !matches!(container.status, ContainerStatus::Running { .. }) {
                return false;
            }
            container.write(&LogChunk::Stdout(stdout.into()));
        }
        self.shared.end(id_or_name, None, code, false)
    }

    /// The kernel's OOM killer ends a running container (137, flagged).
    /// Whether it was running.
    pub fn oom_kill(&self, id_or_name: impl AsRef<str>) -> bool {
        self.shared.end(id_or_name.as_ref(), None, SIGKILL_EXIT, true)
    }

    /// Someone else SIGKILLs a running container (137, not an OOM, not
    /// recorded as Berth's kill). Whether it was running.
    pub fn kill_from_outside(&self, id_or_name: impl AsRef<str>) -> bool {
        self.shared.end(id_or_name.as_ref(), None, SIGKILL_EXIT, false)
    }

    /// Someone else removes a container (forcing). Whether it existed.
    pub fn remove_from_outside(&self, id_or_name: impl AsRef<str>) -> bool {
        self.remove_now(id_or_name.as_ref())
    }

    /// Appends output to a container, as if its process wrote it. Whether
    /// the container exists.
    pub fn write_output(&self, id_or_name: impl AsRef<str>, chunk: LogChunk) -> bool {
        let mut state = self.state();
        let Some(container) = state.find_mut(id_or_name.as_ref()) else { return false };
        container.write(&chunk);
        drop(state);
        self.shared.changed.notify_waiters();
        true
    }

    /// What the fake was asked to do so far.
    pub fn calls(&self) -> FakeCalls {
        self.state().calls.clone()
    }

    /// Every container, in creation order (outage or not).
    pub fn containers(&self) -> Vec<ContainerState> {
        self.state().containers.iter().map(Container::to_state).collect()
    }

    /// The spec a container was created from.
    pub fn spec(&self, id_or_name: impl AsRef<str>) -> Option<ContainerSpec> {
        self.state().find(id_or_name.as_ref()).map(|container| container.spec.clone())
    }

    fn remove_now(&self, id_or_name: &str) -> bool {
        // A running container is killed first, as a forced remove does.
        self.shared.end(id_or_name, None, SIGKILL_EXIT, false);
        let mut state = self.state();
        let Some(index) = state.containers.iter().position(|container| container.matches(id_or_name)) else {
            return false;
        };
        let mut container = state.containers.remove(index);
        if let Some(timer) = container.timer.take() {
            timer.abort();
        }
        self.shared.emit(&container, ChangeKind::Removed);
        drop(state);
        self.shared.changed.notify_waiters();
        true
    }
}

impl ContainerEngine for FakeEngine {
    fn capabilities(&self) -> Capabilities {
        self.state().capabilities
    }

    async fn describe(&self) -> Result<EngineInfo, DispatchError> {
        self.state().check_outage()?;
        Ok(EngineInfo {
            kind: "fake".to_owned(),
            endpoint: ENDPOINT.to_owned(),
            version: "0".to_owned(),
            api_version: String::new(),
            storage_driver: None,
        })
    }

    async fn image_status(&self, image: &str) -> Result<ImageStatus, DispatchError> {
        let state = self.state();
        state.check_outage()?;
        Ok(if state.missing_images.contains(image) {
            ImageStatus::Missing
        } else {
            ImageStatus::Present { id: format!("sha256:fake-{image}") }
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Option<ContainerId>, DispatchError> {
        let created_at = self.shared.now();
        let mut state = self.state();
        state.check_outage()?;
        if state.missing_images.contains(&spec.image) {
            return Err(DispatchError::ImageMissing { image: spec.image.clone() });
        }
        if state.find(&spec.name).is_some() {
            return Ok(None);
        }
        // Docker's ids are 64 hex digits; these count up, readable in `Display`'s 12.
        let id = ContainerId::new(format!("{:012x}{:052x}", state.next_id, 0));
        state.next_id += 1;
        let program = state.programs.get(&spec.name).unwrap_or(&state.default_program).clone();
        state.containers.push(Container {
            id: id.clone(),
            spec: spec.clone(),
            status: ContainerStatus::Created,
            created_at,
            program,
            output: Vec::new(),
            run: 0,
            timer: None,
        });
        state.calls.created.push(spec.name.clone());
        Ok(Some(id))
    }

    async fn start(&self, id: &ContainerId) -> Result<(), DispatchError> {
        let now = self.shared.now();
        let mut state = self.state();
        state.check_outage()?;
        state.calls.started.push(id.clone());
        let Some(container) = state.find_mut(id.as_str()) else {
            return Err(not_found(id.as_str(), "start"));
        };
        if matches!(container.status, ContainerStatus::Running { .. } | ContainerStatus::Removing) {
            return Ok(());
        }
        container.run += 1;
        container.status = ContainerStatus::Running { started_at: Some(now) };
        let program = container.program.clone();
        for chunk in [LogChunk::Stdout(program.stdout), LogChunk::Stderr(program.stderr)] {
            container.write(&chunk);
        }
        if let Some(exit) = program.exit {
            let shared: Weak<Shared> = Arc::downgrade(&self.shared);
            let (id, run) = (container.id.clone(), container.run);
            let timer = tokio::spawn(async move {
                tokio::time::sleep(exit.after).await;
                if let Some(shared) = shared.upgrade() {
                    shared.end(id.as_str(), Some(run), exit.code, exit.oom_killed);
                }
            });
            if let Some(previous) = container.timer.replace(timer) {
                previous.abort();
            }
        }
        self.shared.emit(container, ChangeKind::Started);
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerState>, DispatchError> {
        let state = self.state();
        state.check_outage()?;
        Ok(state.find(id_or_name).map(Container::to_state))
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitInfo, DispatchError> {
        loop {
            // Registered before looking, so a change between the look and
            // the await still wakes this wait.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            {
                let state = self.state();
                state.check_outage()?;
                match state.find(id.as_str()).map(|container| &container.status) {
                    None => return Err(not_found(id.as_str(), "wait for")),
                    Some(ContainerStatus::Exited(exit)) => return Ok(exit.clone()),
                    Some(_) => {}
                }
            }
            changed.await;
        }
    }

    async fn list_by_label(&self, label: &str, value: &str) -> Result<Vec<ContainerState>, DispatchError> {
        let state = self.state();
        state.check_outage()?;
        Ok(state
            .containers
            .iter()
            .filter(|container| container.spec.labels.get(label).map(String::as_str) == Some(value))
            .map(Container::to_state)
            .collect())
    }

    fn logs(&self, id: &ContainerId, follow: bool, tail: Option<u64>) -> LogStream {
        let first = {
            let state = self.state();
            if let Err(err) = state.check_outage() {
                return Box::pin(stream::iter([Err(err)]));
            }
            let Some(container) = state.find(id.as_str()) else {
                return Box::pin(stream::iter([Err(not_found(id.as_str(), "read logs of"))]));
            };
            let lines = container.output.len();
            tail.map_or(0, |tail| lines.saturating_sub(usize::try_from(tail).unwrap_or(usize::MAX)))
        };
        let shared = Arc::clone(&self.shared);
        let id = id.clone();
        Box::pin(stream::unfold(Some(first), move |cursor| {
            let shared = Arc::clone(&shared);
            let id = id.clone();
            async move {
                let next = cursor?;
                loop {
                    let mut changed = pin!(shared.changed.notified());
                    changed.as_mut().enable();
                    {
                        let state = shared.state();
                        if let Err(err) = state.check_outage() {
                            return Some((Err(err), None));
                        }
                        // Removed while followed: the stream ends, as the engine's does.
                        let container = state.find(id.as_str())?;
                        if let Some(chunk) = container.output.get(next) {
                            return Some((Ok(chunk.clone()), Some(next + 1)));
                        }
                        let live = matches!(
                            container.status,
                            ContainerStatus::Created | ContainerStatus::Running { .. }
                        );
                        if !follow || !live {
                            return None;
                        }
                    }
                    changed.await;
                }
            }
        }))
    }

    fn changes(&self, label: &str, value: &str) -> ChangeStream {
        let broken = || DispatchError::WatchFailed {
            source: EngineError::other("the fake engine is in an outage", true),
        };
        let receiver = self.shared.events.subscribe();
        if self.state().outage {
            return Box::pin(stream::iter([Err(broken())]));
        }
        let (label, value) = (label.to_owned(), value.to_owned());
        Box::pin(stream::unfold(Some(receiver), move |receiver| {
            let (label, value) = (label.clone(), value.clone());
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(Event::Change { change, labels }) => {
                            if labels.get(&label) == Some(&value) {
                                return Some((Ok(change), Some(receiver)));
                            }
                        }
                        Ok(Event::Broken) => return Some((Err(broken()), None)),
                        // Fallen behind or closed: ended, as the engine
                        // drops a slow reader; the reader resyncs by listing.
                        Err(_) => return None,
                    }
                }
            }
        }))
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), DispatchError> {
        let (run, ignores_sigterm) = {
            let mut state = self.state();
            state.check_outage()?;
            state.calls.stopped.push((id.clone(), grace));
            let Some(container) = state.find(id.as_str()) else { return Err(not_found(id.as_str(), "stop")) };
            if !matches!(container.status, ContainerStatus::Running { .. }) {
                return Ok(());
            }
            (container.run, container.program.ignores_sigterm)
        };
        if ignores_sigterm {
            tokio::time::sleep(grace).await;
            self.shared.end(id.as_str(), Some(run), SIGKILL_EXIT, false);
        } else {
            self.shared.end(id.as_str(), Some(run), SIGTERM_EXIT, false);
        }
        Ok(())
    }

    async fn kill(&self, id: &ContainerId) -> Result<(), DispatchError> {
        {
            let mut state = self.state();
            state.check_outage()?;
            state.calls.killed.push(id.clone());
            if state.find(id.as_str()).is_none() {
                return Err(not_found(id.as_str(), "kill"));
            }
        }
        // Not running is what a kill wants anyway.
        self.shared.end(id.as_str(), None, SIGKILL_EXIT, false);
        Ok(())
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), DispatchError> {
        {
            let mut state = self.state();
            state.check_outage()?;
            state.calls.removed.push(id.clone());
        }
        // Missing already is not an error.
        self.remove_now(id.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
