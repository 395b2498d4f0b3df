//! The command line and the daemon's settings.
//!
//! Every setting of `berth serve` is a flag with a `BERTH_*` environment
//! fallback. Values are taken as text and validated in one place
//! ([`ServeArgs::validate`]), so a bad setting stops start-up with one line
//! naming it (exit code 2). Secrets are read from the environment or a file
//! and never printed: clap hides their environment values in `--help`, and
//! their `Debug` says `<redacted>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use core_types::Secret;
use core_types::env_names as names;

use crate::connections::HttpLimits;
use crate::server::MAX_WEBHOOK_BODY;
use domain::prompt::{Prompts, Template};
use domain::triggers::Policy;
use runner::agent_env::AgentEnvFiles;

/// Berth: GitHub events in, hardened agent containers out, every task reported.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `berth`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// List tasks from their workers' labels on the engine (works while the daemon is down).
    Ps(PsArgs),
    /// Print (or follow) a worker's output from the engine, or the log the
    /// daemon kept of it once its container is gone.
    Logs(LogsArgs),
    /// Ask the running daemon to cancel a task.
    Cancel(CancelArgs),
    /// Check the Docker socket, the worker image, the App key, the bind address
    /// and the state directory; print what is wrong and how to fix it.
    Doctor(Box<ServeArgs>),
    /// The whole flow on this machine with no GitHub account: a local image,
    /// a signed sample delivery, a stub agent, the task's life printed.
    Demo(DemoArgs),
    /// Print the GitHub App manifest with the permissions and events Berth needs.
    AppManifest(AppManifestArgs),
    /// Create Berth's GitHub App from a page in your browser (GitHub's manifest
    /// flow) and write its key, webhook secret and a config file `berth serve` reads.
    Setup(Box<SetupArgs>),
}

/// `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task id.
    pub task: String,
    /// The daemon's settings file.
    #[command(flatten)]
    pub config: DaemonFileArgs,
    /// The engine the worker runs on.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Keep printing as the worker writes, until it exits.
    #[arg(long, short)]
    pub follow: bool,
    /// Print the output as the worker wrote it, terminal escape sequences and
    /// control characters included (by default they are removed).
    #[arg(long)]
    pub raw: bool,
    /// Where the daemon keeps its state: a finished task's kept log is read
    /// from `logs/` under it once its container is gone.
    #[arg(long, env = names::BERTH_STATE_DIR, default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
}

/// The daemon's settings file, for `ps`, `logs` and `cancel`: read (and
/// merged as flags) by [`with_config_file`] before parsing.
#[derive(Debug, Clone, Args)]
pub struct DaemonFileArgs {
    /// The daemon's TOML settings file (`berth setup` writes one): the
    /// settings of this command it holds are used, the others skipped;
    /// flags and `BERTH_*` variables take precedence over it.
    #[arg(long, env = names::BERTH_CONFIG)]
    pub config: Option<PathBuf>,
}

/// Which engine runs the workers; shared by `serve`, `ps`, `logs` and `doctor`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Where workers run: `docker` (this host's Docker Engine) or `kubernetes`
    /// (one Job per task in BERTH_KUBE_NAMESPACE, through the usual kubeconfig
    /// or the in-cluster service account).
    #[arg(long, env = names::BERTH_ENGINE, default_value = "docker")]
    pub engine: String,
    /// The namespace of the workers' Jobs (with BERTH_ENGINE=kubernetes).
    #[arg(long, env = names::BERTH_KUBE_NAMESPACE, default_value = "berth")]
    pub kube_namespace: String,
}

impl EngineArgs {
    /// The engine, checked.
    ///
    /// # Errors
    /// An unknown engine or an invalid namespace, naming the setting.
    pub fn validate(&self) -> Result<crate::engine::EngineChoice, ConfigError> {
        let kind = match self.engine.trim() {
            "docker" => crate::engine::EngineKind::Docker,
            "kubernetes" => crate::engine::EngineKind::Kubernetes,
            other => {
                return Err(invalid(
                    names::BERTH_ENGINE,
                    format!("must be docker or kubernetes, not {other:?}"),
                ));
            }
        };
        let namespace = self.kube_namespace.trim();
        let dns_label = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !dns_label {
            return Err(invalid(
                names::BERTH_KUBE_NAMESPACE,
                "must be a Kubernetes namespace name: lowercase letters, digits and '-', at most 63",
            ));
        }
        Ok(crate::engine::EngineChoice { kind, namespace: namespace.to_owned() })
    }
}

/// `berth cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The task id.
    pub task: String,
    /// The daemon's settings file.
    #[command(flatten)]
    pub config: DaemonFileArgs,
    /// The daemon's address.
    #[arg(long, env = names::BERTH_BIND, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The daemon's admin token.
    #[arg(long, env = names::BERTH_ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (instead of BERTH_ADMIN_TOKEN).
    #[arg(long, env = names::BERTH_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
}

/// Where `berth cancel` sends its request, and with which token.
#[derive(Debug)]
pub struct CancelTarget {
    /// The daemon's address (an unspecified IP is asked on loopback).
    pub addr: std::net::SocketAddr,
    /// The admin token.
    pub token: Secret,
}

