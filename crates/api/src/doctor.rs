//! `berth doctor`: checks what `berth serve` needs, one line per check, each
//! failure with how to fix it. Secrets are checked, never printed.

use std::io::Write;

use std::collections::BTreeMap;
use std::time::Duration;

use core_types::Secret;
use core_types::env_names::{
    BERTH_AGENT_COMMAND, BERTH_ALLOW_PUBLIC_BIND, BERTH_BIND, BERTH_GITHUB_API_URL, BERTH_GITHUB_APP_ID,
    BERTH_GITHUB_PRIVATE_KEY_FILE, BERTH_PUBLIC_URL, BERTH_STATE_DIR, BERTH_WEBHOOK_SECRET,
    BERTH_WEBHOOK_SECRET_FILE, BERTH_WORKER_WRITABLE_ROOT,
};
use dispatcher::{ContainerEngine, ContainerSpec, Dispatcher, EngineInfo, ImageStatus, Protection};
use futures_util::StreamExt;
use github::{
    AccountKind, AppClient, AppInfo, Delivery, GitHubError, HookConfig, Installation, RepositorySelection,
};

use crate::config::{ServeArgs, ServeConfig};

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `None` when fine; otherwise what is wrong and how to fix it.
    pub problem: Option<String>,
    /// What was found, when fine.
    pub detail: String,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, problem: None, detail: detail.into() }
}

fn bad(name: &'static str, problem: impl Into<String>) -> Check {
    Check { name, problem: Some(problem.into()), detail: String::new() }
}

/// What the cluster must grant and enforce: the Role's verbs in the
/// namespace (a SelfSubjectAccessReview each) and a Pod Security level.
async fn kubernetes_checks(kube: &kubernetes::KubernetesEngine) -> Vec<Check> {
    let access = match kube.missing_permissions().await {
        Ok(missing) if missing.is_empty() => {
            ok("kubernetes access", format!("may do all the backend does in namespace {}", kube.namespace()))
        }
        Ok(missing) => bad(
            "kubernetes access",
            format!(
                "the daemon's account may not {} in namespace {}; apply deploy/kubernetes/rbac.yaml (or grant the same Role)",
                missing.join(", "),
                kube.namespace()
            ),
        ),
        Err(err) => bad("kubernetes access", format!("{err}; check the kubeconfig or the service account")),
    };
    let security = match kube.pod_security_level().await {
        Ok(Some(level)) if level == "restricted" => {
            ok("pod security", format!("namespace {} enforces restricted", kube.namespace()))
        }
        Ok(level) => bad(
            "pod security",
            format!(
                "namespace {} enforces {}; label it {}=restricted (deploy/kubernetes/namespace.yaml) so no pod there can be privileged",
                kube.namespace(),
                level.as_deref().unwrap_or("no Pod Security level"),
                kubernetes::POD_SECURITY_LABEL
            ),
        ),
        Err(err) => bad(
            "pod security",
            format!(
                "{err}; reading a namespace needs `get` on namespaces, which the daemon's Role does not grant: run doctor with a kubeconfig that may"
            ),
        ),
    };
    vec![access, security]
}

