//! `berth serve`: wires the journal, the engine and the HTTP server together
//! and runs them until shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use dispatcher::DockerEngine;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ServeConfig;
use crate::journal::{Journal, now_unix};
use crate::metrics::Metrics;
use crate::server::{AppState, router, serve};
use crate::signature::WebhookSecrets;

/// How often old deliveries are pruned from the journal.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the daemon until `shutdown` is cancelled.
///
/// # Errors
/// When the journal cannot be opened or the address cannot be bound.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let journal = Journal::open(&config.state_dir).context("cannot open the journal (BERTH_STATE_DIR)")?;
    info!(path = %journal.path().display(), "journal open");
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} (BERTH_BIND)", config.bind))?;
    info!(address = %listener.local_addr().map_or_else(|_| config.bind.to_string(), |addr| addr.to_string()), "listening");

    let state = AppState {
        secrets: WebhookSecrets::new(config.webhook_secret.clone(), config.webhook_secret_previous.clone()),
        policy: Arc::new(config.policy.clone()),
        journal: journal.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(Notify::new()),
    };
    let tracker = TaskTracker::new();
    tracker.spawn(become_ready(state.ready.clone(), shutdown.clone()));
    tracker.spawn(prune_deliveries(journal, config.delivery_retention, shutdown.clone()));

    serve(listener, router(state), shutdown.clone()).await.context("the HTTP server failed")?;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.is_err() {
        warn!("background tasks did not stop within 10 s");
    }
    info!("stopped; workers keep running and are found again at the next start");
    Ok(())
}

/// Marks the daemon ready once the engine answers, retrying until it does.
async fn become_ready(ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        match DockerEngine::connect_local().await {
            Ok(_) => {
                ready.store(true, Ordering::Release);
                info!("docker reachable; ready");
                return;
            }
            Err(err) => warn!(error = %err, "docker not reachable yet; /readyz answers 503"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn prune_deliveries(journal: Journal, retention: Duration, shutdown: CancellationToken) {
    loop {
        let cutoff = now_unix().saturating_sub(retention.as_secs());
        match journal.prune(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => info!(pruned, "old deliveries pruned from the journal"),
            Err(err) => warn!(error = %err, "pruning the journal failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
