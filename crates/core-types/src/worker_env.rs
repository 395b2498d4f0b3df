//! The worker's input: the environment variables a worker container gets
//! (their names are constants in [`crate::env_names`]).
//!
//! The daemon encodes a [`WorkerTask`] with [`WorkerTask::to_env`]; the
//! worker decodes it with [`WorkerTask::from_env`]. The token is the only
//! secret here, and it is scoped to the task's one repository.
//!
//! [`WorkerOptions`] holds the optional settings (base branch, commit author,
//! grace period, names of further secret variables, work directory); each one
//! has a documented default that the worker applies when it is unset.

use std::fmt;

use crate::env_names::{
    BERTH_AGENT_COMMAND, BERTH_BASE_REF, BERTH_CLONE_URL, BERTH_DEADLINE, BERTH_FOLLOW_UP,
    BERTH_GIT_AUTHOR_EMAIL, BERTH_GIT_AUTHOR_NAME, BERTH_GITHUB_TOKEN, BERTH_GRACE_SECS, BERTH_HEAD_REF,
    BERTH_HEAD_SHA, BERTH_NUMBER, BERTH_PROMPT, BERTH_REPO, BERTH_SECRET_VARS, BERTH_TASK_ID,
    BERTH_TASK_KIND, BERTH_WORK_DIR,
};
use crate::{TaskId, TaskKind, labels::is_repo_name};

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything a worker needs to run one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTask {
    /// The task id.
    pub task_id: TaskId,
    /// The kind of task.
    pub kind: TaskKind,
    /// `owner/name`.
    pub repo: String,
    /// Issue or pull request number.
    pub number: u64,
    /// What git clones.
    pub clone_url: String,
    /// Branch to check out, if any.
    pub head_ref: Option<String>,
    /// Commit to check out, if known.
    pub head_sha: Option<String>,
    /// The trigger's text.
    pub prompt: String,
    /// The agent command line.
    pub agent_command: String,
    /// Hard deadline, seconds since the Unix epoch.
    pub deadline_unix: u64,
    /// Repository-scoped installation token, when the clone needs one.
    pub token: Option<Secret>,
}

/// Why the environment does not describe a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerEnvError {
    /// A required variable is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable holds a value that does not parse.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl WorkerTask {
    /// The environment of the worker container, as `(name, value)` pairs.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (BERTH_TASK_ID, self.task_id.to_string()),
            (BERTH_TASK_KIND, self.kind.to_string()),
            (BERTH_REPO, self.repo.clone()),
            (BERTH_NUMBER, self.number.to_string()),
            (BERTH_CLONE_URL, self.clone_url.clone()),
            (BERTH_PROMPT, self.prompt.clone()),
            (BERTH_AGENT_COMMAND, self.agent_command.clone()),
            (BERTH_DEADLINE, self.deadline_unix.to_string()),
        ];
        if let Some(head_ref) = &self.head_ref {
            env.push((BERTH_HEAD_REF, head_ref.clone()));
        }
        if let Some(head_sha) = &self.head_sha {
            env.push((BERTH_HEAD_SHA, head_sha.clone()));
        }
        if let Some(token) = &self.token {
            env.push((BERTH_GITHUB_TOKEN, token.expose().to_owned()));
        }
        env
    }

    /// Reads a task from an environment lookup (`std::env::var` in the worker).
    ///
    /// # Errors
    /// The first variable that is missing or does not parse.
    pub fn from_env(lookup: impl Fn(&'static str) -> Option<String>) -> Result<Self, WorkerEnvError> {
        let present = |name: &'static str| lookup(name).filter(|value| !value.is_empty());
        let required = |name: &'static str| present(name).ok_or(WorkerEnvError::Missing(name));
        let invalid = |name: &'static str, reason: String| WorkerEnvError::Invalid { name, reason };

        let task_id =
            TaskId::new(required(BERTH_TASK_ID)?).map_err(|err| invalid(BERTH_TASK_ID, err.to_string()))?;
        let kind = required(BERTH_TASK_KIND)?
            .parse()
            .map_err(|err: crate::UnknownTaskKind| invalid(BERTH_TASK_KIND, err.to_string()))?;
        let repo = required(BERTH_REPO)?;
        if !is_repo_name(&repo) {
            return Err(invalid(BERTH_REPO, format!("{repo:?} is not owner/name")));
        }
        let number = required(BERTH_NUMBER)?;
        let number =
            number.parse().map_err(|_| invalid(BERTH_NUMBER, format!("{number:?} is not a number")))?;
        let deadline = required(BERTH_DEADLINE)?;
        let deadline_unix = deadline
            .parse()
            .map_err(|_| invalid(BERTH_DEADLINE, format!("{deadline:?} is not seconds since the epoch")))?;
        let head_sha = present(BERTH_HEAD_SHA);
        if let Some(sha) = &head_sha
            && (sha.len() < 7 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(BERTH_HEAD_SHA, format!("{sha:?} is not a commit id")));
        }
        Ok(Self {
            task_id,
            kind,
            repo,
            number,
            clone_url: required(BERTH_CLONE_URL)?,
            head_ref: present(BERTH_HEAD_REF),
            head_sha,
            prompt: lookup(BERTH_PROMPT).unwrap_or_default(),
            agent_command: required(BERTH_AGENT_COMMAND)?,
            deadline_unix,
            token: present(BERTH_GITHUB_TOKEN).map(Secret::new),
        })
    }
}