/// Runs every check.
pub async fn checks(args: &ServeArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let validated = args.validate();
    checks.push(match &validated {
        Ok(_) => ok("settings", "every setting is valid"),
        Err(err) => bad("settings", format!("{err}; fix that setting (see berth serve --help)")),
    });
    // An invalid engine setting is reported by "settings"; the rest is checked on Docker.
    let choice = args.engine.validate().unwrap_or(crate::engine::EngineChoice {
        kind: crate::engine::EngineKind::Docker,
        namespace: String::new(),
    });
    let options = match &validated {
        Ok(config) => crate::daemon::kubernetes_options(config),
        Err(_) => kubernetes::KubernetesOptions::new(args.worker_network.clone()),
    };
    match choice.connect(options).await {
        Ok(engine) => {
            let info = engine.describe().await;
            checks.push(match &info {
                Ok(info) => engine_check(info),
                Err(err) => bad("docker", format!("{err}")),
            });
            checks.push(match engine.image_status(&args.worker_image).await {
                Ok(ImageStatus::Present { .. }) => ok("worker image", args.worker_image.clone()),
                Ok(ImageStatus::Missing) if args.worker_image == crate::setup::CLAUDE_IMAGE => bad(
                    "worker image",
                    format!(
                        "{} is not on the engine; build it in a clone of Berth with `docker build -t berth:latest . && \
                         docker build -t {} deploy/agents/claude-code` (berth never pulls)",
                        args.worker_image, args.worker_image
                    ),
                ),
                Ok(ImageStatus::Missing) => bad(
                    "worker image",
                    format!(
                        "{} is not on the engine; build it with `docker build -t {} .` (berth never pulls)",
                        args.worker_image, args.worker_image
                    ),
                ),
                Err(err) => bad("worker image", err.to_string()),
            });
            if let crate::engine::Engine::Kubernetes(kube) = &engine {
                checks.extend(kubernetes_checks(kube).await);
            }
            match &validated {
                Ok(config) => {
                    checks.push(engine_profile(&engine, config));
                    checks.push(agent_program(&engine, config).await);
                    let driver = info.ok().and_then(|info| info.storage_driver);
                    checks.push(worker_disk(driver.as_deref(), config));
                    checks.push(metadata_egress(&engine, config, &args.doctor_egress_probe).await);
                }
                Err(_) => {
                    checks.push(bad("engine profile", "cannot check while a setting is invalid"));
                    checks.push(bad("agent program", "cannot check while a setting is invalid"));
                }
            }
        }
        Err(err) => {
            let hint = if format!("{err:?}").contains("ermission") {
                "add this user to the socket's group (usually `docker`) or run where the socket is readable"
            } else {
                "start the Docker Engine, or point DOCKER_HOST at its unix socket"
            };
            checks.push(bad("docker", format!("{err}; {hint}")));
            checks.push(bad("worker image", "cannot check without Docker"));
            checks.push(bad("engine profile", "cannot check without Docker"));
            checks.push(bad("agent program", "cannot check without Docker"));
        }
    }
    if let Some(path) = &args.worker_secrets_file {
        checks.push(secrets_file(path));
    }
    checks.push(match &args.github_private_key_file {
        None => bad(
            "app key",
            format!(
                "{BERTH_GITHUB_PRIVATE_KEY_FILE} is not set; download the key from the App's settings page"
            ),
        ),
        Some(path) => match std::fs::read(path) {
            Err(err) => bad(
                "app key",
                format!("cannot read {}: {err}; check the path and its permissions", path.display()),
            ),
            Ok(pem) => match github::check_private_key(&pem) {
                Ok(()) => ok("app key", format!("{} is a usable RSA key", path.display())),
                // "<path> is not a usable RSA private key (<why>)".
                Err(err) => {
                    bad("app key", format!("{} is {err}; use the .pem GitHub generated", path.display()))
                }
            },
        },
    });
    let secret_set = args.webhook_secret.as_deref().is_some_and(|secret| !secret.is_empty())
        || args
            .webhook_secret_file
            .as_ref()
            .is_some_and(|path| std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0));
    checks.push(if secret_set {
        ok("webhook secret", "set")
    } else {
        bad("webhook secret", format!("{BERTH_WEBHOOK_SECRET} (or {BERTH_WEBHOOK_SECRET_FILE}) is not set; use the secret from the App's webhook settings"))
    });
    checks.push(match args.bind.parse::<std::net::SocketAddr>() {
        Err(_) => bad("bind address", format!("{:?} is not an address like 127.0.0.1:8080", args.bind)),
        Ok(addr) if addr.ip().is_unspecified() && !args.allow_public_bind => bad(
            "bind address",
            format!(
                "{addr} listens everywhere; bind one private address or set {BERTH_ALLOW_PUBLIC_BIND}=true"
            ),
        ),
        Ok(addr) => match std::net::TcpListener::bind(addr) {
            Ok(_) => ok("bind address", format!("{addr} is free")),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                ok("bind address", format!("{addr} is in use (fine if berth serve is already running there)"))
            }
            Err(err) => bad("bind address", format!("cannot listen on {addr}: {err}")),
        },
    });
    let probe = args.state_dir.join(".berth-doctor");
    checks.push(
        match std::fs::create_dir_all(&args.state_dir).and_then(|()| std::fs::write(&probe, b"ok")) {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                ok("state dir", format!("{} is writable", args.state_dir.display()))
            }
            Err(err) => bad(
                "state dir",
                format!(
                    "{} is not writable ({err}); create it for this user or set {BERTH_STATE_DIR}",
                    args.state_dir.display()
                ),
            ),
        },
    );
    checks.extend(first_run(args).await);
    checks
}

