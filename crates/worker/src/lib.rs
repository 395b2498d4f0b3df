//! `berth-worker`: runs one Berth task inside its container, from the
//! environment it was given to the result record it prints last.
//!
//! The lifecycle ([`run`]): read the task from the environment, clone the
//! repository at the right commit (`workspace`), run the agent command in its
//! own process group with its output streamed and redacted and the deadline
//! enforced (`process`), commit and push an implement task's changes, and
//! print the [`ResultRecord`] as the last line of stdout. The exit code is
//! the contract of CONTRACT.md ([`WorkerExit`]).
//!
//! The worker stands on its own: it never talks to the daemon or to the
//! GitHub API, and it holds no secret but the task's installation token (and
//! whatever the operator passes the agent). It installs no signal handlers
//! and reads no environment itself: `main` does both and hands them in.

mod cache;
mod command;
mod error;
mod git;
mod output;
mod process;
mod redact;
mod workspace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_types::{ResultRecord, TaskKind, WorkerExit, WorkerOptions, WorkerTask, env_names};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cache::{SIZE_LINE_PREFIX, refresh as refresh_cache};
pub use command::CommandError;
pub use error::WorkerError;
pub use process::OrphanSweep;

use crate::command::{AgentCommand, PlaceholderValues};
use crate::error::Halt;
use crate::git::{Author, Git};
use crate::output::Output;
use crate::process::{Ending, Finished, Limits, StdoutTo, supervise};
use crate::redact::Redactor;
use crate::workspace::{Checkout, Layout};

/// Grace between SIGTERM and SIGKILL when `BERTH_GRACE_SECS` is unset.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Commit author name when `BERTH_GIT_AUTHOR_NAME` is unset.
pub const DEFAULT_AUTHOR_NAME: &str = "berth";
/// Commit author email when `BERTH_GIT_AUTHOR_EMAIL` is unset.
pub const DEFAULT_AUTHOR_EMAIL: &str = "berth@localhost";
/// Longest summary in a result record, in characters (GitHub comments stop at 65536).
pub const MAX_SUMMARY_CHARS: usize = 60_000;

/// The worker's settings, resolved from [`WorkerOptions`] and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    work_dir: PathBuf,
    grace: Duration,
    author: Author,
    secrets: Vec<String>,
    inherited_git_config: usize,
    /// `PATH`, where the agent's program is looked for.
    path: String,
    /// The repository's mirror, mounted read-only (`BERTH_CACHE_DIR`).
    cache_dir: Option<PathBuf>,
    /// Why the daemon mounted no mirror (`BERTH_CACHE_NOTE`).
    cache_note: Option<String>,
}

impl Settings {
    fn resolve(task: &WorkerTask, options: &WorkerOptions, env: &BTreeMap<String, String>) -> Self {
        let home = env.get("HOME").filter(|home| !home.is_empty());
        let work_dir = match (&options.work_dir, home) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => Path::new(home).join("work"),
            (None, None) => PathBuf::from("/tmp/berth-work"),
        };
        let mut secrets: Vec<String> = task.token.iter().flat_map(git::token_secrets).collect();
        secrets.extend(options.secret_vars.iter().filter_map(|name| env.get(name)).cloned());
        Self {
            work_dir,
            grace: options.grace_secs.map_or(DEFAULT_GRACE, Duration::from_secs),
            author: Author {
                name: options.author_name.clone().unwrap_or_else(|| DEFAULT_AUTHOR_NAME.to_owned()),
                email: options.author_email.clone().unwrap_or_else(|| DEFAULT_AUTHOR_EMAIL.to_owned()),
            },
            secrets,
            inherited_git_config: env
                .get("GIT_CONFIG_COUNT")
                .and_then(|count| count.parse().ok())
                .unwrap_or(0),
            path: env.get("PATH").cloned().unwrap_or_default(),
            cache_dir: env.get(env_names::BERTH_CACHE_DIR).filter(|dir| !dir.is_empty()).map(PathBuf::from),
            cache_note: env.get(env_names::BERTH_CACHE_NOTE).filter(|note| !note.is_empty()).cloned(),
        }
    }
}

/// How the task ended: the exit code and the record to print.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    exit: WorkerExit,
    summary: String,
    branch: Option<String>,
    commit: Option<String>,
}

impl Outcome {
    fn new(exit: WorkerExit, summary: impl Into<String>) -> Self {
        Self { exit, summary: summary.into(), branch: None, commit: None }
    }

