//! Deployment: `deploy/compose.yml` rendered by the Compose tool and run for
//! real, the entrypoint's privilege drop seen from inside a container, and
//! the health check script.
//!
//! No base image can be pulled here, so the images are assembled offline from
//! this host's binaries (Debian bookworm, like the Dockerfile's runtime stage):
//! dash as `/bin/sh`, bash, setpriv, stat, id, chown, cat, CA certificates,
//! `berth`, and the real `deploy/docker-entrypoint.sh` and `deploy/healthcheck.sh`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ExecConfig, HealthStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use dispatcher::image::ImageContext;
use futures_util::StreamExt;
use tests::{engine, http, rsa_key, workspace_binaries};

/// The image of the privilege-drop test.
const DROP_IMAGE: &str = "berth-test-deploy:e2e";
/// The image `deploy/compose.yml` runs in its test.
const COMPOSE_IMAGE: &str = "berth-test-deploy:compose";

const ENTRYPOINT: &str = "/usr/local/bin/docker-entrypoint.sh";
const HEALTHCHECK: &str = "/usr/local/bin/berth-healthcheck";
const BERTH: &str = "/usr/local/bin/berth";
const BERTH_UID: u32 = 65532;
/// The group of the stand-in socket, like a host's `docker` group.
const SOCKET_GID: u32 = 4242;
/// CHOWN (0), FOWNER (3), SETGID (6) and SETUID (7): what compose.yml adds back.
const SEED_CAPS: u64 = (1 << 0) | (1 << 3) | (1 << 6) | (1 << 7);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_owned()
}

fn deploy_file(name: &str) -> PathBuf {
    repo_root().join("deploy").join(name)
}

fn docker() -> Docker {
    Docker::connect_with_unix_defaults().expect("the docker socket is configured")
}

fn unique(what: &str) -> String {
    format!("berth-test-deploy-{}-{what}", std::process::id())
}

// ---------------------------------------------------------------------------
// Cleanup, also when a test fails.

/// Removes containers, a compose project (with its volumes) and images when
/// dropped.
struct Teardown {
    containers: Vec<String>,
    compose: Option<Compose>,
    images: Vec<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(compose) = self.compose.take() {
            let _ = compose.command(&["down", "--volumes", "--remove-orphans", "--timeout", "1"]).output();
        }
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        // Drop cannot await; a short-lived runtime on its own thread can.
        let handle = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime builds");
            runtime.block_on(async move {
                let docker = docker();
                for name in containers {
                    let options = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&name, Some(options)).await;
                }
                let engine = engine().await;
                for image in images {
                    let _ = engine.remove_image(&image).await;
                }
            });
        });
        let _ = handle.join();
    }
}

// ---------------------------------------------------------------------------
// The offline image.

/// A Debian program of this host, by its usual path; `/bin/sh` is a link to
/// dash, so the image gets dash itself.
fn host_program(path: &str) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|err| panic!("{path} is needed for the deployment image: {err}"))
}

/// Builds `tag`: the tools the entrypoint and the health check use, `berth`,
/// the two deploy scripts, and a root-owned `/var/lib/berth`, with the real
/// Dockerfile's entrypoint and its non-root default user.
async fn build_deploy_image(tag: &str) {
    let binaries = tokio::task::spawn_blocking(workspace_binaries).await.expect("build task runs");
    let empty = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut context = ImageContext::new();
    for (host, in_image) in [
        ("/bin/sh", "/bin/sh"),
        ("/bin/bash", "/bin/bash"),
        ("/usr/bin/setpriv", "/usr/bin/setpriv"),
        ("/usr/bin/stat", "/usr/bin/stat"),
        ("/usr/bin/id", "/usr/bin/id"),
        ("/bin/chown", "/bin/chown"),
        ("/bin/cat", "/bin/cat"),
    ] {
        context.add_executable(&host_program(host), in_image).expect("host program readable");
    }
    // The daemon's GitHub client needs CA certificates (the Dockerfile installs them).
    context.add_file(
        host_program("/etc/ssl/certs/ca-certificates.crt"),
        "/etc/ssl/certs/ca-certificates.crt",
        0o644,
    );
    context
        .add_executable(&binaries.join("berth"), BERTH)
        .expect("berth is built")
        .add_file(deploy_file("docker-entrypoint.sh"), ENTRYPOINT, 0o755)
        .add_file(deploy_file("healthcheck.sh"), HEALTHCHECK, 0o755)
        .add_tree(empty.path(), "/var/lib/berth")
        .expect("empty dir readable")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("BERTH_STATE_DIR", "/var/lib/berth")
        .entrypoint(&[ENTRYPOINT]);
    let tar = context.to_tar().expect("context builds");
    engine().await.build_image(tag, tar, |_| {}).await.expect("deployment test image builds");
}