/// The engine answers, and speaks Docker's API 1.41 or later.
fn engine_check(info: &EngineInfo) -> Check {
    let api = &info.api_version;
    let api_ok =
        api.split('.').nth(1).and_then(|minor| minor.parse::<u32>().ok()).is_some_and(|minor| minor >= 41);
    if api_ok {
        ok("docker", format!("engine {}, API {api}, at {}", info.version, info.endpoint))
    } else {
        bad("docker", format!("engine API {api} is older than 1.41; upgrade Docker"))
    }
}

/// What the engine enforces, and whether that covers the workers' profile:
/// `berth serve` refuses, as here, to run workers with less than it asks.
fn engine_profile<E: ContainerEngine + Clone>(engine: &E, config: &ServeConfig) -> Check {
    let capabilities = engine.capabilities();
    let enforced: Vec<String> = Protection::ALL
        .into_iter()
        .filter(|protection| capabilities.enforces(*protection))
        .map(|protection| protection.to_string())
        .collect();
    match Dispatcher::checked(engine.clone(), crate::daemon::dispatcher_config(config)) {
        Ok(_) => ok(
            "engine profile",
            format!("the engine enforces {}: all the worker profile asks for", enforced.join(", ")),
        ),
        Err(err) => {
            bad("engine profile", format!("{err}; until then berth serve queues tasks and runs none"))
        }
    }
}

