//! Every `BERTH_*` environment variable Berth reads or sets, as one named
//! constant each, so that a name is spelled once and a typo fails to compile.
//!
//! The constants come in three groups, in this order: the daemon's settings
//! (the environment fallback of each `berth serve` flag, all of them listed in
//! the README's settings table), the worker's contract (what the daemon hands
//! a worker container, and what the worker hands the agent), and knobs of
//! probes, tests and benchmarks. Each constant's value is its own name; a unit
//! test checks that, that no two are equal, and that the README lists every
//! daemon setting.
//!
//! The Compose file's own variables (`BERTH_IMAGE`, `BERTH_PUBLISH_PORT`, ...)
//! are not here: no Rust code reads them.

/// The prefix of every name here, which an operator's agent settings may not use.
pub const PREFIX: &str = "BERTH_";

// Daemon settings: the environment fallback of each `berth serve` flag.

/// TOML file holding any of the settings below by their long names.
pub const BERTH_CONFIG: &str = "BERTH_CONFIG";
/// Address the daemon (or the setup page) listens on.
pub const BERTH_BIND: &str = "BERTH_BIND";
/// Allow listening on all interfaces (0.0.0.0 or ::); refused otherwise.
pub const BERTH_ALLOW_PUBLIC_BIND: &str = "BERTH_ALLOW_PUBLIC_BIND";
/// HMAC secret of the GitHub App's webhook.
pub const BERTH_WEBHOOK_SECRET: &str = "BERTH_WEBHOOK_SECRET";
/// File holding the webhook secret (instead of `BERTH_WEBHOOK_SECRET`).
pub const BERTH_WEBHOOK_SECRET_FILE: &str = "BERTH_WEBHOOK_SECRET_FILE";
/// The previous webhook secret, still accepted while a rotation is under way.
pub const BERTH_WEBHOOK_SECRET_PREVIOUS: &str = "BERTH_WEBHOOK_SECRET_PREVIOUS";
/// GitHub App id.
pub const BERTH_GITHUB_APP_ID: &str = "BERTH_GITHUB_APP_ID";
/// PEM file of the App's private key (PKCS#1 or PKCS#8).
pub const BERTH_GITHUB_PRIVATE_KEY_FILE: &str = "BERTH_GITHUB_PRIVATE_KEY_FILE";
/// GitHub REST base URL (GitHub Enterprise, or a local fake in tests).
pub const BERTH_GITHUB_API_URL: &str = "BERTH_GITHUB_API_URL";
/// Where people and GitHub reach Berth; the App's webhook is `<url>/webhook`.
pub const BERTH_PUBLIC_URL: &str = "BERTH_PUBLIC_URL";
/// Image the workers run.
pub const BERTH_WORKER_IMAGE: &str = "BERTH_WORKER_IMAGE";
/// Entrypoint of worker containers.
pub const BERTH_WORKER_ENTRYPOINT: &str = "BERTH_WORKER_ENTRYPOINT";
/// Docker network of the workers.
pub const BERTH_WORKER_NETWORK: &str = "BERTH_WORKER_NETWORK";
/// Where workers run: `docker` (this host's engine) or `kubernetes` (one Job per task).
pub const BERTH_ENGINE: &str = "BERTH_ENGINE";
/// The Kubernetes namespace of the workers' Jobs, with `BERTH_ENGINE=kubernetes`.
pub const BERTH_KUBE_NAMESPACE: &str = "BERTH_KUBE_NAMESPACE";
/// Running workers at once; more wait in a queue.
pub const BERTH_MAX_WORKERS: &str = "BERTH_MAX_WORKERS";
/// Running workers at once for any one repository.
pub const BERTH_MAX_WORKERS_PER_REPO: &str = "BERTH_MAX_WORKERS_PER_REPO";
/// Memory limit per worker (`512m`, `2g`).
pub const BERTH_WORKER_MEMORY: &str = "BERTH_WORKER_MEMORY";
/// CPUs per worker (`2`, `0.5`).
pub const BERTH_WORKER_CPUS: &str = "BERTH_WORKER_CPUS";
/// Most processes per worker.
pub const BERTH_WORKER_PIDS_LIMIT: &str = "BERTH_WORKER_PIDS_LIMIT";
/// Add back CHOWN, FOWNER, SETUID and SETGID for images whose entrypoint drops privileges.
pub const BERTH_WORKER_PRIVILEGE_DROP_CAPS: &str = "BERTH_WORKER_PRIVILEGE_DROP_CAPS";
/// Largest log file of a worker before the engine rotates it.
pub const BERTH_WORKER_LOG_MAX_SIZE: &str = "BERTH_WORKER_LOG_MAX_SIZE";
/// Log files the engine keeps per worker.
pub const BERTH_WORKER_LOG_MAX_FILES: &str = "BERTH_WORKER_LOG_MAX_FILES";
/// Give workers a writable root filesystem (read-only by default).
pub const BERTH_WORKER_WRITABLE_ROOT: &str = "BERTH_WORKER_WRITABLE_ROOT";
/// Size of each worker tmpfs (/tmp and HOME).
pub const BERTH_WORKER_SCRATCH_SIZE: &str = "BERTH_WORKER_SCRATCH_SIZE";
/// Hard deadline per task.
pub const BERTH_TASK_TIMEOUT: &str = "BERTH_TASK_TIMEOUT";
/// Grace between SIGTERM and SIGKILL when a worker is stopped.
pub const BERTH_STOP_GRACE: &str = "BERTH_STOP_GRACE";
/// This deployment's name, written as `berth.instance` on its workers.
pub const BERTH_INSTANCE: &str = "BERTH_INSTANCE";
/// Where the journal lives (and where `berth setup` writes its files).
pub const BERTH_STATE_DIR: &str = "BERTH_STATE_DIR";
/// How long deliveries are remembered for dedupe.
pub const BERTH_DELIVERY_RETENTION: &str = "BERTH_DELIVERY_RETENTION";
/// Bytes of a finished worker's output kept per task after its container is removed.
pub const BERTH_LOG_KEEP: &str = "BERTH_LOG_KEEP";
/// How long kept worker logs stay before they are pruned.
pub const BERTH_LOG_RETENTION: &str = "BERTH_LOG_RETENTION";
/// How long a finished and reported task stays in the journal.
pub const BERTH_TASK_RETENTION: &str = "BERTH_TASK_RETENTION";
/// How often a running task's check run shows its latest log lines.
pub const BERTH_PROGRESS_INTERVAL: &str = "BERTH_PROGRESS_INTERVAL";
/// Bearer token for `/api/*` and the dashboard.
pub const BERTH_ADMIN_TOKEN: &str = "BERTH_ADMIN_TOKEN";
/// File holding the admin token (instead of `BERTH_ADMIN_TOKEN`).
pub const BERTH_ADMIN_TOKEN_FILE: &str = "BERTH_ADMIN_TOKEN_FILE";
/// Bearer token for `/metrics`.
pub const BERTH_METRICS_TOKEN: &str = "BERTH_METRICS_TOKEN";
/// File holding the metrics token (instead of `BERTH_METRICS_TOKEN`).
pub const BERTH_METRICS_TOKEN_FILE: &str = "BERTH_METRICS_TOKEN_FILE";
/// Open HTTP connections at most.
pub const BERTH_MAX_CONNECTIONS: &str = "BERTH_MAX_CONNECTIONS";
/// Bytes of request bodies held at once across all connections.
pub const BERTH_MAX_BODY_BYTES_IN_FLIGHT: &str = "BERTH_MAX_BODY_BYTES_IN_FLIGHT";
/// Time for a complete request head.
pub const BERTH_HEADER_READ_TIMEOUT: &str = "BERTH_HEADER_READ_TIMEOUT";
/// Time for a complete request body after its head.
pub const BERTH_BODY_READ_TIMEOUT: &str = "BERTH_BODY_READ_TIMEOUT";
/// Time a kept-alive connection may wait for its next request.
pub const BERTH_IDLE_TIMEOUT: &str = "BERTH_IDLE_TIMEOUT";
/// Comma-separated logins allowed to trigger.
pub const BERTH_TRUSTED_USERS: &str = "BERTH_TRUSTED_USERS";
/// Comma-separated `owner/name` or `owner/*` patterns of repositories served.
pub const BERTH_ALLOWED_REPOS: &str = "BERTH_ALLOWED_REPOS";
/// The command prefix in comments (`/berth`).
pub const BERTH_COMMAND_PREFIX: &str = "BERTH_COMMAND_PREFIX";
/// Review pull requests automatically when opened, reopened, ready or pushed to.
pub const BERTH_AUTO_REVIEW: &str = "BERTH_AUTO_REVIEW";
/// The command a worker runs for a task: a daemon setting, handed on to the
/// worker under the same name.
pub const BERTH_AGENT_COMMAND: &str = "BERTH_AGENT_COMMAND";
/// File of `NAME=VALUE` lines every worker gets (plain agent settings).
pub const BERTH_WORKER_ENV_FILE: &str = "BERTH_WORKER_ENV_FILE";
/// File of `NAME=VALUE` lines every worker gets, whose values are secrets.
pub const BERTH_WORKER_SECRETS_FILE: &str = "BERTH_WORKER_SECRETS_FILE";
/// Template file replacing the default prompt of reviews.
pub const BERTH_REVIEW_PROMPT_FILE: &str = "BERTH_REVIEW_PROMPT_FILE";
/// Template file replacing the default prompt of implement tasks.
pub const BERTH_IMPLEMENT_PROMPT_FILE: &str = "BERTH_IMPLEMENT_PROMPT_FILE";
/// Log format: `human` or `json`.
pub const BERTH_LOG_FORMAT: &str = "BERTH_LOG_FORMAT";
/// Keep one bare mirror per repository in a volume and let workers borrow
/// its objects (on by default; off on an engine without volumes).
pub const BERTH_CLONE_CACHE: &str = "BERTH_CLONE_CACHE";
/// Total size of the clone cache's mirrors (`20g`); past it the least
/// recently used are removed. Unset: no cap.
pub const BERTH_CLONE_CACHE_SIZE: &str = "BERTH_CLONE_CACHE_SIZE";

