//! The `berth` binary: parses the command line, sets up logging and signals,
//! and hands over to the library. Exit codes: 0 done, 1 failed, 2 bad configuration.

use std::process::ExitCode;

use api::config::{Cli, Command};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc: about a tenth less CPU per webhook
/// delivery, for about 11 MiB more at the peak of reading a worker's output
/// (ADR 28).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args =
        match api::config::with_config_file(std::env::args_os().collect(), |name| std::env::var(name).ok()) {
            Ok(args) => args,
            Err(err) => return api::cli::config_error(&err),
        };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Serve(args) => {
            let config = match args.validate() {
                Ok(config) => config,
                Err(err) => return api::cli::config_error(&err),
            };
            api::cli::init_tracing(config.json_logs, "info");
            let shutdown = CancellationToken::new();
            tokio::spawn(api::cli::cancel_on_signal(shutdown.clone()));
            api::daemon::run(config, shutdown).await
        }
        Command::Ps(args) => match args.engine.validate() {
            Ok(engine) => api::cli::ps(&args, &engine).await,
            Err(err) => return api::cli::config_error(&err),
        },
        Command::Logs(args) => match args.engine.validate() {
            Ok(engine) => api::cli::logs(&args, &engine).await,
            Err(err) => return api::cli::config_error(&err),
        },
        Command::Cancel(args) => match args.validate() {
            Ok(target) => api::cli::cancel(&args, &target).await,
            Err(err) => return api::cli::config_error(&err),
        },
        Command::Doctor(args) => api::doctor::run(&args).await,
        Command::Demo(args) => {
            api::cli::init_tracing(false, "warn");
            api::demo::run(&args).await
        }
        Command::AppManifest(args) => api::cli::print_app_manifest(&args),
        Command::Setup(args) => {
            let config = match args.validate() {
                Ok(config) => config,
                Err(err) => return api::cli::config_error(&err),
            };
            api::cli::init_tracing(false, "warn");
            let shutdown = CancellationToken::new();
            tokio::spawn(api::cli::cancel_on_signal(shutdown.clone()));
            api::setup::run(config, shutdown).await
        }
    };
    api::cli::exit_code(result)
}