/// The secrets file must be readable by its owner (and group) only.
fn secrets_file(path: &std::path::Path) -> Check {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(err) => bad("agent secrets", format!("cannot read {}: {err}", path.display())),
        Ok(meta) if meta.permissions().mode() & 0o004 != 0 => bad(
            "agent secrets",
            format!(
                "{} is readable by every user on this host (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ),
        Ok(meta) => ok(
            "agent secrets",
            format!(
                "{} is readable by its owner only (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ),
    }
}

/// Runs the worker image once, in a throwaway container with the workers'
/// hardened profile, its entrypoint given `args`: its exit code and output.
async fn run_probe<E: ContainerEngine>(
    engine: &E,
    config: &ServeConfig,
    args: &[&str],
    network: &str,
) -> Result<(i64, String), String> {
    let name = format!(
        "berth-doctor-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
    );
    let spec = ContainerSpec {
        name,
        image: config.worker_image.clone(),
        // Not `berth.managed`: no daemon ever mistakes it for a task.
        labels: BTreeMap::from([("berth.doctor".to_owned(), "true".to_owned())]),
        env: vec![format!("{BERTH_AGENT_COMMAND}={}", config.agent_command)],
        entrypoint: Some(vec![config.worker_entrypoint.clone()]),
        cmd: Some(args.iter().map(|arg| (*arg).to_owned()).collect()),
        network: network.to_owned(),
        profile: crate::daemon::worker_profile(config),
        mounts: Vec::new(),
    };
    let id = match engine.create(&spec).await {
        Ok(Some(id)) => id,
        Ok(None) => return Err(format!("a container named {} already exists", spec.name)),
        Err(err) => return Err(format!("cannot run the worker image: {err}")),
    };
    let outcome = async {
        engine.start(&id).await.map_err(|err| format!("cannot run the worker image: {err}"))?;
        let code = tokio::time::timeout(Duration::from_secs(60), engine.wait(&id))
            .await
            .map_err(|_| "the check did not end within 60 s".to_owned())?
            .map_err(|err| err.to_string())?
            .code;
        let mut text = String::new();
        let mut logs = engine.logs(&id, false, Some(20));
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(chunk.bytes()));
        }
        Ok((code, text.trim().to_owned()))
    }
    .await;
    let _ = engine.remove(&id).await;
    outcome
}

/// Asks `berth-worker check-agent`, with no network, whether the agent
/// command's program is in the worker image.
async fn agent_program<E: ContainerEngine>(engine: &E, config: &ServeConfig) -> Check {
    match run_probe(engine, config, &["check-agent"], "none").await {
        Err(problem) => bad("agent program", problem),
        Ok((0, text)) => ok("agent program", text.trim_start_matches("ok: ").to_owned()),
        Ok((code, text)) if text.starts_with("missing: ") => {
            bad("agent program", format!("{} (exit {code})", text.trim_start_matches("missing: ")))
        }
        Ok((code, text)) => bad(
            "agent program",
            format!(
                "the worker entrypoint {} could not check it (exit {code}: {text}); is {} built from Berth's image?",
                config.worker_entrypoint, config.worker_image
            ),
        ),
    }
}

/// Whether a worker on the workers' network reaches the cloud metadata
/// address (or the one the operator names): it should not.
async fn metadata_egress<E: ContainerEngine>(engine: &E, config: &ServeConfig, target: &str) -> Check {
    match run_probe(engine, config, &["probe-egress", target], &config.worker_network).await {
        Err(problem) => bad("worker egress", problem),
        Ok((_, text)) if text == "reachable" => bad(
            "worker egress",
            format!(
                "a worker on network {} reaches {target}; block it (README: Security, egress) with a DOCKER-USER rule",
                config.worker_network
            ),
        ),
        Ok((_, text)) if text.starts_with("unreachable") => ok(
            "worker egress",
            format!("{target} is not reachable from network {} ({text})", config.worker_network),
        ),
        Ok((code, text)) => bad("worker egress", format!("the check gave no answer (exit {code}: {text})")),
    }
}

/// Where a worker's writes go, and whether they are bounded (`driver`: the
/// engine's storage driver, when it has one and said).
fn worker_disk(driver: Option<&str>, config: &ServeConfig) -> Check {
    let logs = format!(
        "its logs at most {} files of {} MiB",
        config.worker_log_max_files,
        config.worker_log_max_bytes >> 20
    );
    if !config.worker_writable_root {
        return ok(
            "worker disk",
            format!(
                "read-only root; a worker writes only to tmpfs at /tmp and HOME ({} MiB each, in its memory) and {logs}",
                config.worker_scratch_bytes >> 20
            ),
        );
    }
    let driver = driver.unwrap_or("unknown");
    bad(
        "worker disk",
        format!(
            "{BERTH_WORKER_WRITABLE_ROOT} is on and the storage driver {driver} cannot cap a container's disk here \
             (only overlay2 on xfs with pquota, btrfs or zfs can): what a worker writes lands on the host's \
             Docker storage unbounded; turn it off"
        ),
    )
}

/// `berth doctor`: prints every check; fails when any failed.
///
/// # Errors
/// When a check failed.
pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let checks = checks(args).await;
    let mut out = std::io::stdout().lock();
    for check in &checks {
        match &check.problem {
            None => writeln!(out, "ok    {:<15} {}", check.name, check.detail)?,
            Some(problem) => writeln!(out, "FAIL  {:<15} {problem}", check.name)?,
        }
    }
    let failed = checks.iter().filter(|check| check.problem.is_some()).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// First-run checks, asked of GitHub as the App (its JWT): that the App
// authenticates and has the permissions and events Berth needs, that it is
// installed somewhere, that the webhook URL GitHub has for it is
// BERTH_PUBLIC_URL's, and that its recent deliveries reached Berth (the
// failed ones named). Each problem comes with its fix.
// ---------------------------------------------------------------------------

/// How a GitHub call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// GitHub's status; `None` when GitHub did not answer.
    pub status: Option<u16>,
    /// GitHub's message, or the transport error.
    pub message: String,
}