// Worker contract: what the daemon puts in a worker's environment (see
// `worker_env`), then what the worker puts in the agent's.

/// The task id.
pub const BERTH_TASK_ID: &str = "BERTH_TASK_ID";
/// `review` or `implement`.
pub const BERTH_TASK_KIND: &str = "BERTH_TASK_KIND";
/// `owner/name`.
pub const BERTH_REPO: &str = "BERTH_REPO";
/// Issue or pull request number.
pub const BERTH_NUMBER: &str = "BERTH_NUMBER";
/// What git clones (https, git or file URL).
pub const BERTH_CLONE_URL: &str = "BERTH_CLONE_URL";
/// Branch to check out (a review's head branch, an implement's base).
pub const BERTH_HEAD_REF: &str = "BERTH_HEAD_REF";
/// Commit to check out, when known.
pub const BERTH_HEAD_SHA: &str = "BERTH_HEAD_SHA";
/// The trigger's text, handed to the agent as its prompt.
pub const BERTH_PROMPT: &str = "BERTH_PROMPT";
/// Hard deadline, seconds since the Unix epoch.
pub const BERTH_DEADLINE: &str = "BERTH_DEADLINE";
/// Installation token scoped to the one repository.
pub const BERTH_GITHUB_TOKEN: &str = "BERTH_GITHUB_TOKEN";
/// A review's base branch, fetched so the agent can diff against it.
pub const BERTH_BASE_REF: &str = "BERTH_BASE_REF";
/// Author and committer name of an implement task's commit.
pub const BERTH_GIT_AUTHOR_NAME: &str = "BERTH_GIT_AUTHOR_NAME";
/// Author and committer email of an implement task's commit.
pub const BERTH_GIT_AUTHOR_EMAIL: &str = "BERTH_GIT_AUTHOR_EMAIL";
/// Seconds between SIGTERM and SIGKILL when the agent is stopped.
pub const BERTH_GRACE_SECS: &str = "BERTH_GRACE_SECS";
/// Comma-separated names of further variables whose values are redacted.
pub const BERTH_SECRET_VARS: &str = "BERTH_SECRET_VARS";
/// Where the worker puts the clone, the prompt and the summary.
pub const BERTH_WORK_DIR: &str = "BERTH_WORK_DIR";
/// `1` for an implement task that follows up on Berth's own pull request: the
/// worker checks out `BERTH_HEAD_REF` (its `berth/issue-<n>` branch), commits
/// on it and pushes fast-forward only, never forced.
pub const BERTH_FOLLOW_UP: &str = "BERTH_FOLLOW_UP";
/// `1` from an engine whose log merges stdout and stderr (Kubernetes): the
/// worker then writes everything to stdout, so its result record stays the
/// last line (two pipes read at once can log an earlier stderr line after it).
pub const BERTH_ONE_STREAM: &str = "BERTH_ONE_STREAM";
/// Where the repository's mirror is mounted, read-only: the worker borrows
/// its objects (alternates) and fetches only what it lacks. Unset: no cache.
pub const BERTH_CACHE_DIR: &str = "BERTH_CACHE_DIR";
/// Why the daemon mounted no mirror for this task (the refresh failed, the
/// record has no repository id...), so the worker's log says so.
pub const BERTH_CACHE_NOTE: &str = "BERTH_CACHE_NOTE";
/// Set by the worker for the agent: the clone, also its working directory.
pub const BERTH_WORKSPACE: &str = "BERTH_WORKSPACE";
/// Set by the worker for the agent: a file holding the prompt (also its stdin).
pub const BERTH_PROMPT_FILE: &str = "BERTH_PROMPT_FILE";
/// Set by the worker for the agent: where it writes its summary (Markdown).
pub const BERTH_SUMMARY_FILE: &str = "BERTH_SUMMARY_FILE";
/// Set by the worker for the agent: an implement task's branch (`berth/issue-<n>`).
pub const BERTH_BRANCH: &str = "BERTH_BRANCH";