impl CancelArgs {
    /// The daemon's address and the admin token, checked.
    ///
    /// # Errors
    /// No admin token, a bad one, or an address that does not parse, naming the setting.
    pub fn validate(&self) -> Result<CancelTarget, ConfigError> {
        let token =
            admin_token(self.admin_token.as_deref(), self.admin_token_file.as_deref())?.ok_or_else(|| {
                invalid(
                    names::BERTH_ADMIN_TOKEN,
                    format!("required (or {}): the status API needs it", names::BERTH_ADMIN_TOKEN_FILE),
                )
            })?;
        let mut addr: std::net::SocketAddr = self.bind.parse().map_err(|_| {
            invalid(names::BERTH_BIND, format!("{:?} is not an address like 127.0.0.1:8080", self.bind))
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(CancelTarget { addr, token })
    }
}

/// `berth demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its journal and keys (a fresh temporary directory by default).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Tag of the demo's worker image.
    #[arg(long, default_value = "berth-demo-worker:latest")]
    pub image: String,
}

/// `berth app-manifest`.
#[derive(Debug, Args)]
pub struct AppManifestArgs {
    /// The public base URL GitHub delivers to (the webhook is `<url>/webhook`).
    #[arg(long)]
    pub url: String,
    /// The App's name on GitHub.
    #[arg(long, default_value = "berth")]
    pub name: String,
}

/// `berth setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Where people and GitHub reach Berth (`https://berth.example.com`): the
    /// App's homepage; GitHub delivers to `<url>/webhook`.
    #[arg(long, env = names::BERTH_PUBLIC_URL)]
    pub url: Option<String>,
    /// The App's name on GitHub (unique across GitHub, at most 34 characters;
    /// GitHub's page lets you change it before creating).
    #[arg(long, default_value = "berth")]
    pub name: String,
    /// Create the App in this organisation rather than your personal account
    /// (the setup page can change it).
    #[arg(long)]
    pub org: Option<String>,
    /// Where the setup page listens; loopback by default: from your own
    /// machine, reach it with `ssh -N -L 8080:127.0.0.1:8080 <server>`.
    #[arg(long, env = names::BERTH_BIND, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Allow the setup page on all interfaces (0.0.0.0 or ::); refused otherwise.
    #[arg(long, env = names::BERTH_ALLOW_PUBLIC_BIND)]
    pub allow_public_bind: bool,
    /// Where the App's key, its webhook secret and `berth.toml` are written (mode 0600).
    #[arg(long, env = names::BERTH_STATE_DIR, default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
    /// GitHub REST base URL (GitHub Enterprise: `https://HOST/api/v3`).
    #[arg(long, env = names::BERTH_GITHUB_API_URL, default_value = "https://api.github.com")]
    pub github_api_url: String,
    /// GitHub's web address, where the App is created; by default github.com,
    /// or the host of a GitHub Enterprise `.../api/v3` URL.
    #[arg(long)]
    pub github_web_url: Option<String>,
    /// The agent `berth.toml` sets up: `claude-code` (README: Running a real
    /// agent) or `none` (the agent settings left to you).
    #[arg(long, default_value = "claude-code")]
    pub agent: String,
    /// Replace the files of an App set up before (the old App stays on GitHub
    /// until you delete it there).
    #[arg(long)]
    pub force: bool,
}