impl From<GitHubError> for CallError {
    fn from(err: GitHubError) -> Self {
        match err {
            GitHubError::Rejected { status, message, .. }
            | GitHubError::Credentials { status, message, .. } => Self { status: Some(status), message },
            GitHubError::Unavailable { last, .. } => Self { status: None, message: last },
            GitHubError::Unexpected { detail, .. } => Self { status: None, message: detail },
            other => Self { status: None, message: other.to_string() },
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "GitHub answered {status} ({})", self.message),
            None => write!(f, "GitHub did not answer ({})", self.message),
        }
    }
}

/// What the fixes point at: the App's pages on GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPages {
    /// The App's settings (webhook URL, secret, permissions, keys).
    pub settings: String,
    /// Where it is installed on repositories.
    pub install: String,
}

impl AppPages {
    /// The pages of the App `app` (as `GET /app` describes it) on the GitHub whose web address is `web`.
    pub fn of(app: &AppInfo, web: &str) -> Self {
        let slug = &app.slug;
        let owner = &app.owner.login;
        let settings = if app.owner.kind == AccountKind::Organization {
            format!("{web}/organizations/{owner}/settings/apps/{slug}")
        } else {
            format!("{web}/settings/apps/{slug}")
        };
        let install = app
            .html_url
            .as_deref()
            .map_or_else(|| format!("{web}/apps/{slug}"), |url| url.trim_end_matches('/').to_owned());
        Self { settings, install: format!("{install}/installations/new") }
    }
}

/// The first-run checks (empty of GitHub calls when the App's settings are missing).
pub async fn first_run(args: &ServeArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let app_id =
        args.github_app_id.as_deref().and_then(|id| id.trim().parse::<u64>().ok()).filter(|id| *id > 0);
    let key = args
        .github_private_key_file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .filter(|pem| github::check_private_key(pem.as_bytes()).is_ok())
        .map(Secret::new);
    let api = args.github_api_url.trim().trim_end_matches('/').to_owned();
    let (Some(app_id), Some(key)) = (app_id, key) else {
        checks.push(bad(
            "github app",
            format!(
                "cannot ask GitHub without {BERTH_GITHUB_APP_ID} and a usable {BERTH_GITHUB_PRIVATE_KEY_FILE}; \
                 `berth setup` creates the App and writes both"
            ),
        ));
        return checks;
    };
    let client = match AppClient::new(&api, app_id, &key) {
        Ok(client) => client,
        Err(err) => {
            let problem = match err {
                // What did not start, and with which URL: the whole problem.
                GitHubError::Setup(detail) => detail,
                other => other.to_string(),
            };
            checks.push(bad("github app", problem));
            return checks;
        }
    };
    let web = crate::status::Links::new(&api).web_base().to_owned();
    let app = client.describe().await.map_err(CallError::from);
    checks.push(app_check(&app, app_id, &api));
    let Ok(app) = app else {
        for name in ["installations", "webhook url", "deliveries"] {
            checks.push(bad(name, "cannot ask GitHub until the App authenticates (above)"));
        }
        return checks;
    };
    let pages = AppPages::of(&app, &web);
    checks.push(access_check(&app, &pages));
    let installations = client.installations().await.map_err(CallError::from);
    checks.push(installations_check(&installations, &pages));
    let hook = client.hook_config().await.map_err(CallError::from);
    let public_url = args
        .public_url
        .as_deref()
        .filter(|url| !url.trim().is_empty())
        .map(|url| crate::config::public_url(url).unwrap_or_else(|_| url.trim().to_owned()));
    checks.push(hook_check(&hook, public_url.as_deref(), &pages));
    let hook_url = hook
        .as_ref()
        .ok()
        .map(|hook| hook.url.as_str())
        .filter(|url| !url.is_empty())
        .unwrap_or("the webhook URL")
        .to_owned();
    let deliveries = client.deliveries(50).await.map_err(CallError::from);
    checks.push(deliveries_check(&deliveries, &hook_url, &pages));
    if let Some(check) = agent_key_check(args) {
        checks.push(check);
    }
    checks
}