// Test and probe knobs: not settings an operator needs.

/// `berth doctor` only (a hidden flag): the address whose reachability from a
/// worker it checks; tests point it at a local port.
pub const BERTH_DOCTOR_EGRESS_PROBE: &str = "BERTH_DOCTOR_EGRESS_PROBE";
/// The end-to-end tests' worker image tag (default `berth-test-worker:e2e`):
/// a tag of its own keeps test runs of two checkouts on one engine from
/// replacing each other's image mid-run.
pub const BERTH_TEST_IMAGE: &str = "BERTH_TEST_IMAGE";
/// The end-to-end tests' Claude Code CLI on the host.
pub const BERTH_CLAUDE_BIN: &str = "BERTH_CLAUDE_BIN";
/// The end-to-end tests' download cache (default `$HOME/.cache/berth`).
pub const BERTH_AGENT_CACHE: &str = "BERTH_AGENT_CACHE";
/// Benchmarks: samples (or tasks) per run.
pub const BERTH_BENCH_N: &str = "BERTH_BENCH_N";
/// The worker benchmark: iterations per path.
pub const BERTH_BENCH_ITERATIONS: &str = "BERTH_BENCH_ITERATIONS";
/// The webhook benchmark: seconds per load phase.
pub const BERTH_BENCH_SECONDS: &str = "BERTH_BENCH_SECONDS";
/// The webhook benchmark: client connections.
pub const BERTH_BENCH_CONNECTIONS: &str = "BERTH_BENCH_CONNECTIONS";
/// The webhook benchmark: client connections of its wide phase.
pub const BERTH_BENCH_WIDE_CONNECTIONS: &str = "BERTH_BENCH_WIDE_CONNECTIONS";
/// The webhook benchmark: deliveries a second.
pub const BERTH_BENCH_RATE: &str = "BERTH_BENCH_RATE";
/// The webhook benchmark: the daemon's `RUST_LOG`.
pub const BERTH_BENCH_RUST_LOG: &str = "BERTH_BENCH_RUST_LOG";
/// The webhook benchmark: a file to keep the daemon's log in.
pub const BERTH_BENCH_LOG: &str = "BERTH_BENCH_LOG";
/// Benchmarks that start `berth serve`: its `TOKIO_WORKER_THREADS` (the
/// benchmark's own runtimes keep theirs).
pub const BERTH_BENCH_DAEMON_WORKER_THREADS: &str = "BERTH_BENCH_DAEMON_WORKER_THREADS";
/// The soak benchmark: tasks in all.
pub const BERTH_SOAK_TASKS: &str = "BERTH_SOAK_TASKS";