/// `berth ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The daemon's settings file.
    #[command(flatten)]
    pub config: DaemonFileArgs,
    /// Include exited workers.
    #[arg(long, short)]
    pub all: bool,
    /// List the clone cache's mirrors (size and last use) instead of workers.
    #[arg(long)]
    pub caches: bool,
    /// Where the daemon keeps its state (for the mirrors' size and last use).
    #[arg(long, env = names::BERTH_STATE_DIR, default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
    /// The engine the workers run on.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `berth serve`: every setting of the daemon.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file holding any of these settings by their long names (`max_workers = 8`);
    /// flags and `BERTH_*` variables take precedence over it.
    #[arg(long, env = names::BERTH_CONFIG)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = names::BERTH_BIND, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Allow listening on all interfaces (0.0.0.0 or ::); refused otherwise.
    #[arg(long, env = names::BERTH_ALLOW_PUBLIC_BIND)]
    pub allow_public_bind: bool,
    /// HMAC secret of the GitHub App's webhook.
    #[arg(long, env = names::BERTH_WEBHOOK_SECRET, hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// File holding the webhook secret (instead of BERTH_WEBHOOK_SECRET).
    #[arg(long, env = names::BERTH_WEBHOOK_SECRET_FILE)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The previous webhook secret, still accepted while a rotation is under way.
    #[arg(long, env = names::BERTH_WEBHOOK_SECRET_PREVIOUS, hide_env_values = true)]
    pub webhook_secret_previous: Option<String>,
    /// GitHub App id.
    #[arg(long, env = names::BERTH_GITHUB_APP_ID)]
    pub github_app_id: Option<String>,
    /// PEM file of the App's private key (PKCS#1 as GitHub issues it, or PKCS#8).
    #[arg(long, env = names::BERTH_GITHUB_PRIVATE_KEY_FILE)]
    pub github_private_key_file: Option<PathBuf>,
    /// GitHub REST base URL (GitHub Enterprise, or a local fake in tests).
    #[arg(long, env = names::BERTH_GITHUB_API_URL, default_value = "https://api.github.com")]
    pub github_api_url: String,
    /// Where people and GitHub reach Berth (`https://berth.example.com`); the
    /// App's webhook is `<url>/webhook` (`berth doctor` compares the two).
    #[arg(long, env = names::BERTH_PUBLIC_URL)]
    pub public_url: Option<String>,
    /// Image the workers run (built from this repository's Dockerfile; never pulled).
    #[arg(long, env = names::BERTH_WORKER_IMAGE, default_value = "berth:latest")]
    pub worker_image: String,
    /// Entrypoint of worker containers (the same image runs the daemon by default).
    #[arg(long, env = names::BERTH_WORKER_ENTRYPOINT, default_value = "/usr/local/bin/berth-worker")]
    pub worker_entrypoint: String,
    /// Docker network of the workers (on Kubernetes: the name their pods
    /// carry as `berth.network`, for NetworkPolicies to select on).
    #[arg(long, env = names::BERTH_WORKER_NETWORK, default_value = "bridge")]
    pub worker_network: String,
    /// Which engine runs the workers.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Running workers at once; more wait in a queue.
    #[arg(long, env = names::BERTH_MAX_WORKERS, default_value = "4")]
    pub max_workers: String,
    /// Running workers at once for any one repository (empty: only BERTH_MAX_WORKERS).
    #[arg(long, env = names::BERTH_MAX_WORKERS_PER_REPO, default_value = "")]
    pub max_workers_per_repo: String,
    /// Memory limit per worker (`512m`, `2g`); swap is set equal, so no extra swap.
    #[arg(long, env = names::BERTH_WORKER_MEMORY, default_value = "2g")]
    pub worker_memory: String,
    /// CPUs per worker (`2`, `0.5`).
    #[arg(long, env = names::BERTH_WORKER_CPUS, default_value = "2")]
    pub worker_cpus: String,
    /// Most processes per worker.
    #[arg(long, env = names::BERTH_WORKER_PIDS_LIMIT, default_value = "512")]
    pub worker_pids_limit: String,
    /// Add back CHOWN, FOWNER, SETUID and SETGID for images whose entrypoint drops privileges.
    #[arg(long, env = names::BERTH_WORKER_PRIVILEGE_DROP_CAPS)]
    pub worker_privilege_drop_caps: bool,
    /// Largest log file of a worker before the engine rotates it (`10m`).
    #[arg(long, env = names::BERTH_WORKER_LOG_MAX_SIZE, default_value = "10m")]
    pub worker_log_max_size: String,
    /// Log files the engine keeps per worker: its output on disk is at most
    /// this many times BERTH_WORKER_LOG_MAX_SIZE.
    #[arg(long, env = names::BERTH_WORKER_LOG_MAX_FILES, default_value = "3")]
    pub worker_log_max_files: String,
    /// Give workers a writable root filesystem (by default it is read-only and
    /// they write only to tmpfs at /tmp and their HOME).
    #[arg(long, env = names::BERTH_WORKER_WRITABLE_ROOT)]
    pub worker_writable_root: bool,
    /// Size of each worker tmpfs (/tmp and HOME; memory, counted in BERTH_WORKER_MEMORY).
    #[arg(long, env = names::BERTH_WORKER_SCRATCH_SIZE, default_value = "1g")]
    pub worker_scratch_size: String,
    /// Hard deadline per task (`90s`, `30m`, `2h`).
    #[arg(long, env = names::BERTH_TASK_TIMEOUT, default_value = "30m")]
    pub task_timeout: String,
    /// Grace between SIGTERM and SIGKILL when a worker is stopped.
    #[arg(long, env = names::BERTH_STOP_GRACE, default_value = "10s")]
    pub stop_grace: String,
    /// This deployment's name, written as `berth.instance` on its workers; a
    /// daemon only ever touches its own instance's containers.
    #[arg(long, env = names::BERTH_INSTANCE, default_value = "default")]
    pub instance: String,
    /// Where the journal lives.
    #[arg(long, env = names::BERTH_STATE_DIR, default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
    /// How long deliveries are remembered for dedupe (at least 3 days).
    #[arg(long, env = names::BERTH_DELIVERY_RETENTION, default_value = "72h")]
    pub delivery_retention: String,
    /// Bytes of a finished worker's output kept per task, under
    /// `<state dir>/logs`, after its container is removed (`5MiB`; `0` keeps none).
    #[arg(long, env = names::BERTH_LOG_KEEP, default_value = "5MiB")]
    pub log_keep: String,
    /// How long kept worker logs stay before they are pruned (`14d`).
    #[arg(long, env = names::BERTH_LOG_RETENTION, default_value = "14d")]
    pub log_retention: String,
    /// How long a finished task whose report reached GitHub stays in the
    /// journal, counted from its end (`30d`; at least BERTH_LOG_RETENTION
    /// and BERTH_DELIVERY_RETENTION). Unfinished or unreported tasks stay.
    #[arg(long, env = names::BERTH_TASK_RETENTION, default_value = "30d")]
    pub task_retention: String,
    /// How often a running task's check run is edited to show the latest
    /// lines of its log (only when they changed; at least `5s`).
    #[arg(long, env = names::BERTH_PROGRESS_INTERVAL, default_value = "30s")]
    pub progress_interval: String,
    /// Keep one bare mirror per repository in a volume and let workers borrow
    /// its objects (`on` or `off`; off on an engine without volumes).
    #[arg(long, env = names::BERTH_CLONE_CACHE, default_value = "on")]
    pub clone_cache: String,
    /// Total size of the clone cache's mirrors (`20g`); past it the least
    /// recently used are removed. Empty: no cap.
    #[arg(long, env = names::BERTH_CLONE_CACHE_SIZE, default_value = "")]
    pub clone_cache_size: String,
    /// Bearer token for /api/*; without it /api/* is refused.
    #[arg(long, env = names::BERTH_ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (instead of BERTH_ADMIN_TOKEN).
    #[arg(long, env = names::BERTH_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token for /metrics; without it /metrics is open.
    #[arg(long, env = names::BERTH_METRICS_TOKEN, hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// File holding the metrics token (instead of BERTH_METRICS_TOKEN).
    #[arg(long, env = names::BERTH_METRICS_TOKEN_FILE)]
    pub metrics_token_file: Option<PathBuf>,
    /// Open HTTP connections at most; at the limit a new one closes the
    /// longest idle one, or is closed itself when all are busy.
    #[arg(long, env = names::BERTH_MAX_CONNECTIONS, default_value = "512")]
    pub max_connections: String,
    /// Bytes of request bodies held at once across all connections (`64m`);
    /// a request whose body does not fit is answered 503.
    #[arg(long, env = names::BERTH_MAX_BODY_BYTES_IN_FLIGHT, default_value = "64m")]
    pub max_body_bytes_in_flight: String,
    /// Time for a complete request head, from the connection or the head's first byte.
    #[arg(long, env = names::BERTH_HEADER_READ_TIMEOUT, default_value = "10s")]
    pub header_read_timeout: String,
    /// Time for a complete request body after its head (408 past it).
    #[arg(long, env = names::BERTH_BODY_READ_TIMEOUT, default_value = "10s")]
    pub body_read_timeout: String,
    /// Time a kept-alive connection may wait for its next request.
    #[arg(long, env = names::BERTH_IDLE_TIMEOUT, default_value = "30s")]
    pub idle_timeout: String,
    /// Comma-separated logins allowed to trigger; empty means OWNER, MEMBER or COLLABORATOR.
    #[arg(long, env = names::BERTH_TRUSTED_USERS, default_value = "")]
    pub trusted_users: String,
    /// Comma-separated `owner/name` or `owner/*` patterns; empty means every repository.
    #[arg(long, env = names::BERTH_ALLOWED_REPOS, default_value = "")]
    pub allowed_repos: String,
    /// The command prefix in comments.
    #[arg(long, env = names::BERTH_COMMAND_PREFIX, default_value = "/berth")]
    pub command_prefix: String,
    /// Review pull requests automatically when opened, reopened, ready or pushed to.
    #[arg(long, env = names::BERTH_AUTO_REVIEW)]
    pub auto_review: bool,
    /// The command a worker runs for a task (placeholders in the README).
    #[arg(long, env = names::BERTH_AGENT_COMMAND, default_value = DEFAULT_AGENT_COMMAND)]
    pub agent_command: String,
    /// File of `NAME=VALUE` lines every worker gets in its environment (plain
    /// agent settings: a model base URL, a proxy, a model name); read again for each task.
    #[arg(long, env = names::BERTH_WORKER_ENV_FILE)]
    pub worker_env_file: Option<PathBuf>,
    /// File of `NAME=VALUE` lines every worker gets, whose values are secrets
    /// (`ANTHROPIC_API_KEY`): redacted from all output; read again for each task.
    #[arg(long, env = names::BERTH_WORKER_SECRETS_FILE)]
    pub worker_secrets_file: Option<PathBuf>,
    /// Template file replacing the default prompt of reviews (placeholders in the README).
    #[arg(long, env = names::BERTH_REVIEW_PROMPT_FILE)]
    pub review_prompt_file: Option<PathBuf>,
    /// Template file replacing the default prompt of implement tasks.
    #[arg(long, env = names::BERTH_IMPLEMENT_PROMPT_FILE)]
    pub implement_prompt_file: Option<PathBuf>,
    /// `berth doctor` only: the address whose reachability from a worker it
    /// checks (the cloud metadata service; tests point it at a local port).
    #[arg(long, env = names::BERTH_DOCTOR_EGRESS_PROBE, default_value = "169.254.169.254:80", hide = true)]
    pub doctor_egress_probe: String,
    /// Log format: `human` or `json`.
    #[arg(long, env = names::BERTH_LOG_FORMAT, default_value = "human")]
    pub log_format: String,
}