/// `GET /app` with the App's JWT.
pub fn app_check(app: &Result<AppInfo, CallError>, app_id: u64, api: &str) -> Check {
    match app {
        Ok(app) => ok(
            "github app",
            format!(
                "{} ({}, id {}) of {} authenticates",
                app.name,
                app.slug,
                app.id,
                if app.owner.login.is_empty() { "?" } else { &app.owner.login }
            ),
        ),
        Err(err @ CallError { status: Some(401 | 403), message }) => {
            let lower = message.to_ascii_lowercase();
            let fix = if lower.contains("iat") || lower.contains("exp") || lower.contains("expir") {
                "this host's clock is off (the App's token is time-stamped): turn on time sync (`timedatectl set-ntp true`)".to_owned()
            } else {
                format!(
                    "{BERTH_GITHUB_APP_ID} {app_id} and the key in {BERTH_GITHUB_PRIVATE_KEY_FILE} do not belong together, \
                     or the key was deleted: generate a private key on the App's settings page and point \
                     {BERTH_GITHUB_PRIVATE_KEY_FILE} at it (or create a new App with `berth setup --force`)"
                )
            };
            bad("github app", format!("{err}; {fix}"))
        }
        Err(err @ CallError { status: Some(404), .. }) => bad(
            "github app",
            format!(
                "{err}: {api} does not know App {app_id}; check {BERTH_GITHUB_APP_ID} and {BERTH_GITHUB_API_URL}"
            ),
        ),
        Err(err @ CallError { status: Some(status), .. }) if *status >= 500 => {
            bad("github app", format!("{err}; GitHub is having trouble, try again in a minute"))
        }
        Err(err @ CallError { status: Some(_), .. }) => bad("github app", err.to_string()),
        Err(err @ CallError { status: None, .. }) => bad(
            "github app",
            format!(
                "{err}; check that this host reaches {api} (DNS, firewall, HTTPS_PROXY) and {BERTH_GITHUB_API_URL}"
            ),
        ),
    }
}

/// The App's permissions and events cover what Berth uses (those of its manifest).
pub fn access_check(app: &AppInfo, pages: &AppPages) -> Check {
    let wanted =
        crate::cli::app_manifest(&crate::config::AppManifestArgs { url: String::new(), name: String::new() });
    let rank = |level: &str| match level {
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        _ => 0,
    };
    let mut missing = Vec::new();
    if let Some(permissions) = wanted["default_permissions"].as_object() {
        for (name, level) in permissions {
            let level = level.as_str().unwrap_or_default();
            if rank(app.permissions.get(name).map_or("", String::as_str)) < rank(level) {
                missing.push(format!("{name} ({level})"));
            }
        }
    }
    let events: Vec<&str> = app.events.iter().map(String::as_str).collect();
    for event in wanted["default_events"].as_array().into_iter().flatten().filter_map(|event| event.as_str())
    {
        if !events.contains(&event) {
            missing.push(format!("the {event} event"));
        }
    }
    if missing.is_empty() {
        ok("app access", format!("permissions and events as Berth needs ({})", events.join(", ")))
    } else {
        bad(
            "app access",
            format!(
                "the App lacks {}; add them under Permissions & events on {} (then accept them on each installation)",
                missing.join(", "),
                pages.settings
            ),
        )
    }
}

