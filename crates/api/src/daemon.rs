//! `berth serve`: wires the journal, the engine, GitHub and the HTTP server
//! together and runs them until shutdown.
//!
//! The HTTP server starts first, so deliveries are journalled even while the
//! engine is unreachable; the runner starts once the engine answers, and
//! `/readyz` turns 200 only then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use core_types::backoff::Backoff;
use core_types::env_names::{BERTH_BIND, BERTH_STATE_DIR};
use dispatcher::{ContainerEngine, Dispatcher, DispatcherConfig, HardenedProfile};
use kubernetes::KubernetesOptions;

use crate::engine::{Engine, EngineKind};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ServeConfig;
use crate::server::{AppState, router_with_admin, serve};
use crate::status::Admin;
use domain::signature::WebhookSecrets;
use github::{GitHub, RetryPolicy};
use journal::{Cutoffs, Journal, now_unix};
use runner::{LogKeeper, Runner, RunnerConfig};
use telemetry::Metrics;

/// How often the sweep reconciles when no engine event wakes it.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// How often GitHub's list of deliveries is checked for missed ones.
const BACKFILL_EVERY: Duration = Duration::from_secs(600);

/// How often the journal and the kept logs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Waits between tries to reach the engine, and to reconcile, at start:
/// 200 ms, doubling, at most 10 s, until it works or shutdown.
const START_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// The worker profile the settings describe.
pub fn worker_profile(config: &ServeConfig) -> HardenedProfile {
    let mut profile = HardenedProfile::strict()
        .with_memory(config.worker_memory_bytes)
        .with_log_limits(config.worker_log_max_bytes, config.worker_log_max_files)
        .with_scratch(!config.worker_writable_root, config.worker_scratch_bytes);
    profile.nano_cpus = config.worker_nano_cpus;
    profile.pids_limit = config.worker_pids_limit;
    if config.worker_privilege_drop_caps {
        profile = profile.with_privilege_drop_caps();
    }
    profile
}

/// The dispatcher's settings for the daemon's workers: `berth serve` runs
/// them with these, and `berth doctor` checks the engine against them. The
/// profile is the settings' own, as the chosen engine can enforce it.
pub fn dispatcher_config(config: &ServeConfig) -> DispatcherConfig {
    DispatcherConfig {
        image: config.worker_image.clone(),
        network: config.worker_network.clone(),
        profile: config.engine.fit(worker_profile(config)),
        entrypoint: Some(vec![config.worker_entrypoint.clone()]),
        instance: config.instance.clone(),
    }
}

/// Runs the daemon until `shutdown` is cancelled.
///
/// # Errors
/// When the journal cannot be opened, the address cannot be bound, or the
/// GitHub App key is unusable.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    for (flag, instead) in crate::config::secret_flags(std::env::args_os()) {
        warn!(
            flag,
            instead,
            "a secret was given on the command line ({flag}), where `ps` shows it to every user of this machine; set it through the environment or a file ({instead}) instead"
        );
    }
    let journal = Journal::open(&config.state_dir)
        .with_context(|| format!("cannot open the journal ({BERTH_STATE_DIR})"))?;
    info!(path = %journal.path().display(), "journal open");
    let metrics = Arc::new(Metrics::default());
    let github = GitHub::new(
        &config.github_api_url,
        config.github_app_id,
        &config.github_private_key,
        RetryPolicy::default(),
        metrics.clone(),
    )?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} ({BERTH_BIND})", config.bind))?;
    let address = listener.local_addr().map_or_else(|_| config.bind.to_string(), |addr| addr.to_string());
    info!(address = %address, "listening");

    let state = AppState {
        secrets: WebhookSecrets::new(config.webhook_secret.clone(), config.webhook_secret_previous.clone()),
        policy: Arc::new(config.policy.clone()),
        journal: journal.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
        wake: Arc::new(Notify::new()),
    };
    let log_keeper = LogKeeper::under(&config.state_dir, config.log_keep_bytes);
    let admin = Admin::new(config.admin_token.as_ref(), &config.github_api_url)
        .with_metrics_token(config.metrics_token.as_ref())
        .with_kept_logs(log_keeper.dir.clone());
    let tracker = TaskTracker::new();
    tracker.spawn(start_runner(
        config.clone(),
        state.clone(),
        admin.clone(),
        github,
        shutdown.clone(),
        tracker.clone(),
    ));
    let retention = Retention { deliveries: config.delivery_retention, tasks: config.task_retention };
    tracker.spawn(prune_journal(journal, retention, shutdown.clone()));
    tracker.spawn(prune_logs(log_keeper.dir, config.log_retention, shutdown.clone()));

    serve(listener, router_with_admin(state, admin), config.http, metrics, shutdown.clone()).await;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.is_err() {
        warn!("background tasks did not stop within 10 s");
    }
    info!("stopped; workers keep running and are found again at the next start");
    Ok(())
}