// ---------------------------------------------------------------------------
// Containers.

struct Ran {
    code: i64,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` through the image's entrypoint as `user`, under CapDrop ALL
/// plus `cap_add` and no-new-privileges, and returns its exit and output.
async fn run_container(name: &str, user: &str, cap_add: &[&str], binds: Vec<String>, cmd: &[&str]) -> Ran {
    let docker = docker();
    let body = ContainerCreateBody {
        image: Some(DROP_IMAGE.to_owned()),
        user: Some(user.to_owned()),
        cmd: Some(cmd.iter().map(|part| (*part).to_owned()).collect()),
        host_config: Some(HostConfig {
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(cap_add.iter().map(|cap| (*cap).to_owned()).collect()),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            privileged: Some(false),
            network_mode: Some("none".to_owned()),
            binds: Some(binds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    docker.create_container(Some(options), body).await.expect("container created");
    docker.start_container(name, None).await.expect("container starts");
    // A non-zero exit comes back as an error of the wait; the code is read below.
    let waited =
        tokio::time::timeout(Duration::from_secs(60), docker.wait_container(name, None).collect::<Vec<_>>());
    waited.await.expect("the container ends within a minute");
    let state = docker.inspect_container(name, None).await.expect("inspect").state.expect("state");
    let (stdout, stderr) = logs(&docker, name).await;
    let _ =
        docker.remove_container(name, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await;
    Ran { code: state.exit_code.expect("exit code"), stdout, stderr }
}

async fn logs(docker: &Docker, name: &str) -> (String, String) {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(false).build();
    let mut stream = docker.logs(name, Some(options));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    while let Some(Ok(chunk)) = stream.next().await {
        match chunk {
            bollard::container::LogOutput::StdErr { message } => {
                stderr.push_str(&String::from_utf8_lossy(&message))
            }
            other => stdout.push_str(&String::from_utf8_lossy(&other.into_bytes())),
        }
    }
    (stdout, stderr)
}

/// The `Name:\tvalue` fields of a `/proc/<pid>/status`.
fn proc_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn capability_set(status: &BTreeMap<String, String>, name: &str) -> u64 {
    let hex = status.get(name).unwrap_or_else(|| panic!("{name} missing from {status:?}"));
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{name} is not hex: {hex}"))
}

/// Asserts the credentials of a process that went through the entrypoint's drop.
fn assert_dropped_to_berth(status: &BTreeMap<String, String>, socket_gid: u32, context: &str) {
    for field in ["Uid", "Gid"] {
        let ids: Vec<&str> = status[field].split_whitespace().collect();
        assert_eq!(ids, ["65532"; 4], "{field} (real, effective, saved, fs) is berth's\n{context}");
    }
    let groups: Vec<&str> = status["Groups"].split_whitespace().collect();
    assert!(
        groups.contains(&socket_gid.to_string().as_str()),
        "joined the socket's group {socket_gid}: {groups:?}\n{context}"
    );
    assert!(
        groups.iter().all(|group| *group == socket_gid.to_string() || *group == BERTH_UID.to_string()),
        "no other supplementary group: {groups:?}\n{context}"
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(capability_set(status, set), 0, "{set} is empty\n{context}");
    }
    // The bounding set keeps what the container was given (dropping it needs
    // CAP_SETPCAP); with no-new-privileges nothing can raise it again.
    assert_eq!(capability_set(status, "CapBnd"), SEED_CAPS, "bounding set\n{context}");
    assert_eq!(status["NoNewPrivs"], "1", "{context}");
}

/// The host's Docker socket (`DOCKER_HOST` when it names a unix socket).
fn host_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(host.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

#[tokio::test]
async fn the_entrypoint_drops_root_to_berth_with_the_socket_group_and_no_capability() {
    let names: Vec<String> = ["drop", "ps", "nonroot", "nocaps"].iter().map(|what| unique(what)).collect();
    let _teardown =
        Teardown { containers: names.clone(), compose: None, images: vec![DROP_IMAGE.to_owned()] };
    build_deploy_image(DROP_IMAGE).await;
    let seed_caps = ["CHOWN", "FOWNER", "SETUID", "SETGID"];

    // A stand-in socket owned by root:4242, mode 0660, like a host's.
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket binds");
    std::os::unix::fs::chown(&socket, Some(0), Some(SOCKET_GID))
        .expect("chown of the stand-in socket (the e2e tests run as root, as CI does)");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let bind = format!("{}:/var/run/docker.sock", socket.display());

    let ran = run_container(
        &names[0],
        "0:0",
        &seed_caps,
        vec![bind.clone()],
        &["/bin/sh", "-c", "cat /proc/self/status && stat -c state=%u:%g /var/lib/berth && id"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let context = ran.to_string();
    assert_dropped_to_berth(&proc_status(&ran.stdout), SOCKET_GID, &context);
    assert!(ran.stdout.contains("state=65532:65532"), "the state directory is handed to berth\n{context}");
    assert!(ran.stdout.contains("uid=65532(berth) gid=65532(berth) groups="), "{context}");

    // With the host's real socket, berth reaches the engine as berth.
    let real = host_socket();
    let real_meta = std::fs::metadata(&real).expect("the host's docker socket");
    let real_bind = format!("{}:/var/run/docker.sock", real.display());
    let ran = run_container(
        &names[1],
        "0:0",
        &seed_caps,
        vec![real_bind.clone()],
        &[BERTH, "ps", "--all", "--json"],
    )
    .await;
    assert_eq!(ran.code, 0, "berth ps as berth through the socket's group\n{ran}");
    let rows: serde_json::Value =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {ran}"));
    assert!(rows.is_array(), "{ran}");

    // The control: the same without the root start (the image's own user,
    // no group added) cannot use a socket closed to others.
    if real_meta.mode() & 0o006 == 0 && real_meta.uid() != BERTH_UID && real_meta.gid() != BERTH_UID {
        let ran =
            run_container(&names[2], "65532:65532", &[], vec![real_bind], &[BERTH, "ps", "--json"]).await;
        assert_ne!(ran.code, 0, "without the socket's group the socket is closed to berth\n{ran}");
    }

    // Fails closed: a root start that cannot drop never runs the command.
    let ran =
        run_container(&names[3], "0:0", &["CHOWN"], vec![bind], &["/bin/sh", "-c", "echo ran-as-$(id -u)"])
            .await;
    assert_ne!(ran.code, 0, "{ran}");
    assert!(!ran.stdout.contains("ran-as"), "the command must not run as root\n{ran}");
}

// ---------------------------------------------------------------------------
// The Compose tool and its rendered configuration.

/// `docker-compose` (Debian's, which .ci/run installs) or the `docker compose`
/// plugin, whichever answers.
fn compose_tool() -> Vec<String> {
    let answers = |program: &str, args: &[&str]| {
        Command::new(program).args(args).output().is_ok_and(|output| output.status.success())
    };
    if answers("docker-compose", &["version"]) {
        vec!["docker-compose".to_owned()]
    } else if answers("docker", &["compose", "version"]) {
        vec!["docker".to_owned(), "compose".to_owned()]
    } else {
        panic!(
            "neither docker-compose nor `docker compose` answers; .ci/run installs Debian's docker-compose"
        )
    }
}

/// One compose project over `deploy/compose.yml` (and override files), with
/// an environment of its own: nothing of the caller's `BERTH_*` leaks in, and
/// an empty env file stands in for any `.env` beside the compose file.
#[derive(Clone)]
struct Compose {
    tool: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env_file: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    fn new(dir: &Path, project: &str, env: &[(&str, String)]) -> Self {
        let env_file = dir.join("empty.env");
        std::fs::write(&env_file, "").expect("env file");
        Self {
            tool: compose_tool(),
            project: project.to_owned(),
            files: vec![deploy_file("compose.yml")],
            env_file,
            env: env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.tool[0]);
        command.args(&self.tool[1..]).env_clear();
        for inherited in ["PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG"] {
            if let Ok(value) = std::env::var(inherited) {
                command.env(inherited, value);
            }
        }
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        command.arg("--project-name").arg(&self.project).arg("--env-file").arg(&self.env_file);
        for file in &self.files {
            command.arg("--file").arg(file);
        }
        command.args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("the compose tool runs");
        assert!(
            output.status.success(),
            "{:?} {args:?} failed:\n{}{}",
            self.tool,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn config(&self) -> String {
        String::from_utf8(self.run(&["config"]).stdout).expect("utf-8 config")
    }
}

// A reader of the block-style YAML that `config` prints (docker-compose's
// PyYAML and the plugin's Go YAML differ in list indentation and quoting):
// enough to look up mapping keys, scalar values and lists of scalars.

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_item(line: &str) -> bool {
    line.trim_start().starts_with("- ") || line.trim() == "-"
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('\'').and_then(|rest| rest.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        text.to_owned()
    }
}

/// The value of `path`: its inline scalar, and the lines of its block.
fn lookup<'a>(yaml: &'a str, path: &[&str]) -> (Option<String>, Vec<&'a str>) {
    let mut lines: Vec<&str> =
        yaml.lines().filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')).collect();
    let mut inline = None;
    for key in path {
        let level = lines.iter().map(|line| indentation(line)).min().unwrap_or(0);
        let at = lines
            .iter()
            .position(|line| {
                indentation(line) == level
                    && !is_item(line)
                    && line.trim_start().split_once(':').is_some_and(|(name, _)| unquote(name) == *key)
            })
            .unwrap_or_else(|| panic!("{path:?}: no {key:?} in\n{}", lines.join("\n")));
        let (_, value) = lines[at].trim_start().split_once(':').expect("found by its colon");
        inline = Some(unquote(value)).filter(|value| !value.is_empty());
        let rest = &lines[at + 1..];
        let end = rest
            .iter()
            .position(|line| indentation(line) < level || (indentation(line) == level && !is_item(line)))
            .unwrap_or(rest.len());
        lines = rest[..end].to_vec();
    }
    (inline, lines)
}

fn value(yaml: &str, path: &[&str]) -> String {
    lookup(yaml, path).0.unwrap_or_else(|| panic!("{path:?} has no scalar value"))
}

fn items(yaml: &str, path: &[&str]) -> Vec<String> {
    let (_, lines) = lookup(yaml, path);
    let level = lines.iter().map(|line| indentation(line)).min().unwrap_or(0);
    lines
        .iter()
        .filter(|line| indentation(line) == level && is_item(line))
        .map(|line| unquote(line.trim_start().trim_start_matches('-')))
        .collect()
}

fn text(yaml: &str, path: &[&str]) -> String {
    lookup(yaml, path).1.join("\n")
}

fn secret_files(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("webhook-secret"), "e2e-deploy-webhook-secret\n").expect("secret");
    let key = rsa_key(dir);
    std::fs::copy(key, secrets.join("github-app-key.pem")).expect("key");
    secrets
}

#[tokio::test]
async fn the_compose_file_renders_hardened_on_one_address_with_file_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = secret_files(dir.path());
    fn service(key: &str) -> [&str; 3] {
        ["services", "berth", key]
    }
    fn env(key: &str) -> [&str; 4] {
        ["services", "berth", "environment", key]
    }

    let defaults =
        Compose::new(dir.path(), &unique("config"), &[("BERTH_SECRETS_DIR", secrets.display().to_string())]);
    let rendered = defaults.config();

    assert_eq!(items(&rendered, &service("security_opt")), ["no-new-privileges:true"], "{rendered}");
    assert_eq!(items(&rendered, &service("cap_drop")), ["ALL"], "{rendered}");
    let mut caps = items(&rendered, &service("cap_add"));
    caps.sort();
    assert_eq!(caps, ["CHOWN", "FOWNER", "SETGID", "SETUID"], "{rendered}");
    assert_eq!(value(&rendered, &service("user")), "0:0", "root only until the entrypoint drops");
    assert_eq!(value(&rendered, &service("privileged")), "false");
    assert_eq!(value(&rendered, &service("read_only")), "true");
    // Not tini: as root without CAP_KILL it could not signal berth.
    assert_eq!(value(&rendered, &service("init")), "false");
    assert_eq!(value(&rendered, &service("restart")), "unless-stopped");
    assert_eq!(value(&rendered, &service("image")), "berth:latest");

    // One host address, loopback unless told otherwise.
    let ports = text(&rendered, &service("ports"));
    assert!(ports.contains("127.0.0.1") && ports.contains("8080"), "{ports}");
    assert!(!ports.contains("0.0.0.0"), "{ports}");

    // Inside its own network namespace the daemon listens on all interfaces.
    assert_eq!(value(&rendered, &env("BERTH_BIND")), "0.0.0.0:8080");
    assert_eq!(value(&rendered, &env("BERTH_ALLOW_PUBLIC_BIND")), "true");
    assert_eq!(value(&rendered, &env("BERTH_STATE_DIR")), "/var/lib/berth");
    assert_eq!(value(&rendered, &env("BERTH_WORKER_IMAGE")), "berth:latest", "workers run the same image");
    assert_eq!(value(&rendered, &env("BERTH_WORKER_ENTRYPOINT")), "/usr/local/bin/berth-worker");

    // Secrets are files under /run/secrets, never values in the environment.
    assert_eq!(value(&rendered, &env("BERTH_WEBHOOK_SECRET_FILE")), "/run/secrets/webhook-secret");
    assert_eq!(value(&rendered, &env("BERTH_GITHUB_PRIVATE_KEY_FILE")), "/run/secrets/github-app-key.pem");
    let environment = text(&rendered, &service("environment"));
    for leak in ["BERTH_WEBHOOK_SECRET:", "BERTH_WEBHOOK_SECRET=", "e2e-deploy-webhook-secret", "PRIVATE KEY"]
    {
        assert!(!environment.contains(leak), "{leak} in the environment:\n{environment}");
    }
    let service_secrets = text(&rendered, &service("secrets"));
    assert!(service_secrets.contains("webhook-secret") && service_secrets.contains("github-app-key.pem"));
    assert_eq!(
        value(&rendered, &["secrets", "webhook-secret", "file"]),
        secrets.join("webhook-secret").display().to_string()
    );
    assert_eq!(
        value(&rendered, &["secrets", "github-app-key.pem", "file"]),
        secrets.join("github-app-key.pem").display().to_string()
    );

    // The socket, and the journal on a named volume.
    let volumes = text(&rendered, &service("volumes"));
    assert_eq!(
        volumes.matches("/var/run/docker.sock").count(),
        2,
        "host socket at the same path:\n{volumes}"
    );
    assert!(volumes.contains("berth-state") && volumes.contains("/var/lib/berth"), "{volumes}");
    assert_eq!(value(&rendered, &["volumes", "berth-state", "name"]), "berth-state");

    // The health check asks the daemon itself, as berth.
    assert_eq!(
        items(&rendered, &["services", "berth", "healthcheck", "test"]),
        ["CMD", ENTRYPOINT, HEALTHCHECK]
    );

    // The address, port and image are the operator's to choose.
    let custom = Compose::new(
        dir.path(),
        &unique("config-custom"),
        &[
            ("BERTH_SECRETS_DIR", secrets.display().to_string()),
            ("BERTH_PUBLISH_ADDRESS", "100.64.0.7".to_owned()),
            ("BERTH_PUBLISH_PORT", "18080".to_owned()),
            ("BERTH_IMAGE", "registry.invalid/berth:v9".to_owned()),
            ("BERTH_STATE_VOLUME", "berth-state-two".to_owned()),
        ],
    );
    let rendered = custom.config();
    let ports = text(&rendered, &service("ports"));
    assert!(ports.contains("100.64.0.7") && ports.contains("18080"), "{ports}");
    assert!(!ports.contains("127.0.0.1") && !ports.contains("0.0.0.0"), "{ports}");
    assert_eq!(value(&rendered, &service("image")), "registry.invalid/berth:v9");
    assert_eq!(value(&rendered, &env("BERTH_WORKER_IMAGE")), "registry.invalid/berth:v9");
    assert_eq!(value(&rendered, &["volumes", "berth-state", "name"]), "berth-state-two");
}

// ---------------------------------------------------------------------------
// The compose file, run.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> String {
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd.iter().map(|part| (*part).to_owned()).collect()),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.expect("exec created");
    let mut text = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.expect("exec starts")
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    }
    text
}

#[tokio::test]
async fn the_compose_file_runs_the_daemon_hardened_as_berth_and_healthy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = secret_files(dir.path());
    // Compose mounts secrets with their host owner and mode: berth's, 0400.
    for file in ["webhook-secret", "github-app-key.pem"] {
        let path = secrets.join(file);
        std::os::unix::fs::chown(&path, Some(BERTH_UID), Some(BERTH_UID)).expect("chown (tests run as root)");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    }
    // Test-only settings: a private instance (so this daemon never adopts
    // other tests' workers), an unreachable GitHub, a fast health check.
    let project = unique("compose");
    let override_file = dir.path().join("override.yml");
    std::fs::write(
        &override_file,
        format!(
            "services:\n  berth:\n    environment:\n      BERTH_INSTANCE: {project}\n      BERTH_GITHUB_API_URL: http://127.0.0.1:9\n    healthcheck:\n      interval: 1s\n      start_period: 60s\n"
        ),
    )
    .expect("override file");
    let port = free_port();
    let mut compose = Compose::new(
        dir.path(),
        &project,
        &[
            ("BERTH_IMAGE", COMPOSE_IMAGE.to_owned()),
            ("BERTH_PUBLISH_ADDRESS", "127.0.0.1".to_owned()),
            ("BERTH_PUBLISH_PORT", port.to_string()),
            ("BERTH_SECRETS_DIR", secrets.display().to_string()),
            ("BERTH_STATE_VOLUME", format!("{project}-state")),
            ("BERTH_GITHUB_APP_ID", "1".to_owned()),
        ],
    );
    compose.files.push(override_file);
    let _teardown = Teardown {
        containers: Vec::new(),
        compose: Some(compose.clone()),
        images: vec![COMPOSE_IMAGE.to_owned()],
    };
    build_deploy_image(COMPOSE_IMAGE).await;
    compose.run(&["up", "--detach", "--no-build"]);

    let docker = docker();
    let filters =
        std::collections::HashMap::from([("label", vec![format!("com.docker.compose.project={project}")])]);
    let listed = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "one container: {listed:?}");
    let container = listed[0].id.clone().expect("id");

    // Healthy: the health check (through the entrypoint, as berth) got 200
    // from /readyz, so the daemon reached Docker through the socket's group.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = docker.inspect_container(&container, None).await.expect("inspect").state.expect("state");
        let health = state.health.clone().and_then(|health| health.status);
        if health == Some(HealthStatusEnum::HEALTHY) {
            break;
        }
        if Instant::now() > deadline
            || state.running != Some(true)
            || health == Some(HealthStatusEnum::UNHEALTHY)
        {
            let (stdout, stderr) = logs(&docker, &container).await;
            panic!(
                "the daemon's container is not healthy: {state:?}\n--- stdout\n{stdout}--- stderr\n{stderr}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Reachable on the one published address.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (status, _) = http(addr, "GET", "/readyz", &[], b"").await.expect("published port answers");
    assert_eq!(status, 200);

    // The container as Docker sees it.
    let inspected = docker.inspect_container(&container, None).await.expect("inspect");
    let host = inspected.host_config.expect("host config");
    assert_eq!(host.cap_drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut caps: Vec<String> = host
        .cap_add
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|cap| cap.trim_start_matches("CAP_").to_owned())
        .collect();
    caps.sort();
    assert_eq!(caps, ["CHOWN", "FOWNER", "SETGID", "SETUID"]);
    assert!(host.security_opt.unwrap_or_default().iter().any(|opt| opt.starts_with("no-new-privileges")));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    let bindings = host.port_bindings.unwrap_or_default();
    let published: Vec<_> = bindings.values().flatten().flatten().collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(inspected.config.and_then(|config| config.user).as_deref(), Some("0:0"));

    // The daemon itself, seen from inside: berth, the socket's group, no capability.
    let socket_gid = std::fs::metadata(host_socket()).expect("host socket").gid();
    let status = exec(
        &docker,
        &container,
        &["/bin/sh", "-c", "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = berth ] && cat $p/status; done; true"],
    )
    .await;
    assert!(status.contains("Name:\tberth"), "the daemon's process: {status}");
    assert_dropped_to_berth(&proc_status(&status), socket_gid, &status);

    // The journal is on the volume, owned by berth.
    let journal =
        exec(&docker, &container, &["/bin/sh", "-c", "stat -c '%u:%g %n' /var/lib/berth /var/lib/berth/*"])
            .await;
    let lines: Vec<&str> = journal.lines().collect();
    assert!(lines.len() >= 2, "the journal is written to the state volume: {journal}");
    assert!(lines.iter().all(|line| line.starts_with("65532:65532 ")), "{journal}");

    // SIGTERM stops the daemon at once (workers are left running by design).
    let started = Instant::now();
    docker
        .stop_container(&container, Some(StopContainerOptionsBuilder::new().t(20).build()))
        .await
        .expect("stop");
    let stopped_in = started.elapsed();
    let state = docker.inspect_container(&container, None).await.expect("inspect").state.expect("state");
    assert!(stopped_in < Duration::from_secs(10), "SIGTERM, not the grace period's SIGKILL: {stopped_in:?}");
    if state.exit_code != Some(0) {
        let (stdout, stderr) = logs(&docker, &container).await;
        panic!("not a clean stop: {state:?}\n--- stdout\n{stdout}--- stderr\n{stderr}");
    }
}

// ---------------------------------------------------------------------------
// The health check script.

/// A one-route HTTP server answering every request with `status`; it sends
/// each request line it gets to the returned channel.
async fn answering(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0_u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
                let reply =
                    format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, rx)
}

async fn healthcheck(bind: &str) -> std::process::ExitStatus {
    let run = tokio::process::Command::new("bash")
        .arg(deploy_file("healthcheck.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BERTH_BIND", bind)
        .stderr(std::process::Stdio::null())
        .status();
    tokio::time::timeout(Duration::from_secs(20), run).await.expect("the check ends").expect("bash runs")
}

#[tokio::test]
async fn the_health_check_passes_only_when_readyz_answers_200() {
    let (ready, mut requests) = answering(200).await;
    // The container's BERTH_BIND is 0.0.0.0:<port>: the check asks loopback.
    assert!(healthcheck(&format!("0.0.0.0:{ready}")).await.success());
    assert_eq!(requests.recv().await.as_deref(), Some("GET /readyz HTTP/1.0"));
    assert!(healthcheck(&format!("127.0.0.1:{ready}")).await.success());

    let (starting, _requests) = answering(503).await;
    assert!(
        !healthcheck(&format!("0.0.0.0:{starting}")).await.success(),
        "503 before reconciliation is unhealthy"
    );

    let closed = free_port();
    assert!(!healthcheck(&format!("0.0.0.0:{closed}")).await.success(), "nothing listening is unhealthy");
}