    fn halted(halt: Halt) -> Self {
        match halt {
            Halt::Failed(err) => Self::new(WorkerExit::SetupFailed, format!("Setup failed: {}", err.chain())),
            Halt::DeadlinePassed { during } => Self::new(
                WorkerExit::DeadlineExceeded,
                format!("The task ran past its deadline while {during}; git was stopped."),
            ),
            Halt::Cancelled => Self::new(WorkerExit::Cancelled, "Cancelled: the worker got SIGTERM."),
        }
    }

    fn record(&self, task: &str, redactor: &Redactor) -> ResultRecord {
        ResultRecord {
            berth_result: ResultRecord::VERSION,
            task: task.to_owned(),
            status: self.exit.status(),
            summary: truncate(&redactor.redact_str(&self.summary), MAX_SUMMARY_CHARS),
            branch: self.branch.clone(),
            commit: self.commit.clone(),
        }
    }
}

/// Runs the task the environment describes, prints its result record as the
/// last line of stdout, and returns the exit.
///
/// `env` is the worker's environment; `cancel` fires on SIGTERM or SIGINT;
/// `sweep` says whether this process is a child subreaper that may kill
/// every orphan re-parented to it.
pub async fn run(
    env: &BTreeMap<String, String>,
    cancel: CancellationToken,
    sweep: OrphanSweep,
) -> WorkerExit {
    let lookup = |name: &'static str| env.get(name).cloned();
    let one_stream = env.get(env_names::BERTH_ONE_STREAM).is_some_and(|value| value == "1");
    let parsed = WorkerTask::from_env(lookup).and_then(|task| Ok((task, WorkerOptions::from_env(lookup)?)));
    let (task, options) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            // Still redact the token, should a message ever carry it.
            let output = Output::new(Redactor::new(env.get(env_names::BERTH_GITHUB_TOKEN)))
                .with_one_stream(one_stream);
            let outcome = Outcome::new(WorkerExit::SetupFailed, err.to_string());
            output.note(&outcome.summary);
            let task_id = env.get(env_names::BERTH_TASK_ID).cloned().unwrap_or_default();
            output.result(&outcome.record(&task_id, output.redactor()));
            return outcome.exit;
        }
    };
    let settings = Settings::resolve(&task, &options, env);
    let output = Output::new(Redactor::new(&settings.secrets)).with_one_stream(one_stream);
    let limits =
        Limits { deadline: deadline_instant(task.deadline_unix), grace: settings.grace, cancel, sweep };
    output.note(&format!("task {}: {} of {}#{}", task.task_id, task.kind, task.repo, task.number));
    let outcome = execute(&task, &options, &settings, &limits, &output).await;
    if outcome.exit != WorkerExit::Success {
        output.note(outcome.summary.lines().next().unwrap_or_default());
    }
    output.result(&outcome.record(task.task_id.as_str(), output.redactor()));
    outcome.exit
}

/// `berth-worker check-agent`: whether the program of `BERTH_AGENT_COMMAND`
/// is in this image, as `berth doctor` asks in a throwaway container.
///
/// # Errors
/// The command does not parse, or its program is not in the image.
pub fn check_agent(env: &BTreeMap<String, String>) -> Result<String, String> {
    let line = env
        .get(env_names::BERTH_AGENT_COMMAND)
        .filter(|line| !line.trim().is_empty())
        .ok_or_else(|| format!("{} is not set", env_names::BERTH_AGENT_COMMAND))?;
    let command =
        AgentCommand::parse(line).map_err(|err| format!("{}: {err}", env_names::BERTH_AGENT_COMMAND))?;
    let argv = command.render(&PlaceholderValues::default());
    let program = argv.first().filter(|program| !program.is_empty()).ok_or_else(|| {
        format!("{}: its program is a placeholder, so it cannot be checked", env_names::BERTH_AGENT_COMMAND)
    })?;
    find_program(program, env.get("PATH").map_or("", String::as_str)).map_err(|err| err.to_string())?;
    Ok(format!("the agent's program {program:?} is in the image"))
}

/// The Unix deadline as an instant of the runtime's clock.
fn deadline_instant(deadline_unix: u64) -> Instant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let remaining = Duration::from_secs(deadline_unix).saturating_sub(now);
    // A year stands for "no deadline worth the name" and keeps the addition in range.
    let remaining = remaining.min(Duration::from_secs(365 * 24 * 3600));
    Instant::now() + remaining
}