/// Connects to the engine (retrying until it answers), then runs the scheduler.
async fn start_runner(
    config: ServeConfig,
    state: AppState,
    admin: Admin,
    github: GitHub,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let Some(engine) = connect(&config, &shutdown).await else { return };
    if config.engine.kind == EngineKind::Kubernetes {
        warn!(
            namespace = %config.engine.namespace,
            "on Kubernetes a pod cannot be given a pids limit, an init or log limits: the cluster must (kubelet podPidsLimit, an init such as tini in the worker image, the kubelet's log rotation); see README, Scaling out"
        );
    }
    let dispatcher = Dispatcher::checked(engine, dispatcher_config(&config));
    // An engine that would silently weaken the hardened profile runs nothing:
    // accepted tasks stay queued in the journal and /readyz stays 503.
    let dispatcher = match dispatcher {
        Ok(dispatcher) => dispatcher,
        Err(err) => {
            error!(error = %err, "refusing to run workers on this engine");
            return;
        }
    };
    // The status API reads labels and logs through a dispatcher of its own
    // (a clone: the same engine client and settings), not through the runner.
    admin.set_dispatcher(dispatcher.clone());
    let clone_cache = clone_cache_settings(&config, dispatcher.engine().capabilities().named_volumes);
    let runner = Runner::new(
        state.journal.clone(),
        dispatcher,
        github,
        RunnerConfig {
            max_workers: config.max_workers,
            max_workers_per_repo: config.max_workers_per_repo,
            task_timeout: config.task_timeout,
            stop_grace: config.stop_grace,
            agent_command: config.agent_command.clone(),
            memory_bytes: config.worker_memory_bytes,
            agent_env_files: config.agent_env_files.clone(),
            prompts: config.prompts.clone(),
            log_keeper: Some(LogKeeper::under(&config.state_dir, config.log_keep_bytes)),
            public_url: config.public_url.clone(),
            progress_interval: config.progress_interval,
            clone_cache,
        },
        state.metrics.clone(),
        state.wake.clone(),
        shutdown.clone(),
        tracker.clone(),
    );
    admin.set_runner(Arc::clone(&runner));
    // Reconcile before /readyz turns 200: find every worker again.
    let mut backoff = START_BACKOFF;
    loop {
        match runner.reconcile().await {
            Ok(done) => {
                info!(?done, "start-up reconcile done");
                break;
            }
            Err(err) => warn!(error = %format!("{err:#}"), "start-up reconcile failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    runner.mark_started();
    state.ready.store(true, Ordering::Release);
    info!(engine = config.engine.name(), "engine reachable and workers reconciled; ready");
    // The sweep and the delivery backfill, next to the scheduler, tracked
    // like everything else the daemon starts.
    tracker.spawn(Arc::clone(&runner).sweep(SWEEP_EVERY));
    let backfiller = Arc::clone(&runner);
    tracker.spawn(async move { backfiller.backfill_every(BACKFILL_EVERY, shutdown).await });
    runner.run().await;
}

/// The options of the Kubernetes engine from the daemon's settings.
/// The clone cache's settings: `None` (off) when `BERTH_CLONE_CACHE=off` or
/// on an engine without named volumes (Kubernetes: ADR 23).
pub fn clone_cache_settings(
    config: &ServeConfig,
    named_volumes: bool,
) -> Option<runner::cache::CacheSettings> {
    if !config.clone_cache {
        return None;
    }
    if !named_volumes {
        info!("this engine has no named volumes: no clone cache; workers clone plainly (ADR 23)");
        return None;
    }
    Some(runner::cache::CacheSettings {
        size_cap: config.clone_cache_size,
        state_dir: config.state_dir.clone(),
    })
}

pub fn kubernetes_options(config: &ServeConfig) -> KubernetesOptions {
    let mut options = KubernetesOptions::new(config.worker_network.clone());
    // Berth's worker images run as `berth` with HOME /home/berth (the
    // Dockerfile); a pod cannot read the image's HOME before it runs.
    options.scratch_home = (!config.worker_writable_root).then(|| "/home/berth".to_owned());
    options.stop_grace = config.stop_grace;
    options.watch_instance = Some(config.instance.clone());
    options
}

async fn connect(config: &ServeConfig, shutdown: &CancellationToken) -> Option<Engine> {
    let mut backoff = START_BACKOFF;
    loop {
        match config.engine.connect(kubernetes_options(config)).await {
            Ok(engine) => return Some(engine),
            Err(err) => {
                warn!(engine = config.engine.name(), error = %err, "engine not reachable yet; /readyz answers 503");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// How long the journal keeps what it prunes.
#[derive(Debug, Clone, Copy)]
struct Retention {
    /// Deliveries (and the comments and unsent answers that go with them).
    deliveries: Duration,
    /// Finished and reported tasks, from their end.
    tasks: Duration,
}

/// Prunes the journal at start and then every `PRUNE_EVERY`: deliveries
/// past their retention, and finished, reported tasks past theirs.
async fn prune_journal(journal: Journal, retention: Retention, shutdown: CancellationToken) {
    loop {
        let now = now_unix();
        let cutoffs = Cutoffs {
            deliveries: now.saturating_sub(retention.deliveries.as_secs()),
            tasks: now.saturating_sub(retention.tasks.as_secs()),
        };
        match journal.prune(cutoffs).await {
            Ok(pruned) if pruned.is_empty() => {}
            Ok(pruned) => info!(
                deliveries = pruned.deliveries,
                tasks = pruned.tasks,
                notices = pruned.notices,
                redeliveries = pruned.redeliveries,
                "old records pruned from the journal"
            ),
            Err(err) => warn!(error = %err, "pruning the journal failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Removes kept worker logs older than `retention`, at start and then every
/// `PRUNE_EVERY`, off the async threads (a slow disk stalls no request).
async fn prune_logs(dir: std::path::PathBuf, retention: Duration, shutdown: CancellationToken) {
    loop {
        let dir_now = dir.clone();
        match tokio::task::spawn_blocking(move || runner::logs::prune(&dir_now, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => info!(pruned, "old worker logs pruned"),
            Ok(Err(err)) => warn!(error = %err, path = %dir.display(), "pruning the kept worker logs failed"),
            Err(err) => warn!(error = %err, "pruning the kept worker logs failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
