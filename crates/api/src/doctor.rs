//! `berth doctor`: checks what `berth serve` needs, one line per check, each
//! failure with how to fix it. Secrets are checked, never printed.

use std::io::Write;

use std::collections::BTreeMap;
use std::time::Duration;

use dispatcher::{ContainerEngine, ContainerSpec, DockerEngine, WaitCondition};
use futures_util::StreamExt;

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

/// Runs every check.
pub async fn checks(args: &ServeArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let validated = args.validate();
    checks.push(match &validated {
        Ok(_) => ok("settings", "every setting is valid"),
        Err(err) => bad("settings", format!("{err}; fix that setting (see berth serve --help)")),
    });
    match DockerEngine::connect_local().await {
        Ok(engine) => {
            match engine.version().await {
                Ok((version, api)) => {
                    let api_ok = api
                        .split('.')
                        .nth(1)
                        .and_then(|minor| minor.parse::<u32>().ok())
                        .is_some_and(|minor| minor >= 41);
                    checks.push(if api_ok {
                        ok("docker", format!("engine {version}, API {api}, at {}", engine.endpoint()))
                    } else {
                        bad("docker", format!("engine API {api} is older than 1.41; upgrade Docker"))
                    });
                }
                Err(err) => checks.push(bad("docker", format!("{err}"))),
            }
            checks.push(match engine.image_exists(&args.worker_image).await {
                Ok(true) => ok("worker image", args.worker_image.clone()),
                Ok(false) => bad(
                    "worker image",
                    format!(
                        "{} is not on the engine; build it with `docker build -t {} .` (berth never pulls)",
                        args.worker_image, args.worker_image
                    ),
                ),
                Err(err) => bad("worker image", err.to_string()),
            });
            match &validated {
                Ok(config) => {
                    checks.push(agent_program(&engine, config).await);
                    checks.push(worker_disk(&engine, config).await);
                    checks.push(metadata_egress(&engine, config, &args.doctor_egress_probe).await);
                }
                Err(_) => checks.push(bad("agent program", "cannot check while a setting is invalid")),
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
            checks.push(bad("agent program", "cannot check without Docker"));
        }
    }
    if let Some(path) = &args.worker_secrets_file {
        checks.push(secrets_file(path));
    }
    checks.push(match &args.github_private_key_file {
        None => bad(
            "app key",
            "BERTH_GITHUB_PRIVATE_KEY_FILE is not set; download the key from the App's settings page",
        ),
        Some(path) => match std::fs::read(path) {
            Err(err) => bad(
                "app key",
                format!("cannot read {}: {err}; check the path and its permissions", path.display()),
            ),
            Ok(pem) => match octocrab::EncodingKey::from_rsa_pem(&pem) {
                Ok(_) => ok("app key", format!("{} is a usable RSA key", path.display())),
                Err(err) => bad(
                    "app key",
                    format!(
                        "{} is not a usable RSA private key ({err}); use the .pem GitHub generated",
                        path.display()
                    ),
                ),
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
        bad("webhook secret", "BERTH_WEBHOOK_SECRET (or BERTH_WEBHOOK_SECRET_FILE) is not set; use the secret from the App's webhook settings")
    });
    checks.push(match args.bind.parse::<std::net::SocketAddr>() {
        Err(_) => bad("bind address", format!("{:?} is not an address like 127.0.0.1:8080", args.bind)),
        Ok(addr) if addr.ip().is_unspecified() && !args.allow_public_bind => bad(
            "bind address",
            format!(
                "{addr} listens everywhere; bind one private address or set BERTH_ALLOW_PUBLIC_BIND=true"
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
                    "{} is not writable ({err}); create it for this user or set BERTH_STATE_DIR",
                    args.state_dir.display()
                ),
            ),
        },
    );
    checks
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
async fn run_probe(
    engine: &DockerEngine,
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
        env: vec![format!("BERTH_AGENT_COMMAND={}", config.agent_command)],
        entrypoint: Some(vec![config.worker_entrypoint.clone()]),
        cmd: Some(args.iter().map(|arg| (*arg).to_owned()).collect()),
        network: network.to_owned(),
        profile: crate::daemon::worker_profile(config),
    };
    let id = match engine.create(&spec).await {
        Ok(Some(id)) => id,
        Ok(None) => return Err(format!("a container named {} already exists", spec.name)),
        Err(err) => return Err(format!("cannot run the worker image: {err}")),
    };
    let outcome = async {
        engine.start(&id).await.map_err(|err| format!("cannot run the worker image: {err}"))?;
        let code = tokio::time::timeout(Duration::from_secs(60), engine.wait(&id, WaitCondition::NotRunning))
            .await
            .map_err(|_| "the check did not end within 60 s".to_owned())?
            .map_err(|err| err.to_string())?;
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
async fn agent_program(engine: &DockerEngine, config: &ServeConfig) -> Check {
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
async fn metadata_egress(engine: &DockerEngine, config: &ServeConfig, target: &str) -> Check {
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

/// Where a worker's writes go, and whether they are bounded.
async fn worker_disk(engine: &DockerEngine, config: &ServeConfig) -> Check {
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
    let driver = engine.storage_driver().await.unwrap_or_else(|_| "unknown".to_owned());
    bad(
        "worker disk",
        format!(
            "BERTH_WORKER_WRITABLE_ROOT is on and the storage driver {driver} cannot cap a container's disk here \
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
