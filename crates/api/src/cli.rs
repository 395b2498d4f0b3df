//! The edges of the `berth` binary: logging, signals, exit codes, and the
//! operator commands' output.

use std::io::Write;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, PsArgs};

/// Installs the log subscriber: `RUST_LOG` (default `info`), human or JSON.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
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
pub async fn ps(args: &PsArgs) -> anyhow::Result<()> {
    let engine = dispatcher::DockerEngine::connect_local().await?;
    // Listing needs no worker settings; the configuration here is never used to create.
    let dispatcher = dispatcher::Dispatcher::new(
        engine,
        dispatcher::DispatcherConfig {
            image: String::new(),
            network: String::new(),
            profile: dispatcher::HardenedProfile::strict(),
            entrypoint: None,
            instance: core_types::DEFAULT_INSTANCE.to_owned(),
        },
    );
    let rows = crate::ps::rows(&dispatcher, args.all).await?;
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))
    } else {
        print(&crate::ps::render_table(&rows))
    }
}
