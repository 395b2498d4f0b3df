//! `berth-worker`: the entrypoint of every worker container. It reads its
//! task from the environment, runs it, prints the result record last, and
//! exits with the documented code (see the README's "Worker" section).

use std::collections::BTreeMap;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use worker::OrphanSweep;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("check-agent") => return check_agent(),
        Some("probe-egress") => return probe_egress(std::env::args().nth(2).unwrap_or_default()),
        Some("refresh-cache") => {
            let cancel = CancellationToken::new();
            let signals = shutdown_signal(cancel.clone());
            let env: BTreeMap<String, String> = std::env::vars().collect();
            let code = worker::refresh_cache(&env, cancel).await;
            signals.abort();
            return ExitCode::from(code);
        }
        _ => {}
    }
    let cancel = CancellationToken::new();
    let signals = shutdown_signal(cancel.clone());
    // Processes the agent orphans (double forks, setsid daemons) are
    // re-parented here rather than to init, so the worker can kill them.
    let sweep = match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => OrphanSweep::Enabled,
        Err(_) => OrphanSweep::Disabled,
    };
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(name, value)| (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()))
        .collect();
    let exit = worker::run(&env, cancel, sweep).await;
    signals.abort();
    ExitCode::from(u8::try_from(exit.code()).unwrap_or(u8::MAX))
}

/// `berth-worker check-agent`: one line saying whether the agent's program
/// is in this image; exit 0 when it is, 1 when not.
#[expect(clippy::print_stdout, reason = "the one line is this mode's output")]
fn check_agent() -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match worker::check_agent(&env) {
        Ok(found) => {
            println!("ok: {found}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            println!("missing: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// `berth-worker probe-egress HOST:PORT`: whether a TCP connection from this
/// container reaches that address within 3 seconds (`berth doctor` asks it
/// of the cloud metadata address); prints `reachable` or `unreachable: why`.
#[expect(clippy::print_stdout, reason = "the one line is this mode's output")]
fn probe_egress(target: String) -> ExitCode {
    use std::net::{TcpStream, ToSocketAddrs};
    let addr = match target.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(addr)) => addr,
        _ => {
            println!("unreachable: {target:?} is not an address");
            return ExitCode::from(2);
        }
    };
    match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)) {
        Ok(_) => println!("reachable"),
        Err(err) => println!("unreachable: {err}"),
    }
    ExitCode::SUCCESS
}

/// Cancels on SIGTERM (the daemon's stop, forwarded by init) or SIGINT.
/// The handlers are installed before this returns, so no early signal is lost.
fn shutdown_signal(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    tokio::spawn(async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            // Without handlers the default action (exit) still ends the worker.
            _ => std::future::pending::<()>().await,
        }
        cancel.cancel();
    })
}