/// The longest `BERTH_TASK_TIMEOUT`: a worker's installation token lives one
/// hour from its creation, and must still be valid when the worker pushes at
/// its deadline (adr/0011).
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(50 * 60);

/// The shortest `BERTH_PROGRESS_INTERVAL`: each progress edit is a GitHub API call.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The agent command when none is configured.
pub const DEFAULT_AGENT_COMMAND: &str = "agent --kind {kind} --repo {repo} --number {number} --prompt-file {prompt_file} --summary-file {summary_file}";

/// One setting that is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    /// The environment variable naming the setting.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// The current webhook secret.
    pub webhook_secret: Secret,
    /// The previous webhook secret, during a rotation.
    pub webhook_secret_previous: Option<Secret>,
    /// The GitHub App id.
    pub github_app_id: u64,
    /// The App's private key (PEM).
    pub github_private_key: Secret,
    /// The REST base URL, without a trailing slash.
    pub github_api_url: String,
    /// Where people and GitHub reach Berth, without a trailing slash.
    pub public_url: Option<String>,
    /// Worker image.
    pub worker_image: String,
    /// Worker entrypoint.
    pub worker_entrypoint: String,
    /// Worker network.
    pub worker_network: String,
    /// The engine that runs the workers.
    pub engine: crate::engine::EngineChoice,
    /// Running workers at once.
    pub max_workers: usize,
    /// Running workers at once per repository, if capped.
    pub max_workers_per_repo: Option<usize>,
    /// Worker memory in bytes.
    pub worker_memory_bytes: i64,
    /// Worker CPUs in billionths.
    pub worker_nano_cpus: i64,
    /// Worker pids limit.
    pub worker_pids_limit: i64,
    /// Whether workers get the privilege-drop capabilities back.
    pub worker_privilege_drop_caps: bool,
    /// Largest log file of a worker, in bytes.
    pub worker_log_max_bytes: i64,
    /// Log files kept per worker.
    pub worker_log_max_files: u32,
    /// Whether workers' root filesystem is writable.
    pub worker_writable_root: bool,
    /// Size of each worker tmpfs, in bytes.
    pub worker_scratch_bytes: i64,
    /// Hard deadline per task.
    pub task_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace.
    pub stop_grace: Duration,
    /// This deployment's name.
    pub instance: String,
    /// Journal directory.
    pub state_dir: PathBuf,
    /// Delivery retention.
    pub delivery_retention: Duration,
    /// Bytes of a finished worker's output kept per task; 0 keeps none.
    pub log_keep_bytes: usize,
    /// How long kept worker logs stay.
    pub log_retention: Duration,
    /// How long finished and reported tasks stay in the journal.
    pub task_retention: Duration,
    /// How often a running task's check run shows its latest lines.
    pub progress_interval: Duration,
    /// Whether the clone cache is on (it is still off on an engine without volumes).
    pub clone_cache: bool,
    /// The clone cache's total size cap in bytes, if any.
    pub clone_cache_size: Option<u64>,
    /// Admin token for /api/*.
    pub admin_token: Option<Secret>,
    /// Bearer token for /metrics; `None`: open.
    pub metrics_token: Option<Secret>,
    /// The HTTP server's connection, body and time limits.
    pub http: HttpLimits,
    /// Trigger and trust rules.
    pub policy: Policy,
    /// The agent command.
    pub agent_command: String,
    /// The agent's settings and secrets files.
    pub agent_env_files: AgentEnvFiles,
    /// The prompts per kind.
    pub prompts: Prompts,
    /// Emit JSON logs.
    pub json_logs: bool,
}

/// Parses `90s`, `30m`, `2h`, `1d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m or 2h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} has unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// Parses `512m`, `2g`, `1024k` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.trim_end_matches(['b', 'i']);
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| format!("{text:?} is not a size like 512m or 2g"))?;
    let factor: i64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{text:?} has unknown unit {unit:?} (use k, m or g)")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