/// The optional worker settings; each has a default the worker applies when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOptions {
    /// A review's base branch (fetched for diffs); unused by an implement task.
    pub base_ref: Option<String>,
    /// Commit author name (default: `berth`).
    pub author_name: Option<String>,
    /// Commit author email (default: `berth@localhost`).
    pub author_email: Option<String>,
    /// Seconds between SIGTERM and SIGKILL (default: 5).
    pub grace_secs: Option<u64>,
    /// Names of further environment variables whose values are secrets.
    pub secret_vars: Vec<String>,
    /// Work directory (default: `$HOME/work`).
    pub work_dir: Option<String>,
    /// An implement task that continues Berth's branch `head_ref` of an open
    /// pull request instead of starting a new one; its push is never forced.
    pub follow_up: bool,
}

impl WorkerOptions {
    /// The set options as `(name, value)` pairs.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                env.push((name, value));
            }
        };
        put(BERTH_BASE_REF, self.base_ref.clone());
        put(BERTH_GIT_AUTHOR_NAME, self.author_name.clone());
        put(BERTH_GIT_AUTHOR_EMAIL, self.author_email.clone());
        put(BERTH_GRACE_SECS, self.grace_secs.map(|secs| secs.to_string()));
        put(BERTH_SECRET_VARS, (!self.secret_vars.is_empty()).then(|| self.secret_vars.join(",")));
        put(BERTH_WORK_DIR, self.work_dir.clone());
        put(BERTH_FOLLOW_UP, self.follow_up.then(|| "1".to_owned()));
        env
    }

    /// Reads the options from an environment lookup; unset or empty means the default.
    ///
    /// # Errors
    /// The first variable that is set but does not parse.
    pub fn from_env(lookup: impl Fn(&'static str) -> Option<String>) -> Result<Self, WorkerEnvError> {
        let present = |name: &'static str| lookup(name).filter(|value| !value.trim().is_empty());
        let invalid = |name: &'static str, reason: String| WorkerEnvError::Invalid { name, reason };
        let grace_secs =
            match present(BERTH_GRACE_SECS) {
                Some(text) => Some(text.trim().parse().map_err(|_| {
                    invalid(BERTH_GRACE_SECS, format!("{text:?} is not a number of seconds"))
                })?),
                None => None,
            };
        let secret_vars: Vec<String> = present(BERTH_SECRET_VARS)
            .map(|list| {
                list.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
            })
            .unwrap_or_default();
        if let Some(bad) = secret_vars.iter().find(|name| !is_env_name(name)) {
            return Err(invalid(BERTH_SECRET_VARS, format!("{bad:?} is not a variable name")));
        }
        let author_email = present(BERTH_GIT_AUTHOR_EMAIL);
        if let Some(email) = &author_email
            && email.contains(['<', '>', '\n'])
        {
            return Err(invalid(BERTH_GIT_AUTHOR_EMAIL, format!("{email:?} is not an email address")));
        }
        let author_name = present(BERTH_GIT_AUTHOR_NAME);
        if let Some(name) = &author_name
            && name.contains(['<', '>', '\n'])
        {
            return Err(invalid(BERTH_GIT_AUTHOR_NAME, format!("{name:?} holds '<', '>' or a newline")));
        }
        let follow_up = match present(BERTH_FOLLOW_UP).as_deref().map(str::trim) {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(invalid(BERTH_FOLLOW_UP, format!("{other:?} is neither 1 nor 0"))),
        };
        Ok(Self {
            follow_up,
            base_ref: present(BERTH_BASE_REF),
            author_name,
            author_email,
            grace_secs,
            secret_vars,
            work_dir: present(BERTH_WORK_DIR),
        })
    }
}

/// Whether `name` is a portable environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` belongs to Berth or to the worker's own plumbing, so that an
/// operator's agent settings may not set it: `BERTH_*` (the task contract),
/// `GITHUB_TOKEN` and `GH_TOKEN` (the scoped token), `GIT_*` (how the worker
/// authenticates and commits), `HOME` and `PATH`.
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with(crate::env_names::PREFIX)
        || name.starts_with("GIT_")
        || matches!(name, "GITHUB_TOKEN" | "GH_TOKEN" | "HOME" | "PATH")
}