/// `GET /app/installations`: installed somewhere, not suspended everywhere.
pub fn installations_check(installations: &Result<Vec<Installation>, CallError>, pages: &AppPages) -> Check {
    let installations = match installations {
        Ok(installations) => installations,
        Err(err) => return bad("installations", format!("cannot list them: {err}")),
    };
    if installations.is_empty() {
        return bad(
            "installations",
            format!(
                "the App is installed nowhere, so GitHub sends Berth nothing; install it on your repositories: {}",
                pages.install
            ),
        );
    }
    let describe = |installation: &Installation| {
        let selection = match installation.repository_selection {
            RepositorySelection::All => "all repositories",
            RepositorySelection::Selected => "selected repositories",
        };
        let login = &installation.account.login;
        format!("{} ({selection})", if login.is_empty() { "?" } else { login })
    };
    let (suspended, active): (Vec<_>, Vec<_>) =
        installations.iter().partition(|installation| installation.suspended);
    if active.is_empty() {
        return bad(
            "installations",
            format!(
                "every installation is suspended ({}); unsuspend one in the account's Settings > Applications, or install anew: {}",
                suspended.iter().map(|installation| describe(installation)).collect::<Vec<_>>().join(", "),
                pages.install
            ),
        );
    }
    ok(
        "installations",
        format!(
            "installed on {}",
            active.iter().map(|installation| describe(installation)).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// `GET /app/hook/config`: GitHub delivers JSON to `BERTH_PUBLIC_URL/webhook`.
pub fn hook_check(hook: &Result<HookConfig, CallError>, public_url: Option<&str>, pages: &AppPages) -> Check {
    let hook = match hook {
        Ok(hook) => hook,
        Err(err) => return bad("webhook url", format!("cannot read the App's webhook settings: {err}")),
    };
    let url = hook.url.trim_end_matches('/');
    if url.is_empty() {
        return bad(
            "webhook url",
            format!("the App has no webhook URL; set it to {BERTH_PUBLIC_URL}/webhook on {}", pages.settings),
        );
    }
    let Some(public_url) = public_url else {
        let suggestion = url.strip_suffix("/webhook").unwrap_or(url);
        return bad(
            "webhook url",
            format!(
                "GitHub delivers to {url}, and {BERTH_PUBLIC_URL} is not set to check it against; set {BERTH_PUBLIC_URL}={suggestion} if that is where Berth is reached"
            ),
        );
    };
    let expected = format!("{public_url}/webhook");
    if url != expected {
        return bad(
            "webhook url",
            format!(
                "GitHub delivers to {url}, not to {expected} ({BERTH_PUBLIC_URL}/webhook); set the Webhook URL on {} to {expected}, or fix {BERTH_PUBLIC_URL}",
                pages.settings
            ),
        );
    }
    if let Some(kind) = hook.content_type.as_deref().filter(|kind| *kind != "json") {
        return bad(
            "webhook url",
            format!(
                "GitHub delivers to {url} as {kind}, which Berth refuses (400); set the content type to application/json on {}",
                pages.settings
            ),
        );
    }
    let tls = if hook.insecure_ssl { ", TLS verification off" } else { "" };
    ok("webhook url", format!("GitHub delivers to {url} ({BERTH_PUBLIC_URL}/webhook{tls})"))
}

/// The fix for deliveries that failed with `status_code` (`status` is GitHub's text).
fn delivery_fix(status_code: u64, status: &str, hook_url: &str, pages: &AppPages) -> String {
    match status_code {
        0 => format!(
            "GitHub could not reach {hook_url} ({status}): berth serve must be running and that address reachable \
             from the internet (DNS, the HTTPS proxy or tunnel in front of Berth, the firewall)"
        ),
        401 => format!(
            "Berth refused the signature: the secret in {BERTH_WEBHOOK_SECRET_FILE} is not the App's webhook secret; \
             put the same secret in the file and on {}",
            pages.settings
        ),
        400 | 415 => format!(
            "Berth could not read the delivery: set the webhook's content type to application/json on {}",
            pages.settings
        ),
        404 | 405 => format!(
            "{hook_url} does not reach Berth's POST /webhook: the proxy in front of Berth must pass /webhook through"
        ),
        502 | 504 => format!(
            "the proxy in front of Berth got no answer from it: is berth serve running on the address the proxy forwards to ({BERTH_BIND})?"
        ),
        503 => format!(
            "Berth could not take it (starting, or its journal could not write: a full disk or a read-only {BERTH_STATE_DIR}); see berth serve's log"
        ),
        code => format!("Berth or the proxy in front of it answered {code}; see berth serve's log"),
    }
}

/// `GET /app/hook/deliveries`: the last attempt of each recent delivery reached Berth.
pub fn deliveries_check(
    deliveries: &Result<Vec<Delivery>, CallError>,
    hook_url: &str,
    pages: &AppPages,
) -> Check {
    let deliveries = match deliveries {
        Ok(deliveries) => deliveries,
        Err(err) => return bad("deliveries", format!("cannot list the App's deliveries: {err}")),
    };
    if deliveries.is_empty() {
        return ok(
            "deliveries",
            "none yet (GitHub sends the first when the App is installed or on the first comment)",
        );
    }
    // A delivery reached Berth when any attempt of it did (Berth drops
    // repeats), as the backfill counts it; listed newest first, so the first
    // attempt seen of a failed one is its last.
    let mut seen = std::collections::HashSet::new();
    let mut failed = Vec::new();
    let mut delivered = 0;
    for delivery in deliveries {
        let guid = delivery.guid.as_str();
        if !seen.insert(guid) {
            continue;
        }
        if deliveries.iter().any(|attempt| attempt.guid == guid && attempt.succeeded()) {
            delivered += 1;
        } else {
            failed.push(delivery);
        }
    }
    if failed.is_empty() {
        return ok("deliveries", format!("the last {delivered} reached Berth"));
    }
    let mut names = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    for delivery in &failed {
        let event = delivery.event.as_deref().unwrap_or("?");
        let event = match &delivery.action {
            Some(action) => format!("{event}.{action}"),
            None => event.to_owned(),
        };
        let status = delivery.status.as_deref().unwrap_or("failed");
        let code = delivery.status_code.unwrap_or(0);
        if names.len() < 5 {
            names.push(format!(
                "{} ({event}, {}): {status}",
                delivery.guid,
                delivery.delivered_at.as_deref().unwrap_or("?")
            ));
        }
        let fix = delivery_fix(code, status, hook_url, pages);
        if !fixes.contains(&fix) {
            fixes.push(fix);
        }
    }
    let more = failed.len().saturating_sub(names.len());
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    bad(
        "deliveries",
        format!(
            "{} of the last {} deliveries did not reach Berth: {}{more}. Fix: {}. Once fixed, berth serve asks GitHub \
             to deliver them again (at start and every 10 minutes)",
            failed.len(),
            seen.len(),
            names.join("; "),
            fixes.join("; ")
        ),
    )
}

/// The agent's secrets file holds a secret (a fresh one from `berth setup` holds only comments).
fn agent_key_check(args: &ServeArgs) -> Option<Check> {
    let path = args.worker_secrets_file.as_ref().filter(|path| !path.as_os_str().is_empty())?;
    let files = runner::agent_env::AgentEnvFiles { env_file: None, secrets_file: Some(path.clone()) };
    // A file that cannot be read or parsed is the settings check's to report.
    let env = files.load().ok()?;
    Some(if env.secrets.is_empty() {
        bad(
            "agent key",
            format!(
                "{} holds no secret yet, so the agent has no key; write it (bash): {}",
                path.display(),
                crate::setup::key_command(path)
            ),
        )
    } else {
        let names: Vec<&str> = env.secrets.iter().map(|(name, _)| name.as_str()).collect();
        ok("agent key", format!("{} holds {}", path.display(), names.join(", ")))
    })
}