async fn execute(
    task: &WorkerTask,
    options: &WorkerOptions,
    settings: &Settings,
    limits: &Limits,
    output: &Output,
) -> Outcome {
    if limits.cancel.is_cancelled() {
        return Outcome::halted(Halt::Cancelled);
    }
    if Instant::now() >= limits.deadline {
        return Outcome::new(
            WorkerExit::DeadlineExceeded,
            "The deadline had passed before the task started.",
        );
    }
    let Ready { command, checkout, layout, git } = match set_up(task, options, settings, limits, output).await
    {
        Ok(ready) => ready,
        Err(halt) => return Outcome::halted(halt),
    };
    let argv = command.render(&placeholder_values(task, options, &layout, &checkout));
    let Some((program, args)) = argv.split_first() else {
        return Outcome::halted(Halt::Failed(WorkerError::AgentCommand(command::CommandError::Empty)));
    };
    let stdin = match std::fs::File::open(&layout.prompt_file) {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
    };
    let mut agent = Command::new(program);
    agent.args(args).current_dir(&layout.repo).stdin(stdin).envs(git.agent_env());
    agent
        .env(env_names::BERTH_WORKSPACE, &layout.repo)
        .env(env_names::BERTH_PROMPT_FILE, &layout.prompt_file)
        .env(env_names::BERTH_SUMMARY_FILE, &layout.summary_file);
    if let Some(branch) = &checkout.branch {
        agent.env(env_names::BERTH_BRANCH, branch);
    }
    if let Some(token) = &task.token {
        agent.env("GITHUB_TOKEN", token.expose()).env("GH_TOKEN", token.expose());
    }
    output.note(&format!("running the agent {program:?} in {}", layout.repo.display()));
    let finished = match supervise(&mut agent, StdoutTo::Stream, limits, output).await {
        Ok(finished) => finished,
        Err(source) => {
            let err = WorkerError::AgentSpawn { program: program.clone(), source };
            return Outcome::halted(Halt::Failed(err));
        }
    };
    output.note(&format!(
        "agent ended: {}; {} leftover processes killed, {} still alive",
        describe(&finished.ending),
        finished.leftovers_killed,
        finished.survivors
    ));
    let summary = agent_summary(&layout.summary_file, &finished);
    match finished.ending {
        Ending::Exited(status) if status.success() => match task.kind {
            TaskKind::Review => Outcome::new(WorkerExit::Success, summary),
            TaskKind::Implement => {
                match workspace::publish(task, &checkout, &git, &layout, limits, output).await {
                    Ok(Some(published)) => Outcome {
                        exit: WorkerExit::Success,
                        summary,
                        branch: Some(published.branch),
                        commit: Some(published.commit),
                    },
                    Ok(None) => {
                        Outcome::new(WorkerExit::Success, format!("The agent made no changes.\n\n{summary}"))
                    }
                    Err(Halt::Failed(err)) => Outcome::new(
                        WorkerExit::SetupFailed,
                        format!(
                            "The agent succeeded, but its changes could not be pushed: {}\n\n{summary}",
                            err.chain()
                        ),
                    ),
                    Err(halt) => Outcome::halted(halt),
                }
            }
        },
        Ending::Exited(status) => Outcome::new(
            WorkerExit::AgentFailed,
            format!("The agent failed ({}).\n\n{summary}", describe_status(status)),
        ),
        Ending::DeadlinePassed => Outcome::new(
            WorkerExit::DeadlineExceeded,
            format!(
                "The agent ran past its deadline and was stopped (SIGTERM{}).\n\n{summary}",
                if finished.killed_after_grace {
                    format!(", then SIGKILL after {:?}", settings.grace)
                } else {
                    String::new()
                }
            ),
        ),
        Ending::Cancelled => Outcome::new(
            WorkerExit::Cancelled,
            format!("Cancelled: the worker got SIGTERM and stopped the agent.\n\n{summary}"),
        ),
    }
}

/// What the agent needs once the workspace is ready.
struct Ready {
    command: AgentCommand,
    checkout: Checkout,
    layout: Layout,
    git: Git,
}

/// Everything before the agent: checks, work directory, clone.
async fn set_up(
    task: &WorkerTask,
    options: &WorkerOptions,
    settings: &Settings,
    limits: &Limits,
    output: &Output,
) -> Result<Ready, Halt> {
    let command = AgentCommand::parse(&task.agent_command).map_err(WorkerError::AgentCommand)?;
    for (variable, value) in
        [(env_names::BERTH_HEAD_REF, &task.head_ref), (env_names::BERTH_BASE_REF, &options.base_ref)]
    {
        if let Some(value) = value {
            workspace::check_ref(variable, value)?;
        }
    }
    if task.kind == TaskKind::Review && task.head_sha.is_none() && task.head_ref.is_none() {
        return Err(Halt::Failed(WorkerError::InvalidVariable {
            variable: env_names::BERTH_HEAD_SHA,
            reason: format!(
                "a review needs {} or {}, and neither is set",
                env_names::BERTH_HEAD_SHA,
                env_names::BERTH_HEAD_REF
            ),
        }));
    }
    let layout = Layout::new(&settings.work_dir);
    // Before the clone, so a missing agent fails in milliseconds, not after it.
    let early = early_values(task, options, &layout);
    if let Some(program) = command.render(&early).first() {
        find_program(program, &settings.path)?;
    }
    layout.create(&command::render_text(&task.prompt, &early))?;
    let git = Git::new(&task.clone_url, task.token.as_ref(), &settings.author, settings.inherited_git_config);
    output.note(&format!("cloning {} into {}", display_url(&task.clone_url), layout.repo.display()));
    if let Some(note) = &settings.cache_note {
        output.note(&format!("no clone cache for this task: {note}; cloning without it"));
    }
    let mirror = settings.cache_dir.as_deref();
    let checkout = workspace::prepare(task, options, &git, &layout, limits, output, mirror).await?;
    output.note(&format!("checked out {}", checkout.head));
    Ok(Ready { command, checkout, layout, git })
}