fn read_secret_file(setting: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| invalid(setting, format!("cannot read {}: {err}", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(invalid(setting, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(text))
}

/// The admin token from BERTH_ADMIN_TOKEN or BERTH_ADMIN_TOKEN_FILE (not both); `None` when neither is set.
///
/// # Errors
/// Both set, the file unreadable or empty, or a token under 16 characters
/// (named after the setting it came from).
pub fn admin_token(
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, ConfigError> {
    bearer_token((names::BERTH_ADMIN_TOKEN, value), (names::BERTH_ADMIN_TOKEN_FILE, file))
}

/// The shortest SIGTERM-to-SIGKILL grace for a worker's container: the
/// worker's own for its agent is 2 s shorter, and at least 1 s.
const MIN_STOP_GRACE: Duration = Duration::from_secs(3);

/// The shortest secret Berth takes: a webhook secret, an admin or metrics token.
pub const MIN_SECRET_CHARS: usize = 16;

/// A secret given either as a value or as a file (not both); `None` when
/// neither is set.
fn bearer_token(
    (setting, value): (&'static str, Option<&str>),
    (file_setting, file): (&'static str, Option<&std::path::Path>),
) -> Result<Option<Secret>, ConfigError> {
    let file = file.filter(|path| !path.as_os_str().is_empty());
    let (setting, token) = match (value.filter(|token| !token.is_empty()), file) {
        (Some(_), Some(_)) => {
            return Err(invalid(setting, format!("set either {setting} or {file_setting}, not both")));
        }
        (Some(token), None) => (setting, Secret::new(token)),
        (None, Some(path)) => (file_setting, read_secret_file(file_setting, path)?),
        (None, None) => return Ok(None),
    };
    long_enough(setting, &token)?;
    Ok(Some(token))
}

fn long_enough(setting: &'static str, secret: &Secret) -> Result<(), ConfigError> {
    if secret.expose().chars().count() < MIN_SECRET_CHARS {
        return Err(invalid(setting, format!("must be at least {MIN_SECRET_CHARS} characters")));
    }
    Ok(())
}

/// The flags of `berth serve` that carry a secret on the command line.
const SECRET_FLAGS: [(&str, &str); 4] = [
    ("--webhook-secret", names::BERTH_WEBHOOK_SECRET_FILE),
    ("--webhook-secret-previous", names::BERTH_WEBHOOK_SECRET_PREVIOUS),
    ("--admin-token", names::BERTH_ADMIN_TOKEN_FILE),
    ("--metrics-token", names::BERTH_METRICS_TOKEN_FILE),
];

/// The secret-carrying flags (and the safer setting for each) among the
/// process's own arguments: any user of the machine can read those with
/// `ps`. A setting from the environment, a file or `--config` is not
/// counted, since those never reach the arguments.
pub fn secret_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<(&'static str, &'static str)> {
    let args: Vec<String> = args.into_iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    SECRET_FLAGS
        .into_iter()
        .filter(|(flag, _)| {
            args.iter()
                .take_while(|arg| *arg != "--")
                .any(|arg| arg == flag || arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')))
        })
        .collect()
}

impl ServeArgs {
    /// Checks every setting and returns the typed configuration.
    ///
    /// # Errors
    /// The first setting that is missing or invalid.
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let bind = check_bind(&self.bind, self.allow_public_bind, "bind one private address")?;
        let webhook_secret = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    names::BERTH_WEBHOOK_SECRET,
                    format!(
                        "set either {} or {}, not both",
                        names::BERTH_WEBHOOK_SECRET,
                        names::BERTH_WEBHOOK_SECRET_FILE
                    ),
                ));
            }
            (Some(secret), None) if !secret.is_empty() => {
                let secret = Secret::new(secret.clone());
                long_enough(names::BERTH_WEBHOOK_SECRET, &secret)?;
                secret
            }
            (None, Some(path)) => {
                let secret = read_secret_file(names::BERTH_WEBHOOK_SECRET_FILE, path)?;
                long_enough(names::BERTH_WEBHOOK_SECRET_FILE, &secret)?;
                secret
            }
            _ => {
                return Err(invalid(
                    names::BERTH_WEBHOOK_SECRET,
                    format!("required (or {})", names::BERTH_WEBHOOK_SECRET_FILE),
                ));
            }
        };
        let webhook_secret_previous =
            self.webhook_secret_previous.clone().filter(|value| !value.is_empty()).map(Secret::new);
        if let Some(previous) = &webhook_secret_previous {
            long_enough(names::BERTH_WEBHOOK_SECRET_PREVIOUS, previous)?;
        }
        let github_app_id =
            self.github_app_id.as_deref().ok_or_else(|| invalid(names::BERTH_GITHUB_APP_ID, "required"))?;
        let github_app_id: u64 = github_app_id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            invalid(names::BERTH_GITHUB_APP_ID, format!("{github_app_id:?} is not a positive number"))
        })?;
        let key_path = self
            .github_private_key_file
            .as_ref()
            .ok_or_else(|| invalid(names::BERTH_GITHUB_PRIVATE_KEY_FILE, "required"))?;
        let github_private_key = read_secret_file(names::BERTH_GITHUB_PRIVATE_KEY_FILE, key_path)?;
        check_private_key(github_private_key.expose()).map_err(|reason| {
            invalid(names::BERTH_GITHUB_PRIVATE_KEY_FILE, format!("{}: {reason}", key_path.display()))
        })?;
        let github_api_url = self.github_api_url.trim_end_matches('/').to_owned();
        if !(github_api_url.starts_with("https://") || github_api_url.starts_with("http://")) {
            return Err(invalid(
                names::BERTH_GITHUB_API_URL,
                format!("{github_api_url:?} is not an http(s) URL"),
            ));
        }
        let public_url = match self.public_url.as_deref().filter(|url| !url.trim().is_empty()) {
            Some(url) => Some(public_url(url).map_err(|reason| invalid(names::BERTH_PUBLIC_URL, reason))?),
            None => None,
        };
        if self.worker_image.trim().is_empty() {
            return Err(invalid(names::BERTH_WORKER_IMAGE, "must not be empty"));
        }
        if !self.worker_entrypoint.starts_with('/') {
            return Err(invalid(names::BERTH_WORKER_ENTRYPOINT, "must be an absolute path inside the image"));
        }
        if self.worker_network.trim().is_empty() || self.worker_network == "host" {
            return Err(invalid(names::BERTH_WORKER_NETWORK, "must name a network other than host"));
        }
        let max_workers: usize =
            self.max_workers.parse().ok().filter(|count| *count > 0).ok_or_else(|| {
                invalid(names::BERTH_MAX_WORKERS, format!("{:?} is not a positive number", self.max_workers))
            })?;
        let max_workers_per_repo = match self.max_workers_per_repo.trim() {
            "" => None,
            text => Some(text.parse::<usize>().ok().filter(|count| *count > 0).ok_or_else(|| {
                invalid(names::BERTH_MAX_WORKERS_PER_REPO, format!("{text:?} is not a positive number"))
            })?),
        };
        let worker_memory_bytes =
            parse_size(&self.worker_memory).map_err(|reason| invalid(names::BERTH_WORKER_MEMORY, reason))?;
        if worker_memory_bytes < 6 * 1024 * 1024 {
            return Err(invalid(names::BERTH_WORKER_MEMORY, "must be at least 6m (Docker's minimum)"));
        }
        let cpus: f64 = self
            .worker_cpus
            .parse()
            .ok()
            .filter(|cpus: &f64| cpus.is_finite() && *cpus > 0.0 && *cpus <= 1024.0)
            .ok_or_else(|| {
                invalid(
                    names::BERTH_WORKER_CPUS,
                    format!("{:?} is not a number of CPUs like 2 or 0.5", self.worker_cpus),
                )
            })?;
        #[expect(clippy::cast_possible_truncation, reason = "bounded to 1024 CPUs above")]
        let worker_nano_cpus = (cpus * 1e9).round() as i64;
        let worker_pids_limit: i64 =
            self.worker_pids_limit.parse().ok().filter(|limit| *limit > 0).ok_or_else(|| {
                invalid(
                    names::BERTH_WORKER_PIDS_LIMIT,
                    format!("{:?} is not a positive number", self.worker_pids_limit),
                )
            })?;
        let worker_log_max_bytes = parse_size(&self.worker_log_max_size)
            .map_err(|reason| invalid(names::BERTH_WORKER_LOG_MAX_SIZE, reason))?;
        if worker_log_max_bytes < 1024 * 1024 {
            return Err(invalid(names::BERTH_WORKER_LOG_MAX_SIZE, "must be at least 1m"));
        }
        let worker_log_max_files: u32 =
            self.worker_log_max_files.parse().ok().filter(|files| (1..=100).contains(files)).ok_or_else(
                || {
                    invalid(
                        names::BERTH_WORKER_LOG_MAX_FILES,
                        format!("{:?} is not a number from 1 to 100", self.worker_log_max_files),
                    )
                },
            )?;
        let worker_scratch_bytes = parse_size(&self.worker_scratch_size)
            .map_err(|reason| invalid(names::BERTH_WORKER_SCRATCH_SIZE, reason))?;
        if worker_scratch_bytes < 16 * 1024 * 1024 {
            return Err(invalid(names::BERTH_WORKER_SCRATCH_SIZE, "must be at least 16m"));
        }
        let task_timeout = parse_duration(&self.task_timeout)
            .map_err(|reason| invalid(names::BERTH_TASK_TIMEOUT, reason))?;
        if task_timeout.is_zero() {
            return Err(invalid(names::BERTH_TASK_TIMEOUT, "must be longer than zero"));
        }
        if task_timeout > MAX_TASK_TIMEOUT {
            return Err(invalid(
                names::BERTH_TASK_TIMEOUT,
                format!(
                    "{} is longer than 50m: a worker's GitHub token expires one hour after it is made, so a longer task would fail at its push",
                    self.task_timeout.trim()
                ),
            ));
        }
        let stop_grace =
            parse_duration(&self.stop_grace).map_err(|reason| invalid(names::BERTH_STOP_GRACE, reason))?;
        if stop_grace < MIN_STOP_GRACE {
            return Err(invalid(
                names::BERTH_STOP_GRACE,
                "must be at least 3s: the worker gets 2 s less to stop its agent and write its result",
            ));
        }
        let delivery_retention = parse_duration(&self.delivery_retention)
            .map_err(|reason| invalid(names::BERTH_DELIVERY_RETENTION, reason))?;
        if delivery_retention < Duration::from_secs(72 * 3600) {
            return Err(invalid(
                names::BERTH_DELIVERY_RETENTION,
                "must be at least 72h (GitHub redelivers for 3 days)",
            ));
        }
        let log_keep_bytes = parse_size(&self.log_keep)
            .map_err(|reason| invalid(names::BERTH_LOG_KEEP, reason))
            .and_then(|bytes| {
                usize::try_from(bytes)
                    .map_err(|_| invalid(names::BERTH_LOG_KEEP, format!("{bytes} is too large")))
            })?;
        let log_retention = parse_duration(&self.log_retention)
            .map_err(|reason| invalid(names::BERTH_LOG_RETENTION, reason))?;
        if log_retention.is_zero() {
            return Err(invalid(names::BERTH_LOG_RETENTION, "must be longer than zero"));
        }
        let task_retention = parse_duration(&self.task_retention)
            .map_err(|reason| invalid(names::BERTH_TASK_RETENTION, reason))?;
        let outlived = [
            (
                log_retention,
                names::BERTH_LOG_RETENTION,
                &self.log_retention,
                "a kept log would outlive its task, out of reach of the task's page",
            ),
            (
                delivery_retention,
                names::BERTH_DELIVERY_RETENTION,
                &self.delivery_retention,
                "a task's comment is forgotten with the task, and the same comment sent again under a new delivery id would make it again",
            ),
        ];
        for (other, name, value, why) in outlived {
            if task_retention < other {
                return Err(invalid(
                    names::BERTH_TASK_RETENTION,
                    format!(
                        "{} is shorter than {name} ({}): {why}",
                        self.task_retention.trim(),
                        value.trim()
                    ),
                ));
            }
        }
        let progress_interval = parse_duration(&self.progress_interval)
            .map_err(|reason| invalid(names::BERTH_PROGRESS_INTERVAL, reason))?;
        if progress_interval < MIN_PROGRESS_INTERVAL {
            return Err(invalid(
                names::BERTH_PROGRESS_INTERVAL,
                "must be at least 5s (every edit is a GitHub API call)",
            ));
        }
        let clone_cache = match self.clone_cache.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            other => return Err(invalid(names::BERTH_CLONE_CACHE, format!("{other:?} is not on or off"))),
        };
        let clone_cache_size = match self.clone_cache_size.trim() {
            "" => None,
            size => {
                let bytes =
                    parse_size(size).map_err(|reason| invalid(names::BERTH_CLONE_CACHE_SIZE, reason))?;
                match u64::try_from(bytes) {
                    Ok(bytes) if bytes > 0 => Some(bytes),
                    _ => {
                        return Err(invalid(
                            names::BERTH_CLONE_CACHE_SIZE,
                            "must be larger than zero (use BERTH_CLONE_CACHE=off for no cache)",
                        ));
                    }
                }
            }
        };
        let admin_token = admin_token(self.admin_token.as_deref(), self.admin_token_file.as_deref())?;
        let metrics_token = bearer_token(
            (names::BERTH_METRICS_TOKEN, self.metrics_token.as_deref()),
            (names::BERTH_METRICS_TOKEN_FILE, self.metrics_token_file.as_deref()),
        )?;
        let http = self.http_limits()?;
        if core_types::TaskId::new(self.instance.clone()).is_err() {
            return Err(invalid(
                names::BERTH_INSTANCE,
                format!("{:?} must be lowercase letters, digits and '-'", self.instance),
            ));
        }
        let command_prefix = self.command_prefix.trim().to_owned();
        if command_prefix.is_empty() || command_prefix.contains(char::is_whitespace) {
            return Err(invalid(names::BERTH_COMMAND_PREFIX, "must be one word like /berth"));
        }
        let allowed_repos = list(&self.allowed_repos);
        if let Some(bad) = allowed_repos.iter().find(|pattern| {
            !(core_types::is_repo_name(pattern)
                || pattern.strip_suffix("/*").is_some_and(|owner| !owner.is_empty() && !owner.contains('/')))
        }) {
            return Err(invalid(names::BERTH_ALLOWED_REPOS, format!("{bad:?} is not owner/name or owner/*")));
        }
        if self.agent_command.trim().is_empty() {
            return Err(invalid(names::BERTH_AGENT_COMMAND, "must not be empty"));
        }
        let agent_env_files = AgentEnvFiles {
            env_file: self.worker_env_file.clone().filter(|path| !path.as_os_str().is_empty()),
            secrets_file: self.worker_secrets_file.clone().filter(|path| !path.as_os_str().is_empty()),
        };
        agent_env_files.load().map_err(|(setting, err)| invalid(setting, err.to_string()))?;
        let mut prompts = Prompts::default();
        if let Some(path) = &self.review_prompt_file {
            prompts.review = read_template(names::BERTH_REVIEW_PROMPT_FILE, path)?;
        }
        if let Some(path) = &self.implement_prompt_file {
            prompts.implement = read_template(names::BERTH_IMPLEMENT_PROMPT_FILE, path)?;
        }
        let json_logs = match self.log_format.as_str() {
            "human" => false,
            "json" => true,
            other => return Err(invalid(names::BERTH_LOG_FORMAT, format!("{other:?} is not human or json"))),
        };
        Ok(ServeConfig {
            bind,
            webhook_secret,
            webhook_secret_previous,
            github_app_id,
            github_private_key,
            github_api_url,
            public_url,
            worker_image: self.worker_image.clone(),
            worker_entrypoint: self.worker_entrypoint.clone(),
            worker_network: self.worker_network.clone(),
            engine: self.engine.validate()?,
            max_workers,
            max_workers_per_repo,
            worker_memory_bytes,
            worker_nano_cpus,
            worker_pids_limit,
            worker_privilege_drop_caps: self.worker_privilege_drop_caps,
            worker_log_max_bytes,
            worker_log_max_files,
            worker_writable_root: self.worker_writable_root,
            worker_scratch_bytes,
            task_timeout,
            stop_grace,
            instance: self.instance.clone(),
            state_dir: self.state_dir.clone(),
            delivery_retention,
            log_keep_bytes,
            log_retention,
            task_retention,
            progress_interval,
            clone_cache,
            clone_cache_size,
            admin_token,
            metrics_token,
            http,
            policy: Policy {
                command_prefix,
                trusted_users: list(&self.trusted_users),
                allowed_repos,
                auto_review: self.auto_review,
                app_id: Some(github_app_id),
            },
            agent_command: self.agent_command.clone(),
            agent_env_files,
            prompts,
            json_logs,
        })
    }
}

