//! Shared support for Berth's end-to-end tests and benchmarks: the real
//! Docker Engine, the offline test image, unique task ids, and cleanup that
//! runs even when a test fails.
//!
//! Every test here needs a Docker Engine. When none answers, the tests fail at
//! once with one line saying so; they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// `PATH` in the test image.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub mod bench;
pub mod claude;
pub mod fake_kube;
pub mod fake_model;
pub mod git_server;
pub mod private_engine;
pub mod rig;

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
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned()
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
    // Cargo sets these for the test process; passed on, they change build
    // scripts' tracked environment (ring's, for one) and make the inner and
    // the outer build rebuild each other's dependencies every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let cargo_set = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if cargo_set || name == "OUT_DIR" {
            command.env_remove(name.as_ref());
        }
    }
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

/// The offline test image (`FROM scratch` with berth-worker, berth-stub and
/// this host's git), built once per test run.
pub async fn test_image() -> &'static str {
    let tag: &'static str = match std::env::var(core_types::env_names::BERTH_TEST_IMAGE) {
        Ok(tag) if !tag.is_empty() => Box::leak(tag.into_boxed_str()),
        _ => TEST_IMAGE,
    };
    IMAGE.get_or_init(|| build_test_image(tag, |_| {})).await
}

/// Builds `tag`: the test image's contents (berth-worker as entrypoint,
/// berth-stub, git) plus whatever `extra` adds; returns the tag.
pub(crate) async fn build_test_image(
    tag: &'static str,
    extra: impl FnOnce(&mut ImageContext) + Send + 'static,
) -> String {
    let binaries = tokio::task::spawn_blocking(workspace_binaries).await.expect("build task runs");
    // Reading the files (hundreds of MB for an agent CLI) blocks.
    let tar = tokio::task::spawn_blocking(move || {
        let mut context = ImageContext::new();
        context
            .add_executable(&binaries.join("berth-stub"), STUB)
            .expect("stub binary is built")
            .add_executable(&binaries.join("berth-worker"), WORKER)
            .expect("worker binary is built")
            .entrypoint(&[WORKER]);
        // The worker clones and pushes with the real git.
        context.add_git().expect("git is installed on this host").env("PATH", IMAGE_PATH);
        extra(&mut context);
        context.to_tar().expect("context builds")
    })
    .await
    .expect("context task runs");
    let engine = engine().await;
    engine.build_image(tag, tar, |_| {}).await.unwrap_or_else(|err| panic!("image {tag} builds: {err}"));
    tag.to_owned()
}

/// A dispatcher over the real engine with the strict profile and the test image.
pub async fn dispatcher() -> Dispatcher<DockerEngine> {
    let image = test_image().await.to_owned();
    dispatcher_with(DispatcherConfig {
        image,
        network: "none".to_owned(),
        profile: HardenedProfile::strict(),
        entrypoint: Some(vec![STUB.to_owned()]),
        instance: test_instance(),
    })
    .await
}

/// The `berth.instance` of containers this test process makes directly, so
/// daemons started by other tests never adopt them.
pub fn test_instance() -> String {
    format!("e2e-{}", std::process::id())
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
        Self { names: task_ids.iter().map(|id| dispatcher::container_name(id)).collect() }
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
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime builds");
            runtime.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_unix_defaults() else { return };
                for name in names {
                    let options =
                        bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&name, Some(options)).await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A minimal HTTP/1.1 exchange over a fresh connection: enough for tests
/// to talk to the daemon and to fakes without an HTTP client dependency.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    // Chunked bodies: keep it simple and strip the chunk framing of small answers.
    Ok((status, dechunk(&body)))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return body.to_owned() };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { return body.to_owned() };
        if size == 0 {
            return out;
        }
        let Some(chunk) = after.get(..size) else { return body.to_owned() };
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or("");
    }
}

/// HMAC-SHA256 signature header for `body`, as GitHub sends it.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    domain::signature::sign(secret, body)
}