/// The placeholders known before the clone: the task's own and the paths.
/// The prompt the daemon made is rendered with these.
fn early_values(task: &WorkerTask, options: &WorkerOptions, layout: &Layout) -> PlaceholderValues {
    let path = |path: &Path| path.to_string_lossy().into_owned();
    let branch = match task.kind {
        TaskKind::Implement if options.follow_up => task.head_ref.clone().unwrap_or_default(),
        TaskKind::Implement => workspace::implement_branch(task.number),
        TaskKind::Review => task.head_ref.clone().unwrap_or_default(),
    };
    let mut values = PlaceholderValues::default();
    values
        .set("task_id", task.task_id.as_str())
        .set("kind", task.kind.as_str())
        .set("repo", task.repo.as_str())
        .set("number", task.number.to_string())
        .set("workspace", path(&layout.repo))
        .set("work_dir", path(&layout.work_dir))
        .set("prompt_file", path(&layout.prompt_file))
        .set("summary_file", path(&layout.summary_file))
        .set("branch", branch)
        .set("base_ref", options.base_ref.clone().unwrap_or_default())
        .set("head_sha", task.head_sha.clone().unwrap_or_default());
    values
}

/// Checks that the agent's program is in the image: a path must be an
/// executable file, a bare name must be one on `PATH`.
fn find_program(program: &str, path: &str) -> Result<(), WorkerError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    let missing = |searched: String| WorkerError::AgentMissing { program: program.to_owned(), searched };
    if program.contains('/') {
        return if executable(Path::new(program)) {
            Ok(())
        } else {
            Err(missing("no executable file at that path".to_owned()))
        };
    }
    if path.split(':').filter(|dir| !dir.is_empty()).any(|dir| executable(&Path::new(dir).join(program))) {
        Ok(())
    } else {
        Err(missing(format!("not found on PATH={path}")))
    }
}

/// Every placeholder, once the clone is checked out: the early ones, then
/// what the checkout found, and the prompt as written to the prompt file.
fn placeholder_values(
    task: &WorkerTask,
    options: &WorkerOptions,
    layout: &Layout,
    checkout: &Checkout,
) -> PlaceholderValues {
    let prompt = std::fs::read_to_string(&layout.prompt_file).unwrap_or_else(|_| task.prompt.clone());
    let mut values = early_values(task, options, layout);
    values
        .set("prompt", prompt)
        .set("branch", checkout.branch.clone().or_else(|| task.head_ref.clone()).unwrap_or_default())
        .set("base_ref", checkout.base_ref.clone().unwrap_or_default())
        .set("head_sha", checkout.head.as_str());
    values
}

/// A URL without any user information (`https://user:pass@host/` → `https://host/`).
fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Exited(status) => describe_status(*status),
        Ending::DeadlinePassed => "stopped at the deadline".to_owned(),
        Ending::Cancelled => "stopped on SIGTERM".to_owned(),
    }
}

/// `exit code 3` or `killed by signal 9`.
fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The agent's summary file, or else the end of its output.
fn agent_summary(summary_file: &Path, finished: &Finished) -> String {
    let written =
        std::fs::read(summary_file).ok().map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    match written {
        Some(text) if !text.is_empty() => text,
        _ if finished.tail.is_empty() => "The agent wrote no summary and printed nothing.".to_owned(),
        _ => {
            let tail = finished.tail_text();
            let fence = fence_for(&tail);
            format!("The agent wrote no summary; the end of its output:\n\n{fence}text\n{tail}\n{fence}")
        }
    }
}

/// A code fence longer than any run of backticks in `text`.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// At most `max` characters, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let marker = "\n\n… (truncated)";
    let keep = max.saturating_sub(marker.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(marker);
    out
}

#[cfg(test)]
mod tests;