impl ServeArgs {
    /// The HTTP server's limits from their settings.
    fn http_limits(&self) -> Result<HttpLimits, ConfigError> {
        let max_connections: usize = self
            .max_connections
            .trim()
            .parse()
            .ok()
            .filter(|count| (1..=1_000_000).contains(count))
            .ok_or_else(|| {
                invalid(
                    names::BERTH_MAX_CONNECTIONS,
                    format!("{:?} is not a number from 1 to 1000000", self.max_connections),
                )
            })?;
        let budget = parse_size(&self.max_body_bytes_in_flight)
            .map_err(|reason| invalid(names::BERTH_MAX_BODY_BYTES_IN_FLIGHT, reason))?;
        let max_body_bytes_in_flight =
            usize::try_from(budget).ok().filter(|budget| *budget >= MAX_WEBHOOK_BODY).ok_or_else(|| {
                invalid(
                    names::BERTH_MAX_BODY_BYTES_IN_FLIGHT,
                    "must be at least 25m, GitHub's largest payload",
                )
            })?;
        let timeout = |setting: &'static str, text: &str| {
            let timeout = parse_duration(text).map_err(|reason| invalid(setting, reason))?;
            if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                return Err(invalid(setting, "must be from 1s to 1h"));
            }
            Ok(timeout)
        };
        Ok(HttpLimits {
            max_connections,
            max_body_bytes_in_flight,
            header_read_timeout: timeout(names::BERTH_HEADER_READ_TIMEOUT, &self.header_read_timeout)?,
            body_read_timeout: timeout(names::BERTH_BODY_READ_TIMEOUT, &self.body_read_timeout)?,
            idle_timeout: timeout(names::BERTH_IDLE_TIMEOUT, &self.idle_timeout)?,
            ..HttpLimits::default()
        })
    }
}