/// Writes a fresh RSA private key (PKCS#1 PEM, as GitHub issues them) into `dir`.
pub fn rsa_key(dir: &Path) -> PathBuf {
    let path = dir.join("app-key.pem");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&path)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl genrsa failed");
    path
}

/// A running `berth serve`, killed when dropped.
pub struct Daemon {
    /// The child process.
    pub child: tokio::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its stderr log, kept for assertions.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts `berth serve` with these `BERTH_*` settings and waits until it listens.
    pub async fn start(env: &[(&str, String)]) -> Daemon {
        Self::start_logging(env, None).await
    }

    /// [`Daemon::start`] with its stderr going straight to the file `log`
    /// (when given) instead of a pipe this process reads; [`Daemon::log_text`]
    /// is then empty.
    pub async fn start_logging(env: &[(&str, String)], log_file: Option<&std::path::Path>) -> Daemon {
        use tokio::io::AsyncBufReadExt;
        let binaries = tokio::task::spawn_blocking(workspace_binaries).await.expect("build task runs");
        let mut command = tokio::process::Command::new(binaries.join("berth"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BERTH_LOG_FORMAT", "json")
            .env("BERTH_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Ok(host) = std::env::var("DOCKER_HOST")
            && !env.iter().any(|(key, _)| *key == "DOCKER_HOST")
        {
            command.env("DOCKER_HOST", host);
        }
        // glibc's malloc settings, for measuring the daemon under other ones.
        if let Ok(tunables) = std::env::var("GLIBC_TUNABLES") {
            command.env("GLIBC_TUNABLES", tunables);
        }
        // The runtime's worker threads, for measuring the daemon with other counts.
        if let Ok(threads) = std::env::var(core_types::env_names::BERTH_BENCH_DAEMON_WORKER_THREADS) {
            command.env("TOKIO_WORKER_THREADS", threads);
        }
        if let Some(path) = log_file {
            let file = std::fs::File::create(path).expect("the log file is created");
            command.stderr(file);
            let child = command.spawn().expect("berth starts");
            let started = std::time::Instant::now();
            let addr = loop {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let listening = text.lines().find_map(|line| {
                    let value = serde_json::from_str::<serde_json::Value>(line).ok()?;
                    (value["fields"]["message"] == "listening")
                        .then(|| value["fields"]["address"].as_str().and_then(|a| a.parse().ok()))
                        .flatten()
                });
                if let Some(addr) = listening {
                    break addr;
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "berth did not start listening; log:\n{text}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            return Daemon { child, addr, log: std::sync::Arc::default() };
        }
        let mut child = command.spawn().expect("berth starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                // Only until the address is known: a benchmark's daemon logs a lot.
                if addr_tx.is_some()
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["fields"]["message"] == "listening"
                    && let Some(addr) = value["fields"]["address"].as_str().and_then(|a| a.parse().ok())
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                sink.lock().expect("log lock").push_str(&(line + "\n"));
            }
        });
        let addr = tokio::time::timeout(std::time::Duration::from_secs(30), addr_rx)
            .await
            .unwrap_or_else(|_| {
                panic!("berth did not start listening; log:\n{}", log.lock().expect("log lock"))
            })
            .unwrap_or_else(|_| {
                panic!("berth exited before listening; log:\n{}", log.lock().expect("log lock"))
            });
        Daemon { child, addr, log }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until its log holds `needle`; panics with the log (saying
    /// `what` did not happen) after `limit`.
    pub async fn wait_for_log(&self, needle: &str, what: &str, limit: Duration) {
        let started = std::time::Instant::now();
        while !self.log_text().contains(needle) {
            assert!(started.elapsed() < limit, "{what} within {limit:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The strict hardened profile as raw engine API settings, for benchmarks that
/// compare Berth with the same container made by bare bollard calls (the
/// same limits as [`hardened_cli_flags`]).
pub fn hardened_host_config() -> bollard::models::HostConfig {
    bollard::models::HostConfig {
        memory: Some(2 << 30),
        memory_swap: Some(2 << 30),
        nano_cpus: Some(2_000_000_000),
        pids_limit: Some(512),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        init: Some(true),
        privileged: Some(false),
        network_mode: Some("none".into()),
        // The read-only root and capped scratch of ADR 13, as the dispatcher
        // sets them for an image whose HOME is /home/berth.
        readonly_rootfs: Some(true),
        tmpfs: Some(std::collections::HashMap::from([
            ("/tmp".to_owned(), "rw,nosuid,nodev,size=1073741824,mode=1777".to_owned()),
            (
                "/home/berth".to_owned(),
                "rw,nosuid,nodev,size=1073741824,uid=65532,gid=65532,mode=0700".to_owned(),
            ),
        ])),
        ..Default::default()
    }
}

/// The `docker` CLI flags of the strict hardened profile, for benchmarks that
/// compare Berth with the same container started by the CLI.
pub fn hardened_cli_flags() -> Vec<String> {
    [
        "--memory=2g",
        "--memory-swap=2g",
        "--cpus=2",
        "--pids-limit=512",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--init",
        "--user=65532:65532",
        "--network=none",
        "--read-only",
        "--tmpfs=/tmp:rw,nosuid,nodev,size=1073741824,mode=1777",
        "--tmpfs=/home/berth:rw,nosuid,nodev,size=1073741824,uid=65532,gid=65532,mode=0700",
        "--label=berth.bench=true",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs the `docker` CLI; its trimmed stdout, or a panic with its stderr.
pub fn docker_cli(args: &[String]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker CLI runs");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An engine timestamp (`2026-11-29T04:50:01.123456789Z`, RFC 3339 in UTC,
/// as in `State.StartedAt` and `docker logs --timestamps`) on this host's
/// clock; `None` when it does not parse or is before 1970 (the engine's
/// `0001-01-01T00:00:00Z` for "never").
pub fn engine_time(text: &str) -> Option<SystemTime> {
    let (date, time) = text.trim().split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let (clock, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut c = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (c.next()??, c.next()??, c.next()??);
    let nanos: u32 = frac.chars().chain(std::iter::repeat('0')).take(9).collect::<String>().parse().ok()?;
    if y < 1970 {
        return None;
    }
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// A container's `State.StartedAt`, once it has started.
pub fn started_at(inspect: &bollard::models::ContainerInspectResponse) -> Option<SystemTime> {
    engine_time(inspect.state.as_ref()?.started_at.as_deref()?)
}

/// A `/berth review` comment by a trusted OWNER on pull request `number` of
/// `octo/repo`, as a GitHub App receives it (the body of a delivery).
pub fn review_comment(number: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": "created",
        "comment": {"id": number, "body": "/berth review", "user": {"login": "alice", "type": "User"}, "author_association": "OWNER"},
        "issue": {"number": number, "pull_request": {"url": "x"}},
        "repository": {"full_name": "octo/repo", "clone_url": "https://git.invalid/octo/repo.git", "default_branch": "main"},
        "sender": {"login": "alice", "type": "User"},
        "installation": {"id": 1}
    }))
    .expect("a JSON value serializes")
}

/// Posts `body` as an `issue_comment` delivery signed with `secret`; the
/// status and the JSON answer (`Null` when the answer is not JSON).
///
/// # Errors
/// Connection failures.
pub async fn deliver_comment(
    addr: std::net::SocketAddr,
    secret: &str,
    delivery: &str,
    body: &[u8],
) -> std::io::Result<(u16, serde_json::Value)> {
    let headers = [
        ("X-GitHub-Event", "issue_comment".to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
        ("X-Hub-Signature-256", github_signature(secret, body)),
        ("Content-Type", "application/json".to_owned()),
    ];
    let (status, text) = http(addr, "POST", "/webhook", &headers, body).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
}
