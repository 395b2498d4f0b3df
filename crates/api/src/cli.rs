//! The edges of the `berth` binary: logging, signals, exit codes, and the
//! operator commands' output.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, PsArgs};

/// Libraries whose debug and trace lines print request and response bodies:
/// a worker's create body (its environment: the scoped token and the agent's
/// secrets) and GitHub's token answers. No `RUST_LOG` lifts them above info.
const QUIET_LIBRARIES: [&str; 5] = ["bollard", "octocrab", "hyper", "hyper_util", "h2"];

/// Installs the log subscriber: `RUST_LOG` (default `default`), human or JSON.
pub fn init_tracing(json: bool, default: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for library in QUIET_LIBRARIES {
        if let Ok(directive) = format!("{library}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Lines go to stderr from a thread of their own (`log_writer`), so a
    // handler never waits for stderr's reader; if that cannot start, directly.
    match crate::log_writer::LogWriter::spawn(std::io::stderr(), crate::log_writer::BUFFER_LIMIT, json) {
        Ok(writer) => {
            crate::log_writer::install(writer.clone());
            let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
            if json { builder.json().init() } else { builder.init() }
        }
        Err(_) => {
            let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
            if json { builder.json().init() } else { builder.init() }
        }
    }
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Prints a configuration error as one line and returns exit code 2.
pub fn config_error(err: &ConfigError) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "berth: {err}");
    ExitCode::from(2)
}

/// Maps a command's result to the process exit code.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    // Every log line before the last word.
    crate::log_writer::flush_installed();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "berth: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `berth ps`.
///
/// # Errors
/// When Docker cannot be reached.
pub async fn ps(args: &PsArgs, engine: &crate::engine::EngineChoice) -> anyhow::Result<()> {
    let dispatcher = listing_dispatcher(engine).await?;
    if args.caches {
        let rows = crate::ps::cache_rows(&dispatcher, &args.state_dir).await?;
        return if args.json {
            print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))
        } else {
            print(&crate::ps::render_cache_table(&rows))
        };
    }
    let rows = crate::ps::rows(&dispatcher, args.all).await?;
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))
    } else {
        print(&crate::ps::render_table(&rows))
    }
}

/// A dispatcher for reading only, on the engine the settings name.
async fn listing_dispatcher(
    choice: &crate::engine::EngineChoice,
) -> anyhow::Result<dispatcher::Dispatcher<crate::engine::Engine>> {
    let engine = choice.connect(kubernetes::KubernetesOptions::new(String::new())).await?;
    // Reading needs no worker settings; this configuration is never used to create.
    Ok(dispatcher::Dispatcher::new(
        engine,
        dispatcher::DispatcherConfig {
            image: String::new(),
            network: String::new(),
            profile: dispatcher::HardenedProfile::strict(),
            entrypoint: None,
            instance: core_types::DEFAULT_INSTANCE.to_owned(),
        },
    ))
}

/// `berth logs`: a worker's output, straight from Docker (works while the
/// daemon is down); once its container is gone, the log the daemon kept of
/// it under `BERTH_STATE_DIR`.
///
/// # Errors
/// A bad task id, Docker unreachable, or no container for the task.
pub async fn logs(
    args: &crate::config::LogsArgs,
    engine: &crate::engine::EngineChoice,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let task_id = core_types::TaskId::new(args.task.clone())?;
    let dispatcher = listing_dispatcher(engine).await?;
    let Some(container) = dispatcher.find(&task_id).await? else {
        let kept_logs = args.state_dir.join(runner::logs::LOG_DIR);
        let kept = runner::logs::read_kept(&kept_logs, &task_id)
            .with_context(|| format!("cannot read the kept log of task {task_id}"))?;
        let Some(kept) = kept else {
            anyhow::bail!(
                "task {task_id} has no container (finished tasks are removed once reported; their outcome is in GET /api/tasks/{task_id})"
            );
        };
        if kept.cut > 0 {
            let note = format!("berth: the first {} bytes of this task's output were not kept\n", kept.cut);
            std::io::stderr().lock().write_all(note.as_bytes())?;
        }
        let mut stdout = std::io::stdout().lock();
        if args.raw {
            stdout.write_all(kept.text.as_bytes())?;
        } else {
            stdout.write_all(&crate::terminal::TerminalFilter::default().filter(kept.text.as_bytes()))?;
        }
        stdout.flush()?;
        return Ok(());
    };
    let mut stream = dispatcher.logs(&container.id, args.follow);
    let mut stdout = std::io::stdout().lock();
    let mut terminal = crate::terminal::TerminalFilter::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if args.raw {
            stdout.write_all(chunk.bytes())?;
        } else {
            stdout.write_all(&terminal.filter(chunk.bytes()))?;
        }
        stdout.flush()?;
    }
    Ok(())
}

/// A small HTTP/1.1 request over one connection (the operator CLI talks to
/// its own daemon on loopback; no client library needed).
///
/// # Errors
/// Connection or protocol failures.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|err| {
        anyhow::anyhow!("cannot reach the daemon at {addr}: {err} (is `berth serve` running? set --bind)")
    })?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `berth cancel`: asks the running daemon, through its status API.
///
/// # Errors
/// A bad task id, the daemon unreachable, or a refusal.
pub async fn cancel(
    args: &crate::config::CancelArgs,
    target: &crate::config::CancelTarget,
) -> anyhow::Result<()> {
    let task_id = core_types::TaskId::new(args.task.clone())?;
    let (token, addr) = (target.token.expose(), target.addr);
    let (status, body) =
        http_request(addr, "POST", &format!("/api/tasks/{task_id}/cancel"), Some(token)).await?;
    match status {
        200..=299 => print(&format!("cancel requested for {task_id}\n")),
        _ => {
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            anyhow::bail!("the daemon refused to cancel {task_id} ({status}): {reason}")
        }
    }
}

/// The GitHub App manifest: exactly the permissions and events Berth uses.
pub fn app_manifest(args: &crate::config::AppManifestArgs) -> serde_json::Value {
    let url = args.url.trim_end_matches('/');
    serde_json::json!({
        "name": args.name,
        "url": url,
        "hook_attributes": {"url": format!("{url}/webhook"), "active": true},
        "public": false,
        "default_permissions": {
            "checks": "write",
            "contents": "write",
            "issues": "write",
            "pull_requests": "write",
            "metadata": "read"
        },
        "default_events": ["issue_comment", "issues", "pull_request", "check_run", "check_suite"]
    })
}

/// `berth app-manifest`.
///
/// # Errors
/// When stdout cannot be written.
pub fn print_app_manifest(args: &crate::config::AppManifestArgs) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(&app_manifest(args))?))
}