/// `BERTH_BIND` as an address; every interface only when allowed, else
/// refused with `instead` as the way out.
fn check_bind(text: &str, allow_public: bool, instead: &str) -> Result<SocketAddr, ConfigError> {
    let bind: SocketAddr = text
        .parse()
        .map_err(|_| invalid(names::BERTH_BIND, format!("{text:?} is not an address like 127.0.0.1:8080")))?;
    if bind.ip().is_unspecified() && !allow_public {
        return Err(invalid(
            names::BERTH_BIND,
            format!(
                "{bind} listens on every interface; {instead} or set {}=true",
                names::BERTH_ALLOW_PUBLIC_BIND
            ),
        ));
    }
    Ok(bind)
}

fn read_template(setting: &'static str, path: &std::path::Path) -> Result<Template, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| invalid(setting, format!("cannot read {}: {err}", path.display())))?;
    Template::parse(&text).map_err(|err| invalid(setting, format!("{}: {err}", path.display())))
}

/// `BERTH_PUBLIC_URL`: an http(s) URL with a host and no query or fragment,
/// returned without its trailing slash.
///
/// # Errors
/// What is wrong with it.
pub fn public_url(text: &str) -> Result<String, String> {
    let url = text.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http(s) URL like https://berth.example.com"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(format!("{url:?} names no host"));
    }
    if rest.contains(['?', '#']) || rest.contains(char::is_whitespace) || rest.contains(char::is_control) {
        return Err(format!("{url:?} must be a plain base URL (no query, fragment or spaces)"));
    }
    Ok(url.to_owned())
}

/// A light check that the key is a PEM private key (PKCS#1 or PKCS#8).
fn check_private_key(pem: &str) -> Result<(), &'static str> {
    let pem = pem.trim();
    let rsa =
        pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") && pem.ends_with("-----END RSA PRIVATE KEY-----");
    let pkcs8 = pem.starts_with("-----BEGIN PRIVATE KEY-----") && pem.ends_with("-----END PRIVATE KEY-----");
    if rsa || pkcs8 {
        Ok(())
    } else {
        Err("not a PEM private key (expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)")
    }
}

/// Adds the settings of the TOML file named by `--config` (or `BERTH_CONFIG`)
/// to the command line of `serve` and `doctor`, as flags, for every setting
/// that neither a flag nor its `BERTH_*` variable already gives. `ps`,
/// `logs` and `cancel` take from it only the settings they have (the state
/// directory, the engine, the address, the admin token); every key must
/// still be one of the daemon's.
///
/// # Errors
/// An unreadable file, invalid TOML, or an unknown key, naming `BERTH_CONFIG`.
pub fn with_config_file(
    args: Vec<std::ffi::OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<std::ffi::OsString>, ConfigError> {
    use clap::CommandFactory;
    let text: Vec<String> = args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    let Some(position) = text.iter().skip(1).position(|arg| !arg.starts_with('-')).map(|index| index + 1)
    else {
        return Ok(args);
    };
    let subcommand = text[position].clone();
    if !matches!(subcommand.as_str(), "serve" | "doctor" | "ps" | "logs" | "cancel") {
        return Ok(args);
    }
    let from_flag = text.iter().enumerate().find_map(|(index, arg)| {
        arg.strip_prefix("--config=")
            .map(str::to_owned)
            .or_else(|| (arg == "--config").then(|| text.get(index + 1).cloned()).flatten())
    });
    let Some(path) = from_flag.or_else(|| env(names::BERTH_CONFIG)).filter(|path| !path.is_empty()) else {
        return Ok(args);
    };
    let content = std::fs::read_to_string(&path)
        .map_err(|err| invalid(names::BERTH_CONFIG, format!("cannot read {path}: {err}")))?;
    let table: toml::Table = content.parse().map_err(|err: toml::de::Error| {
        invalid(names::BERTH_CONFIG, format!("{path} is not valid TOML: {}", err.message()))
    })?;
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("the serve command exists");
    let this = command.find_subcommand(&subcommand).expect("one of berth's commands");
    let mut extra = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let named = |arg: &&clap::Arg| arg.get_long() == Some(long.as_str()) && long != "config";
        if !serve.get_arguments().any(|arg| named(&arg)) {
            return Err(invalid(names::BERTH_CONFIG, format!("{path}: unknown setting {key:?}")));
        }
        // A daemon setting this command does not have (`ps` and the GitHub App).
        let Some(arg) = this.get_arguments().find(named) else { continue };
        let flag = format!("--{long}");
        // A secret and its file are one setting: a token given by flag or
        // environment is not joined by the file's `admin_token_file`.
        let sibling = long.strip_suffix("-file").map_or_else(|| format!("{long}-file"), str::to_owned);
        let sibling = this.get_arguments().find(|arg| arg.get_long() == Some(sibling.as_str()));
        let given = |arg: &clap::Arg| {
            let flag = format!("--{}", arg.get_long().unwrap_or_default());
            text.iter().any(|given| *given == flag || given.starts_with(&format!("{flag}=")))
                || arg.get_env().and_then(|name| env(&name.to_string_lossy())).is_some()
        };
        if given(arg) || sibling.is_some_and(given) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => extra.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(text) => extra.push(format!("{flag}={text}")),
            toml::Value::Integer(number) => extra.push(format!("{flag}={number}")),
            toml::Value::Float(number) => extra.push(format!("{flag}={number}")),
            toml::Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(text) => text.clone(),
                        toml::Value::Integer(number) => number.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                extra.push(format!("{flag}={}", items.join(",")));
            }
            other => {
                return Err(invalid(
                    names::BERTH_CONFIG,
                    format!("{path}: {key} has an unsupported value {}", other.type_str()),
                ));
            }
        }
    }
    let mut merged = args;
    let tail = merged.split_off(position + 1);
    merged.extend(extra.into_iter().map(std::ffi::OsString::from));
    merged.extend(tail);
    Ok(merged)
}

impl SetupArgs {
    /// Checks the settings of `berth setup`.
    ///
    /// # Errors
    /// The first setting that is missing or invalid.
    pub fn validate(&self) -> Result<crate::setup::SetupConfig, ConfigError> {
        let url = self.url.as_deref().filter(|url| !url.trim().is_empty()).ok_or_else(|| {
            invalid(
                names::BERTH_PUBLIC_URL,
                "required (--url): where GitHub reaches Berth, like https://berth.example.com",
            )
        })?;
        let public_url = public_url(url).map_err(|reason| invalid(names::BERTH_PUBLIC_URL, reason))?;
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 34 {
            return Err(invalid("--name", "must be 1 to 34 characters (GitHub's limit for App names)"));
        }
        let org = match self.org.as_deref().map(str::trim).filter(|org| !org.is_empty()) {
            Some(org) if crate::setup::is_account_name(org) => Some(org.to_owned()),
            Some(org) => return Err(invalid("--org", format!("{org:?} is not a GitHub organisation name"))),
            None => None,
        };
        let bind = check_bind(
            &self.bind,
            self.allow_public_bind,
            "keep the setup page on loopback (reach it with ssh -L)",
        )?;
        let github_api_url = self.github_api_url.trim().trim_end_matches('/').to_owned();
        if !(github_api_url.starts_with("https://") || github_api_url.starts_with("http://")) {
            return Err(invalid(
                names::BERTH_GITHUB_API_URL,
                format!("{github_api_url:?} is not an http(s) URL"),
            ));
        }
        let github_web_url = match self.github_web_url.as_deref().filter(|url| !url.trim().is_empty()) {
            Some(url) => self::public_url(url).map_err(|reason| invalid("--github-web-url", reason))?,
            None => crate::status::Links::new(&github_api_url).web_base().to_owned(),
        };
        let agent = match self.agent.trim() {
            "claude-code" => crate::setup::Agent::ClaudeCode,
            "none" => crate::setup::Agent::None,
            other => return Err(invalid("--agent", format!("{other:?} is not claude-code or none"))),
        };
        if self.state_dir.to_str().is_none() {
            return Err(invalid(names::BERTH_STATE_DIR, "must be a UTF-8 path (it goes into berth.toml)"));
        }
        let state_dir = std::path::absolute(&self.state_dir)
            .map_err(|err| invalid(names::BERTH_STATE_DIR, format!("{}: {err}", self.state_dir.display())))?;
        Ok(crate::setup::SetupConfig {
            public_url,
            name,
            org,
            bind,
            state_dir,
            github_api_url,
            github_web_url,
            agent,
            force: self.force,
            state_ttl: crate::setup::STATE_TTL,
        })
    }
}
